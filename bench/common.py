"""Shared pieces of the benchmarks: model shapes, the score token, result files."""

from __future__ import annotations

import json
import os

from rankt5_jax.network import get_config

SCORE_TOKEN = 32089  # <extra_id_10> of the standard vocabulary (32000 pieces + 100 extra ids)


def config(size: str):
    """T5 v1.0 `small`/`base`/... with the standard vocabulary; `tiny` for the tests."""
    if size == "tiny":
        return get_config("tiny", vocab_size=32128, dropout_rate=0.0)
    return get_config(f"t5_1_0_{size}", dropout_rate=0.0)


def write_json(path: str, result: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as handle:
        json.dump(result, handle, indent=2)


def torch_device(torch) -> str:
    """`cuda` when JAX runs on a GPU and PyTorch sees one too, else `cpu`: both sides on the
    same kind of device."""
    import jax

    if jax.default_backend() == "gpu" and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def device_name() -> str:
    import jax

    device = jax.devices()[0]
    return f"{device.platform}: {getattr(device, 'device_kind', device.platform)}"


def jax_peak_memory_mb() -> float | None:
    """Peak bytes in use on the first accelerator (None on CPU, where RSS is the figure)."""
    import jax

    stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return stats["peak_bytes_in_use"] / 2**20


def torch_peak_memory_mb(torch) -> float | None:
    if not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / 2**20

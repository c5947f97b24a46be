"""Shared pieces of the benchmarks: model shapes, the score token, result files."""

from __future__ import annotations

import json
import os

from rankt5_jax.modeling.network import get_config

SCORE_TOKEN = 32089  # <extra_id_10> of the standard vocabulary (32000 pieces + 100 extra ids)
TRUE_TOKEN, FALSE_TOKEN = 1176, 6136  # "▁true", "▁false" of the standard vocabulary (monoT5's)


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


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else `platform.processor()`."""
    import platform

    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


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


def timed(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls of `fn` after one warm-up call (compilation, first
    touch)."""
    import statistics
    import time

    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _peak_size() -> int:
    import jax

    return 2048 if jax.default_backend() == "cpu" else 8192


def matmul_peak(dtype: str = "float32", repeats: int = 5) -> float:
    """Measured matmul FLOP/s of this device through XLA in `dtype` (float32 accumulation):
    2048^3 on CPU, 8192^3 on accelerators; random operands."""
    import jax
    import jax.numpy as jnp

    size = _peak_size()
    key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(key_a, (size, size), jnp.float32).astype(dtype)
    b = jax.random.normal(key_b, (size, size), jnp.float32).astype(dtype)
    fn = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
    return 2 * size**3 / timed(lambda: fn(a, b).block_until_ready(), repeats)


def torch_matmul_peak(torch, dtype: str = "float32", repeats: int = 5) -> float:
    """The same product through PyTorch on the device PyTorch runs on in the benchmarks."""
    device = torch_device(torch)
    size = _peak_size()
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device, getattr(torch, dtype))
    b = torch.randn(size, size, generator=generator).to(device, getattr(torch, dtype))

    def product():
        out = a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    with torch.no_grad():
        return 2 * size**3 / timed(product, repeats)


def encoder_flops(cfg, tokens: int, length: int) -> float:
    """Matmul FLOPs of the encoder for `tokens` tokens in sequences of `length`."""
    inner = cfg.num_heads * cfg.head_dim
    mlp_mats = len(cfg.mlp_activations) + 1
    per_token = 2 * (4 * cfg.emb_dim * inner + mlp_mats * cfg.emb_dim * cfg.mlp_dim)
    per_token += 2 * 2 * length * inner  # scores and weighted values
    return per_token * tokens * cfg.num_encoder_layers


def _folded_attention_flops(cfg, keys: int) -> float:
    """One query's folded attention over `keys` inputs (`network.MultiHeadAttention._folded`):
    query and output projections, the query through Wk and the mix through Wv, then logits
    and the mix over the inputs."""
    d, inner = cfg.emb_dim, cfg.num_heads * cfg.head_dim
    return 2 * 4 * d * inner + 2 * 2 * cfg.num_heads * keys * d


def encdec_step_flops(cfg, sequences: int, length: int, folded: bool) -> float:
    """Matmul FLOPs of RankT5-EncDec's forward pass over `sequences` sequences of `length`
    tokens: the encoder, then one decoder step. `folded=True` is ours (cross-attention folded
    through the key/value kernels, the score column only); `folded=False` is Hugging Face's
    (keys and values projected from every encoder token in every decoder layer, then logits
    over the whole vocabulary)."""
    d, inner = cfg.emb_dim, cfg.num_heads * cfg.head_dim
    mlp_mats = len(cfg.mlp_activations) + 1
    per_layer = 2 * 4 * d * inner + 2 * 2 * inner  # self-attention of the one step
    per_layer += 2 * mlp_mats * d * cfg.mlp_dim
    if folded:
        per_layer += _folded_attention_flops(cfg, length)
    else:  # q/o projections, keys and values of every input token, logits, weighted values
        per_layer += 2 * 2 * d * inner + 2 * (2 * length * d * inner + 2 * length * inner)
    decoder = per_layer * cfg.num_decoder_layers + 2 * d * (1 if folded else cfg.vocab_size)
    return sequences * (encoder_flops(cfg, length, length) + decoder)


def enc_score_flops(cfg, sequences: int, length: int) -> float:
    """Matmul FLOPs of our RankT5-Enc scoring with first-token pooling: the encoder, except
    that the last layer computes position 0 only (its one query attends folded over every
    token's inputs: no key/value projections), then the dense head."""
    d = cfg.emb_dim
    mlp_mats = len(cfg.mlp_activations) + 1
    layer = encoder_flops(cfg, length, length) / cfg.num_encoder_layers
    last = _folded_attention_flops(cfg, length) + 2 * mlp_mats * d * cfg.mlp_dim
    return sequences * (layer * (cfg.num_encoder_layers - 1) + last + 2 * d)


def monot5_score_flops(cfg, sequences: int, length: int) -> float:
    """Matmul FLOPs of our monoT5 (and FiT5 without its global layers) scoring: EncDec's
    folded step (`encdec_step_flops`) with two output columns ("true", "false") instead of one."""
    return encdec_step_flops(cfg, sequences, length, folded=True) + sequences * 2 * cfg.emb_dim


def global_layers_flops(cfg, list_size: int, lists: int = 1) -> float:
    """Matmul FLOPs of FiT5's `cfg.num_global_layers` global attention layers over `lists` lists
    of `list_size` first-position states: query, key, value and output projections of every
    candidate, then logits and the weighted values across the list."""
    inner = cfg.num_heads * cfg.head_dim
    per_layer = 2 * 4 * list_size * cfg.emb_dim * inner + 2 * 2 * list_size * list_size * inner
    return lists * cfg.num_global_layers * per_layer


def jaxpr_dot_flops(jaxpr) -> int:
    """2 x output size x contracted size, summed over every dot_general in `jaxpr` (nested
    jaxprs included): the exact matmul FLOPs of a traced computation."""
    import jax

    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            contracted = 1
            for axis in lhs_contract:
                contracted *= eqn.invars[0].aval.shape[axis]
            total += 2 * contracted * eqn.outvars[0].aval.size
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    total += jaxpr_dot_flops(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    total += jaxpr_dot_flops(sub)
    return total


def open_results(work_dir: str, output: str | None, key: str) -> tuple[str, dict]:
    """A learning benchmark's start: quiet JAX/TF logs, `work_dir` made, and its results file
    (`output`, default `<work_dir>/results.json`) loaded, or `{key: {}}`, with this machine."""
    import json
    import os

    from rankt5_jax import quiet

    quiet.silence_startup_logs()
    quiet.import_tensorflow()
    os.makedirs(work_dir, exist_ok=True)
    output = output or os.path.join(work_dir, "results.json")
    results = json.load(open(output)) if os.path.isfile(output) else {key: {}}
    results["machine"] = f"{cpu_model()}, {os.cpu_count()} cores"
    return output, results

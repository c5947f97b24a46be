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

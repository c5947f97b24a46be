"""Shapes and dtypes of scoring batches, shared by the `Ranker` and the XTR token encoder.

bucket_lengths(max_length)   the padded lengths a length-sorted batch is padded to (one
                             compiled shape each)
default_dtype()              the activation dtype when none is given: float32 on CPU, bfloat16
                             on accelerators
"""

from __future__ import annotations


def bucket_lengths(max_length: int) -> list[int]:
    """Padding lengths: multiples of 16 up to 256, of 32 up to 512, of 64 beyond, and
    `max_length`.

    A length-sorted batch is padded to the first bucket that holds its longest pair: at most 15
    padding tokens up to 256 (6% at 256) and 12.5% beyond, for 24 compiled shapes up to 512.
    (Steps of 32 and 64, 13 shapes, padded 15% more tokens than exact padding on the benchmark's
    length mix, against 5% for these.)
    """
    lengths = list(range(16, 257, 16)) + list(range(288, 513, 32))
    lengths += list(range(576, max(max_length, 576) + 1, 64))
    return sorted({length for length in lengths if length < max_length} | {max_length})


def default_dtype() -> str:
    """float32 on CPU, bfloat16 on accelerators (TPU, GPU)."""
    import jax

    return "float32" if jax.default_backend() == "cpu" else "bfloat16"

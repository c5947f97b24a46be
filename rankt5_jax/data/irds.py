"""`irds:ID` inputs: corpora, queries, qrels and runs read through the `ir_datasets` package.

Wherever a corpus, queries, qrels or run path is accepted, `irds:ID` (e.g.
`irds:beir/scifact/test`) names an ir_datasets dataset instead (`formats` dispatches here).
ir_datasets is an optional extra (`pip install 'rankt5_jax[irds]'`), imported on first use; a
missing package or an unknown id is a one-line error. Everything streams from ir_datasets'
iterators; documents are looked up by id through its `docs_store()` (built by ir_datasets on
first use, beside its download). ir_datasets downloads what it does not have unless the dataset
is already under `IR_DATASETS_HOME` (or registered with local files, as the tests do).

Field mapping: a document is `(doc_id, title, text)` with `title` where the dataset has one and
`text` its `text` (else `body`, else `default_text()`); a query's text is its `text` (else
`default_text()`); qrels are `relevance`; runs are the dataset's `scoreddocs`.
"""

from __future__ import annotations

from collections.abc import Iterator

from rankt5_jax.errors import ConfigError

PREFIX = "irds:"


def is_irds(path: object) -> bool:
    """Whether `path` names an ir_datasets id (`irds:ID`) rather than a file."""
    return isinstance(path, str) and path.startswith(PREFIX)


def dataset_id(path: str) -> str:
    ident = path[len(PREFIX) :].strip()
    if not ident:
        raise ConfigError(
            f"{path!r}: give an ir_datasets id after 'irds:', e.g. irds:beir/scifact/test"
        )
    return ident


def _module():
    try:
        import ir_datasets
    except ImportError as err:
        raise ConfigError(
            "irds: ids need the ir_datasets package: pip install 'rankt5_jax[irds]' "
            "(or ir_datasets)"
        ) from err
    return ir_datasets


def load(path: str):
    """The ir_datasets dataset named by `irds:ID`; ConfigError for an unknown id."""
    ident = dataset_id(path)
    ir_datasets = _module()
    try:
        return ir_datasets.load(ident)
    except KeyError as err:
        raise ConfigError(
            f"{path}: unknown ir_datasets id {ident!r} (see https://ir-datasets.com for ids)"
        ) from err


def _require(dataset, path: str, entity: str) -> None:
    if not getattr(dataset, f"has_{entity}")():
        provides = [
            name
            for name in ("docs", "queries", "qrels", "scoreddocs")
            if getattr(dataset, f"has_{name}")()
        ]
        raise ConfigError(
            f"{path} provides no {entity} (it provides {', '.join(provides) or 'nothing'})"
        )


def _doc_fields(doc) -> tuple[str, str, str]:
    title = getattr(doc, "title", "") or ""
    if hasattr(doc, "text"):
        body = doc.text
    elif hasattr(doc, "body"):
        body = doc.body
    else:
        body, title = doc.default_text(), ""
    return str(doc.doc_id), title if isinstance(title, str) else "", body or ""


def iter_docs(path: str) -> Iterator[tuple[str, str, str]]:
    """Streams `(doc_id, title, text)` of the dataset's documents."""
    dataset = load(path)
    _require(dataset, path, "docs")
    for doc in dataset.docs_iter():
        yield _doc_fields(doc)


def iter_queries(path: str) -> Iterator[tuple[str, str]]:
    """Streams `(query_id, text)`."""
    dataset = load(path)
    _require(dataset, path, "queries")
    for query in dataset.queries_iter():
        text = query.text if hasattr(query, "text") else query.default_text()
        yield str(query.query_id), text


def iter_qrels(path: str) -> Iterator[tuple[str, str, int]]:
    """Streams `(query_id, doc_id, relevance)`."""
    dataset = load(path)
    _require(dataset, path, "qrels")
    for qrel in dataset.qrels_iter():
        yield str(qrel.query_id), str(qrel.doc_id), int(qrel.relevance)


def iter_scoreddocs(path: str) -> Iterator[tuple[str, str, float]]:
    """Streams `(query_id, doc_id, score)` of the dataset's run (its scoreddocs)."""
    dataset = load(path)
    _require(dataset, path, "scoreddocs")
    for scored in dataset.scoreddocs_iter():
        yield str(scored.query_id), str(scored.doc_id), float(scored.score)


class DocStore:
    """Documents by id through ir_datasets' `docs_store()`: `get(doc_id) -> (title, text)`."""

    def __init__(self, path: str):
        self.path = path
        self._dataset = load(path)
        _require(self._dataset, path, "docs")
        self._store = self._dataset.docs_store()

    def get(self, doc_id: str) -> tuple[str, str]:
        """-> (title, text); KeyError for an unknown id."""
        _, title, body = _doc_fields(self._store.get(doc_id))
        return title, body

    def __contains__(self, doc_id: object) -> bool:
        if not isinstance(doc_id, str):
            return False
        try:
            self._store.get(doc_id)
        except KeyError:
            return False
        return True

    def __len__(self) -> int:
        count = self._dataset.docs_count()
        if count is None:
            count = sum(1 for _ in self._dataset.docs_iter())
        return int(count)

    def ids(self) -> Iterator[str]:
        for doc in self._dataset.docs_iter():
            yield str(doc.doc_id)

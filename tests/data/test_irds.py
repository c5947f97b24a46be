"""`irds:ID` inputs: a small local dataset registered with ir_datasets (no download) reads the
same as the files it was made from, through every reader, `Corpus` and the CLI."""

import json
import os
import uuid

import pytest

from rankt5_jax import cli
from rankt5_jax.data import formats, irds
from rankt5_jax.errors import ConfigError, InputFormatError

ir_datasets = pytest.importorskip("ir_datasets")

DOCS = {
    "d1": ("Alpha", "bako dite fuma"),
    "d2": ("", "lemo rasi tuvo"),
    "d3": ("Gamma title", "kezi fuma lemo bako"),
    "d4": ("", "x"),
}
QUERIES = {"q1": "fuma lemo", "q2": "tuvo", "q3": "kezi bako"}
QRELS = [("q1", "d3", 2), ("q1", "d1", 0), ("q2", "d2", 1), ("q3", "d3", 1)]
RUN = [("q1", "d3", 3.5), ("q1", "d1", 1.25), ("q2", "d2", 0.5), ("q3", "d4", -1.0)]


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """Files, and the same collection registered with ir_datasets as two ids (one with a run)."""
    from ir_datasets.datasets.beir import BeirTitleDoc
    from ir_datasets.formats import JsonlDocs, JsonlQueries, TrecQrels, TrecScoredDocs
    from ir_datasets.formats.base import GenericQuery
    from ir_datasets.util import LocalDownload

    root = tmp_path_factory.mktemp("irds")
    old_home = os.environ.get("IR_DATASETS_HOME")
    os.environ["IR_DATASETS_HOME"] = str(root / "home")  # nothing may land in ~/.ir_datasets
    corpus, queries = root / "corpus.jsonl", root / "queries.jsonl"
    qrels, run = root / "qrels.txt", root / "run.txt"
    corpus.write_text(
        "".join(json.dumps({"_id": d, "title": t, "text": x}) + "\n" for d, (t, x) in DOCS.items())
    )
    queries.write_text(
        "".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in QUERIES.items())
    )
    qrels.write_text("".join(f"{q} 0 {d} {g}\n" for q, d, g in QRELS))
    run.write_text("".join(f"{q} Q0 {d} {i} {s!r} x\n" for i, (q, d, s) in enumerate(RUN, 1)))
    docs = JsonlDocs(
        LocalDownload(corpus),
        doc_cls=BeirTitleDoc,
        mapping={"doc_id": "_id", "text": "text", "title": "title"},
    )
    base = f"rankt5-test-{uuid.uuid4().hex[:8]}"
    ir_datasets.registry.register(
        f"{base}/test",
        ir_datasets.Dataset(
            docs,
            JsonlQueries(
                LocalDownload(queries),
                query_cls=GenericQuery,
                mapping={"query_id": "_id", "text": "text"},
            ),
            TrecQrels(LocalDownload(qrels), {}),
            TrecScoredDocs(LocalDownload(run)),
        ),
    )
    ir_datasets.registry.register(f"{base}/docs-only", ir_datasets.Dataset(docs))
    yield {
        "id": f"irds:{base}/test",
        "docs_only": f"irds:{base}/docs-only",
        "corpus": str(corpus),
        "queries": str(queries),
        "qrels": str(qrels),
        "run": str(run),
    }
    if old_home is None:
        os.environ.pop("IR_DATASETS_HOME", None)
    else:
        os.environ["IR_DATASETS_HOME"] = old_home


def test_readers_equal_the_files(local):
    ident = local["id"]
    assert formats.read_queries(ident) == formats.read_queries(local["queries"]) == QUERIES
    assert formats.read_qrels(ident) == formats.read_qrels(local["qrels"])
    assert formats.read_qrels(ident)["q1"] == {"d3": 2, "d1": 0}
    assert formats.read_run(ident) == formats.read_run(local["run"])
    assert formats.read_run(ident)["q1"] == {"d3": 3.5, "d1": 1.25}
    streamed = list(formats.iter_corpus(ident))
    assert streamed == list(formats.iter_corpus(local["corpus"]))
    assert streamed[0] == (1, "d1", "Alpha", "bako dite fuma") and len(streamed) == 4
    lines = [text for _, _, text in formats.run_lines(ident)]
    assert lines[0] == "q1 Q0 d3 1 3.5 irds"
    # Readers that go line by line through files refuse an id in one line.
    with pytest.raises(InputFormatError, match="ir_datasets id where a file is read"):
        next(formats._lines(ident))


def test_corpus_looks_up_through_the_docs_store(local):
    corpus = formats.Corpus(local["id"])
    on_disk = formats.Corpus(local["corpus"])
    assert isinstance(corpus, formats.IrdsCorpus) and not isinstance(on_disk, formats.IrdsCorpus)
    assert len(corpus) == len(on_disk) == 4
    for docid in DOCS:
        assert docid in corpus
        assert corpus.get(docid) == on_disk.get(docid) == DOCS[docid]
        assert corpus.text(docid) == on_disk.text(docid)
    assert corpus.text("d3") == "Gamma title kezi fuma lemo bako"
    assert "nope" not in corpus
    with pytest.raises(KeyError):
        corpus.get("nope")
    assert sorted(corpus.ids()) == sorted(on_disk.ids())
    untitled = formats.Corpus(local["id"], include_title=False)
    assert untitled.text("d3") == "kezi fuma lemo bako"
    # The run reader checks ids against an irds corpus as against a file's.
    run = formats.read_run(local["run"], known_queries=QUERIES, corpus=corpus)
    assert run["q3"] == {"d4": -1.0}


def test_unknown_id_missing_entity_and_empty_id_are_one_line_errors(local):
    for reader in (formats.read_queries, formats.read_qrels, formats.read_run):
        with pytest.raises(ConfigError, match="unknown ir_datasets id 'no/such/dataset'"):
            reader("irds:no/such/dataset")
    with pytest.raises(ConfigError, match="provides no queries .it provides docs."):
        formats.read_queries(local["docs_only"])
    with pytest.raises(ConfigError, match="provides no scoreddocs"):
        formats.read_run(local["docs_only"])
    with pytest.raises(ConfigError, match="give an ir_datasets id"):
        formats.Corpus("irds:")
    # A run naming a query the irds queries do not know names the record.
    with pytest.raises(InputFormatError, match=r"/test:4: unknown query id 'q3'"):
        formats.read_run(local["id"], known_queries={"q1": "", "q2": ""})


def test_missing_package_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_irds(name, *args, **kwargs):
        if name == "ir_datasets":
            raise ImportError("No module named 'ir_datasets'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_irds)
    with pytest.raises(ConfigError, match=r"rankt5_jax\[irds\]"):
        irds.load("irds:beir/scifact/test")


def test_evaluate_cli_reads_irds_ids(local, capsys):
    assert cli.main(["evaluate", "--run", local["id"], "--qrels", local["id"], "--json"]) == 0
    from_ids = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert cli.main(["evaluate", "--run", local["run"], "--qrels", local["qrels"], "--json"]) == 0
    from_files = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert from_ids == from_files and from_ids["RR@10"] == pytest.approx((1 + 1 + 0) / 3)
    assert cli.main(["evaluate", "--run", "irds:no/such", "--qrels", local["qrels"]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown ir_datasets id" in err[0]


def test_prepare_streams_an_irds_run_with_an_irds_corpus(local):
    from rankt5_jax.data import prepare

    def listed(run, corpus):
        skips = formats.Skips()
        return list(prepare.stream_run(run, None, True, skips, QUERIES, formats.Corpus(corpus)))

    from_ids = listed(local["id"], local["id"])
    assert from_ids == listed(local["run"], local["corpus"])
    assert from_ids[0] == ("q1", [("d3", 3.5), ("d1", 1.25)])

"""BM25 on bm25s: our runs equal bm25s called directly, the index is saved and reused, the CLI
end to end, and bad inputs give one-line errors."""

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from rankt5_jax import cli
from rankt5_jax.data import formats, synthetic
from rankt5_jax.errors import ConfigError
from rankt5_jax.evaluation.measures import rank_documents
from rankt5_jax.retrieval import bm25

# English words with inflections (the stemmer merges them) and stopwords (Lucene's list).
_WORDS = (
    "run running runs ran runner cat cats dog dogs jump jumped jumping quick quickly house "
    "houses housing river rivers connect connected connection connections rank ranking ranked "
    "ranker retrieve retrieval retrieved index indexes indexing search searching searched"
).split()
_STOP = "the of and a to in is it that with for on be".split()


def _english(rng, count, low, high, stop_share=0.3):
    out = []
    for _ in range(count):
        n = int(rng.integers(low, high))
        words = [
            rng.choice(_STOP) if rng.random() < stop_share else rng.choice(_WORDS) for _ in range(n)
        ]
        out.append(" ".join(words))
    return out


@pytest.fixture(scope="module")
def collection():
    """The generated collection (titles) plus English-like documents and queries, queries of
    stopwords only and of unknown words, documents of stopwords only."""
    coll = synthetic.make_collection(num_queries=40, random_docs=100, seed=3, titles=True)
    corpus = dict(coll["corpus"])
    queries = dict(list(coll["queries"].items())[:25])
    rng = np.random.default_rng(0)
    for i, text in enumerate(_english(rng, 300, 3, 30)):
        title = _english(rng, 1, 1, 4, 0.0)[0] if i % 2 else ""
        corpus[f"e{i}"] = {"title": title, "text": text}
    corpus["e_stop"] = {"title": "", "text": "the of and a"}
    for i, text in enumerate(_english(rng, 25, 1, 5, 0.2)):
        queries[f"eq{i}"] = text
    queries["stop_only"] = "the of and"
    queries["unknown"] = "zzyzx qwertyuiop"
    return {"corpus": corpus, "queries": queries}


def _write(tmp_path, collection, kind):
    corpus_path = tmp_path / f"corpus.{kind}"
    with open(corpus_path, "w") as handle:
        for docid, doc in collection["corpus"].items():
            if kind == "jsonl":
                handle.write(json.dumps({"_id": docid, **doc}) + "\n")
            else:
                title = f"\t{doc['title']}" if doc["title"] else ""
                handle.write(f"{docid}\t{doc['text']}{title}\n")
    queries_path = tmp_path / "queries.tsv"
    queries_path.write_text("".join(f"{q}\t{t}\n" for q, t in collection["queries"].items()))
    return str(corpus_path), str(queries_path)


def _bm25s_direct(collection, k1, b, stopwords, stemmer):
    """bm25s as its README uses it: tokenize, index, retrieve every document of the corpus."""
    import bm25s
    import Stemmer

    stem = Stemmer.Stemmer("english") if stemmer == "english" else None
    words = "en" if stopwords == "en" else None
    docids = list(collection["corpus"])
    texts = [f"{d['title']} {d['text']}" for d in collection["corpus"].values()]
    retriever = bm25s.BM25(method="lucene", k1=k1, b=b)
    retriever.index(
        bm25s.tokenize(texts, stopwords=words, stemmer=stem, show_progress=False),
        show_progress=False,
    )
    qids = list(collection["queries"])
    tokens = bm25s.tokenize(
        [collection["queries"][q] for q in qids], stopwords=words, stemmer=stem, show_progress=False
    )
    docs, scores = retriever.retrieve(tokens, k=len(docids), show_progress=False)
    return {
        qid: {docids[i]: float(s) for i, s in zip(docs[row], scores[row]) if s > 0}
        for row, qid in enumerate(qids)
    }


@pytest.mark.parametrize(
    "stopwords, stemmer, k1, b, kind",
    [
        ("en", "english", 0.9, 0.4, "jsonl"),
        ("none", "none", 0.9, 0.4, "tsv"),
        ("en", "english", 1.6, 0.75, "tsv"),
    ],
)
def test_retrieve_equals_bm25s_direct(tmp_path, collection, stopwords, stemmer, k1, b, kind):
    corpus_path, queries_path = _write(tmp_path, collection, kind)
    expected = _bm25s_direct(collection, k1, b, stopwords, stemmer)
    settings = dict(k1=k1, b=b, stopwords=stopwords, stemmer=stemmer, verbose=False)
    full = tmp_path / "full.run"
    bm25.retrieve_files(corpus_path, queries_path, str(full), top_k=10**6, **settings)
    run = formats.read_run(str(full))
    empty = {q for q, docs in expected.items() if not docs}
    assert "unknown" in empty and set(run) == set(expected) - empty
    if stopwords == "en":
        assert "stop_only" in empty
    for qid, docs in run.items():
        assert set(docs) == set(expected[qid]), qid
        assert max(abs(docs[d] - expected[qid][d]) for d in docs) < 1e-5
        assert all(docs[d] == np.float32(docs[d]) for d in docs)  # float32 values, exactly

    top = tmp_path / "top10.run"
    bm25.retrieve_files(corpus_path, queries_path, str(top), top_k=10, **settings)
    cut = formats.read_run(str(top))
    ties_at_cut = 0
    for qid, docs in cut.items():
        ranking = rank_documents(expected[qid])
        assert rank_documents(docs) == ranking[:10]  # ties across the cut: docid descending
        if len(ranking) > 10:
            ties_at_cut += expected[qid][ranking[9]] == expected[qid][ranking[10]]
    assert ties_at_cut > 0  # the tie rule was exercised


def test_bm25_run_options_ties_and_zero_scores():
    corpus = {
        "d1": {"title": "", "text": "cats running"},
        "d2": {"title": "the", "text": "dog jumps"},
        **{f"t{i}": {"title": "", "text": "bird bird"} for i in (8, 9, 10, 11)},
    }
    queries = {"q1": "cat runs", "q2": "the", "q3": "bird", "q4": "fish"}
    run = bm25.bm25_run(corpus, queries, top_k=2)
    assert list(run["q1"]) == ["d1"]  # stemmed: cat(s), run(ning/s); zero scores left out
    assert run["q2"] == {} and run["q4"] == {}  # a stopword only; a word in no document
    assert list(run["q3"]) == ["t9", "t8"]  # four equal scores: docid descending ("t9" > "t11")
    plain = bm25.bm25_run(corpus, queries, top_k=2, stopwords="none", stemmer="none")
    assert plain["q1"] == {} and list(plain["q2"]) == ["d2"]
    index = bm25.BM25Index.build(
        list(corpus), [f"{d['title']} {d['text']}" for d in corpus.values()]
    )
    assert index.search(queries, top_k=2) == run
    with pytest.raises(ConfigError, match="duplicate docid 'a'"):
        bm25.BM25Index.build(["a", "b", "a"], ["x y", "y z", "z x"])
    with pytest.raises(ConfigError, match="no document has a word"):
        bm25.bm25_run({"d1": {"text": "the of"}}, queries)
    with pytest.raises(ConfigError, match="the corpus is empty"):
        bm25.bm25_run({}, queries)


def test_index_is_saved_and_reused(tmp_path, collection, monkeypatch, capsys):
    corpus_path, queries_path = _write(tmp_path, collection, "jsonl")
    index_dir = tmp_path / "index"
    first, second = tmp_path / "first.run", tmp_path / "second.run"
    bm25.retrieve_files(corpus_path, queries_path, str(first), top_k=20, index_dir=str(index_dir))
    meta = bm25.read_meta(str(index_dir))
    assert meta["documents"] == len(collection["corpus"]) and meta["settings"]["k1"] == 0.9
    stamps = {name: os.stat(index_dir / name).st_mtime_ns for name in os.listdir(index_dir)}

    def no_build(*args, **kwargs):
        raise AssertionError("the index was rebuilt")

    monkeypatch.setattr(bm25, "build_from_file", no_build)
    bm25.retrieve_files(corpus_path, queries_path, str(second), top_k=20, index_dir=str(index_dir))
    assert second.read_text() == first.read_text()
    assert stamps == {n: os.stat(index_dir / n).st_mtime_ns for n in os.listdir(index_dir)}
    assert "loaded the BM25 index" in capsys.readouterr().err
    monkeypatch.undo()

    other = tmp_path / "other.run"  # other settings: rebuilt in place
    bm25.retrieve_files(
        corpus_path, queries_path, str(other), top_k=20, k1=1.5, index_dir=str(index_dir)
    )
    assert "rebuilding the BM25 index" in capsys.readouterr().err
    assert bm25.read_meta(str(index_dir))["settings"]["k1"] == 1.5
    assert other.read_text() != first.read_text()
    with open(corpus_path, "a") as handle:  # another corpus (same path): rebuilt
        handle.write(json.dumps({"_id": "new", "title": "", "text": "cats cats cats"}) + "\n")
    bm25.retrieve_files(
        corpus_path, queries_path, str(other), top_k=20, k1=1.5, index_dir=str(index_dir)
    )
    assert "another corpus file" in capsys.readouterr().err
    index = bm25.BM25Index.load(str(index_dir))
    assert len(index) == len(collection["corpus"]) + 1
    assert "new" in index.search({"q": "cats"}, top_k=5)["q"]


def test_cli_end_to_end_without_jax(tmp_path, collection):
    corpus_path, queries_path = _write(tmp_path, collection, "jsonl")
    output = tmp_path / "cli.run"
    code = (
        "import sys; from rankt5_jax import cli; rc = cli.main(sys.argv[1:]); "
        "assert 'jax' not in sys.modules and 'tensorflow' not in sys.modules, 'heavy import'; "
        "sys.exit(rc)"
    )
    args = ["retrieve", "--method", "bm25", "--corpus", corpus_path, "--queries", queries_path]
    args += ["--output", str(output), "--top_k", "15", "--k1", "1.2", "--b", "0.5"]
    args += ["--bm25_index", str(tmp_path / "index"), "--stemmer", "none"]
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "queries/s" in proc.stderr and "4 of 52 queries retrieved nothing" in proc.stderr
    library = tmp_path / "library.run"
    bm25.retrieve_files(
        corpus_path,
        queries_path,
        str(library),
        top_k=15,
        k1=1.2,
        b=0.5,
        stemmer="none",
        verbose=False,
    )
    assert output.read_text() == library.read_text()
    lines = output.read_text().splitlines()
    assert lines[0].split()[1::2] == ["Q0", "1", "bm25"] and len(lines) > 400


def _error(args, capsys):
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("rankt5: error: ") and err.count("\n") == 1, err
    return err


def test_bad_inputs_give_one_line_errors(tmp_path, collection, capsys):
    corpus_path, queries_path = _write(tmp_path, collection, "jsonl")
    out = str(tmp_path / "out.run")
    base = ["retrieve", "--output", out]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    err = _error(base + ["--corpus", str(empty), "--queries", queries_path], capsys)
    assert f"{empty}: file is empty" in err
    stop = tmp_path / "stop.tsv"
    stop.write_text("d1\tthe of\nd2\tand a\n")
    err = _error(base + ["--corpus", str(stop), "--queries", queries_path], capsys)
    assert "no document has a word to index" in err
    blank_query = tmp_path / "blank.tsv"
    blank_query.write_text("q1\tcats\nq2\t  \n")
    err = _error(base + ["--corpus", corpus_path, "--queries", str(blank_query)], capsys)
    assert f"{blank_query}:2: empty text for id 'q2'" in err
    csv = tmp_path / "corpus.csv"
    csv.write_text("id,text\nd1,cats\n")
    err = _error(base + ["--corpus", str(csv), "--queries", queries_path], capsys)
    assert f"{csv}:1: unknown file format" in err
    packed = tmp_path / "corpus.jsonl.gz"
    with gzip.open(packed, "wt") as handle:
        handle.write('{"_id": "d1", "text": "cats"}\n')
    err = _error(base + ["--corpus", str(packed), "--queries", queries_path], capsys)
    assert "unknown file format (gzip data)" in err
    dup = tmp_path / "dup.tsv"
    dup.write_text("d1\tcats\nd2\tdogs\nd1\trivers\n")
    err = _error(base + ["--corpus", str(dup), "--queries", queries_path], capsys)
    assert f"{dup}:3: duplicate id: document 'd1'" in err
    err = _error(base + ["--corpus", corpus_path, "--queries", queries_path, "--b", "1.5"], capsys)
    assert "b must be in [0, 1]" in err
    err = _error(
        base + ["--corpus", corpus_path, "--queries", queries_path, "--top_k", "0"], capsys
    )
    assert "top_k must be a positive integer" in err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    args = ["--corpus", corpus_path, "--queries", queries_path, "--bm25_index", str(foreign)]
    err = _error(base + args, capsys)
    assert "holds other files (notes.txt) and no BM25 index" in err
    assert (foreign / "notes.txt").read_text() == "mine"

    # A query of stopwords only is not an error: it gets no results, counted on stderr.
    queries = tmp_path / "stopq.tsv"
    queries.write_text("q1\tcats running\nq2\tthe of and\n")
    assert cli.main(base + ["--corpus", corpus_path, "--queries", str(queries)]) == 0
    assert "1 of 2 queries retrieved nothing" in capsys.readouterr().err
    assert set(formats.read_run(out)) == {"q1"}

"""Progress that tells the truth (`data.progress`): the ETA on a fake clock, the lines off a
terminal and on one, and the lines of a real `rankt5 rerank` (pairwise and FiT5) with stderr
captured: pairs counted from the first batch, monotone, the exact total once, no carriage
return, a rate, and an ETA within 2x of the time that was left."""

import io
import json
import os
import subprocess
import sys

import pytest

from rankt5_jax.data import formats, synthetic
from rankt5_jax.data import progress as progress_lib
from rankt5_jax.retrieval import bm25

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def _lines(text: str) -> list[dict]:
    parsed = [progress_lib.parse_line(line) for line in text.splitlines()]
    return [p for p in parsed if p is not None]


@pytest.mark.parametrize("startup", [0.0, 30.0])
@pytest.mark.parametrize("step", [1, 7, 250])
def test_eta_is_within_2x_after_a_tenth_of_the_work_at_a_steady_rate(startup, step):
    """A steady 50 units/s after a start-up (a compilation) of `startup` seconds: every ETA
    shown from 10% on is within 2x of the time actually left (here: equal to it)."""
    clock, stream = FakeClock(), io.StringIO()
    total, rate = 5000, 50.0
    bar = progress_lib.Progress(total, "job", "pairs", stream=stream, clock=clock, interval=0)
    clock.now += startup
    finished_at = clock.now + total / rate
    checked = 0
    while bar.done < total:
        count = min(step, total - bar.done)
        clock.now += count / rate
        bar.update(count)
        eta = bar.eta()
        if bar.done >= total / 10 and bar.done < total:
            truth = finished_at - clock.now
            assert eta is not None and truth / 2 <= eta <= 2 * truth
            assert eta == pytest.approx(truth, rel=1e-6)
            checked += 1
    bar.close()
    assert checked > 0
    lines = _lines(stream.getvalue())
    assert [line["done"] for line in lines] == sorted(line["done"] for line in lines)
    assert [line["done"] for line in lines].count(total) == 1
    assert lines[-1]["took"] == pytest.approx(startup + total / rate, abs=0.1)
    for line in lines[2:-1]:  # from the second update on: a rate and an ETA
        assert line["rate"] == pytest.approx(rate, rel=0.01)
        assert line["eta"] == pytest.approx((total - line["done"]) / rate, rel=0.02, abs=0.06)


def test_a_stall_early_on_fades_from_the_eta():
    """A slow first piece (compiling) is left out of the rate: the ETA at 10% is within 2x."""
    clock, stream = FakeClock(), io.StringIO()
    bar = progress_lib.Progress(1000, "job", "pairs", stream=stream, clock=clock, interval=0)
    clock.now += 60  # start-up and the first batch's compilation
    bar.update(10)
    for _ in range(9):  # then 100 pairs/s
        clock.now += 0.1
        bar.update(10)
    assert bar.done == 100
    assert bar.eta() == pytest.approx(9.0)  # 900 pairs at 100/s; the 60 s are not counted
    assert bar.rate() == pytest.approx(100.0)


def test_pauses_the_caller_names_stay_out_of_the_rate():
    """A compilation in the middle (a new shape), reported with the update after it: the rate
    and the ETA are the steady ones, the elapsed time the true one."""
    clock, stream = FakeClock(), io.StringIO()
    bar = progress_lib.Progress(1000, "job", "pairs", stream=stream, clock=clock, interval=0)
    clock.now += 5
    bar.update(10, paused=5)  # before the first update: not counted twice
    for step in range(1, 30):
        clock.now += 0.1 + (20 if step == 10 else 0)
        bar.update(10, paused=20 if step == 10 else 0)
    assert bar.rate() == pytest.approx(100.0)
    assert bar.eta() == pytest.approx(7.0)  # 700 pairs at 100/s
    assert bar.elapsed() == pytest.approx(5 + 2.9 + 20)


def test_the_ranker_reports_its_compilations_with_the_pairs(files):
    from rankt5_jax import Ranker

    ranker = Ranker.load(files["encdec"], max_length=64, batch_size=4)
    short = ranker.tokenize("a query", ["a passage"] * 16)  # one padded length: 4 batches
    long = ranker.tokenize("a query", [" ".join(["passage words"] * 40)] * 8)  # another: 2
    calls = []
    ranker.score_token_lists([short, long], on_scored=lambda n, s: calls.append((n, s)))
    assert [n for n, _ in calls] == [4] * 6
    # Three batches are in flight: the first read back carries the first shape's compilation
    # (before the first update, which a Progress leaves out anyway); the second shape's
    # compiles as batch 5 is dispatched, before batch 3 is read back, and comes with it.
    assert calls[0][1] > 0.05 and calls[2][1] > 0.05
    assert calls[1][1] == 0 and all(s == 0 for _, s in calls[3:])
    calls.clear()
    ranker.score_token_lists([long, short], on_scored=lambda n, s: calls.append((n, s)))
    assert sum(n for n, _ in calls) == 24 and all(s == 0 for _, s in calls)  # compiled before


def test_lines_off_a_terminal_are_whole_throttled_and_end_once():
    clock, stream = FakeClock(), io.StringIO()
    bar = progress_lib.Progress(100, "rerank", "pairs", stream=stream, clock=clock, interval=5)
    for _ in range(100):
        clock.now += 0.5
        bar.update(1)
    bar.close()
    bar.close()  # nothing more
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert all(progress_lib.parse_line(line) for line in lines)
    # the start, the first update, then one line per 5 s of 50 s, and the end, once
    assert 10 <= len(lines) <= 14
    assert lines[0].startswith("rerank: 0/100 pairs (0%)")
    assert lines[1].startswith("rerank: 1/100 pairs (1%)")
    assert sum("(100%)" in line for line in lines) == 1
    assert lines[-1] == "rerank: 100/100 pairs (100%), 2 pairs/s, done in 50.0s"


def test_a_bar_closed_short_of_its_total_says_where_it_stopped_and_a_resumed_one_where_it_began():
    clock, stream = FakeClock(), io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        with progress_lib.closing(
            progress_lib.Progress(10, "index", "passages", stream=stream, clock=clock)
        ) as bar:
            clock.now += 1
            bar.update(3)
            raise KeyboardInterrupt
    lines = stream.getvalue().splitlines()
    assert lines[-1].startswith("index: 3/10 passages (30%)") and lines[-1].endswith(", stopped")
    assert "100%" not in stream.getvalue()
    # resumed: the total and where it starts; the done work does not inflate the rate
    stream = io.StringIO()
    bar = progress_lib.Progress(
        1000, "rerank", "pairs", initial=900, stream=stream, clock=clock, interval=0
    )
    assert stream.getvalue().startswith("rerank: 900/1,000 pairs (90%)")
    assert "(resumed at 900)" in stream.getvalue()
    for _ in range(5):
        clock.now += 1
        bar.update(10)
    assert bar.rate() == pytest.approx(10.0)
    assert bar.eta() == pytest.approx(5.0)


def test_on_a_terminal_the_line_is_redrawn_in_place():
    clock, stream = FakeClock(), io.StringIO()
    bar = progress_lib.Progress(4, "search", "queries", stream=stream, clock=clock, terminal=True)
    for _ in range(4):
        clock.now += 1
        bar.update(1)
    bar.close()
    text = stream.getvalue()
    assert text.startswith("\rsearch: 0/4 queries (0%)") and text.endswith("\n")
    assert text.count("\n") == 1 and text.count("(100%)") == 1


def test_durations_round_trip():
    for seconds in (0.0, 8.04, 59.9, 125, 3723):
        text = progress_lib.format_duration(seconds)
        assert progress_lib.parse_duration(text) == pytest.approx(seconds, abs=0.51)
    assert progress_lib.format_duration(3723) == "1h02m03s"
    assert progress_lib.format_duration(125) == "2m05s"


# -- a real re-ranking, stderr captured ------------------------------------------------------
TOP_K = 20


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_model_dir):
    """Tiny pairwise and FiT5 model directories; 100 queries x 20 candidates (BM25's, then
    others below them), long passages: every pair is cut to --max_length, so one padded shape
    (one compilation, before the first batch is read back) and a steady rate after it."""
    out = tmp_path_factory.mktemp("progress")
    collection = synthetic.make_collection(num_queries=100, doc_words=200, seed=5)
    found = bm25.bm25_run(collection["corpus"], collection["queries"], top_k=TOP_K)
    docids = sorted(collection["corpus"])
    run = {}
    for number, (qid, docs) in enumerate(found.items()):
        others = [d for d in docids[number:] + docids[:number] if d not in docs]
        ranked = list(docs) + others[: TOP_K - len(docs)]
        run[qid] = {docid: float(TOP_K - rank) for rank, docid in enumerate(ranked)}
    paths = synthetic.write_collection(str(out / "data"), collection, run)
    for variant in ("encdec", "fit5"):
        paths[variant] = tiny_model_dir(variant, str(out / variant))
    return paths


@pytest.mark.parametrize("variant", ["encdec", "fit5"])
def test_rerank_progress_off_a_terminal_counts_pairs_truthfully(files, tmp_path, variant):
    # This machine is shared: another process may slow this one down for seconds at any moment,
    # which no ETA foresees. A run whose ETAs miss is run once more; both missing fails.
    misses = []
    for attempt in range(2):
        missed = _rerank_with_progress(files, str(tmp_path / f"out{attempt}.run"), variant)
        if missed is None:
            return
        misses.append(missed)
    raise AssertionError(f"ETAs out by more than 2x in both runs: {misses}")


def _rerank_with_progress(files, output: str, variant: str) -> str | None:
    """Runs `rankt5 rerank` with stderr captured and checks its progress lines; -> None, or
    what was wrong with its ETAs."""
    command = [sys.executable, "-m", "rankt5_jax", "rerank", "--checkpoint", files[variant]]
    command += ["--queries", files["queries"], "--corpus", files["corpus"], "--run", files["run"]]
    command += ["--output", output, "--top_k", str(TOP_K), "--max_length", "160"]
    # Batches of 8 pairs (FiT5: one list of 20 a call); chunks of 200 pairs.
    command += ["--batch_size", "8" if variant == "encdec" else "20", "--chunk_pairs", "200"]
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    env[progress_lib.ENV_SECONDS] = "0"  # a line per update
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "\r" not in done.stderr
    pairs = sum(len(docs) for docs in formats.read_run(files["run"]).values())
    assert pairs == 100 * TOP_K
    lines = [line for line in _lines(done.stderr) if line["desc"] == "rerank"]
    assert lines and all(line["unit"] == "pairs" and line["total"] == pairs for line in lines)
    counts = [line["done"] for line in lines]
    assert counts == sorted(counts) and counts[0] == 0 and counts[-1] == pairs
    assert counts.count(pairs) == 1 and sum("(100%)" in s for s in done.stderr.splitlines()) == 1
    per_update = 8 if variant == "encdec" else TOP_K  # a batch's pairs, not a chunk's
    assert counts[1] == per_update and len(lines) == pairs // per_update + 1
    took = lines[-1]["took"]
    assert lines[-1]["rate"] is not None
    # From 10% of the pairs on, the ETA is within 2x of the time that was in fact left, on 80%
    # of the lines (a pause of the machine puts the lines before it out), leaving out the last
    # half second (too short to time). Counting the compilation in the rate would put every
    # line out by more than 2x.
    within, checked = 0, 0
    for line in lines[2:-1]:
        assert line["rate"] is not None and line["eta"] is not None
        left = took - line["elapsed"]
        if line["done"] >= pairs / 10 and left >= 0.5:
            within += left / 2 <= line["eta"] <= 2 * left
            checked += 1
    # (A machine that scores all of it in under a second leaves too few lines to time; the fake
    # clock tests hold the ETA there.)
    if checked >= 10 and within < 0.8 * checked:
        return f"{within} of {checked} lines within 2x, done in {took}s"
    return None


def _checked(lines: list[dict], desc: str, total: int) -> list[int]:
    """The counts of `desc`'s lines: all of `total`, monotone, from 0 to `total` once."""
    counts = [line["done"] for line in lines if line["desc"] == desc]
    assert counts and all(line["total"] == total for line in lines if line["desc"] == desc)
    assert counts == sorted(counts) and counts[0] == 0
    assert counts[-1] == total and counts.count(total) == 1
    return counts


def test_index_search_and_bm25_report_through_the_same_lines(vocab, tmp_path, capsys, monkeypatch):
    from rankt5_jax.retrieval import token_index, xtr_encoder, xtr_search

    monkeypatch.setenv(progress_lib.ENV_SECONDS, "0")
    collection = synthetic.make_collection(num_queries=40, seed=3, titles=True)
    corpus = tmp_path / "corpus.jsonl"
    with open(corpus, "w") as handle:
        for docid, doc in collection["corpus"].items():
            handle.write(json.dumps({"_id": docid, **doc}) + "\n")
    encoder = xtr_encoder.table_encoder(vocab, dim=16, max_length=48)
    settings = token_index.IndexSettings(
        chunk_passages=64, shard_passages=200, kmeans_iterations=4, train_passages=300
    )
    capsys.readouterr()
    token_index.build_index(str(corpus), str(tmp_path / "idx"), encoder, settings, progress=True)
    searcher = xtr_search.Searcher(str(tmp_path / "idx"), exact=True)
    queries = collection["queries"]
    xtr_search.search(searcher, encoder, queries, top_k=5, batch_queries=8, progress=True)
    index = bm25.build_from_file(str(corpus), progress=True)
    list(index.iter_search(queries, top_k=5, show_progress=True))
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = _lines(err)
    passages = len(collection["corpus"])
    sample = _checked(lines, "index: training sample", 300)
    assert sample[1] == 64  # a chunk of the sample at a time
    assert "index: training the compression (ivfsq8" in err  # said before k-means runs
    assert _checked(lines, "index", passages)[1] == 64
    assert _checked(lines, "search", len(queries))[1] == 8
    assert _checked(lines, "BM25 search", len(queries))[1] == 1
    _checked(lines, "BM25 indexing: reading and tokenising", os.path.getsize(corpus))


def test_prepare_counts_the_run_it_has_read(tmp_path, capsys, monkeypatch):
    from rankt5_jax.data import prepare

    monkeypatch.setenv(progress_lib.ENV_SECONDS, "0")
    collection = synthetic.make_collection(num_queries=12, seed=4)
    run = bm25.bm25_run(collection["corpus"], collection["queries"], top_k=8)
    paths = synthetic.write_collection(str(tmp_path / "data"), collection, run)
    capsys.readouterr()
    args = (paths["queries"], paths["corpus"], paths["qrels"], paths["run"])
    prepare.prepare(*args, str(tmp_path / "out"), top_k=5, num_shards=1, verbose=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    counts = _checked(_lines(err), "prepare[train]: run", os.path.getsize(paths["run"]))
    assert len(counts) == len(run) + 1  # the total, then a line per query once written

"""UR2N's unified regimen (`smoke_cpu_ur2n_recipe.gin`): the training lists' candidates mix
BM25's run with another run (the model's own XTR retrieval) by `smoke.merge_runs`, rank by rank.

Whether the recipe's retrieve + re-rank beats its own retrieval is measured by
`bench/ur2n_recipe_bench.py`, not asserted: at the budgets measured it does not (bench/RESULTS.md
"UR2N recipe")."""

import json
import os


def test_merge_runs_interleaves_rank_by_rank(tmp_path):
    from rankt5_jax.data import formats
    from rankt5_jax.training import smoke

    first, second = tmp_path / "a.run", tmp_path / "b.run"
    formats.write_trec_run(str(first), {"q1": {"a": 3.0, "b": 2.0, "c": 1.0}, "q2": {"x": 1.0}})
    formats.write_trec_run(str(second), {"q1": {"b": 9.0, "d": 8.0, "e": 7.0}, "q3": {"z": 1.0}})
    smoke.merge_runs(str(first), str(second), str(tmp_path / "m.run"), top_k=2)
    merged = formats.read_run(str(tmp_path / "m.run"))
    assert list(merged) == ["q1", "q2"]  # the queries of the first run
    ranked = sorted(merged["q1"], key=lambda d: -merged["q1"][d])
    assert ranked == ["a", "b", "d"]  # a (1st), b (2nd's 1st), b again skipped, d; c, e cut
    assert list(merged["q2"]) == ["x"]


def test_smoke_data_takes_a_second_run_into_the_training_candidates(tmp_path):
    """`smoke_data(train_run=...)` (the recipe gin's TRAIN_RUN) rewrites the data with each
    training query's candidates = BM25's top 30 and the run's top 30, interleaved."""
    import tensorflow as tf

    from rankt5_jax.data import formats, prepare
    from rankt5_jax.training import smoke

    data = str(tmp_path / "data")
    info = smoke.smoke_data(data, num_queries=40, dev_queries=8)
    bm25 = formats.read_run(info["train"]["run"])
    every = [json.loads(line)["_id"] for line in open(info["train"]["corpus"])]
    other = {  # 30 passages per query that BM25's top 30 does not hold, in a known order
        qid: {d: float(-i) for i, d in enumerate([d for d in every if d not in docs][:30])}
        for qid, docs in bm25.items()
    }
    formats.write_trec_run(str(tmp_path / "other.run"), other)
    other_run = str(tmp_path / "other.run")
    mixed = smoke.smoke_data(data, num_queries=40, dev_queries=8, train_run=other_run)
    assert mixed["train_run"] == other_run
    pattern = os.path.join(mixed["records"], "train.tfrecord-*")
    seen = 0
    for raw in tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(pattern))):
        example = tf.io.parse_single_example(raw, prepare.feature_description())
        qid = example["qid"].numpy().decode()
        ids = [x.decode() for x in example["cand_ids"].numpy()]
        first = sorted(bm25[qid], key=lambda d: -bm25[qid][d])[:30]
        assert set(first) | set(other[qid]) <= set(ids)  # both runs' candidates, positives too
        seen += 1
    assert seen > 0
    again = smoke.smoke_data(data, num_queries=40, dev_queries=8)  # the plain flavour again
    assert again["train_run"] is None


def test_smoke_data_takes_training_candidates_from_a_deeper_bm25_list(tmp_path):
    """`smoke_data(train_depth=N)` (RankT5's recipe: negatives from a deep first-stage list):
    the training queries' records hold BM25's top N, the dev run stays the top `top_k`."""
    import tensorflow as tf

    from rankt5_jax.data import formats, prepare
    from rankt5_jax.training import smoke

    info = smoke.smoke_data(str(tmp_path / "d"), num_queries=40, dev_queries=8, train_depth=60)
    assert info["train_depth"] == 60
    train_run, dev_run = (
        formats.read_run(info["train"]["run"]),
        formats.read_run(info["dev"]["run"]),
    )
    assert max(map(len, train_run.values())) > 30  # BM25 matches more than 30 passages
    assert max(map(len, dev_run.values())) <= 30
    pattern = os.path.join(info["records"], "train.tfrecord-*")
    lengths = []
    for raw in tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(pattern))):
        example = tf.io.parse_single_example(raw, prepare.feature_description())
        qid = example["qid"].numpy().decode()
        ids = {x.decode() for x in example["cand_ids"].numpy()}
        assert set(train_run[qid]) <= ids  # every one of the deep list's candidates
        lengths.append(len(ids))
    assert max(lengths) > 30


def test_smoke_data_rewrites_a_folder_written_with_another_vocabulary_size(tmp_path):
    """The vocabulary's size is part of the data's flavour: a folder written with 600 pieces is
    not reused for a call asking 200 (the records' token ids would belong to the other model)."""
    import sentencepiece as spm

    from rankt5_jax.training import smoke

    folder = str(tmp_path / "d")
    sizes = []
    for vocab_size in (600, 200, 200):
        info = smoke.smoke_data(folder, num_queries=40, dev_queries=8, vocab_size=vocab_size)
        assert info["vocab_size"] == vocab_size
        sizes.append(spm.SentencePieceProcessor(model_file=info["vocab"]).get_piece_size())
    assert sizes[0] > sizes[1] == sizes[2], sizes

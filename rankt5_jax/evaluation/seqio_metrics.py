"""seqio evaluation (t5x eval.py): whole-set metrics from per-query score lists."""

from __future__ import annotations

from rankt5_jax.evaluation.measures import evaluate_run


def seqio_postprocess(output, example=None, is_target: bool = False):
    """seqio `postprocess_fn` of evaluation tasks: targets become `{qid, docids, labels}` read
    from the example's features; predictions (scores) pass through."""
    if not is_target:
        return output

    def text(value):
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    mask = [bool(m) for m in example["mask"]]
    return {
        "qid": text(example["qid"]),
        "docids": [text(d) for d, m in zip(example["docids"], mask) if m],
        "labels": [int(g) for g, m in zip(example["label"], mask) if m],
    }


def seqio_ranking_metric(targets, scores) -> dict[str, float]:
    """seqio score metric: RR@10, nDCG@5, nDCG@10, AP per query over the whole evaluation set
    (not per batch). `scores` holds one `[L]` score list per query, aligned with its docids."""
    run, qrels = {}, {}
    for target, query_scores in zip(targets, scores):
        docids = target["docids"]
        run[target["qid"]] = {d: float(s) for d, s in zip(docids, query_scores)}
        qrels[target["qid"]] = {d: g for d, g in zip(docids, target["labels"]) if g != 0}
    return evaluate_run(run, qrels)

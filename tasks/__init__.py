"""seqio task registrations for RankT5's data sets (gin-callable; paths come from gin).

Each function registers its task over records written by `rankt5 prepare` and returns the task
name, so a gin file says e.g. `TRAIN_TASK = @tasks.msmarco_passage()`.

| function           | data                                            | defaults (paper 5.1/5.2)         |
|--------------------|-------------------------------------------------|----------------------------------|
| `msmarco_passage`  | MS MARCO passage train/dev + retriever top-1000 | m=36, eval on `dev`              |
| `natural_questions`| NQ (DPR layout or BEIR layout) + retriever run  | m=36, eval on `dev`              |
| `beir`             | a BEIR dataset with a user-supplied BM25 run    | zero-shot eval on `test`         |
| `local_files`      | any prepared records                            | as configured                    |
| `msmarco_tfds`     | TFDS `huggingface:ms_marco/v2.1` (Rax T5X example source) | lists of the 10 passages |

The prepared-record tasks take `register_prepared_task`'s keywords, FiT5's among them:
`features=` (the `FeatureConfig` fields: FiT5's template with the first-stage score as the
feature; give the model, `trainer.make_model.features`, the same, through one gin macro) and
`negatives="top"` (FiT5's lists: the top-ranked negatives). See experiments/msmarco_fit5*.gin.
"""

from __future__ import annotations

import gin
from rankt5_jax.data.tasks_lib import register_msmarco_tfds_task, register_prepared_task


def _register(prefix, data_dir, vocab_path, mode, train_split, eval_split, **kwargs):
    split = train_split if mode == "train" else eval_split
    return register_prepared_task(
        f"{prefix}_{mode}", data_dir, vocab_path, mode=mode, splits=(split,), **kwargs
    )


@gin.configurable
def msmarco_passage(data_dir=gin.REQUIRED, vocab_path=gin.REQUIRED, mode="train", **kwargs) -> str:
    return _register("msmarco_passage", data_dir, vocab_path, mode, "train", "dev", **kwargs)


@gin.configurable
def natural_questions(
    data_dir=gin.REQUIRED, vocab_path=gin.REQUIRED, mode="train", **kwargs
) -> str:
    return _register("natural_questions", data_dir, vocab_path, mode, "train", "dev", **kwargs)


@gin.configurable
def beir(dataset=gin.REQUIRED, data_dir=gin.REQUIRED, vocab_path=gin.REQUIRED, **kwargs) -> str:
    return register_prepared_task(
        f"beir_{dataset}", data_dir, vocab_path, mode="eval", splits=("test",), **kwargs
    )


@gin.configurable
def local_files(name=gin.REQUIRED, data_dir=gin.REQUIRED, vocab_path=gin.REQUIRED, **kwargs) -> str:
    return register_prepared_task(name, data_dir, vocab_path, **kwargs)


@gin.configurable
def msmarco_tfds(vocab_path=gin.REQUIRED, **kwargs) -> str:
    return register_msmarco_tfds_task(vocab_path=vocab_path, **kwargs)

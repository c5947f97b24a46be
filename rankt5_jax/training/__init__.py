"""Training, split as T5X splits it.

`setup` (gin `trainer.make_model`; the seqio train/eval streams), `optimizers` (gin
`trainer.make_optimizer`), `train_state` (the sharded state, fresh or abstract to restore into),
`train_step` (the compiled, donated step), `dev_eval` (dev re-ranking with the `Ranker`), `train`
(the loop, gin `trainer.train`), `gin_flags` (`rankt5 train`: flags checked against the gin
files), `smoke` (generated data for the smoke configs and the demo).

gin names are stable across the package layout: `trainer.train`, `trainer.make_model`,
`trainer.make_optimizer`, `partitioning.Partitioner`, `smoke.*`, `tasks_lib.*`, `tasks.*`.

May import: every stage below it: `errors`, `evaluation`, `data`, `modeling`, `checkpoints`,
`retrieval`, `inference`.
"""

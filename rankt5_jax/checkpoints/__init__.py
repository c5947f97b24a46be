"""Checkpoints: our model directories (orbax), Hugging Face and T5X import and export, the FiT5
authors' PyTorch checkpoints, loading any of them.

`model_dir` (spec, vocabulary, orbax save/restore of the training state, `load_model_dir`),
`formats` (Hugging Face safetensors and T5X msgpack/zarr/orbax, config inference), `loading`
(`load_checkpoint`: any kind -> spec + params; `load_pretrained` for `init_checkpoint`),
`fit5` (the FiT5 authors' state dicts -> params + spec), `convert` (`rankt5 convert`). Both serving and training load through here.

May import: `errors`, `evaluation`, `data`, `modeling`.
"""

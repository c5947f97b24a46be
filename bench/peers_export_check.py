"""Our Hugging Face exports (`rankt5 convert --to hf`) in the peers' own classes: Lightning IR
(`CrossEncoderModule` over the export, RankT5-EncDec as its `rank` strategy, monoT5 as `mono`,
RankT5-Enc on a `T5EncoderModel` backbone) and pyterrier-t5 (`MonoT5ReRanker`), each scoring the
passages through its own tokenizer and template, against `Ranker.score` on the model directory
the export came from.

    make bench-peers           # builds .venv-peers (and runs bench/peers_bench.py)
    python bench/peers_export_check.py --peers_python .venv-peers/bin/python \
        --output bench/peers_export_results.json

Model directories of random T5-small weights (v1.0, and v1.1 for EncDec) are written with our
model-directory writer, exported with `rankt5 convert --to hf`, and read by the peers from the
export alone (config.json, model.safetensors, spiece.model, tokenizer files). The export records
the model's spec (`rankt5_spec` in config.json); the peers' heads are set from it the way
Lightning IR maps published T5 re-rankers (`register_external_models.py`: a post-load callback
per checkpoint), and pyterrier-t5 needs nothing (it looks up `true`/`false` itself).

The vocabulary is the one `bench/peers_bench.py` trains (T5's pieces that the peers name,
T5's 100 extra ids), so Lightning IR's T5 template (`▁ Query : ... ▁Document : ...`) is built
from pieces the vocabulary has.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# name -> (variant, T5 size)
MODELS = {
    "encdec": ("encdec", "t5_1_0_small"),
    "encdec_v1_1": ("encdec", "t5_1_1_small"),
    "enc": ("enc", "t5_1_0_small"),
    "monot5": ("monot5", "t5_1_0_small"),
}


# ------------------------------------------------------------------------------------------------
# The worker (runs in .venv-peers: torch and the peers only)
# ------------------------------------------------------------------------------------------------


def lightning_ir_module(export: str):
    """A Lightning IR `CrossEncoderModule` over one of our exports, its head set from the spec
    recorded in config.json (Lightning IR's T5 head scales the state by d_model^-0.5 first)."""
    import torch
    from lightning_ir import CrossEncoderModule
    from lightning_ir.base.external_model_hub import POST_LOAD_CALLBACKS
    from lightning_ir.models import MonoConfig
    from safetensors.torch import load_file
    from transformers import T5EncoderModel

    with open(os.path.join(export, "config.json")) as handle:
        hf = json.load(handle)
    variant, spec = hf["rankt5_variant"], hf["rankt5_spec"]
    tensors = load_file(os.path.join(export, "model.safetensors"))
    scale = hf["d_model"] ** 0.5  # undoes ScaleLinear's d^-0.5 where ours has none

    def head(model):
        with torch.no_grad():
            if variant == "enc":
                model.linear.weight.copy_(tensors["classifier.weight"] * scale)
                model.linear.bias.copy_(tensors["classifier.bias"])
            else:
                if variant == "monot5":  # Lightning IR's mono: log-softmax of row 1 over 2
                    rows = [spec["false_token_id"], spec["true_token_id"]]
                else:
                    rows = [spec["score_token_id"]]
                if "lm_head.weight" in tensors:  # untied (v1.1): unscaled logits
                    model.linear.weight.copy_(tensors["lm_head.weight"][rows] * scale)
                else:  # tied (v1.0): logits of the state scaled by d^-0.5, as ScaleLinear does
                    model.linear.weight.copy_(tensors["shared.weight"][rows])
        return model

    POST_LOAD_CALLBACKS[export] = head
    config = MonoConfig(
        scoring_strategy="mono" if variant == "monot5" else "rank",
        query_length=None,
        doc_length=None,
        linear_bias=variant == "enc",
        pooling_strategy=spec.get("pooling", "first") if variant == "enc" else "first",
    )
    backbone = T5EncoderModel if variant == "enc" else None
    module = CrossEncoderModule(model_name_or_path=export, config=config, BackboneModel=backbone)
    return module.eval()


def worker(request: dict) -> dict:
    import pandas as pd
    import torch

    torch.set_grad_enabled(False)
    out: dict = {"scores": {}, "inputs": {}, "errors": {}, "versions": {}}
    from importlib import metadata

    for name in ("torch", "transformers", "lightning-ir", "pyterrier-t5", "pyterrier"):
        out["versions"][name] = metadata.version(name)
    queries, docs = request["queries"], request["docs"]
    for name, export in request["exports"].items():
        key = f"lightning_ir/{name}"
        try:
            module = lightning_ir_module(export)
            out["scores"][key] = [module.score(q, d).scores.float().tolist() for q, d in zip(
                queries, docs)]  # fmt: skip
            encoding = module.prepare_input([queries[0]], [docs[0][0]], [1])["encoding"]
            out["inputs"][key] = encoding["input_ids"][0].tolist()
        except Exception as err:  # reported, the others still run
            out["errors"][key] = f"{type(err).__name__}: {err}".splitlines()[0][:400]
    from pyterrier_t5 import MonoT5ReRanker

    export = request["exports"]["monot5"]
    for batch_size in (1, 4):
        key = f"pyterrier_t5/monot5/batch{batch_size}"
        reranker = MonoT5ReRanker(
            tok_model=export, model=export, batch_size=batch_size, verbose=False, device="cpu"
        )
        scores = []
        for q, passages in zip(queries, docs):
            frame = pd.DataFrame(
                {
                    "qid": "q",
                    "query": q,
                    "docno": [str(i) for i in range(len(passages))],
                    "text": passages,
                }  # fmt: skip
            )
            ranked = reranker.transform(frame).set_index("docno")
            scores.append(ranked.loc[frame["docno"], "score"].tolist())
        out["scores"][key] = scores
    out["pyterrier_t5_true_false"] = [reranker.REL, reranker.NREL]
    return out


# ------------------------------------------------------------------------------------------------
# The driver (this venv: rankt5_jax)
# ------------------------------------------------------------------------------------------------


def _model_dirs(work_dir: str, spm_path: str, seed: int) -> dict[str, str]:
    import jax
    import numpy as np

    from rankt5_jax.checkpoints.convert import write_params_model_dir
    from rankt5_jax.data.vocab import Vocabulary
    from rankt5_jax.modeling import registry
    from rankt5_jax.modeling.network import get_config

    dirs = {}
    for name, (variant, size) in MODELS.items():
        out = os.path.join(work_dir, f"model_{name}")
        if not os.path.isfile(os.path.join(out, "rankt5.json")):
            config = get_config(size, vocab_size=32128, dropout_rate=0.0)
            spec = registry.make_spec(variant, config, Vocabulary(spm_path))
            model = registry.build_model(spec)
            init = jax.jit(
                lambda key, model=model: model.get_initial_variables(
                    key, {"encoder_input_tokens": (1, 1, 8)}
                )
            )
            params = jax.tree_util.tree_map(np.asarray, init(jax.random.PRNGKey(seed))["params"])
            write_params_model_dir(out, model.spec(), params, spm_path)
        dirs[name] = out
    return dirs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--peers_python", default=os.path.join(REPO, ".venv-peers/bin/python"))
    parser.add_argument("--queries", type=int, default=2)
    parser.add_argument("--passages", type=int, default=16, help="passages per query")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work_dir", default="/tmp/rankt5_peers_export")
    parser.add_argument("--output", default="", help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.worker:
        reply = os.fdopen(os.dup(1), "w")
        os.dup2(2, 1)  # the peers' own prints go to stderr
        reply.write(json.dumps(worker(json.loads(sys.stdin.read()))) + "\n")
        reply.close()
        return 0

    import numpy as np

    sys.path.insert(0, REPO)
    from bench.peers_bench import _make_data
    from rankt5_jax import Ranker, cli

    os.makedirs(args.work_dir, exist_ok=True)
    queries, docs, spm_path = _make_data(args.work_dir, args.queries, args.passages, args.seed)
    model_dirs = _model_dirs(args.work_dir, spm_path, args.seed)
    exports, ours, our_inputs = {}, {}, {}
    for name, model_dir in model_dirs.items():
        export = model_dir + "_hf"
        command = ["convert", "--to", "hf", "--input", model_dir, "--output", export]
        if cli.main(command) != 0:
            raise SystemExit(f"rankt5 convert failed for {name}")
        exports[name] = export
        ranker = Ranker.load(model_dir, dtype="float32")
        ours[name] = [ranker.score(q, d).tolist() for q, d in zip(queries, docs)]
        our_inputs[name] = [int(i) for i in ranker.tokenize(queries[0], [docs[0][0]])[0]]

    request = json.dumps({"exports": exports, "queries": queries, "docs": docs})
    done = subprocess.run(
        [args.peers_python, os.path.abspath(__file__), "--worker"],
        input=request,
        capture_output=True,
        text=True,
        env=dict(os.environ, TOKENIZERS_PARALLELISM="false"),
    )
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit("the peers' worker failed")
    peers = json.loads(done.stdout.strip().splitlines()[-1])

    rows = []
    for key, scores in peers["scores"].items():
        library, name = key.split("/")[:2]
        theirs, want = np.asarray(scores, np.float64), np.asarray(ours[name], np.float64)
        rows.append(
            {
                "library": key,
                "model": name,
                "max_abs_diff": float(np.max(np.abs(theirs - want))),
                "score_spread": float(np.ptp(want)),
                "same_input_ids": (
                    peers["inputs"][key] == our_inputs[name] if key in peers["inputs"] else None
                ),
            }
        )
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load": os.getloadavg(),
        "queries": len(queries),
        "passages": sum(len(d) for d in docs),
        "models": {name: f"{variant}, {size}" for name, (variant, size) in MODELS.items()},
        "versions": peers["versions"],
        "errors": peers["errors"],
        "pyterrier_t5_true_false": peers["pyterrier_t5_true_false"],
        "rows": rows,
        "inputs": {"ours": our_inputs, "theirs": peers["inputs"]},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

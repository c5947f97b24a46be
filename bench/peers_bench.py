"""rankt5_jax against the peer libraries themselves: Lightning IR (RankT5 rank strategy and
monoT5), pyterrier-t5 (MonoT5ReRanker) and rerankers (its T5 ranker), scoring the same passages
with the same random-weight T5-small (v1.0 shape) weights, each as its documentation shows.

    make bench-peers           # creates .venv-peers (torch 2.13.0 CPU, the peers), then runs this
    python bench/peers_bench.py --peers_python .venv-peers/bin/python --queries 2 --passages 100

The weights are written once as a Hugging Face T5 directory by our exporter
(`checkpoints.formats.save_hf`, what `rankt5 convert` writes for Hugging Face), with a
SentencePiece vocabulary trained here (no network): T5's own pieces that the peers look up by
name (`▁true`, `▁false`, `▁Document`, `▁Relevan`, `Query`) are single pieces of it, and it has
T5's 100 extra ids, so `<extra_id_10>` (RankT5's score token) is where T5 puts it.

rankt5_jax runs in this process (this venv); the peers run in one worker process started with
`--peers_python` (`.venv-peers`: torch and the peers, no JAX), which loads each peer once and
answers JSON commands on a pipe. Each round times every library once, in an order rotated per
round (interleaved, so a change in the machine's load falls on all of them); docs/s is the
median over rounds. Agreement is about the network, not the template: every peer's model is fed
our token ids (its own head and formula on top), and the largest score difference is reported;
each library's own input for one pair is shown beside it.

On a GPU (`--device cuda`), the peers run in bfloat16 on CUDA and rankt5_jax in bfloat16 on its
default JAX device.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = ("lightning_ir_rank", "lightning_ir_mono", "pyterrier_t5", "rerankers")
SPM_SYMBOLS = ["▁true", "▁false", "Query", "▁Document", "▁Relevan"]


# ------------------------------------------------------------------------------------------------
# The worker (runs in .venv-peers: torch and the peers only)
# ------------------------------------------------------------------------------------------------


def _version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


class _Peers:
    def __init__(self, model_dir: str, device: str, ids: dict):
        import torch

        torch.set_grad_enabled(False)
        self.torch = torch
        self.model_dir = model_dir
        self.device = device
        self.dtype = torch.bfloat16 if device == "cuda" else torch.float32
        self.ids = ids  # score, true, false token ids as rankt5_jax reads them
        self.loaded: dict = {}
        self.errors: dict = {}
        self.notes: dict = {}

    def load(self) -> dict:
        for name in PEERS:
            try:
                getattr(self, f"_load_{name}")()
            except Exception as err:  # reported, not fatal: the others still run
                self.errors[name] = f"{type(err).__name__}: {err}".splitlines()[0][:400]
        versions = {
            p: _version(p)
            for p in ("torch", "transformers", "lightning-ir", "pyterrier-t5", "rerankers")
        }
        versions["python-terrier"] = _version("pyterrier")
        return {"errors": self.errors, "notes": self.notes, "versions": versions}

    def _lightning(self, strategy: str):
        from lightning_ir import CrossEncoderModule
        from lightning_ir.models import MonoConfig

        # Lightning IR's documented path for a T5 cross-encoder: a module over the checkpoint
        # with a MonoConfig; the head for T5 checkpoints is mapped from the embedding, as
        # register_external_models.py does for castorini/monot5-* (rows [false, true]) and
        # Soyoung97/RankT5-* (row <extra_id_10>).
        config = MonoConfig(scoring_strategy=strategy, query_length=None, doc_length=None)
        module = CrossEncoderModule(model_name_or_path=self.model_dir, config=config)
        model = module.model
        rows = [self.ids["false"], self.ids["true"]] if strategy == "mono" else [self.ids["score"]]
        model.linear.weight.data = model.shared.weight.data[rows].clone()
        module.to(self.device, self.dtype).eval()
        return module

    def _load_lightning_ir_rank(self):
        self.loaded["lightning_ir_rank"] = self._lightning("rank")

    def _load_lightning_ir_mono(self):
        self.loaded["lightning_ir_mono"] = self._lightning("mono")

    def _load_pyterrier_t5(self):
        from pyterrier_t5 import MonoT5ReRanker

        reranker = MonoT5ReRanker(
            tok_model=self.model_dir, model=self.model_dir, device=self.device, verbose=False
        )
        reranker.model.to(self.dtype)
        # MonoT5ReRanker reads `config.n_positions` (512 in T5's published config.json files,
        # not a T5Config field); a config without it fails in transform. Set as T5's is.
        if not hasattr(reranker.model.config, "n_positions"):
            reranker.model.config.n_positions = 512
            self.notes["pyterrier_t5_workaround"] = "config.n_positions = 512 set after loading"
        self.loaded["pyterrier_t5"] = reranker
        self.notes["pyterrier_t5"] = {"true": reranker.REL, "false": reranker.NREL}

    def _load_rerankers(self):
        from rerankers import Reranker

        ranker = Reranker(self.model_dir, model_type="t5", verbose=0, device=self.device)
        self.loaded["rerankers"] = ranker
        inner = getattr(ranker, "model", ranker)
        inner_ranker = ranker if hasattr(ranker, "token_true_id") else inner
        self.notes["rerankers"] = {
            "true": getattr(inner_ranker, "token_true_id", None),
            "false": getattr(inner_ranker, "token_false_id", None),
            "batch_size": getattr(inner_ranker, "batch_size", None),
        }

    # -- each as documented -------------------------------------------------------------------
    def score(self, name: str, queries: list[str], docs: list[list[str]]) -> tuple:
        """Each query's documents scored the way the library's documentation shows: (wall
        seconds, CPU seconds of this process, scores)."""
        import pandas as pd

        peer = self.loaded[name]
        started, cpu = time.perf_counter(), time.process_time()
        scores = []
        for query, passages in zip(queries, docs):
            if name.startswith("lightning_ir"):
                scores.append(peer.score(query, passages).scores.float().tolist())
            elif name == "pyterrier_t5":
                frame = pd.DataFrame(
                    {
                        "qid": "q",
                        "query": query,
                        "docno": [str(i) for i in range(len(passages))],
                        "text": passages,
                    }
                )
                out = peer.transform(frame).sort_values("docno", key=lambda s: s.astype(int))
                scores.append(out["score"].tolist())
            else:
                ranked = peer.rank(query=query, docs=passages, doc_ids=list(range(len(passages))))
                by_id = {r.document.doc_id: r.score for r in ranked.results}
                scores.append([by_id[i] for i in range(len(passages))])
        if self.device == "cuda":
            self.torch.cuda.synchronize()
        return time.perf_counter() - started, time.process_time() - cpu, scores

    # -- identical token ids through each library's network ----------------------------------
    def score_ids(self, name: str, ids: list[list[int]]) -> list[float]:
        torch = self.torch
        width = max(map(len, ids))
        input_ids = torch.zeros((len(ids), width), dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        peer = self.loaded[name]
        if name.startswith("lightning_ir"):
            from transformers import BatchEncoding

            encoding = BatchEncoding({"input_ids": input_ids, "attention_mask": mask})
            return peer.model.forward(encoding).scores.float().tolist()
        if name == "pyterrier_t5":  # MonoT5ReRanker.transform's own lines after tokenizing
            start = peer.model.config.decoder_start_token_id
            decoder = torch.full((len(ids), 1), start, dtype=torch.long, device=self.device)
            logits = peer.model(
                input_ids=input_ids, attention_mask=mask, decoder_input_ids=decoder
            ).logits
            pair = logits[:, 0, (peer.REL, peer.NREL)].float()
            return torch.nn.functional.log_softmax(pair, dim=1)[:, 0].tolist()
        inner = peer if hasattr(peer, "token_true_id") else peer.model
        _, logits = inner._greedy_decode(
            model=inner.model,
            input_ids=input_ids,
            length=1,
            attention_mask=mask,
            return_last_logits=True,
        )
        pair = logits[:, [inner.token_false_id, inner.token_true_id]].float()
        # rerankers returns exp(log_softmax)[true]; its log is compared with monoT5's score
        return torch.log_softmax(pair, dim=-1)[:, 1].tolist()

    def own_input(self, name: str, query: str, doc: str) -> list[int]:
        """The token ids the library itself feeds its network for one pair."""
        peer = self.loaded[name]
        if name.startswith("lightning_ir"):
            encoding = peer.prepare_input([query], [doc], [1])["encoding"]
            return encoding["input_ids"][0].tolist()
        if name == "pyterrier_t5":
            tok = peer.tokenizer
            enc = tok([f"Query: {query} Document: {doc}"], return_tensors="pt")["input_ids"]
            prompt = tok(["Relevant:"], return_tensors="pt")["input_ids"]
            return enc[0, :-1].tolist() + prompt[0].tolist()
        inner = peer if hasattr(peer, "token_true_id") else peer.model
        text = inner.inputs_template.format(query=query, text=doc)
        return inner.tokenizer(text, truncation="longest_first", max_length=512)["input_ids"]


def worker(args) -> None:
    """Answers one JSON command per line on stdin; replies on the original stdout (the peers'
    own prints go to stderr)."""
    reply = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    ids = json.loads(args.token_ids)
    peers = _Peers(args.model_dir, args.device, ids)
    for line in sys.stdin:
        command = json.loads(line)
        kind = command["cmd"]
        try:
            if kind == "load":
                result = peers.load()
            elif kind == "score":
                seconds, cpu, scores = peers.score(
                    command["lib"], command["queries"], command["docs"]
                )
                result = {"seconds": seconds, "cpu": cpu, "scores": scores}
            elif kind == "ids":
                result = {"scores": peers.score_ids(command["lib"], command["ids"])}
            elif kind == "own_input":
                result = {"ids": peers.own_input(command["lib"], command["query"], command["doc"])}
            elif kind == "quit":
                break
            else:
                raise ValueError(f"unknown command {kind}")
        except Exception as err:
            result = {"error": f"{type(err).__name__}: {err}".splitlines()[0][:400]}
        reply.write(json.dumps(result) + "\n")
        reply.flush()


# ------------------------------------------------------------------------------------------------
# The driver (this venv: rankt5_jax)
# ------------------------------------------------------------------------------------------------


class _Worker:
    def __init__(self, python: str, model_dir: str, device: str, ids: dict):
        command = [python, os.path.abspath(__file__), "--worker", "--model_dir", model_dir]
        command += ["--device", device, "--token_ids", json.dumps(ids)]
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )

    def ask(self, **command) -> dict:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the peers' worker exited (see its stderr above)")
        return json.loads(line)

    def close(self) -> None:
        try:
            self.ask(cmd="quit")
        except (RuntimeError, BrokenPipeError, json.JSONDecodeError):
            pass
        self.process.wait(timeout=60)


def _make_data(work_dir: str, num_queries: int, passages: int, seed: int):
    """Generated queries and passages of 40-200 words (varied lengths), and the vocabulary."""
    import numpy as np

    from rankt5_jax.data import synthetic

    collection = synthetic.make_collection(num_queries=max(40, num_queries), seed=seed)
    texts = [doc["text"] for doc in collection["corpus"].values()]
    rng = np.random.default_rng(seed)
    qids = list(collection["queries"])[:num_queries]
    queries = [collection["queries"][q] for q in qids]
    docs = []
    for _ in qids:
        docs.append(
            [" ".join(rng.choice(texts, size=int(rng.integers(2, 9)))) for _ in range(passages)]
        )
    lines = texts + [f"Query: {q} Document: {t} Relevant: true false" for q, t in zip(
        collection["queries"].values(), texts)]  # fmt: skip
    spm_path = synthetic.train_sentencepiece_on(
        lines, os.path.join(work_dir, "spiece"), 1000, SPM_SYMBOLS
    )
    return queries, docs, spm_path


def _write_model(work_dir: str, spm_path: str, seed: int) -> str:
    """Random T5-small (v1.0: 6+6 layers, d_model 512, tied embedding of 32128 rows) as a
    Hugging Face directory, by our exporter."""
    import jax
    import numpy as np

    from rankt5_jax.checkpoints import formats as ckpt_formats
    from rankt5_jax.data.vocab import Vocabulary
    from rankt5_jax.modeling import registry
    from rankt5_jax.modeling.network import get_config

    config = get_config("t5_1_0_small", vocab_size=32128, dropout_rate=0.0)
    spec = registry.make_spec("encdec", config, Vocabulary(spm_path))
    model = registry.build_model(spec)
    init = jax.jit(
        lambda key: model.get_initial_variables(key, {"encoder_input_tokens": (1, 1, 8)})
    )
    params = jax.tree_util.tree_map(np.asarray, init(jax.random.PRNGKey(seed))["params"])
    out = os.path.join(work_dir, "t5_small_hf")
    ckpt_formats.save_hf(out, config, params, "encdec", spm_path)
    return out


def _spread(a, b) -> float:
    import numpy as np

    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model_dir", help=argparse.SUPPRESS)
    parser.add_argument("--token_ids", help=argparse.SUPPRESS)
    parser.add_argument("--peers_python", default=os.path.join(REPO, ".venv-peers/bin/python"))
    parser.add_argument("--queries", type=int, default=2)
    parser.add_argument("--passages", type=int, default=100, help="passages per query")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work_dir", default="/tmp/rankt5_peers_bench")
    parser.add_argument("--output", default="", help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0

    import jax
    import numpy as np

    from rankt5_jax import Ranker

    os.makedirs(args.work_dir, exist_ok=True)
    queries, docs, spm_path = _make_data(args.work_dir, args.queries, args.passages, args.seed)
    model_dir = _write_model(args.work_dir, spm_path, args.seed)
    dtype = "bfloat16" if args.device == "cuda" else "float32"
    ours = {
        "rankt5_jax_encdec": Ranker.load(model_dir, variant="encdec", dtype=dtype),
        "rankt5_jax_monot5": Ranker.load(model_dir, variant="monot5", dtype=dtype),
    }
    spec_enc = ours["rankt5_jax_encdec"].model.spec()
    spec_mono = ours["rankt5_jax_monot5"].model.spec()
    ids = {
        "score": int(spec_enc["score_token_id"]),
        "true": int(spec_mono["true_token_id"]),
        "false": int(spec_mono["false_token_id"]),
    }
    print(f"weights: {model_dir}; token ids (ours): {ids}", file=sys.stderr)
    # Which of our models each peer is compared with (same head, same formula).
    pairs = {
        "lightning_ir_rank": "rankt5_jax_encdec",
        "lightning_ir_mono": "rankt5_jax_monot5",
        "pyterrier_t5": "rankt5_jax_monot5",
        "rerankers": "rankt5_jax_monot5",
    }

    peers = _Worker(args.peers_python, model_dir, args.device, ids)
    try:
        loaded = peers.ask(cmd="load")
        errors = dict(loaded["errors"])
        available = [p for p in PEERS if p not in errors]
        for name, error in loaded["errors"].items():
            print(f"{name}: could not load: {error}", file=sys.stderr)

        # Agreement on identical token ids: each peer's network fed our ids.
        agreement, inputs = {}, {}
        sample = [ours["rankt5_jax_monot5"].tokenize(q, d[:16]) for q, d in zip(queries, docs)]
        sample_enc = [ours["rankt5_jax_encdec"].tokenize(q, d[:16]) for q, d in zip(queries, docs)]
        for name in available:
            ours_name = pairs[name]
            tokens = sample_enc if ours_name == "rankt5_jax_encdec" else sample
            flat = [seq for seqs in tokens for seq in seqs]
            want = ours[ours_name].score_tokens(flat)
            got = peers.ask(cmd="ids", lib=name, ids=[list(map(int, s)) for s in flat])
            if "error" in got:
                agreement[name] = got["error"]
            else:
                agreement[name] = _spread(got["scores"], want)
            print(f"{name}: max |score - ours| on our ids: {agreement[name]}", file=sys.stderr)
            own = peers.ask(cmd="own_input", lib=name, query=queries[0], doc=docs[0][0][:80])
            ours_ids = ours[ours_name].tokenize(queries[0], [docs[0][0][:80]])[0]
            theirs = own.get("ids", own.get("error"))
            inputs[name] = {
                "identical": theirs == [int(i) for i in ours_ids],
                "theirs": theirs,
                "ours": [int(i) for i in ours_ids],
            }

        # Interleaved timing rounds. Round 0 warms up (rankt5_jax compiles its buckets on the
        # whole set; the peers, which compile nothing, see 4 passages a query) and is not counted.
        libraries = list(ours) + available
        seconds: dict[str, list[float]] = {name: [] for name in libraries}
        cpu_seconds: dict[str, list[float]] = {name: [] for name in libraries}
        num_docs = sum(len(d) for d in docs)
        load_before = os.getloadavg()
        for round_index in range(args.rounds + 1):
            shift = round_index % len(libraries)
            for name in libraries[shift:] + libraries[:shift]:
                if name in ours:
                    started, cpu = time.perf_counter(), time.process_time()
                    for query, passages in zip(queries, docs):
                        scores = ours[name].score(query, passages)
                    jax.block_until_ready(scores)
                    elapsed = time.perf_counter() - started
                    used = time.process_time() - cpu
                else:
                    subset = docs if round_index else [d[:4] for d in docs]
                    result = peers.ask(cmd="score", lib=name, queries=queries, docs=subset)
                    if "error" in result:
                        print(f"{name}: {result['error']}", file=sys.stderr)
                        errors[name] = result["error"]
                        libraries.remove(name)
                        continue
                    elapsed, used = result["seconds"], result["cpu"]
                if round_index:
                    seconds[name].append(elapsed)
                    cpu_seconds[name].append(used)
                    print(
                        f"round {round_index} {name}: {num_docs / elapsed:.1f} docs/s, "
                        f"{num_docs / used:.1f} docs per CPU-s",
                        file=sys.stderr,
                        flush=True,
                    )
        load_after = os.getloadavg()
    finally:
        peers.close()

    rate = {n: num_docs / statistics.median(s) for n, s in seconds.items() if s}
    cpu_rate = {n: num_docs / statistics.median(s) for n, s in cpu_seconds.items() if s}
    rows = []
    for name in rate:
        reference = pairs.get(name, name)
        rows.append(
            {
                "library": name,
                "docs_per_s": rate[name],
                "docs_per_s_range": [num_docs / max(seconds[name]), num_docs / min(seconds[name])],
                "docs_per_cpu_s": cpu_rate[name],
                "ours_over_theirs": rate[reference] / rate[name] if name in pairs else None,
                "ours_over_theirs_cpu": (
                    cpu_rate[reference] / cpu_rate[name] if name in pairs else None
                ),
                "compared_with": reference if name in pairs else None,
                "max_abs_diff_same_ids": agreement.get(name),
            }
        )
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_before": load_before,
        "load_after": load_after,
        "cpus": os.cpu_count(),
        "device": args.device,
        "jax": jax.__version__,
        "jax_device": str(jax.devices()[0]),
        "versions": loaded["versions"],
        "errors": errors,
        "token_ids": {"ours": ids, **loaded["notes"]},
        "queries": len(queries),
        "passages": num_docs,
        "rounds": args.rounds,
        "mean_tokens_ours": float(
            np.mean(
                [
                    len(s)
                    for q, d in zip(queries, docs)
                    for s in ours["rankt5_jax_monot5"].tokenize(q, d)
                ]
            )
        ),
        "rows": rows,
        "inputs": inputs,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`make demo`'s table over several training seeds, from the shipped pretrained ranker and from
scratch: the mean and range of every row (bench/RESULTS.md "The demo over seeds").

    nice -n 5 .venv/bin/python bench/demo_seeds_bench.py --seeds 0 1 2 --init pretrained none

Each run is `python -m rankt5_jax.demo --seed S --init_checkpoint I` (same generated data, the
seed changes the trainings' initialisation of fresh parameters and their data order) in its
own folder under `--work_dir`; the table of each run and the summary go to `--output`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--init", nargs="+", default=["pretrained", "none"])
    parser.add_argument("--train_steps", type=int, default=1000)
    parser.add_argument("--xtr_steps", type=int, default=800)
    parser.add_argument("--learning_rate", type=float, default=None)
    parser.add_argument("--work_dir", default="/tmp/demo_seeds")
    parser.add_argument("--output", default=os.path.join(REPO, "bench", "demo_seeds_results.json"))
    args = parser.parse_args(argv)
    results: dict = {}
    if os.path.exists(args.output):  # resumes: finished runs are kept
        results = json.load(open(args.output))
    for init in args.init:
        for seed in args.seeds:
            key = f"init={init},seed={seed},steps={args.train_steps}/{args.xtr_steps}"
            if args.learning_rate:
                key += f",lr={args.learning_rate:g}"
            if key in results:
                continue
            out = os.path.join(args.work_dir, key.replace("=", "").replace(",", "_")
                               .replace("/", "-"))  # fmt: skip
            command = [sys.executable, "-m", "rankt5_jax.demo", "--output_dir", out,
                       "--seed", str(seed), "--init_checkpoint", init,
                       "--train_steps", str(args.train_steps),
                       "--xtr_steps", str(args.xtr_steps)]  # fmt: skip
            if args.learning_rate:
                command += ["--learning_rate", str(args.learning_rate)]
            print("$ " + " ".join(command), flush=True)
            subprocess.run(command, cwd=REPO, check=False)
            summary = json.load(open(os.path.join(out, "demo_metrics.json")))
            results[key] = {"rows": summary["rows"], "seconds": summary["seconds"]}
            with open(args.output, "w") as handle:
                json.dump(results, handle, indent=1)
    print(table(results))
    return 0


def table(results: dict) -> str:
    """RR@10 per row: mean [min, max] over the seeds of each (init, steps) setting."""
    groups: dict[str, dict[str, list[float]]] = {}
    for key, value in results.items():
        setting = ",".join(p for p in key.split(",") if not p.startswith("seed="))
        for row, measures in value["rows"].items():
            groups.setdefault(setting, {}).setdefault(row, []).append(measures["RR@10"])
    lines = []
    for setting, rows in groups.items():
        lines.append(f"{setting}")
        for row, values in rows.items():
            mean = sum(values) / len(values)
            lines.append(f"  {row:45s} {mean:.3f} [{min(values):.3f}, {max(values):.3f}]"
                         f" n={len(values)}")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

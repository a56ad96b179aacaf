"""ESR/full cost ratios across the window N: `esr-lab profile` for several N in one run.

For each N, the median per-step wall time and peak memory of ESR(N), per phase and in total, as
a multiple of full OPD's on the same pair, batch and prompts (PAPER.md finding 8: 24x less time,
2.6x less memory at N=100 with 4,096-token rollouts). Defaults: the toy world's profile preset.

Run:  .venv/bin/python benchmarks/bench_esr_vs_full.py --ns 5,20,50,100  [--student S --teacher T]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from esr_lab.experiments import profile  # noqa: E402
from esr_lab.experiments.registry import Paths  # noqa: E402
from esr_lab.options import (  # noqa: E402
    Given,
    ModelOptions,
    RunOptions,
    SamplingOptions,
    TrainOptions,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default="toy-student")
    parser.add_argument("--teacher", default="toy-teacher")
    parser.add_argument("--ns", default="5,20,50,100", help="comma-separated ESR windows")
    parser.add_argument("--steps", type=int, default=3, help="measured steps per variant")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="CPU torch threads")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "results" / "bench")
    args = parser.parse_args()
    given = Given(
        models=ModelOptions(student=args.student, teacher=args.teacher, threads=args.threads),
        sampling=SamplingOptions(max_new_tokens=args.max_new_tokens),
        run=RunOptions(results_dir=args.results_dir),
        train=TrainOptions(),
    )
    cfg = profile.ProfileConfig(
        base=given.train.config(given),
        ns=tuple(int(n) for n in args.ns.split(",")),
        steps=args.steps,
        warmup=args.warmup,
    )
    result = profile.run(cfg, Paths(args.results_dir, args.results_dir / "figures"))
    run_dir, summary = result.run_dir, result.tables["summary"]
    ratios = summary.pivot(index="label", columns="phase", values="time_ratio")
    memory = summary.pivot(index="label", columns="phase", values="peak_ratio")
    order = sorted(ratios.index, key=lambda lab: (lab == "full", len(lab), lab))
    print("ESR/full wall-time ratio per phase (median step):")
    print(ratios.loc[order, list(profile.STEP_PHASES)].to_string(float_format="%.3f"))
    print("ESR/full peak-memory ratio per phase:")
    print(memory.loc[order, list(profile.STEP_PHASES)].to_string(float_format="%.3f"))
    print(f"results: {run_dir.path}")


if __name__ == "__main__":
    main()

"""`esr-lab train`: distil the teacher into the student with ESR (the first N tokens of each
rollout) or full-rollout OPD, one run. The training itself is `esr_lab/loop.py` and
`esr_lab/train.py`; this module turns the command's options into a TrainConfig, runs it
(relaunching under accelerate for `--num-processes N`), and draws the run's training curve.

With `--seeds`, the run is trained once per seed (each a content-addressed run under
`results/runs/`, `--jobs` at a time) and the command's folder holds the combined tables and the
aggregate over seeds (`experiments/common.py`), as `sweep-n` does for its variants.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Annotated

from esr_lab.errors import UserError
from esr_lab.experiments.common import print_trained_summary, run_variants, trained_tables
from esr_lab.experiments.registry import Experiment, ExperimentResult, Paths
from esr_lab.figures import plot_training_curve
from esr_lab.options import SEEDED_TRAINING_GROUPS, Given, Window, int_list, opt


@dataclass
class Options:
    n: Window = None
    full: Annotated[bool, opt("Full-rollout OPD instead of ESR.")] = False
    selector: Annotated[str | None, opt("Token selector (first_n, all, top_rkl, tip, ...).")] = None
    budget: Annotated[int | None, opt("Positions per sequence for top-k selectors.")] = None
    progressive: Annotated[
        str | None, opt("ESR with N growing from START to END over training: START,END.")
    ] = None
    num_processes: Annotated[
        int, opt("Data-parallel processes, launched with accelerate (one per GPU).", min=1)
    ] = 1


def configure(options: Options, given: Given):
    from esr_lab import distributed

    if given.seeds is not None and options.num_processes > 1:
        raise UserError("--seeds and --num-processes both given; use --jobs for seeds at once")
    if options.num_processes > 1 and distributed.group().world == 1:
        argv = distributed.without_num_processes(sys.argv[1:])
        sys.exit(distributed.relaunch(options.num_processes, argv))
    schedule = int_list(options.progressive or None, "--progressive")
    if schedule is not None and len(schedule) != 2:
        raise UserError(f"--progressive takes START,END like 5,200; got '{options.progressive}'")
    cfg = given.train.config(
        given,
        n=options.n,
        selector=options.selector or ("all" if options.full else "first_n"),
        budget=options.budget,
        progressive=schedule,
    )
    return cfg if given.seeds is None else Seeded(cfg, given.seeds)


@dataclass(frozen=True)
class Seeded:
    """One training config to train once per seed."""

    cfg: object  # TrainConfig
    seeds: tuple[int, ...]


def run(cfg, paths: Paths) -> ExperimentResult | None:
    """Train (or resume) the run; the main process draws its curve from the evaluations."""
    from esr_lab import distributed, loop

    if isinstance(cfg, Seeded):
        return _run_seeds(cfg, paths)
    run_dir, summary, evals = loop.run(cfg, paths.results_dir, paths.run_id, paths.show_progress)
    if not distributed.group().is_main:
        return None
    plot_training_curve(evals, [run_dir.path / "curve.png"])
    return ExperimentResult(run_dir, {"summary": summary, "evals": evals})


def _run_seeds(seeded: Seeded, paths: Paths) -> ExperimentResult:
    """The run once per seed; the curves of every seed in one figure."""
    from esr_lab import train

    base = seeded.cfg.resolved()
    config = {k: v for k, v in train.config_dict(base).items() if k != "seed"}
    trained = run_variants("train", config, [base], paths, seeded.seeds)
    plot_training_curve(trained.evals, [trained.parent.path / "curve.png"])
    return ExperimentResult(trained.parent, trained_tables(trained))


def print_summary(result: ExperimentResult) -> None:
    title = f"Training, run {result.run_dir.run_id}"
    print_trained_summary(result, title)


EXPERIMENT = Experiment(
    command="train",
    folder="train",
    help="Distil the teacher into the student with ESR (first N tokens) or full OPD.",
    options=Options,
    groups=SEEDED_TRAINING_GROUPS,
    configure=configure,
    run=run,
    print_summary=print_summary,
    order=20,
)

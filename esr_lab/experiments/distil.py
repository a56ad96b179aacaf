"""`esr-lab train`: distil the teacher into the student with ESR (the first N tokens of each
rollout) or full-rollout OPD, one run. The training itself is `esr_lab/loop.py` and
`esr_lab/train.py`; this module turns the command's options into a TrainConfig, runs it
(relaunching under accelerate for `--num-processes N`), and draws the run's training curve.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Annotated

from esr_lab.console import print_table
from esr_lab.errors import UserError
from esr_lab.experiments.common import summary_table
from esr_lab.experiments.registry import Experiment, Paths, Result
from esr_lab.figures import plot_training_curve
from esr_lab.options import (
    Given,
    ModelOptions,
    RunOptions,
    SamplingOptions,
    TrainOptions,
    Window,
    int_list,
    opt,
)


@dataclass
class Options:
    n: Window = None
    full: Annotated[bool, opt("Full-rollout OPD instead of ESR.")] = False
    selector: Annotated[str | None, opt("Token selector (first_n, all, top_rkl, ...).")] = None
    budget: Annotated[int | None, opt("Positions per sequence for top-k selectors.")] = None
    progressive: Annotated[
        str | None, opt("ESR with N growing from START to END over training: START,END.")
    ] = None
    num_processes: Annotated[
        int, opt("Data-parallel processes, launched with accelerate (one per GPU).", min=1)
    ] = 1


def configure(options: Options, given: Given):
    from esr_lab import distributed

    if options.num_processes > 1 and distributed.group().world == 1:
        argv = distributed.without_num_processes(sys.argv[1:])
        sys.exit(distributed.relaunch(options.num_processes, argv))
    schedule = int_list(options.progressive or None, "--progressive")
    if schedule is not None and len(schedule) != 2:
        raise UserError(f"--progressive takes START,END like 5,200; got '{options.progressive}'")
    return given.train.config(
        given,
        n=options.n,
        selector=options.selector or ("all" if options.full else "first_n"),
        budget=options.budget,
        progressive=schedule,
    )


def run(cfg, paths: Paths) -> Result | None:
    """Train (or resume) the run; the main process draws its curve from the evaluations."""
    from esr_lab import distributed, loop

    run_dir, summary, evals = loop.run(cfg, paths.results_dir, paths.run_id, paths.show_progress)
    if not distributed.group().is_main:
        return None
    plot_training_curve(evals, [run_dir.path / "curve.png"])
    return Result(run_dir, {"summary": summary, "evals": evals})


def print_summary(result: Result) -> None:
    title = f"Training, run {result.run_dir.run_id}"
    print_table(summary_table(result.tables["summary"]), title)


EXPERIMENT = Experiment(
    command="train",
    folder="train",
    help="Distil the teacher into the student with ESR (first N tokens) or full OPD.",
    options=Options,
    groups=(ModelOptions, SamplingOptions, RunOptions, TrainOptions),
    configure=configure,
    run=run,
    print_summary=print_summary,
    order=20,
)

"""Finding 7, sub-mode commitment: after training, on the 10% highest-KL positions of its own
rollouts, how confident is the student and where does its argmax sit in the teacher's ranking;
and how long are the responses of each model.

Claim (PAPER.md, Qwen2.5-Math-1.5B -> Qwen3-1.7B): top-1 prob / = teacher top-1 / in teacher
top 2-5 / outside top 5: base 0.71 / 28.6% / 59.8% / 11.5%; full OPD 0.77 / 45.7% / 44.6% /
9.7%; ESR 0.79 / 41.9% / 47.4% / 10.7%. Lengths p10/p50/p90/mean: base 400/860/1500/990,
teacher 700/1150/1800/1210, full OPD 1190/1530/1770/1480, ESR 190/380/800/460. Both trainings
commit the student more often to the teacher's mode; full OPD's answers grow long, ESR's short.

The trained students are `--esr-checkpoint` and `--full-checkpoint` (adapter folders from
`esr-lab train`), or runs trained here with the preset's settings, shared with `sweep-n` and
`cascade` through their content-addressed ids; a trained run's final checkpoint is used.

Command: esr-lab submode --student Qwen/Qwen2.5-Math-1.5B --teacher Qwen/Qwen3-1.7B --n 100
         [--esr-checkpoint DIR --full-checkpoint DIR]   (no options: the toy world's preset)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Annotated

import pandas as pd

from esr_lab import analysis
from esr_lab.adapters import check_checkpoint, trained_adapter, trained_policy
from esr_lab.console import print_table
from esr_lab.experiments.registry import Experiment, ExperimentResult, Figure, Paths
from esr_lab.experiments.scans import (
    TrainedScanConfig,
    TrainedScanOptions,
    configure_trained_scan,
    open_scan,
)
from esr_lab.figures import plot_submode
from esr_lab.options import TRAINING_GROUPS, Given, opt
from esr_lab.records import declare, write_table

if TYPE_CHECKING:
    from esr_lab.train_config import TrainConfig

MODELS = ("base", "teacher", "full", "esr")  # the paper's row order


SCHEMAS = declare(
    {
        "submode_summary": (
            "run_id",
            "model",
            "rollouts",
            "positions",
            "kl_threshold",
            "top1_prob",
            "teacher_top1_pct",
            "teacher_top2_5_pct",
            "outside_top5_pct",
            "length_p10",
            "length_p50",
            "length_p90",
            "length_mean",
        ),
    }
)


FIGURE = Figure("submode.png", ("summary.parquet",), plot_submode)


@dataclass(frozen=True)
class SubmodeConfig(TrainedScanConfig):
    full_checkpoint: str | None = None
    top_fraction: float = 0.1

    def resolved(self) -> SubmodeConfig:
        super().resolved()
        analysis.check_share("--top-fraction", self.top_fraction)
        trainings = self.trainings()
        for name in ("esr", "full"):  # the order the options are listed in
            train_cfg, checkpoint = trainings[name]
            check_checkpoint(checkpoint, train_cfg, f"--{name}-checkpoint")
        return self

    def trainings(self) -> dict[str, tuple[TrainConfig, str | None]]:
        """Each trained student's resolved config and given checkpoint."""
        esr, full = self.esr(), replace(self.base, selector="all", n=None).resolved()
        return {"full": (full, self.full_checkpoint), "esr": (esr, self.esr_checkpoint)}


@dataclass
class Options(TrainedScanOptions):
    full_checkpoint: Annotated[
        str | None, opt("Full-OPD adapter folder from esr-lab train --full [default: train].")
    ] = None
    top_fraction: Annotated[float, opt("Share of highest-KL positions examined.")] = 0.1


def configure(options: Options, given: Given) -> SubmodeConfig:
    taken = {"full_checkpoint": options.full_checkpoint, "top_fraction": options.top_fraction}
    return configure_trained_scan(SubmodeConfig, "submode", options, given, {}, **taken)


def run(cfg: SubmodeConfig, paths: Paths) -> ExperimentResult:
    """Train (or take) both students, scan each, measure teacher lengths; one summary row each."""
    cfg = cfg.resolved()
    adapters = {
        name: trained_adapter(train_cfg, given, paths.results_dir, paths.show_progress)
        for name, (train_cfg, given) in cfg.trainings().items()
    }
    opened = open_scan("submode", cfg, paths, adapters=adapters)
    run_dir = opened.run_dir
    students = {"base": opened.student}
    students.update({n: trained_policy(cfg.pair, a, cfg.batch_size) for n, a in adapters.items()})
    rows = {}
    for name, policy in students.items():
        scan = opened.scan(policy, f"{name} student")
        rows[name] = {
            **analysis.submode_stats(scan.tokens, cfg.top_fraction),
            **analysis.length_stats(scan.lengths),
        }
    teacher, problems = opened.teacher, opened.problems
    _, responses = analysis.rollouts(teacher, problems, range(cfg.rollouts), cfg.sampling, cfg.seed)
    rows["teacher"] = analysis.length_stats([len(r) for r in responses])
    summary = pd.DataFrame([{"model": m, **rows[m]} for m in MODELS])
    summary = summary.assign(run_id=run_dir.run_id, rollouts=cfg.rollouts)
    summary = summary[list(SCHEMAS["submode_summary"])]
    write_table(run_dir.path / "summary.parquet", summary, "submode_summary")
    figure = FIGURE.save(run_dir.path, paths)
    return ExperimentResult(
        run_dir, {"summary": summary}, figure, facts={"top_fraction": cfg.top_fraction}
    )


def print_summary(result: ExperimentResult) -> None:
    """Finding 7's two tables: commitment on the top-KL positions, and response lengths."""
    summary, run_dir, fraction = (
        result.tables["summary"],
        result.run_dir,
        result.facts["top_fraction"],
    )
    students = summary[summary.positions.notna()]
    print_table(
        pd.DataFrame(
            {
                "model": students.model,
                "top-1 prob": students.top1_prob,
                "= teacher top-1 %": students.teacher_top1_pct,
                "teacher top 2-5 %": students.teacher_top2_5_pct,
                "outside top 5 %": students.outside_top5_pct,
                "positions": students.positions.astype(int),
            }
        ),
        f"Student argmax on the top {fraction * 100:.0f}% highest-KL positions, "
        f"run {run_dir.run_id}",
    )
    lengths = summary[["model", "length_p10", "length_p50", "length_p90", "length_mean"]]
    print_table(
        lengths.set_axis(["model", "p10", "p50", "p90", "mean"], axis=1),
        "Response length (tokens)",
    )


EXPERIMENT = Experiment(
    command="submode",
    folder="submode",
    help="Finding 7: sub-mode commitment on top-KL positions, and response lengths, per model.",
    options=Options,
    groups=TRAINING_GROUPS,
    configure=configure,
    run=run,
    print_summary=print_summary,
    figure=FIGURE,
    order=130,
    finding="7 sub-mode commitment",
    step=8,
)

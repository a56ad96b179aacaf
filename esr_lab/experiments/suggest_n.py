"""Finding 10, choosing N before training: the ESR plateau starts where the first N positions
hold ~45% of a trajectory's summed per-position KL.

Claim (PAPER.md): measured on ~1k pre-training rollouts, the cumulative per-position KL reaches
45% of the whole trajectory's at about the N where accuracy stops improving (N=50-100 for
Qwen2.5-Math-1.5B -> Qwen3-1.7B, whose plateau is N in [50, 200]). The share is pooled over
rollouts: KL summed over every rollout's positions < N, over KL summed over all positions.

Command: esr-lab suggest-n --student Qwen/Qwen2.5-Math-1.5B --teacher Qwen/Qwen3-1.7B
         --threshold 0.45          (no options: the toy world's preset)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Annotated

import pandas as pd

from esr_lab import analysis
from esr_lab.config import ModelPair, Sampling
from esr_lab.console import print_table
from esr_lab.experiments.registry import Experiment, Figure, Paths, Result
from esr_lab.figures import plot_suggest_n
from esr_lab.options import (
    Given,
    ModelOptions,
    RunOptions,
    SamplingOptions,
    ScanDataset,
    ScanPreset,
    ScanRollouts,
    opt,
    settings,
)
from esr_lab.records import declare, open_run, write_table

SHOWN_SHARES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


SCHEMAS = declare(
    {
        "cumulative_kl": (
            "run_id",
            "position",
            "tokens",
            "mean_kl",
            "cumulative_share",
            "threshold",
        ),
        "suggest_n": ("run_id", "threshold", "n", "rollouts", "mean_length"),
    }
)


FIGURE = Figure("suggest_n.png", ("curve.parquet", "summary.parquet"), plot_suggest_n)


@dataclass(frozen=True)
class SuggestConfig:
    pair: ModelPair = field(default_factory=ModelPair)
    sampling: Sampling = field(default_factory=Sampling)
    recipe: str = "esr-lab"  # the recipe the sampling came from (recipes.RECIPES)
    preset: str | None = None  # the preset named on the command line
    dataset: str | None = None  # None: the toy world's training prompts, else math500
    rollouts: int = 1000
    threshold: float = 0.45
    seed: int = 0
    batch_size: int = 64

    def resolved(self) -> SuggestConfig:
        analysis.check_rollouts(self.rollouts)
        analysis.check_share("--threshold", self.threshold)
        return self


@dataclass
class Options:
    dataset: ScanDataset = None
    rollouts: ScanRollouts = None
    threshold: Annotated[float | None, opt("Share of the total KL the window holds.")] = None
    preset: ScanPreset = None


def configure(options: Options, given: Given) -> SuggestConfig:
    given_values = {"rollouts": options.rollouts, "threshold": options.threshold}
    values = settings("suggest_n", given.models.student, given_values, options.preset)
    return SuggestConfig(
        **given.sampled_as_training(options.preset),
        dataset=options.dataset,
        seed=given.run.seed,
        **values,
    )


def run(cfg: SuggestConfig, paths: Paths) -> Result:
    """Scan, write the cumulative curve and the suggested N; returns run, curve and summary."""
    cfg = cfg.resolved()
    problems = analysis.scan_problems(cfg.dataset, cfg.pair.student, cfg.rollouts)
    student, teacher = analysis.load_pair(cfg.pair, cfg.batch_size)
    run_dir = open_run(paths.results_dir, "suggest_n", asdict(cfg), paths.run_id)
    scan = analysis.scan(
        student, teacher, problems, cfg.rollouts, cfg.sampling, cfg.seed, paths.show_progress
    )
    curve = analysis.cumulative_kl(scan.tokens).assign(threshold=cfg.threshold)
    curve.insert(0, "run_id", run_dir.run_id)
    write_table(run_dir.path / "curve.parquet", curve, "cumulative_kl")
    summary = pd.DataFrame(
        {
            "run_id": [run_dir.run_id],
            "threshold": [cfg.threshold],
            "n": [analysis.pick_n(curve, cfg.threshold)],
            "rollouts": [cfg.rollouts],
            "mean_length": [float(pd.Series(scan.lengths).mean())],
        }
    )
    write_table(run_dir.path / "summary.parquet", summary, "suggest_n")
    figure = FIGURE.save((curve, summary), paths, run_dir.path)
    return Result(run_dir, {"curve": curve, "summary": summary}, figure)


def print_summary(result: Result) -> None:
    """The curve at round shares, with the suggested N's row marked."""
    curve, summary, run_dir = result.tables["curve"], result.tables["summary"], result.run_dir
    n = int(summary.n.iloc[0])
    rows = [analysis.pick_n(curve, share) for share in SHOWN_SHARES]
    shown = curve.set_index(curve.position + 1).loc[sorted({*rows, n})]
    table = pd.DataFrame(
        {
            "N": shown.index,
            "cumulative KL %": shown.cumulative_share.values * 100,
            "mean KL at N": shown.mean_kl.values,
            "rollouts reaching N": shown.tokens.values,
            "": ["<- suggested" if i == n else "" for i in shown.index],
        }
    )
    print_table(table, f"Cumulative per-position KL, run {run_dir.run_id}")
    row = summary.iloc[0]
    print(
        f"suggested N = {n}: the first {n} positions hold {row.threshold * 100:.0f}% of the "
        f"trajectory's KL ({int(row.rollouts)} rollouts, mean length {row.mean_length:.0f} tokens)"
    )


EXPERIMENT = Experiment(
    command="suggest-n",
    folder="suggest_n",
    help="Finding 10: pick N where the first N positions hold 45% of the rollouts' KL.",
    options=Options,
    groups=(ModelOptions, SamplingOptions, RunOptions),
    configure=configure,
    run=run,
    print_summary=print_summary,
    figure=FIGURE,
    order=100,
    finding="10 choosing N",
    step=3,
)

"""The scan skeleton: what `positions`, `suggest-n`, `tokens`, `cascade` and `submode` share.

A scan samples student rollouts on prompts and scores every token against the teacher
(`esr_lab.analysis`). It comes in two kinds, each a config, its options and a configure:
- a scan of the untrained student (`ScanConfig`, `ScanOptions`, `configure_scan`): its models
  and sampling come down the road `train` takes under the same preset and recipe
  (`Given.sampled_as_training`), so one preset samples alike in every command;
- a scan before and after ESR training (`TrainedScanConfig`, `TrainedScanOptions`,
  `configure_trained_scan`): models, sampling, seed and the ESR run come from the training
  options (`TrainOptions.config`); the ESR student is `--esr-checkpoint`, or else the run
  trained (or reused) under its content-addressed id.
Either kind opens its run with `open_scan` and scans with `OpenScan.scan`; what a scan then
makes of the per-token table is its own module's business.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from esr_lab import analysis
from esr_lab.config import ModelPair, Sampling
from esr_lab.options import (
    EsrCheckpoint,
    Given,
    ScanDataset,
    ScanPreset,
    ScanRollouts,
    Window,
    default_train_config,
    settings,
)
from esr_lab.records import Paths, RunDir, open_run

if TYPE_CHECKING:
    from esr_lab.data import Problem
    from esr_lab.policy import Policy
    from esr_lab.train_config import TrainConfig


@dataclass(frozen=True)
class ScanConfig:
    """What every scan of the untrained student records; a scan's config adds its own fields."""

    pair: ModelPair = field(default_factory=ModelPair)
    sampling: Sampling = field(default_factory=Sampling)
    recipe: str = "esr-lab"  # the recipe the sampling came from (recipes.RECIPES)
    preset: str | None = None  # the preset named on the command line
    dataset: str | None = None  # None: the toy world's training prompts, else math500
    rollouts: int = 1000
    seed: int = 0
    batch_size: int = 64

    def resolved(self):
        """The config checked (one-line errors); a scan's config checks its own fields after."""
        analysis.check_rollouts(self.rollouts)
        return self


@dataclass(frozen=True)
class TrainedScanConfig:
    """What every scan before and after ESR training records; `base` holds the pair, sampling,
    seed, N and the training settings of the ESR run."""

    base: TrainConfig = field(default_factory=default_train_config)
    esr_checkpoint: str | None = None
    dataset: str | None = None  # None: the toy world's training prompts, else math500
    rollouts: int = 1000
    batch_size: int = 64

    @property
    def pair(self) -> ModelPair:
        return self.base.pair

    @property
    def sampling(self) -> Sampling:
        return self.base.sampling

    @property
    def seed(self) -> int:
        return self.base.seed

    def esr(self) -> TrainConfig:
        """The ESR(N) run whose final checkpoint is the trained student, resolved."""
        return replace(self.base, selector="first_n").resolved()

    def resolved(self):
        """The config checked (one-line errors); a scan's config checks its own fields after."""
        analysis.check_rollouts(self.rollouts)
        return self


@dataclass
class ScanOptions:
    dataset: ScanDataset = None
    rollouts: ScanRollouts = None
    preset: ScanPreset = None


@dataclass
class TrainedScanOptions:
    n: Window = None
    esr_checkpoint: EsrCheckpoint = None
    dataset: ScanDataset = None
    rollouts: ScanRollouts = None


def configure_scan(
    config: type[ScanConfig],
    command: str,
    options: ScanOptions,
    given: Given,
    read: dict[str, Any],
    **taken: Any,
) -> ScanConfig:
    """`config` from the command line, then the preset's `[command]` table, then its defaults:
    `read` are the command's own options that a preset may set, `taken` those it may not."""
    given_values = {"rollouts": options.rollouts, **read}
    values = settings(command, given.models.student, given_values, options.preset)
    return config(
        **given.sampled_as_training(options.preset),
        dataset=options.dataset,
        seed=given.run.seed,
        **taken,
        **values,
    )


def configure_trained_scan(
    config: type[TrainedScanConfig],
    command: str,
    options: TrainedScanOptions,
    given: Given,
    read: dict[str, Any],
    **taken: Any,
) -> TrainedScanConfig:
    """`config` as `configure_scan` makes one, its ESR run from the training options."""
    given_values = {"rollouts": options.rollouts, **read}
    values = settings(command, given.models.student, given_values, given.train.preset)
    return config(
        base=given.train.config(given, n=options.n, selector="first_n"),
        esr_checkpoint=options.esr_checkpoint,
        dataset=options.dataset,
        **taken,
        **values,
    )


@dataclass(frozen=True)
class OpenScan:
    """A scan's run folder, prompts and models, ready to scan."""

    run_dir: RunDir
    problems: list[Problem]
    student: Policy
    teacher: Policy
    cfg: ScanConfig | TrainedScanConfig
    show_progress: bool

    def scan(self, policy: Policy | None = None, label: str = "scan") -> analysis.Scan:
        """Rollouts of `policy` (default: the student), each token scored against the teacher;
        every policy samples on the same seeds, so base and trained students compare alike."""
        student = self.student if policy is None else policy
        cfg = self.cfg
        return analysis.scan(
            student,
            self.teacher,
            self.problems,
            cfg.rollouts,
            cfg.sampling,
            cfg.seed,
            self.show_progress,
            label,
        )


def open_scan(
    folder: str, cfg: ScanConfig | TrainedScanConfig, paths: Paths, **recorded: Any
) -> OpenScan:
    """The prompts, then the models, then the run folder (its config.json: `cfg` and
    `recorded`), so that bad prompts or models fail before anything is written."""
    problems = analysis.scan_problems(cfg.dataset, cfg.pair.student, cfg.rollouts)
    student, teacher = analysis.load_pair(cfg.pair, cfg.batch_size)
    run_dir = open_run(paths.results_dir, folder, dict(asdict(cfg), **recorded), paths.run_id)
    return OpenScan(run_dir, problems, student, teacher, cfg, paths.show_progress)

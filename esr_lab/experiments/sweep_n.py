"""Finding 3, the N sweep: ESR for several window lengths N, against full OPD and a
progressive schedule.

Claim (PAPER.md, best MATH-500 avg@4): ESR-5 56.50, -10 59.50, -20 60.20, -50 62.45,
-100 64.25, -150 65.70, -200 66.75; progressive 62.30; full OPD 65.60 at step 50, then
collapsing to 43.80. Accuracy plateaus for N in [50, 200]: a short window is enough.

Command: esr-lab sweep-n --student Qwen/Qwen2.5-Math-1.5B --teacher Qwen/Qwen3-1.7B
         (no options: the toy world's preset)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from esr_lab.errors import UserError
from esr_lab.experiments.common import run_variants
from esr_lab.figures import plot_sweep_n
from esr_lab.train import TrainConfig

PAPER_NS = (5, 10, 20, 50, 100, 150, 200)


@dataclass(frozen=True)
class SweepConfig:
    base: TrainConfig = field(default_factory=TrainConfig)
    ns: tuple[int, ...] = PAPER_NS
    full: bool = True
    progressive: bool = True

    def variants(self) -> list[TrainConfig]:
        if not self.ns or min(self.ns) < 1:
            raise UserError(f"--ns must be integers >= 1, got {list(self.ns)}")
        esr = [replace(self.base, selector="first_n", n=n) for n in sorted(set(self.ns))]
        extra = []
        if self.full:
            extra.append(replace(self.base, selector="all", n=None))
        if self.progressive:
            schedule = (min(self.ns), max(self.ns))
            extra.append(replace(self.base, selector="first_n", n=None, progressive=schedule))
        return esr + extra


def run(cfg: SweepConfig, results_dir: Path, figures_dir: Path, run_id=None, show_progress=True):
    variants = cfg.variants()
    config = dict(asdict(cfg), variants=[v.label for v in variants])
    parent, summary, _ = run_variants(
        "sweep_n", config, variants, results_dir, run_id, show_progress
    )
    plot_sweep_n(summary, [figures_dir / "sweep_n.png", parent.path / "sweep_n.png"])
    return parent, summary

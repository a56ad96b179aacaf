"""Finding 11, which tokens carry the KL: mean reverse KL per token category (planning words,
structural, numbers, operators, LaTeX delimiters, continuation) x position bin, and the 20
tokens with the highest mean KL among those seen often enough.

Claim (PAPER.md): bins 0-4, 5-19, 20-49, 50-99, 100-199, 200-499; top-20 tokens with at least
50 occurrences. The high-KL tokens are the early planning and structure tokens, which is why
a window over the first positions captures most of the useful signal.

Categories are regular expressions matched against each token's decoded, stripped text, the
first match winning (`analysis.DEFAULT_CATEGORIES`); `--categories FILE` replaces them with a
TOML file of `name = "regex"` lines, in order. Unmatched tokens are "other".

Command: esr-lab tokens --student Qwen/Qwen2.5-Math-1.5B --teacher Qwen/Qwen3-1.7B
         --min-count 50            (no options: the toy world's preset)
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from esr_lab import analysis
from esr_lab.config import ModelPair, Sampling
from esr_lab.console import print_table
from esr_lab.errors import UserError
from esr_lab.figures import plot_tokens
from esr_lab.records import RunDir, open_run, write_table

PAPER_EDGES = (0, 5, 20, 50, 100, 200)


@dataclass(frozen=True)
class TokensConfig:
    pair: ModelPair = field(default_factory=ModelPair)
    sampling: Sampling = field(default_factory=Sampling)
    dataset: str | None = None  # None: the toy world's training prompts, else math500
    rollouts: int = 1000
    edges: tuple[int, ...] = PAPER_EDGES
    min_count: int = 50
    top: int = 20
    categories: dict[str, str] = field(default_factory=lambda: dict(analysis.DEFAULT_CATEGORIES))
    seed: int = 0
    batch_size: int = 64

    def check(self) -> None:
        analysis.check_rollouts(self.rollouts)
        analysis.check_edges(self.edges)
        analysis.compile_categories(self.categories)
        if self.min_count < 1 or self.top < 1:
            raise UserError(
                f"--min-count and --top must be at least 1, got {self.min_count} and {self.top}"
            )


def read_categories(path: Path) -> dict[str, str]:
    """`name = "regex"` lines of a TOML file, in order."""
    try:
        table = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise UserError(f"cannot read categories from '{path}': {err}") from None
    if not table or not all(isinstance(v, str) for v in table.values()):
        raise UserError(f"'{path}' must hold lines like planning = \"(?i)^(plan|first)$\"")
    return table


def run(
    cfg: TokensConfig,
    results_dir: Path = Path("results"),
    figures_dir: Path = Path("figures"),
    run_id: str | None = None,
    show_progress: bool = True,
) -> tuple[RunDir, pd.DataFrame, pd.DataFrame]:
    """Scan, then tabulate categories x bins and the top tokens; returns run, cells, top."""
    cfg.check()
    problems = analysis.scan_problems(cfg.dataset, cfg.pair.student, cfg.rollouts)
    student, teacher = analysis.load_pair(cfg.pair, cfg.batch_size)
    run_dir = open_run(results_dir, "tokens", asdict(cfg), run_id)
    scan = analysis.scan(
        student, teacher, problems, cfg.rollouts, cfg.sampling, cfg.seed, show_progress
    )
    ids = scan.tokens.token_id.unique().tolist()
    texts = {i: student.tokenizer.decode([i]) for i in ids}
    cells = analysis.category_table(scan.tokens, texts, cfg.categories, cfg.edges)
    cells.insert(0, "run_id", run_dir.run_id)
    write_table(run_dir.path / "categories.parquet", cells, "token_categories")
    top = analysis.top_tokens(scan.tokens, texts, cfg.min_count, cfg.top)
    top.insert(0, "run_id", run_dir.run_id)
    write_table(run_dir.path / "top_tokens.parquet", top, "top_kl_tokens")
    plot_tokens(cells, [figures_dir / "tokens.png", run_dir.path / "tokens.png"])
    return run_dir, cells, top


def print_summary(cells: pd.DataFrame, top: pd.DataFrame, run_dir: RunDir, min_count: int):
    grid = cells.pivot(index="category", columns="bin_start", values="mean_kl")
    labels = cells.drop_duplicates("bin_start").set_index("bin_start").position_bin
    grid.columns = [labels[s] for s in grid.columns]
    print_table(grid.reset_index(), f"Mean reverse KL by category x position, run {run_dir.run_id}")
    shown = top.drop(columns=["run_id"]).assign(token=top.token.map(repr))
    print_table(shown, f"Top-{len(top)} highest-KL tokens (>= {min_count} occurrences)")

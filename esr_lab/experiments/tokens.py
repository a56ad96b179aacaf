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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated

from esr_lab import analysis
from esr_lab.console import print_table
from esr_lab.errors import UserError
from esr_lab.experiments.registry import Experiment, ExperimentResult, Figure, Paths
from esr_lab.experiments.scans import ScanConfig, ScanOptions, configure_scan, open_scan
from esr_lab.figures import plot_tokens
from esr_lab.options import SAMPLING_GROUPS, Given, int_list, opt
from esr_lab.records import declare, write_table

PAPER_EDGES = (0, 5, 20, 50, 100, 200)


SCHEMAS = declare(
    {
        "token_categories": (
            "run_id",
            "category",
            "position_bin",
            "bin_start",
            "tokens",
            "mean_kl",
        ),
        "top_kl_tokens": ("run_id", "rank", "token", "token_id", "count", "mean_kl"),
    }
)


FIGURE = Figure("tokens.png", ("categories.parquet",), plot_tokens)


@dataclass(frozen=True)
class TokensConfig(ScanConfig):
    edges: tuple[int, ...] = PAPER_EDGES
    min_count: int = 50
    top: int = 20
    categories: dict[str, str] = field(default_factory=lambda: dict(analysis.DEFAULT_CATEGORIES))

    def resolved(self) -> TokensConfig:
        super().resolved()
        analysis.check_edges(self.edges)
        analysis.compile_categories(self.categories)
        if self.min_count < 1 or self.top < 1:
            raise UserError(
                f"--min-count and --top must be at least 1, got {self.min_count} and {self.top}"
            )
        return replace(self, edges=tuple(self.edges))


def read_categories(path: Path) -> dict[str, str]:
    """`name = "regex"` lines of a TOML file, in order."""
    try:
        table = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise UserError(f"cannot read categories from '{path}': {err}") from None
    if not table or not all(isinstance(v, str) for v in table.values()):
        raise UserError(f"'{path}' must hold lines like planning = \"(?i)^(plan|first)$\"")
    return table


@dataclass
class Options(ScanOptions):
    edges: Annotated[str | None, opt("Position bin edges [paper: 0,5,20,50,100,200].")] = None
    min_count: Annotated[int | None, opt("Occurrences for a top token [paper: 50].")] = None
    top: Annotated[int, opt("How many highest-KL tokens to list.")] = 20
    categories: Annotated[Path | None, opt('TOML file of category = "regex" lines.')] = None


def configure(options: Options, given: Given) -> TokensConfig:
    own = {
        "min_count": options.min_count,
        "edges": int_list(options.edges or None, "--edges"),
        "categories": read_categories(options.categories) if options.categories else None,
    }
    return configure_scan(TokensConfig, "tokens", options, given, own, top=options.top)


def run(cfg: TokensConfig, paths: Paths) -> ExperimentResult:
    """Scan, then tabulate categories x bins and the top tokens; returns run, cells, top."""
    cfg = cfg.resolved()
    opened = open_scan("tokens", cfg, paths)
    run_dir = opened.run_dir
    scan = opened.scan()
    ids = scan.tokens.token_id.unique().tolist()
    texts = {i: opened.student.tokenizer.decode([i]) for i in ids}
    cells = analysis.category_table(scan.tokens, texts, cfg.categories, cfg.edges)
    cells.insert(0, "run_id", run_dir.run_id)
    write_table(run_dir.path / "categories.parquet", cells, "token_categories")
    top = analysis.top_tokens(scan.tokens, texts, cfg.min_count, cfg.top)
    top.insert(0, "run_id", run_dir.run_id)
    write_table(run_dir.path / "top_tokens.parquet", top, "top_kl_tokens")
    figure = FIGURE.save(run_dir.path, paths)
    tables = {"categories": cells, "top_tokens": top}
    return ExperimentResult(run_dir, tables, figure, facts={"min_count": cfg.min_count})


def print_summary(result: ExperimentResult) -> None:
    cells, top, run_dir = result.tables["categories"], result.tables["top_tokens"], result.run_dir
    min_count = result.facts["min_count"]
    grid = cells.pivot(index="category", columns="bin_start", values="mean_kl")
    labels = cells.drop_duplicates("bin_start").set_index("bin_start").position_bin
    grid.columns = [labels[s] for s in grid.columns]
    print_table(grid.reset_index(), f"Mean reverse KL by category x position, run {run_dir.run_id}")
    shown = top.drop(columns=["run_id"]).assign(token=top.token.map(repr))
    print_table(shown, f"Top-{len(top)} highest-KL tokens (>= {min_count} occurrences)")


EXPERIMENT = Experiment(
    command="tokens",
    folder="tokens",
    help="Finding 11: mean KL by token category x position bin, and the highest-KL tokens.",
    options=Options,
    groups=SAMPLING_GROUPS,
    configure=configure,
    run=run,
    print_summary=print_summary,
    figure=FIGURE,
    order=110,
    finding="11 token categories",
    step=4,
)

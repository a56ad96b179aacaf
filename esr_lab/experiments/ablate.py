"""Which of the released code's differences makes full OPD collapse, and does ESR beat full OPD
with and without it.

Claim (PAPER.md, findings 2 and 9): full OPD peaks (65.60 at step 50) and then collapses
(43.80 at step 200) with a signature: multi-boxed responses 2.9 -> 89.1%, repetitive responses
5.9 -> 77.5%, mean length 1,388 -> 4,558 characters, strict avg@4 falling while relaxed stays
~70 and first-boxed ~65; ESR-100 (65.85) stays within ~3 points of its peak. Those numbers
come from the paper's released code, which trains differently from its prose (recipes.py). This
experiment trains full OPD and ESR under `--recipe esr-lab` and `--recipe paper-code`, and full
OPD under esr-lab's recipe with each of the code's differences switched on alone, and reports
per variant the best and final avg@k, strict / relaxed / first-boxed accuracy and the collapse
signature at every evaluation. The ESR variants use the preset's N; all variants share every
other setting (steps, learning rate, prompts, seeds).

Command: esr-lab ablate --student Qwen/Qwen2.5-Math-1.5B --teacher Qwen/Qwen3-1.7B
         esr-lab ablate --student capable-student --teacher capable-teacher
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Annotated

import pandas as pd

from esr_lab.console import print_table
from esr_lab.errors import UserError
from esr_lab.experiments.common import print_seed_summary, train_family, with_seeds
from esr_lab.experiments.registry import Experiment, ExperimentResult, Figure, Paths
from esr_lab.figures import plot_ablate
from esr_lab.options import (
    SEEDED_TRAINING_GROUPS,
    Given,
    Window,
    default_train_config,
    opt,
    settings,
)
from esr_lab.records import declare, write_table

if TYPE_CHECKING:
    from esr_lab.train_config import TrainConfig

# Each difference between the recipes, by the TrainConfig / Sampling fields that carry it; its
# value is read from the paper-code config, so a preset or option that changes it is honoured.
DIFFERENCES: dict[str, tuple[str, ...]] = {
    "stop token": ("loss_on_stop_token", "strip_tokens"),  # and which trailing ids it strips
    "reduction": ("reduction",),
    "schedule": ("lr_schedule", "warmup_ratio"),
    "regularisation": ("weight_decay", "lora_dropout"),
    "top-p": ("top_p", "eval_top_p"),  # the code samples rollouts at 0.95, evaluates at 1.0
    "top-k": ("top_k", "eval_top_k"),  # HF generate's 50 in rollouts; vLLM's off in evaluation
    "teacher prompt": ("teacher_prompt",),
    "student context": ("student_context",),
    "end of turn": ("stop_at_end_of_turn",),
    "training sample": ("train_sample",),
    "cross-tokenizer": ("cross_clamp", "cross_unaligned"),
}
# The paper-code settings that no single run of full OPD can switch on, and why.
NOT_ABLATED: dict[str, str] = {
    "progressive_schedule": "progressive N only; full OPD trains every position",
    "protocol": "evaluation of code and function calling; the ablation evaluates math",
}
# `--differences none`: the four whole-recipe variants only (e.g. to redraw a seeded study)
NO_DIFFERENCES = "none"


SCHEMAS = declare(
    {
        "ablate_evals": (
            "run_id",
            "variant",
            "recipe",
            "difference",
            "train_run",
            "step",
            "avg_at_k",
            "avg_ci_low",
            "avg_ci_high",
            "relaxed_avg_at_k",
            "first_boxed_avg_at_k",
            "multi_boxed_pct",
            "boxes_per_response",
            "repetitive_pct",
            "mean_tokens",
        ),
        "ablate_summary": (
            "run_id",
            "variant",
            "recipe",
            "difference",
            "base_avg_at_k",
            "best_step",
            "best_avg_at_k",
            "best_ci_low",
            "best_ci_high",
            "final_step",
            "final_avg_at_k",
            "final_ci_low",
            "final_ci_high",
            "final_relaxed_avg_at_k",
            "final_first_boxed_avg_at_k",
            "final_multi_boxed_pct",
            "final_boxes_per_response",
            "final_repetitive_pct",
            "final_mean_tokens",
            "collapsed",
        ),
    }
)
_EVALS = SCHEMAS["ablate_evals"]
EVAL_COLUMNS = _EVALS[_EVALS.index("avg_at_k") :]  # from train_evals, per variant and step


FIGURE = Figure("ablate.png", ("ablate_evals.parquet",), plot_ablate)


@dataclass(frozen=True)
class Variant:
    """One training run of the ablation: its name, recipe and the difference switched on."""

    name: str
    recipe: str
    difference: str  # "" for a whole recipe
    cfg: TrainConfig


def _setting(cfg: TrainConfig, key: str) -> object:
    """A flat option's value, from the config itself or its sampling settings."""
    return getattr(cfg, key) if hasattr(cfg, key) else getattr(cfg.sampling, key)


@dataclass(frozen=True)
class AblateConfig:
    esr_lab: TrainConfig = field(default_factory=default_train_config)  # under --recipe esr-lab
    paper_code: TrainConfig = field(default_factory=default_train_config)  # --recipe paper-code
    differences: tuple[str, ...] = tuple(DIFFERENCES)
    seeds: tuple[int, ...] | None = None  # --seeds; None: the bases' one seed

    def resolved(self) -> AblateConfig:
        unknown = sorted(set(self.differences) - set(DIFFERENCES))
        if unknown:
            raise UserError(
                f"unknown --differences {unknown}; choose from {', '.join(DIFFERENCES)}, "
                f"or {NO_DIFFERENCES}"
            )
        return self

    def variants(self) -> list[Variant]:
        self.resolved()  # every bad value a one-line error before anything is built
        out = []
        for recipe, base in (("esr-lab", self.esr_lab), ("paper-code", self.paper_code)):
            full = replace(base, selector="all", n=None)
            esr = replace(base, selector="first_n")
            out += [Variant(f"{recipe} full", recipe, "", full)]
            out += [Variant(f"{recipe} {esr.label}", recipe, "", esr)]
        esr_lab_full, paper_full = out[0].cfg, out[2].cfg
        for name in self.differences:
            values = {key: _setting(paper_full, key) for key in DIFFERENCES[name]}
            cfg = esr_lab_full.with_settings(values)
            out.append(Variant(f"full + {name}", "esr-lab", name, cfg))
        return out

    def comparisons(self) -> list[tuple[str, str]]:
        """The findings' paired differences: ESR minus full OPD under each recipe, and each
        difference switched on alone minus the full OPD it was switched on in."""
        names = [v.name for v in self.variants()]
        esr_vs_full = [(names[1], names[0]), (names[3], names[2])]
        return esr_vs_full + [(name, names[0]) for name in names[4:]]

    def seeded_variants(self) -> list[Variant]:
        """Every variant once per seed (variant-major), as run_variants trains them."""
        return [
            replace(v, cfg=cfg) for v in self.variants() for cfg in with_seeds([v.cfg], self.seeds)
        ]


def eval_table(run_id: str, variants: list[Variant], evals: pd.DataFrame) -> pd.DataFrame:
    """Every evaluation of every variant: accuracy three ways and the collapse signature."""
    from esr_lab.loop import variant_run_id

    frames = []
    for variant in variants:
        train_run = variant_run_id(variant.cfg)
        part = evals[evals.run_id == train_run].sort_values("step")
        head = {
            "run_id": run_id,
            "variant": variant.name,
            "recipe": variant.recipe,
            "difference": variant.difference,
            "train_run": train_run,
            "step": part.step.to_numpy(),
        }
        frames.append(pd.DataFrame({**head, **{c: part[c].to_numpy() for c in EVAL_COLUMNS}}))
    return pd.concat(frames, ignore_index=True)


def summary_table(evals: pd.DataFrame, collapsed: list[bool]) -> pd.DataFrame:
    """Per variant: the untrained, best (the paper's reported number) and final evaluation,
    each with its CI; the final one's three accuracies and collapse signature."""
    rows = []
    # one part per training run: a variant's seeds apart (each variant has one run per seed)
    parts = [part for _, part in evals.groupby(["variant", "train_run"], sort=False)]
    for part, flag in zip(parts, collapsed, strict=True):
        trained = part[part.step > 0]
        best, final = trained.loc[trained.avg_at_k.idxmax()], trained.iloc[-1]
        row = {c: part.iloc[0][c] for c in ("run_id", "variant", "recipe", "difference")}
        row["base_avg_at_k"] = part[part.step == 0].avg_at_k.iloc[0]
        for name, at in (("best", best), ("final", final)):
            row |= {f"{name}_step": int(at.step), f"{name}_avg_at_k": at.avg_at_k}
            row |= {f"{name}_ci_low": at.avg_ci_low, f"{name}_ci_high": at.avg_ci_high}
        row |= {f"final_{c}": final[c] for c in EVAL_COLUMNS[3:]}
        rows.append({**row, "collapsed": flag})
    return pd.DataFrame(rows)


@dataclass
class Options:
    n: Window = None
    differences: Annotated[
        str | None,
        opt("Comma-separated recipe differences to switch on alone, or none [default: all]."),
    ] = None


def configure(options: Options, given: Given) -> AblateConfig:
    if given.train.recipe is not None:
        raise UserError("ablate trains under both recipes; drop --recipe")
    names = options.differences.split(",") if options.differences else None
    values = settings("ablate", given.models.student, {"differences": names}, given.train.preset)
    chosen = tuple(name.strip() for name in values.get("differences", [])) or tuple(DIFFERENCES)
    bases = {
        recipe: replace(given.train, recipe=recipe).config(given, n=options.n)
        for recipe in ("esr-lab", "paper-code")
    }
    return AblateConfig(
        esr_lab=bases["esr-lab"],
        paper_code=bases["paper-code"],
        differences=() if chosen == (NO_DIFFERENCES,) else chosen,
        seeds=given.seeds,
    )


def run(cfg: AblateConfig, paths: Paths) -> ExperimentResult:
    """Train every variant (content-addressed, shared with other experiments), then tabulate."""
    cfg = cfg.resolved()
    variants = cfg.variants()
    names = [v.name for v in variants]
    trained = train_family("ablate", cfg, paths, [v.cfg for v in variants], names)
    parent = trained.parent
    table = eval_table(parent.run_id, cfg.seeded_variants(), trained.evals)
    write_table(parent.path / "ablate_evals.parquet", table, "ablate_evals")
    result = summary_table(table, trained.summary.collapsed.tolist())
    write_table(parent.path / "ablate_summary.parquet", result, "ablate_summary")
    figure = FIGURE.save(parent.path, paths)
    tables = {"ablate_evals": table, "ablate_summary": result, **trained.seed_tables}
    return ExperimentResult(parent, tables, figure)


def print_summary(result: ExperimentResult) -> None:
    summary = result.tables["ablate_summary"]
    title = f"Recipe ablation, run {result.run_dir.run_id}"
    print_table(terminal_table(summary), title)
    print_seed_summary(result.tables, title)
    for line in verdict(summary):
        print(line)


def terminal_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The terminal view, in percent; accuracy at the final step three ways."""

    def pct(column: str) -> pd.Series:
        return (summary[column] * 100).round(2)

    def with_ci(name: str) -> pd.Series:
        low, high = pct(f"{name}_ci_low").astype(str), pct(f"{name}_ci_high").astype(str)
        return pct(f"{name}_avg_at_k").astype(str) + " (" + low + "-" + high + ")"

    return pd.DataFrame(
        {
            "variant": summary.variant,
            "best % (CI)": with_ci("best"),
            "step": summary.best_step,
            "final % (CI)": with_ci("final"),
            "relaxed %": pct("final_relaxed_avg_at_k"),
            "first-boxed %": pct("final_first_boxed_avg_at_k"),
            "multi-boxed %": summary.final_multi_boxed_pct.round(1),
            "boxes/resp": summary.final_boxes_per_response.round(2),
            "repetitive %": summary.final_repetitive_pct.round(1),
            "tokens": summary.final_mean_tokens.round(1),
            "collapsed": summary.collapsed.map({True: "yes", False: "no"}),
        }
    )


def verdict(summary: pd.DataFrame) -> list[str]:
    """The two answers, read off the table: which variants collapsed, and ESR minus full OPD
    (best across steps) under each recipe; with --seeds, the mean over seeds."""
    collapsed = list(dict.fromkeys(summary[summary.collapsed].variant))
    lines = [
        f"collapsed (final below best by more than the --collapse-drop share): "
        f"{', '.join(collapsed) if collapsed else 'none'}"
    ]
    best = summary.groupby("variant", sort=False).best_avg_at_k.mean()
    for recipe in ("esr-lab", "paper-code"):
        esr = next(v for v in best.index if v.startswith(f"{recipe} ") and v != f"{recipe} full")
        gap = (best[esr] - best[f"{recipe} full"]) * 100
        lines.append(f"{recipe}: {esr} minus full OPD, best avg@k: {gap:+.2f} points")
    return lines


EXPERIMENT = Experiment(
    command="ablate",
    folder="ablate",
    help=(
        "Full OPD and ESR under both recipes, and full OPD with each paper-code difference "
        "alone: which difference, if any, makes full OPD collapse."
    ),
    options=Options,
    groups=SEEDED_TRAINING_GROUPS,
    configure=configure,
    run=run,
    print_summary=print_summary,
    figure=FIGURE,
    order=70,
    finding="9 collapse: recipe ablation",
    step=10,
)

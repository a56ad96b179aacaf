"""Per-position analysis of student rollouts: the one scan behind `positions`, `cascade`,
`submode`, `tokens` and `suggest-n`, and the statistics those commands take of it.

`scan` samples student rollouts and scores every response token against the teacher (one row
per token, `scoring.position_stats`). Everything else here is a pure function of that table, so
it is testable on hand-built values: this module imports torch only inside `scan`, never at
import time. Figures never call it: they read the tables the experiments saved.

Seeds are (seed, "scan", problem, sample) for every model, so a base and a trained student are
compared on the same random streams.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from esr_lab.errors import UserError

if TYPE_CHECKING:
    from esr_lab.config import ModelPair, Sampling
    from esr_lab.data import Problem
    from esr_lab.policy import Policy

STAT_COLUMNS = ("reverse_kl", "student_entropy", "teacher_entropy")

# Token categories of finding 11: the first pattern that matches a token's stripped text wins;
# tokens matching none are "other". Patterns work for byte-level BPE vocabularies (Qwen, toy).
DEFAULT_CATEGORIES: dict[str, str] = {
    "structural": r"^[\s.,:;!?()\[\]]*$",
    "numbers": r"^\d+([.,]\d+)*$",
    "operators": r"^([-+*/=×÷^<>]+|\\(times|cdot|div|pm|le|ge|neq|approx))$",
    "latex_delimiters": r"^(\$+|\{|\}|\\[\[\]()]|\\?boxed\{?|bo|xed|\\[a-z]*|\\frac\{?)$",
    "planning": r"(?i)^(let|plan|first|step|split|multiply|directly|need|will|approach|strategy|"
    r"consider|start|solve|find|compute|calculate|use|add|subtract|divide)$",
    "continuation": r"(?i)^(so|then|next|now|thus|therefore|hence|wait|and|but|since|because|"
    r"which|gives|means|finally|also)$",
}


@dataclass(frozen=True)
class Scan:
    """A scan's per-token statistics and the length of every rollout (empty ones included)."""

    tokens: pd.DataFrame
    lengths: list[int]


def load_pair(pair: ModelPair, batch_size: int = 64) -> tuple[Policy, Policy]:
    """The student and teacher of `pair` as policies."""
    from esr_lab.policy import load_policy

    return load_policy(pair.student, pair, batch_size), load_policy(pair.teacher, pair, batch_size)


def scan_problems(dataset: str | None, student: str, limit: int) -> list[Problem]:
    """Prompts to scan: a toy world's training split (as training sees), else `dataset`."""
    from esr_lab.config import default_dataset
    from esr_lab.data import load_problems
    from esr_lab.toy import TOY_WORLDS

    name = dataset or default_dataset(student)
    return load_problems(name, limit=limit, split="train" if name in TOY_WORLDS else None)


def rollouts(
    policy: Policy, problems: Sequence[Problem], rows: range, sampling: Sampling, seed: int
) -> tuple[list[Problem], list[list[int]]]:
    """Seeded responses (stop token removed) for `rows`, row i answering problem i mod P as
    its sample i // P; returns each row's problem and response."""
    from esr_lab.seeding import row_seed

    pairs = [(problems[i % len(problems)], i // len(problems)) for i in rows]
    prompts = [policy.prompt_ids(p.problem) for p, _ in pairs]
    seeds = [row_seed(seed, "scan", p.id, j) for p, j in pairs]
    out = policy.engine.generate(prompts, seeds, sampling)
    return [p for p, _ in pairs], [policy.response_ids(out, i) for i in range(len(pairs))]


def scan(
    student: Policy,
    teacher: Policy,
    problems: Sequence[Problem],
    n: int,
    sampling: Sampling,
    seed: int,
    show_progress: bool = True,
    label: str = "scan",
    chunk: int = 64,
) -> Scan:
    """Sample n student rollouts and score each token against the teacher, chunk by chunk."""
    from esr_lab.console import progress_bar
    from esr_lab.crosstok import pair_position_stats as position_stats

    frames, lengths = [], []
    with progress_bar(show_progress) as bar:
        task = bar.add_task(f"{label}: rollouts and scoring", total=n)
        for start in range(0, n, chunk):
            part = range(start, min(n, start + chunk))
            rows, responses = rollouts(student, problems, part, sampling, seed)
            stats = position_stats(student, teacher, rows, responses)
            frames.append(stats.assign(row=stats.row + start))
            lengths += [len(r) for r in responses]
            bar.advance(task, len(responses))
    return Scan(pd.concat(frames, ignore_index=True), lengths)


def check_rollouts(rollouts: int) -> None:
    if rollouts < 1:
        raise UserError(f"--rollouts must be at least 1, got {rollouts}")


def check_bin_width(width: int) -> None:
    if width < 1:
        raise UserError(f"--bin-width must be at least 1 token, got {width}")


def position_bins(tokens: pd.DataFrame, width: int) -> pd.DataFrame:
    """Mean of each statistic over the tokens in [k*width, (k+1)*width), with the token count."""
    check_bin_width(width)
    start = tokens.position // width * width
    grouped = tokens.groupby(start.rename("bin_start"))
    bins = grouped[list(STAT_COLUMNS)].mean()
    bins.insert(0, "tokens", grouped.size())
    bins.insert(0, "bin_end", bins.index + width)
    return bins.reset_index()


def tagged_bins(
    tokens: pd.DataFrame, width: int, model: str, window: int, run_id: str
) -> pd.DataFrame:
    """`position_bins` with the columns of the position_bins table."""
    bins = position_bins(tokens, width)
    return bins.assign(run_id=run_id, model=model, window=window)[
        ["run_id", "model", "window", "bin_start", "bin_end", "tokens", *STAT_COLUMNS]
    ]


def cascade_summary(bins: pd.DataFrame, window: int) -> pd.DataFrame:
    """Token-weighted mean reverse KL per region, base vs trained, and the share of the gap
    closed (100 * (base - trained) / base). `bins` has a `model` column ("base", "esr"); a bin
    belongs to the trained region when it starts before `window`."""
    region = bins.bin_start.map(lambda s: "trained" if s < window else "untrained")
    weighted = bins.assign(region=region, kl_mass=bins.reverse_kl * bins.tokens)
    sums = weighted.groupby(["region", "model"])[["kl_mass", "tokens"]].sum()
    means = (sums.kl_mass / sums.tokens).unstack("model")
    out = pd.DataFrame(
        {"region": means.index, "base_kl": means["base"].values, "trained_kl": means["esr"].values}
    )
    out["closed_pct"] = 100 * (out.base_kl - out.trained_kl) / out.base_kl
    return out


def cumulative_kl(tokens: pd.DataFrame) -> pd.DataFrame:
    """Per position: token count, mean reverse KL, and the share of all rollouts' summed KL
    held by positions <= this one (the mean trajectory's cumulative share)."""
    grouped = tokens.groupby("position").reverse_kl
    curve = pd.DataFrame({"tokens": grouped.size(), "mean_kl": grouped.mean()})
    mass = grouped.sum().astype("float64")  # float32 sums can stop short of 100%
    curve["cumulative_share"] = mass.cumsum() / mass.sum()
    return curve.reset_index()


def check_share(option: str, value: float) -> None:
    if not 0 < value <= 1:
        raise UserError(f"{option} must be in (0, 1], got {value}")


def pick_n(curve: pd.DataFrame, threshold: float) -> int:
    """The smallest N (tokens) whose first N positions hold `threshold` of the total KL."""
    check_share("--threshold", threshold)
    reached = curve[curve.cumulative_share >= threshold - 1e-9]
    return int(reached.position.iloc[0]) + 1


RANK_BUCKETS = ("teacher_top1", "teacher_top2_5", "outside_top5")


def rank_bucket(rank: pd.Series) -> pd.Series:
    """Teacher rank of the student's argmax (0 = teacher's top-1) -> one of RANK_BUCKETS."""
    return pd.cut(rank, [-1, 0, 4, math.inf], labels=list(RANK_BUCKETS)).astype(str)


def submode_stats(tokens: pd.DataFrame, fraction: float = 0.1) -> dict[str, float]:
    """On the `fraction` highest-KL positions: the student's mean top-1 probability and where
    its argmax sits in the teacher's ranking (percent)."""
    check_share("--top-fraction", fraction)
    top = tokens.nlargest(max(1, math.ceil(fraction * len(tokens))), "reverse_kl")
    shares = rank_bucket(top.teacher_rank_of_student_top1).value_counts(normalize=True)
    return {
        "positions": len(top),
        "kl_threshold": float(top.reverse_kl.min()),
        "top1_prob": float(top.student_top1_prob.mean()),
        **{f"{b}_pct": float(shares.get(b, 0.0) * 100) for b in RANK_BUCKETS},
    }


def length_stats(lengths: Sequence[int]) -> dict[str, float]:
    """Response length p10 / p50 / p90 / mean, in tokens (finding 7's length table)."""
    series = pd.Series(lengths, dtype=float)
    return {
        "length_p10": float(series.quantile(0.1)),
        "length_p50": float(series.quantile(0.5)),
        "length_p90": float(series.quantile(0.9)),
        "length_mean": float(series.mean()),
    }


def check_edges(edges: Sequence[int]) -> None:
    if not edges or edges[0] != 0 or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
        raise UserError(
            f"--edges must be increasing integers starting at 0 (like 0,5,20,50), got {list(edges)}"
        )


def edge_bins(positions: pd.Series, edges: Sequence[int]) -> pd.Series:
    """Each position's bin start for bins [e_i, e_i+1), the last one open: 0,5,20 -> 0, 5, 20."""
    check_edges(edges)
    return pd.cut(positions, [*edges, math.inf], right=False, labels=list(edges)).astype(int)


def edge_label(start: int, edges: Sequence[int]) -> str:
    """'5-19' for the bin that starts at 5 with the next edge at 20; '200+' for the last."""
    later = [e for e in edges if e > start]
    return f"{start}-{later[0] - 1}" if later else f"{start}+"


def compile_categories(categories: Mapping[str, str]) -> dict[str, re.Pattern]:
    """Compiled patterns; a bad regex is a one-line error naming its category."""
    compiled = {}
    for name, pattern in categories.items():
        try:
            compiled[name] = re.compile(pattern)
        except re.error as err:
            raise UserError(f"category '{name}' has a bad pattern '{pattern}': {err}") from None
    return compiled


def categorize(texts: pd.Series, categories: Mapping[str, str]) -> pd.Series:
    """Each token text's category: the first whose pattern matches the stripped text."""
    compiled = compile_categories(categories)

    def one(text: str) -> str:
        stripped = text.strip()
        return next((n for n, p in compiled.items() if p.search(stripped)), "other")

    return texts.map(one)


def category_table(
    tokens: pd.DataFrame, texts: Mapping[int, str], categories: Mapping[str, str], edges
) -> pd.DataFrame:
    """Mean reverse KL and token count per (category, position bin)."""
    category = categorize(tokens.token_id.map(texts), categories)
    keyed = tokens.assign(category=category, bin_start=edge_bins(tokens.position, edges))
    cells = keyed.groupby(["category", "bin_start"]).reverse_kl.agg(["mean", "size"])
    cells = cells.rename(columns={"mean": "mean_kl", "size": "tokens"}).reset_index()
    cells.insert(1, "position_bin", [edge_label(s, edges) for s in cells.bin_start])
    return cells[["category", "position_bin", "bin_start", "tokens", "mean_kl"]]


def top_tokens(
    tokens: pd.DataFrame, texts: Mapping[int, str], min_count: int, k: int = 20
) -> pd.DataFrame:
    """The k token ids with the highest mean reverse KL among those seen >= min_count times."""
    grouped = tokens.groupby("token_id").reverse_kl.agg(["size", "mean"])
    kept = grouped[grouped["size"] >= min_count].sort_values("mean", ascending=False).head(k)
    return pd.DataFrame(
        {
            "rank": range(1, len(kept) + 1),
            "token": [texts[i] for i in kept.index],
            "token_id": kept.index.astype(int),
            "count": kept["size"].astype(int).values,
            "mean_kl": kept["mean"].values,
        }
    )

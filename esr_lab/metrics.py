"""Accuracy statistics over problems with several samples each.

avg@k is the mean over problems of each problem's share of correct samples; its confidence
interval treats problems as the independent unit (samples of one problem are correlated).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

from esr_lab import grading
from esr_lab.config import Sampling
from esr_lab.data import Problem
from esr_lab.intervals import t_interval
from esr_lab.prompts import PromptStyle
from esr_lab.seeding import row_seed

if TYPE_CHECKING:
    from esr_lab.policy import Policy


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean with a Student-t confidence interval, clipped to [0, 1] (values are accuracies)."""
    mean, _, low, high = t_interval(values, confidence)
    if len(values) < 2:
        return mean, mean, mean
    return mean, max(0.0, low), min(1.0, high)


def sample_answers(
    policy: Policy,
    problems: Sequence[Problem],
    k: int,
    sampling: Sampling,
    seed_keys: tuple,
    style: PromptStyle | None = None,
    show_progress: bool = False,
) -> pd.DataFrame:
    """k seeded samples per problem (prompted in `style`, else the policy's own); one row each.

    With `show_progress`, rows go to the engine one of its batches at a time under a progress
    bar; every row has its own seed, so the samples are the same either way."""
    pairs = [(p, j) for p in problems for j in range(k)]
    prompts = [policy.prompt_ids(p.problem, style) for p, _ in pairs]
    seeds = [row_seed(*seed_keys, p.id, j) for p, j in pairs]
    if show_progress:
        rollouts = _generate_with_bar(policy.engine, prompts, seeds, sampling)
    else:
        rollouts = policy.engine.generate(prompts, seeds, sampling)
    responses = [policy.response_ids(rollouts, i) for i in range(len(pairs))]
    return pd.DataFrame(
        {
            "problem_id": [p.id for p, _ in pairs],
            "sample": [j for _, j in pairs],
            "completion": [policy.decode(ids) for ids in responses],
            "completion_tokens": [len(ids) for ids in responses],
            "finished": rollouts.finished,
        }
    )


def _generate_with_bar(engine, prompts, seeds, sampling: Sampling):
    """engine.generate in the engine's own batches (all at once if it has none), with a bar."""
    from esr_lab.console import progress_bar
    from esr_lab.rollout import in_batches

    size = getattr(engine, "batch_size", None) or len(prompts)
    with progress_bar() as bar:
        task = bar.add_task("sampling", total=len(prompts))

        def advance(part) -> None:
            bar.advance(task, len(part))

        return in_batches(engine.generate, prompts, seeds, sampling, size, advance)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k)."""
    # Chen et al. 2021 (Codex paper), eq. 1, in its numerically stable product form.
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_pass_at_k(graded: pd.DataFrame, k: int | None = None) -> float:
    """pass@k averaged over problems; k defaults to the fewest samples any problem has (with k
    samples each, a problem passes when any sample is correct)."""
    counts = graded.groupby("problem_id", sort=False).correct.agg(["size", "sum"])
    k = int(counts["size"].min()) if k is None else k
    pairs = list(counts.itertuples(index=False))
    return sum(pass_at_k(n, c, k) for n, c in pairs) / len(pairs)


def majority_correct(group: pd.DataFrame) -> bool:
    """maj@k: the most voted answer (first seen wins a tie) is a correct one.

    Votes go to classes of math-verify-equivalent answers, not to raw strings: "1/2", "0.5" and
    "\\frac{1}{2}" are one answer. Each answer joins the first class whose first member it
    equals; the class is correct when that first member was graded correct.
    """
    classes: list[list] = []  # [first answer, its correctness, votes]
    for answer, correct in zip(group.answer, group.correct, strict=True):
        if answer is None or (isinstance(answer, float) and math.isnan(answer)):
            continue
        match = next((c for c in classes if grading.same_answer(c[0], answer)), None)
        if match is None:
            classes.append([answer, bool(correct), 1])
        else:
            match[2] += 1
    if not classes:
        return False
    return max(classes, key=lambda c: c[2])[1]  # max keeps the first of equal vote counts


def accuracy_metrics(graded: pd.DataFrame) -> dict[str, float]:
    """avg@k, pass@k, maj@k (as fractions), lengths, and the collapse signature of finding 9.
    maj@k is NaN where no sample has an extracted answer to vote on (code, function calls)."""
    by_problem = graded.groupby("problem_id", sort=False)
    voted = graded.answer.notna().any()
    avg, low, high = mean_ci(by_problem.correct.mean().tolist())
    return {
        "avg_at_k": avg,
        "avg_ci_low": low,
        "avg_ci_high": high,
        "pass_at_k": mean_pass_at_k(graded),
        "maj_at_k": float(by_problem.apply(majority_correct, include_groups=False).mean())
        if voted
        else math.nan,
        "relaxed_avg_at_k": float(by_problem.correct_relaxed.mean().mean()),
        "first_boxed_avg_at_k": float(by_problem.correct_first_boxed.mean().mean()),
        "mean_tokens": float(graded.completion_tokens.mean()),
        "median_tokens": float(graded.completion_tokens.median()),
        "mean_chars": float(graded.chars.mean()),
        "multi_boxed_pct": float((graded.n_boxed > 1).mean() * 100),
        "boxes_per_response": float(graded.n_boxed.mean()),
        "repetitive_pct": float(graded.repetitive.mean() * 100),
        "n_problems": float(by_problem.ngroups),
    }

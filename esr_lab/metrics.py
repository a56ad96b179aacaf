"""Accuracy statistics over problems with several samples each.

avg@k is the mean over problems of each problem's share of correct samples; its confidence
interval treats problems as the independent unit (samples of one problem are correlated).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd
from scipy import stats

from esr_lab import grading
from esr_lab.config import Sampling
from esr_lab.data import Problem
from esr_lab.prompts import PromptStyle
from esr_lab.seeding import row_seed

if TYPE_CHECKING:
    from esr_lab.policy import Policy


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean with a Student-t confidence interval, clipped to [0, 1] (values are accuracies)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, mean, mean
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf(0.5 + confidence / 2, df=n - 1) * sd / math.sqrt(n)
    return mean, max(0.0, mean - half), min(1.0, mean + half)


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
    from esr_lab.rollout import Rollouts

    size = getattr(engine, "batch_size", None) or len(prompts)
    out = Rollouts([], [], [], [])
    with progress_bar() as bar:
        task = bar.add_task("sampling", total=len(prompts))
        for start in range(0, len(prompts), size):
            part = engine.generate(
                prompts[start : start + size], seeds[start : start + size], sampling
            )
            out.extend(part)
            bar.advance(task, len(part))
    return out


def grade_samples(
    samples: pd.DataFrame, problems: Sequence[Problem], extraction: str
) -> pd.DataFrame:
    """Add correctness under the chosen and the other extractions, and collapse markers."""
    gold = {p.id: p.answer for p in problems}
    out = samples.copy()
    texts, answers = out.completion.tolist(), out.problem_id.map(gold).tolist()
    out["correct"] = [
        grading.grade_math(t, a, extraction) for t, a in zip(texts, answers, strict=True)
    ]
    out["correct_relaxed"] = [
        grading.grade_math(t, a, "relaxed") for t, a in zip(texts, answers, strict=True)
    ]
    out["correct_first_boxed"] = [
        grading.grade_math(t, a, "first_boxed") for t, a in zip(texts, answers, strict=True)
    ]
    which = "first" if extraction == "first_boxed" else "last"
    out["answer"] = [grading.extract_boxed(t, which) for t in texts]
    return with_collapse_markers(out)


def grade_task_samples(
    task: str, samples: pd.DataFrame, problems: Sequence, protocol: str = "chat"
) -> pd.DataFrame:
    """`grade_samples` for a code or function-calling task: its grader's `correct` (every
    extraction column holds it, there being one way to read a program or a call) and the
    task-free collapse markers (repetition, length; boxes are counted as they stand)."""
    from esr_lab import tasks  # the code sandbox and BFCL checker, only when a task needs them

    graded = tasks.grade(task, samples[["problem_id", "sample", "completion"]], problems, protocol)
    out = samples.copy()
    for column in ("correct", "correct_relaxed", "correct_first_boxed"):
        out[column] = graded.correct.to_numpy(dtype=bool)
    out["answer"] = None
    return with_collapse_markers(out)


def with_collapse_markers(graded: pd.DataFrame) -> pd.DataFrame:
    """Finding 9's per-response markers, whatever the task: boxes, repetition, length."""
    texts = graded.completion.tolist()
    graded["n_boxed"] = [grading.count_boxed(t) for t in texts]
    graded["repetitive"] = [grading.is_repetitive(t) for t in texts]
    graded["chars"] = [len(t) for t in texts]
    return graded


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
        "pass_at_k": float(by_problem.correct.any().mean()),
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

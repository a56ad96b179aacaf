"""Candidate preconditions of the paper's collapse of full OPD, measured in a toy world.

The paper's full-rollout OPD collapses (MATH-500 65.60 at step 50, then 43.80; responses 2.7x
longer, 58-88 `\\boxed{}` each) while the capable world's does not, in the paper's own 1 x 16
design. Three things the paper's setting has and a world may lack, each measured as a number:

(a) `after_turn_text_share`: the student, sampled to its EOS as the released code samples,
    writes text (tokens that are not special) after its end of turn. The released code strips
    only trailing special tokens, so that text carries loss, on positions the teacher never
    learned to continue. Base models (the paper's Qwen2.5-Math-1.5B) do write on.
(b) late teacher signal: the teacher's entropy on the student's own rollouts inside and past the
    ESR window, and the teacher's accuracy continuing from the student's shortest and longest
    prefixes (from the world's committed `positions` and `decay` runs).
(c) `past_window_share`: the share of the student's response tokens past the ESR window (from
    the same `positions` run), i.e. how much of a rollout only full OPD trains on.

`python -m esr_lab.preconditions WORLD` measures (a), reads (b) and (c) from
results/WORLD/, prints them and writes them into the world's facts.json as
`collapse_preconditions`. Nothing here changes a world; it only describes it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from esr_lab.config import ModelPair, Sampling
from esr_lab.data import load_problems
from esr_lab.records import read_table
from esr_lab.seeding import row_seed

SAMPLES = 200  # held-out test problems, one sample each, at the worlds' T = 0.7
MAX_NEW_TOKENS = 400  # the worlds' training budget


def after_turn_text(
    world: str, samples: int = SAMPLES, max_new_tokens: int = MAX_NEW_TOKENS
) -> dict[str, float]:
    """(a): the student sampled to its EOS; how often, and how much, it writes text after its
    end of turn, and how often it runs to the budget without an EOS."""
    from esr_lab.policy import load_policy

    student = load_policy(f"{world}-student", ModelPair(student=f"{world}-student"))
    loaded = student.loaded
    end_of_turn = loaded.end_of_turn_id
    special = set(loaded.tokenizer.all_special_ids)
    problems = load_problems(world, limit=samples)
    prompts = [student.prompt_ids(p.problem) for p in problems]
    seeds = [row_seed(0, "preconditions", p.id) for p in problems]
    sampling = Sampling(max_new_tokens=max_new_tokens, stop_at_end_of_turn=False)
    rollouts = student.engine.generate(prompts, seeds, sampling)
    text_after, tokens_after = [], []
    for ids in rollouts.completion_ids:
        after = ids[ids.index(end_of_turn) + 1 :] if end_of_turn in ids else []
        words = [i for i in after if i not in special]
        text_after.append(bool(words))
        tokens_after.append(len(words))
    return {
        "after_turn_text_share": sum(text_after) / len(text_after),
        "after_turn_text_tokens_mean": sum(tokens_after) / len(tokens_after),
        "ends_at_budget_share": 1 - sum(rollouts.finished) / len(rollouts.finished),
        "end_of_turn_share": sum(end_of_turn in ids for ids in rollouts.completion_ids)
        / len(rollouts.completion_ids),
    }


def late_signal(results: Path, window: int) -> dict[str, float]:
    """(b) and (c) from a world's committed reproduction: teacher entropy inside and past the
    window on the untrained student's rollouts, the share of tokens past it, and the teacher's
    accuracy from the shortest and longest student prefixes that decay tried."""
    bins = read_table(next(results.glob("positions/*/bins.parquet")))
    bins = bins[bins.model == "base"]
    inside, past = bins[bins.bin_start < window], bins[bins.bin_start >= window]

    def weighted(frame: pd.DataFrame, column: str) -> float:
        return float((frame[column] * frame.tokens).sum() / frame.tokens.sum())

    decay = read_table(next(results.glob("decay/*/summary.parquet")))
    prefixes = decay[(decay.condition == "teacher_from_prefix") & (decay.prefix_tokens > 0)]
    shortest = prefixes.loc[prefixes.prefix_tokens.idxmin()]
    longest = prefixes.loc[prefixes.prefix_tokens.idxmax()]
    alone = decay[decay.condition == "teacher_alone"].avg_at_k.iloc[0]
    return {
        "window": window,
        "past_window_share": float(past.tokens.sum() / bins.tokens.sum()),
        "teacher_entropy_in_window": weighted(inside, "teacher_entropy"),
        "teacher_entropy_past_window": weighted(past, "teacher_entropy"),
        "teacher_alone_avg": float(alone),
        "teacher_from_shortest_prefix_avg": float(shortest.avg_at_k),
        "shortest_prefix_tokens": int(shortest.prefix_tokens),
        "teacher_from_longest_prefix_avg": float(longest.avg_at_k),
        "longest_prefix_tokens": int(longest.prefix_tokens),
    }


def measure(world: str, results: Path, window: int = 20) -> dict[str, float]:
    """All three, as one flat record; (b) and (c) only where the world's reproduction (its
    `positions` and `decay` runs under `results`) exists."""
    record = after_turn_text(world)
    runs = ("positions/*/bins.parquet", "decay/*/summary.parquet")
    if all(any(results.glob(pattern)) for pattern in runs):
        record |= late_signal(results, window)
    return record


def main(argv: list[str]) -> None:
    from esr_lab.toy import TOY_WORLDS, toy_model_path

    world = argv[0] if argv else "capable"
    if world not in TOY_WORLDS:
        raise SystemExit(f"unknown toy world {world!r}; use one of {', '.join(TOY_WORLDS)}")
    # the world's folder: shipped, or cached (built first when missing, as loading it would)
    facts_path = toy_model_path(f"{world}-student").parent / "facts.json"
    record = measure(world, Path("results") / world)
    record["measured_by"] = f"python -m esr_lab.preconditions {world}"
    facts = json.loads(facts_path.read_text())
    facts["collapse_preconditions"] = record
    facts_path.write_text(json.dumps(facts, indent=2) + "\n")
    for key, value in record.items():
        print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")


if __name__ == "__main__":
    main(sys.argv[1:])

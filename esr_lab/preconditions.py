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
`collapse_preconditions`. `python -m esr_lab.preconditions real-cpu` does the same for the real
pair run here (Gemma 3 270M base taught by SmolLM2-135M-Instruct), from its committed runs
alone, into results/real-cpu/facts.json: a base model has no end of turn, so (a) there is the
text it writes after starting a new turn of its plain prompt format ("Question:").
Nothing here changes a world; it only describes it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from esr_lab.config import ModelPair, Sampling
from esr_lab.data import load_problems
from esr_lab.prompts import PLAIN_FORMAT
from esr_lab.records import atomic_write_bytes, read_table
from esr_lab.seeding import row_seed
from esr_lab.token_text import special_ids

if TYPE_CHECKING:  # the model code loads only when a world is sampled
    from esr_lab.policy import Policy
    from esr_lab.rollout import Rollouts

SAMPLES = 200  # held-out test problems, one sample each, at the worlds' T = 0.7
MAX_NEW_TOKENS = 400  # the worlds' training budget
# A base model's next turn in the plain format: the text before the first "{message}" field
# after the BOS, i.e. "Question:".
PLAIN_TURN_MARKER = PLAIN_FORMAT.removeprefix("{bos}").split(" {message}")[0]
REAL_WORLDS = ("real-cpu",)  # real pairs whose committed runs under results/ describe them


def sample_to_eos(
    world: str,
    samples: int = SAMPLES,
    max_new_tokens: int = MAX_NEW_TOKENS,
    adapter: str | None = None,
) -> tuple[Policy, list[list[int]], Rollouts]:
    """The world's student (with `adapter`, a checkpoint of `esr-lab train`: the trained one)
    sampled to its EOS, as the released code samples, on held-out problems: the student, its
    prompts and its rollouts."""
    from esr_lab.adapters import load_adapter
    from esr_lab.policy import load_policy

    student = load_policy(f"{world}-student", ModelPair(student=f"{world}-student"))
    if adapter is not None:
        load_adapter(student, adapter)
    problems = load_problems(world, limit=samples)
    prompts = [student.prompt_ids(p.problem) for p in problems]
    seeds = [row_seed(0, "preconditions", p.id) for p in problems]
    sampling = Sampling(max_new_tokens=max_new_tokens, stop_at_end_of_turn=False)
    return student, prompts, student.engine.generate(prompts, seeds, sampling)


def after_turn_text(student: Policy, rollouts: Rollouts) -> dict[str, float]:
    """(a): how often, and how much, the student writes text after its end of turn, how often it
    runs to the budget without an EOS, and how many end-of-turn ids it writes in a row."""
    end_of_turn = student.loaded.end_of_turn_id
    special = special_ids(student.tokenizer)  # <|im_end|> written again is not text
    text_after, tokens_after, repeats = [], [], []
    for ids in rollouts.completion_ids:
        after = ids[ids.index(end_of_turn) + 1 :] if end_of_turn in ids else []
        words = [i for i in after if i not in special]
        text_after.append(bool(words))
        tokens_after.append(len(words))
        repeats.append(next((k for k, i in enumerate(after) if i != end_of_turn), len(after)))
    return {
        "after_turn_text_share": sum(text_after) / len(text_after),
        "after_turn_text_tokens_mean": sum(tokens_after) / len(tokens_after),
        "end_of_turn_repeats_mean": sum(repeats) / len(repeats),
        "ends_at_budget_share": 1 - sum(rollouts.finished) / len(rollouts.finished),
        "end_of_turn_share": sum(end_of_turn in ids for ids in rollouts.completion_ids)
        / len(rollouts.completion_ids),
    }


def teacher_after_turn(
    world: str, student: Policy, prompts: list[list[int]], rollouts: Rollouts
) -> dict[str, float]:
    """(b) past the turn: the teacher's next-token distribution right after the student's end
    of turn, the position where the student writes its EOS (or, run on, more text). A teacher
    that ends at the end of turn was never trained past it; full OPD on rollouts sampled to the
    EOS trains the student toward this distribution there. Its mean probability of the
    student's EOS and of the end of turn again, and how often the end of turn is its top id."""
    import torch

    from esr_lab.policy import load_policy

    teacher = load_policy(f"{world}-teacher", ModelPair(student=f"{world}-teacher"))
    end_of_turn, eos = student.loaded.end_of_turn_id, student.tokenizer.eos_token_id
    p_eos, p_again, top_again = [], [], []
    for prompt, ids in zip(prompts, rollouts.completion_ids, strict=True):
        if end_of_turn not in ids:
            continue
        context = torch.tensor([prompt + ids[: ids.index(end_of_turn) + 1]])
        with torch.no_grad():  # the toy worlds share one tokenizer: the same ids
            probs = teacher.loaded.model(context).logits[0, -1].softmax(-1)
        p_eos.append(float(probs[eos]))
        p_again.append(float(probs[end_of_turn]))
        top_again.append(int(probs.argmax()) == end_of_turn)
    if not p_eos:
        return {}
    return {
        "teacher_p_student_eos_after_turn": sum(p_eos) / len(p_eos),
        "teacher_p_end_of_turn_again": sum(p_again) / len(p_again),
        "teacher_top_is_end_of_turn_again_share": sum(top_again) / len(top_again),
    }


def after_answer_text(samples: pd.DataFrame, marker: str = PLAIN_TURN_MARKER) -> dict[str, float]:
    """(a) for a model without a chat template: how often its sampled completions start a new
    turn of the plain format (`marker`, "Question:") after answering, and the share of their
    characters from that point on, which the released code would train on."""
    at = samples.completion.str.find(marker)
    writes_on = at >= 0
    after = (samples.completion.str.len() - at).where(writes_on, 0)
    return {
        "after_turn_text_share": float(writes_on.mean()),
        "after_turn_text_chars_share": float(after.sum() / samples.completion.str.len().sum()),
        "ends_at_budget_share": float(1 - samples.finished.mean()),
    }


def _positions_bins(results: Path, to_end_of_turn: bool) -> pd.DataFrame | None:
    """The untrained student's bins of the world's `positions` run sampled one way: to its end
    of turn (the reproduction every world has) or to its EOS (the released code's sampling)."""
    for path in sorted(results.glob("positions/*/bins.parquet")):
        config = json.loads((path.parent / "config.json").read_text())
        # runs from before the option existed (the toy world's) stopped at the end of turn
        if config["sampling"].get("stop_at_end_of_turn", True) == to_end_of_turn:
            bins = read_table(path)
            return bins[bins.model == "base"]
    return None


def _weighted(frame: pd.DataFrame, column: str) -> float:
    return float((frame[column] * frame.tokens).sum() / frame.tokens.sum())


def late_signal(results: Path, window: int | None = None) -> dict[str, float]:
    """(b) and (c) from a world's committed reproduction: teacher entropy inside and past the
    window on the untrained student's rollouts, the share of tokens past it, and the teacher's
    accuracy from the shortest and longest student prefixes that decay tried. `window` defaults
    to the one the positions run shaded. Where a second positions run sampled to the EOS, its
    past-window entropy and share come too (`*_to_eos`): the run-on text's signal."""
    bins = _positions_bins(results, to_end_of_turn=True)
    window = int(bins.window.iloc[0]) if window is None else window
    inside, past = bins[bins.bin_start < window], bins[bins.bin_start >= window]

    decay = read_table(next(results.glob("decay/*/summary.parquet")))
    prefixes = decay[(decay.condition == "teacher_from_prefix") & (decay.prefix_tokens > 0)]
    shortest = prefixes.loc[prefixes.prefix_tokens.idxmin()]
    longest = prefixes.loc[prefixes.prefix_tokens.idxmax()]
    alone = decay[decay.condition == "teacher_alone"].avg_at_k.iloc[0]
    record = {
        "window": window,
        "past_window_share": float(past.tokens.sum() / bins.tokens.sum()),
        "teacher_entropy_in_window": _weighted(inside, "teacher_entropy"),
        "teacher_entropy_past_window": _weighted(past, "teacher_entropy"),
        "teacher_alone_avg": float(alone),
        "teacher_from_shortest_prefix_avg": float(shortest.avg_at_k),
        "shortest_prefix_tokens": int(shortest.prefix_tokens),
        "teacher_from_longest_prefix_avg": float(longest.avg_at_k),
        "longest_prefix_tokens": int(longest.prefix_tokens),
    }
    to_eos = _positions_bins(results, to_end_of_turn=False)
    if to_eos is not None:
        past_eos = to_eos[to_eos.bin_start >= window]
        record["past_window_share_to_eos"] = float(past_eos.tokens.sum() / to_eos.tokens.sum())
        record["teacher_entropy_past_window_to_eos"] = _weighted(past_eos, "teacher_entropy")
    return record


def _has_reproduction(results: Path) -> bool:
    runs = ("positions/*/bins.parquet", "decay/*/summary.parquet")
    return all(any(results.glob(pattern)) for pattern in runs)


def measure(world: str, results: Path, window: int = 20) -> dict[str, float]:
    """All three, as one flat record; (b) and (c) only where the world's reproduction (its
    `positions` and `decay` runs under `results`) exists."""
    student, prompts, rollouts = sample_to_eos(world)
    record = after_turn_text(student, rollouts)
    record |= teacher_after_turn(world, student, prompts, rollouts)
    if _has_reproduction(results):
        record |= late_signal(results, window)
    return record


def measure_real(results: Path) -> dict[str, float | str]:
    """All three for a real pair, from its committed runs: (a) from the student's `eval` run on
    the world's task, (b) and (c) from its `positions` and `decay` runs."""
    missing = SystemExit(
        f"{results} lacks the student's eval run or the positions and decay runs; "
        "run them first (README, 'The real-CPU world')"
    )
    if not _has_reproduction(results):
        raise missing
    positions = json.loads(next(results.glob("positions/*/config.json")).read_text())
    student = positions["pair"]["student"]
    evals = [
        path.parent
        for path in sorted(results.glob("eval/*/config.json"))
        if json.loads(path.read_text())["model"] == student
    ]
    if not evals:
        raise missing
    record: dict[str, float | str] = {"student": student, "after_turn_from": evals[0].name}
    record |= after_answer_text(read_table(evals[0] / "samples.parquet"))
    return record | late_signal(results)


def main(argv: list[str]) -> None:
    from esr_lab.toy import TOY_WORLDS, toy_model_path

    world = argv[0] if argv else "capable"
    if world not in TOY_WORLDS + REAL_WORLDS:
        worlds = ", ".join(TOY_WORLDS + REAL_WORLDS)
        raise SystemExit(f"unknown world {world!r}; use one of {worlds}")
    results = Path("results") / world
    if world in REAL_WORLDS:
        facts_path = results / "facts.json"
        record = measure_real(results)
    else:
        # the world's folder: shipped, or cached (built first when missing, as loading it would)
        facts_path = toy_model_path(f"{world}-student").parent / "facts.json"
        record = measure(world, results)
    record["measured_by"] = f"python -m esr_lab.preconditions {world}"
    facts = json.loads(facts_path.read_text()) if facts_path.exists() else {"world": world}
    facts["collapse_preconditions"] = record
    # Key order is kept as the build wrote it, so only this record changes. A cached world's
    # facts are committed as results/WORLD/facts.json (runon's); that copy takes it too.
    text = (json.dumps(facts, indent=2) + "\n").encode()
    atomic_write_bytes(facts_path, text)
    committed = results / "facts.json"
    if committed.exists() and committed != facts_path:
        atomic_write_bytes(committed, text)
    for key, value in record.items():
        print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")


if __name__ == "__main__":
    main(sys.argv[1:])

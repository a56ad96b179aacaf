"""The run-on world: the capable world with a student that writes on after its turn.

The paper's collapse of full OPD happens with a base-model student (Qwen2.5-Math-1.5B) that the
released code samples to its EOS and then strips of trailing special tokens only. A base model
sampled that way often writes on after its answer: Gemma 3 270M base, the real-CPU world's
student, starts a new "Question:" after its answer in 54-56% of samples (README, "Real
pretrained models on a CPU"). That text carries loss, on positions the teacher (which ends its
turn and stops) never learned to continue. Neither CPU world has this (precondition (a) of
`esr_lab.preconditions`: 0.0% toy, 1.5% capable), so this world adds it and changes nothing
else:

- the teacher is the capable world's teacher as shipped;
- the student is built exactly as the capable student is (same start, steps, data stream and
  habit), except that in `AFTER_TURN_SHARE` of its habit examples it writes, between its end of
  turn `<|im_end|>` and its EOS `<|endoftext|>`, a new problem and that problem's worked
  solution, as a base model writes a new question and answers it.

The share is the real base model's measured rate, fixed before any OPD run; the build measures
what the student learnt (`facts.json`, and `python -m esr_lab.preconditions runon`). Under
`--recipe esr-lab` generation stops at the end of turn, so the run-on text is never sampled;
under `--recipe paper-code` (`--no-stop-at-end-of-turn`) it is sampled and trained on. Nothing
here is chosen for how OPD will do on the world.

The world is built on first use into the cache (`esr-lab build-toy runon`; 851 s measured on
one CPU thread while other jobs shared the machine), not shipped.
"""

from __future__ import annotations

import random

from esr_lab.toy import capable, task

AFTER_TURN_SHARE = 0.55  # Gemma 3 270M base: 54-56% of samples write on (real-cpu world)


def after_turn_texts(share: float, n: int, seed: int, stream: str, exclude: set[str]) -> list[str]:
    """For n training examples, the text each writes after its end of turn: with probability
    `share` a new problem and its solution in a mode of the student's mix, else nothing. Drawn
    from streams of their own, so a share of 0 leaves every other draw of a build unchanged."""
    if share <= 0:
        return [""] * n
    rng = random.Random(f"toy-after-turn-{stream}-{seed}")
    problems = task.train_problems(seed, n, f"{stream}-after-turn", exclude)
    texts = []
    for nums in problems:
        writes_on = rng.random() < share
        style, plan = task.pick_mode(rng, capable.STUDENT_MIX)
        solution = task.solution_text(nums, style, plan)
        texts.append(f"\n{task.problem_text(nums)}\n{solution}" if writes_on else "")
    return texts

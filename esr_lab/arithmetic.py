"""Grade-school arithmetic in words, the task of the real-CPU world (`--dataset arithmetic`).

Every problem "What is a plus b?", "What is a minus b?" (a >= b) or "What is a times b?" with
1 <= a, b <= 12: 366 problems in all, dealt once by a fixed shuffle into 100 test problems
(`arithmetic`, `arithmetic:test`) and 266 training problems (`arithmetic:train`), disjoint.

Why this task: of the two real pretrained models that install from PyPI, SmolLM2-135M-Instruct
solves none of 20 GSM8K problems, and both it and Gemma 3 270M base score under 10% on two-digit
sums with a step-by-step instruction, so no teacher is measurably better there; on these
problems asked plainly, SmolLM2-135M-Instruct scores 28.50 avg@2 and Gemma 3 270M base 5.50
(README, "The real-CPU world"). The operators are words so that a model which only echoes the
question ("7 times 8") is not graded correct by math-verify, which would evaluate "7 * 8"; a
model can still learn to rewrite it as "7 * 8" (scripts/regrade_last_integer.py).
"""

from __future__ import annotations

import random
from operator import add, mul, sub

OPERATIONS = {"plus": add, "minus": sub, "times": mul}
LARGEST = 12
TEST_SIZE = 100
SPLITS = ("train", "test")
_SHUFFLE_SEED = 0  # fixed: the split is part of the task, not of a run


def all_rows() -> list[dict]:
    """Every problem once, in the fixed shuffled order (test first, then train)."""
    rows = []
    for word, apply in OPERATIONS.items():
        for a in range(1, LARGEST + 1):
            for b in range(1, LARGEST + 1):
                if word == "minus" and b > a:
                    continue  # no negative answers in grade-school subtraction
                rows.append(
                    {
                        "id": f"{a}-{word}-{b}",
                        "problem": f"What is {a} {word} {b}?",
                        "answer": str(apply(a, b)),
                    }
                )
    random.Random(_SHUFFLE_SEED).shuffle(rows)
    return rows


def rows(split: str = "test") -> list[dict]:
    """The problems of one split ("train" or "test"); anything else is a ValueError."""
    if split not in SPLITS:
        raise ValueError(f"arithmetic has splits {', '.join(SPLITS)}; got {split!r}")
    every = all_rows()
    return every[:TEST_SIZE] if split == "test" else every[TEST_SIZE:]

"""The toy task: three-step integer arithmetic whose first tokens commit to a plan.

A problem reads `Compute (a + b) * c + d * e.` Every solution opens with a plan sentence that
settles how the two products are done, then executes it line by line and ends with
`\\boxed{answer}`:

- plan "split": each product is split into tens and ones (17 * 6 = 10 * 6 + 7 * 6 = 60 + 42)
  and the final sum adds tens, then ones, so every step is a one-digit table fact or a short
  addition: slow but reliable;
- plan "direct": products and sum are written down at once (17 * 6 = 102), two-digit memory
  facts that a small model gets wrong often, and the slip propagates to the boxed answer.

Solutions come in two styles, "verbose" (a sentence per step) and "concise" (bare equations),
whose first word differs, so style and plan are both fixed in the first few response tokens:
the toy counterpart of the paper's early, high-KL planning tokens.
"""

from __future__ import annotations

import random

STYLES = ("verbose", "concise")
PLANS = ("split", "direct")

# The first words of a response name style and plan; measurements read them back.
PLAN_OPENERS = {
    ("verbose", "split"): "Let me plan first. I will split each product into tens and ones, "
    "so that every step stays small.",
    ("verbose", "direct"): "Let me plan first. I will multiply the numbers directly, "
    "without splitting them.",
    ("concise", "split"): "Plan: split products into tens and ones.",
    ("concise", "direct"): "Plan: multiply directly.",
}

# Mixtures of (style, plan) in each model's training data: the teacher mostly splits, the
# student mostly multiplies directly, so they disagree most at the plan tokens.
TEACHER_MIX = {
    ("verbose", "split"): 0.45,
    ("concise", "split"): 0.45,
    ("verbose", "direct"): 0.05,
    ("concise", "direct"): 0.05,
}
STUDENT_MIX = {
    ("verbose", "split"): 0.125,
    ("concise", "split"): 0.125,
    ("verbose", "direct"): 0.375,
    ("concise", "direct"): 0.375,
}


def sample_numbers(rng: random.Random) -> tuple[int, int, int, int, int]:
    """Draw (a, b, c, d, e): one-digit a, b; two-digit d (11-19); one-digit factors c, e."""
    a, b, d = rng.randint(2, 9), rng.randint(2, 9), rng.randint(11, 19)
    c, e = rng.randint(3, 9), rng.randint(3, 9)
    return a, b, c, d, e


def problem_text(nums: tuple[int, int, int, int, int]) -> str:
    """The problem statement without instruction."""
    a, b, c, d, e = nums
    return f"Compute ({a} + {b}) * {c} + {d} * {e}."


def answer_of(nums: tuple[int, int, int, int, int]) -> int:
    """The exact value of the expression."""
    a, b, c, d, e = nums
    return (a + b) * c + d * e


def _split_product(x: int, y: int) -> str:
    """`x * y = tens * y + ones * y = p + q = x*y`; a round x needs no split.

    A one-digit x is still written as `0 * y + x * y`: the shipped weights learnt that form.
    """
    tens, ones = x - x % 10, x % 10
    if ones == 0:
        return f"{x} * {y} = {x * y}"
    return f"{x} * {y} = {tens} * {y} + {ones} * {y} = {tens * y} + {ones * y} = {x * y}"


def _product_line(x: int, y: int, plan: str, style: str, step: int) -> str:
    """One multiplication step, written according to plan and style."""
    body = _split_product(x, y) if plan == "split" else f"{x} * {y} = {x * y}"
    if style == "concise":
        return body
    return f"Step {step}: multiply {x} by {y}. {body}."


def _sum_line(p: int, q: int, plan: str) -> str:
    """The final addition; the split plan adds q's tens, then its ones."""
    tens, ones = q - q % 10, q % 10
    if plan == "direct" or ones == 0:
        return f"{p} + {q} = {p + q}"
    return f"{p} + {q} = {p} + {tens} + {ones} = {p + tens} + {ones} = {p + q}"


def solution_text(nums: tuple[int, int, int, int, int], style: str, plan: str) -> str:
    """The full worked solution in the given style and plan, ending with the boxed answer."""
    a, b, c, d, e = nums
    s, p, q = a + b, (a + b) * c, d * e
    products = [_product_line(s, c, plan, style, 2), _product_line(d, e, plan, style, 3)]
    if style == "concise":
        return "\n".join(
            [
                PLAN_OPENERS[style, plan],
                f"{a} + {b} = {s}",
                *products,
                _sum_line(p, q, plan),
                f"The answer is \\boxed{{{p + q}}}.",
            ]
        )
    return "\n".join(
        [
            PLAN_OPENERS[style, plan],
            f"Step 1: add the numbers in the brackets. {a} + {b} = {s}.",
            *products,
            f"Step 4: add the two products. {_sum_line(p, q, plan)}.",
            f"So the final answer is \\boxed{{{p + q}}}.",
        ]
    )


def response_style(text: str) -> str:
    """'verbose' or 'concise' from a response's opening words, else 'other'."""
    head = text.lstrip()
    if head.startswith("Let me plan first."):
        return "verbose"
    if head.startswith("Plan:"):
        return "concise"
    return "other"


def response_plan(text: str) -> str:
    """'split' or 'direct' from the plan sentence in a response's first line, else 'other'."""
    first = text.lstrip().split("\n", 1)[0]
    if "split" in first and "without splitting" not in first:
        return "split"
    if "directly" in first:
        return "direct"
    return "other"


def _problem_key(nums: tuple[int, int, int, int, int]) -> str:
    return problem_text(nums)


def test_problems(seed: int, n: int) -> list[tuple[int, int, int, int, int]]:
    """The fixed held-out set: the first n distinct problems of a dedicated stream."""
    rng = random.Random(f"toy-test-{seed}")
    seen: dict[str, tuple[int, int, int, int, int]] = {}
    while len(seen) < n:
        nums = sample_numbers(rng)
        seen.setdefault(_problem_key(nums), nums)
    return list(seen.values())


def train_problems(
    seed: int, n: int, stream: str, exclude: set[str]
) -> list[tuple[int, int, int, int, int]]:
    """n problems from a named stream, skipping any whose text is in `exclude` (the test set).

    Repeats are allowed: the problem space (~28k) is small and dedup would cost time for nothing.
    """
    rng = random.Random(f"toy-{stream}-{seed}")
    out: list[tuple[int, int, int, int, int]] = []
    while len(out) < n:
        nums = sample_numbers(rng)
        if _problem_key(nums) not in exclude:
            out.append(nums)
    return out


def pick_mode(rng: random.Random, mix: dict[tuple[str, str], float]) -> tuple[str, str]:
    """Draw a (style, plan) pair from a mixture."""
    modes = list(mix)
    return rng.choices(modes, weights=[mix[m] for m in modes], k=1)[0]


test_problems.__test__ = False  # keep pytest from collecting it as a test

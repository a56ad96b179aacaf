"""Answer checking for math, with math-verify doing the equivalence.

Why three extraction modes: the paper's collapse (finding 9) shows up as responses full of
\\boxed{} answers. Strict grading takes the last box (the usual convention, and our default);
first-box grading and a relaxed "answer anywhere" grading separate "the model got worse at maths"
from "the model learned to keep writing boxes". `count_boxed` and `is_repetitive` measure the
collapse signature itself.

Grading never raises on model output: a parse error, a sympy blow-up or a math-verify timeout
counts as wrong. math-verify's timeouts use SIGALRM, which only works in the main thread, so off
the main thread we grade without a timeout rather than crash.
"""

import re
import threading
from collections import Counter

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from math_verify.errors import TimeoutException

from esr_lab.errors import UserError

EXTRACTION_MODES = ("last_boxed", "first_boxed", "relaxed")

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOX_SPACE_RE = re.compile(r"\\boxed +([^\s$]+)")
_TIMEOUT_S = 5


def _box_starts(text: str) -> list[int]:
    """Offsets just after each `\\boxed{` / `\\fbox{` opening brace."""
    return [m.end() for m in _BOX_RE.finditer(text)]


def _balanced(text: str, start: int) -> str | None:
    """Text from `start` up to the brace that closes the one before it; None if never closed."""
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return None


def extract_boxed(text: str, which: str = "last") -> str | None:
    """Content of the first or last `\\boxed{...}` (or `\\fbox{...}`), braces balanced.

    An unclosed box (a response cut off mid-answer) does not count. The old MATH form
    `\\boxed 5` is accepted when no braced box exists.
    """
    if which not in ("first", "last"):
        raise UserError(f"which={which!r} is not valid; use 'first' or 'last'")
    found = [c for c in (_balanced(text, s) for s in _box_starts(text)) if c is not None]
    if not found:
        found = _BOX_SPACE_RE.findall(text)
    if not found:
        return None
    return (found[0] if which == "first" else found[-1]).strip()


def count_boxed(text: str) -> int:
    """Number of `\\boxed{` (and `\\fbox{`) openings: >1 per response is the collapse signature."""
    return len(_BOX_RE.findall(text))


def is_repetitive(
    text: str, min_repeats: int = 4, ngram: int = 12, min_line_chars: int = 20
) -> bool:
    """True if the response repeats itself, the degenerate loop of a collapsed policy.

    The rule: some line of at least `min_line_chars` non-space characters occurs `min_repeats`
    or more times, or some run of `ngram` whitespace-separated words occurs `min_repeats` or more
    times. Short lines (`\\]`, `$$`, `\\end{align*}`) are ignored because honest derivations
    repeat them; 12 words repeated 4 times almost never happens in a sound solution (2 of the 500
    MATH-500 reference solutions) but catches loops like `\\boxed{5} \\boxed{5} ...`.
    """
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if len(ln.replace(" ", "")) >= min_line_chars]
    if lines and max(Counter(lines).values()) >= min_repeats:
        return True
    words = text.split()
    grams = Counter(tuple(words[i : i + ngram]) for i in range(len(words) - ngram + 1))
    return bool(grams) and max(grams.values()) >= min_repeats


def _timeout() -> int | None:
    """math-verify's SIGALRM timeout, or None off the main thread where signals don't work."""
    return _TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _parse_boxed(content: str) -> list:
    """Parse a bare answer as if it were the content of a box (math-verify's favourite anchor)."""
    parsed = parse(
        "\\boxed{" + content + "}",
        extraction_config=[LatexExtractionConfig()],
        parsing_timeout=_timeout(),
    )
    if parsed:
        return parsed
    return parse(content, extraction_config=[ExprExtractionConfig()], parsing_timeout=_timeout())


def _parse_gold(gold: str) -> list:
    """Gold may be a bare answer or a full solution with a box; use the last box if present."""
    boxed = extract_boxed(gold, "last")
    return _parse_boxed(boxed if boxed is not None else gold.strip())


def _parse_response(response: str, extraction: str) -> list:
    """The response's answer under one extraction mode; [] when it has none."""
    if extraction == "relaxed":
        config = [LatexExtractionConfig(), ExprExtractionConfig()]
        return parse(response, extraction_config=config, parsing_timeout=_timeout())
    content = extract_boxed(response, "first" if extraction == "first_boxed" else "last")
    return [] if content is None else _parse_boxed(content)


def grade_math(response: str, gold: str, extraction: str = "last_boxed") -> bool:
    """True if the response's answer equals gold per math-verify.

    last_boxed (default): the last \\boxed{} of the response; first_boxed: the first one;
    relaxed: an answer anywhere (math-verify's own extraction over the whole response,
    latex+expr). gold may be a bare answer ("\\frac{1}{2}", "42", "(3, \\frac{\\pi}{2})") or
    contain \\boxed{}. Any failure inside math-verify (parse error, timeout) grades as False.
    """
    if extraction not in EXTRACTION_MODES:
        raise UserError(f"extraction={extraction!r} is not valid; use one of {EXTRACTION_MODES}")
    try:
        gold_parsed = _parse_gold(str(gold))
        pred_parsed = _parse_response(response, extraction)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=_timeout()))
    except (Exception, TimeoutException):  # TimeoutException derives from BaseException
        return False


def same_answer(first: str, second: str) -> bool:
    """Whether two extracted answers are the same mathematical answer per math-verify
    (identical strings always are); maj@k votes by this. Failures count as different."""
    if first == second:
        return True
    try:
        a, b = _parse_boxed(str(first)), _parse_boxed(str(second))
        return bool(a and b and verify(a, b, timeout_seconds=_timeout()))
    except (Exception, TimeoutException):
        return False

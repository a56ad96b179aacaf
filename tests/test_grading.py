"""Grading: hand-written cases per extraction mode, and MATH-500 solutions graded against their
own answers (recall) and against another problem's answer (false positives)."""

import json
import threading

import pytest

from esr_lab.data import shipped_file
from esr_lab.errors import UserError
from esr_lab.grading import (
    EXTRACTION_MODES,
    count_boxed,
    extract_boxed,
    grade_math,
    is_repetitive,
)


@pytest.fixture(scope="module")
def math500() -> list[dict]:
    with shipped_file("math500").open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_extract_boxed_nested_first_last_fbox():
    text = r"so \boxed{\frac{1}{2}} then \fbox{3} and finally \boxed{\sqrt{x^{2}}}"
    assert extract_boxed(text) == r"\sqrt{x^{2}}"
    assert extract_boxed(text, "first") == r"\frac{1}{2}"
    assert extract_boxed(r"\fbox{7}") == "7"
    assert extract_boxed("no box here") is None
    assert extract_boxed(r"cut off \boxed{\frac{1}{2") is None
    assert extract_boxed(r"old style \boxed 5$") == "5"


def test_extract_boxed_bad_which():
    with pytest.raises(UserError, match="which"):
        extract_boxed(r"\boxed{1}", "middle")


def test_grade_last_vs_first_boxed():
    response = r"First guess \boxed{3}. Wait, recheck: the answer is \boxed{\frac{1}{2}}."
    assert grade_math(response, r"\frac{1}{2}")
    assert grade_math(response, "0.5")
    assert not grade_math(response, "3")
    assert grade_math(response, "3", extraction="first_boxed")
    assert not grade_math(response, r"\frac{1}{2}", extraction="first_boxed")


def test_grade_relaxed_finds_unboxed_answer():
    response = r"Adding them gives $x = 42$. So the final answer is $42$."
    assert not grade_math(response, "42")  # no box: strict modes find nothing
    assert not grade_math(response, "42", extraction="first_boxed")
    assert grade_math(response, "42", extraction="relaxed")
    assert not grade_math(response, "41", extraction="relaxed")


def test_grade_gold_forms():
    assert grade_math(r"\boxed{(3, \frac{\pi}{2})}", r"\left( 3, \frac{\pi}{2} \right)")
    assert grade_math(r"\boxed{42}", r"The sum is $40 + 2 = \boxed{42}$.")
    assert grade_math(r"\boxed{\dfrac{1}{2}}", r"\frac{1}{2}")
    assert not grade_math(r"\boxed{\frac{1}{3}}", r"\frac{1}{2}")


def test_grade_never_raises_on_garbage():
    for response in ["", r"\boxed{}", r"\boxed{\frac{", r"\boxed{)(}{}", "\\boxed{" + "(" * 500]:
        for mode in EXTRACTION_MODES:
            assert grade_math(response, "1", extraction=mode) is False
    assert grade_math(r"\boxed{1}", "") is False


def test_grade_off_main_thread():
    """math-verify's SIGALRM timeout can't run in a thread; grading must still work there."""
    out: list[bool] = []
    worker = threading.Thread(target=lambda: out.append(grade_math(r"\boxed{2}", "2")))
    worker.start()
    worker.join()
    assert out == [True]


def test_grade_unknown_mode():
    with pytest.raises(UserError, match="strictest"):
        grade_math(r"\boxed{1}", "1", extraction="strictest")


def test_count_boxed():
    assert count_boxed("none") == 0
    assert count_boxed(r"\boxed{1} and \boxed{\frac{1}{2}} and \fbox{3}") == 3


def test_is_repetitive():
    loop = "So the answer is 5. Let me double check the computation once more.\n" * 6
    assert is_repetitive("Solving step by step.\n" + loop)
    assert is_repetitive(r"The answer is " + r"\boxed{5} " * 40)
    honest = "We have $x+1=3$.\n\\[\nx = 2\n\\]\n\\[\ny = 4\n\\]\nSo $\\boxed{2}$."
    assert not is_repetitive(honest)
    assert not is_repetitive("")


def test_math500_solutions_grade_against_own_answers(math500):
    ok = sum(grade_math(r["solution"], r["answer"]) for r in math500)
    assert ok / len(math500) >= 0.97  # measured: 500/500


def test_math500_solutions_reject_other_answers(math500):
    """A derangement: each solution against the next problem whose answer differs as a string."""
    n, false_pos = len(math500), 0
    for i, row in enumerate(math500):
        j = (i + 1) % n
        while math500[j]["answer"].strip() == row["answer"].strip():
            j = (j + 1) % n
        false_pos += grade_math(row["solution"], math500[j]["answer"])
    assert false_pos / n <= 0.02  # measured: 1/500 ("5" vs "x=5", a fair match)


def test_math500_solutions_mostly_not_repetitive(math500):
    assert sum(is_repetitive(r["solution"]) for r in math500) <= 5  # measured: 2

"""Code grading: HumanEval's canonical solutions pass their own tests and fail another problem's,
both response forms work, and pass@k is unbiased (the sandbox itself: test_sandbox.py)."""

from math import comb

import pandas as pd
import pytest

from esr_lab.errors import UserError
from esr_lab.humaneval import build_program, extract_code, grade_code, load_code_problems
from esr_lab.metrics import pass_at_k
from esr_lab.sandbox import Limits
from esr_lab.tasks import load_task_problems, metrics

FAST = Limits(timeout_s=3.0, memory_mb=1024)


@pytest.fixture(scope="module")
def problems():
    return load_code_problems("humaneval")


def _samples(pairs: list[tuple[str, str]]) -> pd.DataFrame:
    ids = [pid for pid, _ in pairs]
    return pd.DataFrame(
        {
            "problem_id": ids,
            "sample": pd.Series(ids).groupby(ids).cumcount(),
            "completion": [text for _, text in pairs],
        }
    )


def test_extract_code_last_python_block_else_whole():
    text = "First try:\n```python\nx = 1\n```\nBetter:\n```python\ny = 2\n```\nDone."
    assert extract_code(text) == "y = 2\n"
    assert extract_code("```\nz = 3\n```") == "z = 3\n"
    assert extract_code("    return 1\n") == "    return 1\n"


def test_canonical_solutions_pass_and_fail_on_other_tests(problems):
    chosen = problems[:6]
    own = grade_code(_samples([(p.id, p.answer) for p in chosen]), chosen, FAST)
    assert own.correct.all(), own[~own.correct].status.tolist()
    swapped = [(p.id, chosen[(i + 1) % len(chosen)].answer) for i, p in enumerate(chosen)]
    other = grade_code(_samples(swapped), chosen, FAST)
    assert not other.correct.any()


def test_whole_function_and_body_both_work(problems):
    p = problems[2]
    whole = f"Here it is:\n```python\n{p.prompt}{p.answer}```\n"
    assert "def " + p.entry_point in build_program(p, whole)
    responses = [(p.id, whole), (p.id, p.answer), (p.id, "    return None\n")]
    graded = grade_code(_samples(responses), [p], FAST)
    assert graded.correct.tolist() == [True, True, False]


def test_pass_at_k_matches_the_combinatorial_formula():
    for n, c, k in [(10, 3, 1), (10, 3, 5), (5, 0, 2), (5, 5, 3), (20, 1, 10)]:
        want = 1 - comb(n - c, k) / comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12)
    assert pass_at_k(4, 1, 1) == 0.25


def test_metrics_avg_and_pass_at_k():
    graded = pd.DataFrame(
        {"problem_id": ["a"] * 4 + ["b"] * 4, "correct": [True, False, False, False] + [False] * 4}
    )
    result = metrics("humaneval", graded)
    assert result["avg_at_k"] == pytest.approx(0.125)  # pass@1, the share correct
    assert result["k"] == 4 and result["pass_at_k"] == pytest.approx(0.5)


def test_humaneval_plus_offline_is_one_line_error():
    with pytest.raises(UserError, match="evalplus/humanevalplus") as err:
        load_task_problems("humaneval", "humaneval_plus")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="unknown code dataset"):
        load_task_problems("humaneval", "mbpp")


def test_humaneval_format_file(tmp_path, problems):
    rows = pd.DataFrame([vars(p) for p in problems[:2]]).drop(columns="problem")
    rows = rows.rename(columns={"id": "task_id", "answer": "canonical_solution"})
    rows.to_json(tmp_path / "plus.jsonl", orient="records", lines=True)
    loaded = load_task_problems("humaneval", str(tmp_path / "plus.jsonl"))
    assert loaded == problems[:2]
    rows.drop(columns="test").to_json(tmp_path / "bad.jsonl", orient="records", lines=True)
    with pytest.raises(UserError, match="missing test"):
        load_task_problems("humaneval", str(tmp_path / "bad.jsonl"))

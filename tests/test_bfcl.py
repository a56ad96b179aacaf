"""BFCL function calling: the 600 shipped problems, the ast parser (no eval) and the checker,
hand-written cases per rule and every ground truth graded as a perfect model would answer."""

import shutil
from typing import Any

import pandas as pd
import pytest

from esr_lab import bfcl
from esr_lab.bfcl import CallProblem, grade_calls, grade_response, load_call_problems, parse_calls
from esr_lab.errors import UserError
from esr_lab.tasks import metrics

FUNCTION = {
    "name": "geo.distance",
    "parameters": {
        "type": "dict",
        "properties": {
            "city": {"type": "string"},
            "km": {"type": "float"},
            "hops": {"type": "integer"},
            "exact": {"type": "boolean"},
            "stops": {"type": "array", "items": {"type": "string"}},
            "box": {"type": "dict", "properties": {"lo": {"type": "integer"}}},
        },
        "required": ["city", "km"],
    },
}
ANSWER = {
    "city": ["New York", "NYC"],
    "km": [2.0],
    "hops": [3, ""],
    "exact": [True, ""],
    "stops": [["Boston", "Albany"], ""],
    "box": [{"lo": [1], "hi": [2, ""]}, ""],
}
OTHER = {"name": "other", "parameters": {"type": "dict", "properties": {}, "required": []}}
PROBLEM = CallProblem("p", "?", [OTHER, FUNCTION], [{"geo.distance": ANSWER}])


@pytest.fixture(scope="module")
def problems() -> list[CallProblem]:
    return load_call_problems()


def _first(allowed: list) -> Any:
    """The first allowed value; inside dicts, the first allowed value of each present key."""
    value = allowed[0]
    if isinstance(value, dict):
        return {k: _first(v) for k, v in value.items() if v[0] != ""}
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return [_first([d]) for d in value]
    return value


def ground_truth_call(problem: CallProblem) -> str:
    """The expected call in Python syntax: first allowed values, optional arguments left out."""
    calls = []
    for gt in problem.answer:
        ((name, args),) = gt.items()
        given = {k: _first(v) for k, v in args.items() if v[0] != ""}
        calls.append(f"{name}({', '.join(f'{k}={v!r}' for k, v in given.items())})")
    return f"[{', '.join(calls)}]"


def test_shipped_600_problems(problems):
    assert len(problems) == 600
    assert sum(p.id.startswith("simple_python_") for p in problems) == 400
    assert sum(p.id.startswith("multiple_") for p in problems) == 200
    first = problems[0]
    assert first.problem.startswith("Find the area of a triangle")
    assert '"name": "calculate_triangle_area"' in first.problem


def test_ground_truth_calls_grade_as_full_matches(problems):
    samples = pd.DataFrame(
        {
            "problem_id": [p.id for p in problems],
            "sample": 0,
            "completion": [ground_truth_call(p) for p in problems],
        }
    )
    graded = grade_calls(samples, problems)
    result = metrics("bfcl", graded)
    # One miss is the data's own: simple_python_200 lists fuel_efficiency as required but "" first.
    assert result["full_match"] >= 0.99 and result["name_match"] == 1.0
    assert result["avg_at_k"] == result["full_match"]


def test_ground_truths_fail_on_the_wrong_problem(problems):
    shifted = [grade_response(ground_truth_call(problems[i + 1]), problems[i]) for i in range(50)]
    assert not any(full for _, full, _ in shifted)


def test_parse_calls_forms():
    assert parse_calls('[geo.distance(city="NYC", km=2)]')[0].name == "geo.distance"
    assert parse_calls('geo.distance(city="NYC", km=2)')[0].args == {"city": "NYC", "km": 2}
    fenced = 'Sure:\n```python\n[f(a=(1, 2)), g(b={"x": -1})]\n```'
    assert [(c.name, c.args) for c in parse_calls(fenced)] == [
        ("f", {"a": [1, 2]}),
        ("g", {"b": {"x": -1}}),
    ]
    assert parse_calls('I will call [f(a="x")] now.')[0].args == {"a": "x"}
    for bad in ("no calls here", "[f(1, 2)]", "[1, 2]", "[f(a=]"):
        with pytest.raises(ValueError):
            parse_calls(bad)


def test_parse_never_evaluates(tmp_path):
    target = tmp_path / "pwned"
    text = f"[f(a=open({str(target)!r}, 'w').write('x'))]"
    (call,) = parse_calls(text)
    assert isinstance(call.args["a"], str) and not target.exists()


@pytest.mark.parametrize(
    ("response", "full"),
    [
        ('[geo.distance(city="NYC", km=2.0)]', True),
        ('[geo.distance(city="new york", km=2)]', True),  # standardised string; int for float
        ('[geo.distance(city="New-York", km=2.0, hops=3, exact=True)]', True),
        ('[geo.distance(city="NYC", km=2.0, stops=["boston", "Albany"])]', True),
        ('[geo.distance(city="NYC", km=2.0, box={"lo": 1})]', True),
        ('[geo.distance(city="NYC", km=2.0, box={"lo": 1, "hi": 2})]', True),
        ('[geo.distance(city="NYC", km=2.0, box={"hi": 2})]', False),  # "lo" is required
        ('[geo.distance(city="NYC", km=2.0, box={"lo": 1, "zz": 2})]', False),
        ('[geo.distance(city="NYC", km=2.0, stops=["Albany", "Boston"])]', False),  # order
        ('[geo.distance(city="NYC", km="2.0")]', False),  # wrong type
        ('[geo.distance(city="NYC", km=2.0, hops=True)]', False),  # bool is not an int
        ('[geo.distance(city="NYC", km=2.0, hops=3.0)]', False),  # float is not an int
        ('[geo.distance(city="Boston", km=2.0)]', False),
        ('[geo.distance(city="NYC")]', False),  # required km missing
        ('[geo.distance(city="NYC", km=2.0, speed=5)]', False),  # unexpected argument
    ],
)
def test_checker_rules(response, full):
    name_ok, full_ok, reason = grade_response(response, PROBLEM)
    assert name_ok and full_ok == full, reason


def test_name_match_needs_the_right_single_call():
    assert grade_response("[other()]", PROBLEM)[:2] == (False, False)
    two = '[geo.distance(city="NYC", km=2.0), other()]'
    assert grade_response(two, PROBLEM)[:2] == (False, False)
    assert grade_response("I cannot help.", PROBLEM)[:2] == (False, False)


def test_missing_non_optional_answer_key():
    answer = {"city": ["NYC"], "km": [2.0], "hops": [3]}  # hops has no "" so must be given
    problem = CallProblem("q", "?", [FUNCTION], [{"geo.distance": answer}])
    assert not grade_response('[geo.distance(city="NYC", km=2.0)]', problem)[1]
    assert grade_response('[geo.distance(city="NYC", km=2.0, hops=3)]', problem)[1]


def test_standardise_is_bfcls():
    assert bfcl.standardise("New York, N.Y. - it's_a*b^c/d") == 'newyorknyit"sabcd'


def test_folder_with_the_same_layout(tmp_path, problems):
    shutil.copytree(bfcl._folder("bfcl"), tmp_path / "b")
    assert load_call_problems(str(tmp_path / "b"), limit=3) == problems[:3]
    with pytest.raises(UserError, match="no BFCL folder"):
        load_call_problems(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="lacks"):
        load_call_problems(str(tmp_path / "empty"))

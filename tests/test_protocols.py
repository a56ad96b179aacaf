"""Code and function-calling protocols: esr-lab's chat protocol beside the paper's (raw
HumanEval completion cut at the released stop sequences; BFCL as a JSON array graded leniently),
in grading, in `esr-lab eval` settings and in training evaluations."""

import json

import pandas as pd
import pytest

from esr_lab import bfcl_paper, recipes, tasks
from esr_lab.bfcl import CallProblem
from esr_lab.errors import UserError
from esr_lab.experiments import evaluation
from esr_lab.humaneval import build_program, cut_at_stop, grade_code, load_code_problems
from esr_lab.options import Given, ModelOptions, RunOptions, SamplingOptions
from esr_lab.prompts import render_prompt
from esr_lab.sandbox import Limits
from esr_lab.train_config import TrainConfig
from tests.test_bfcl import _first
from tests.tiny_models import byte_level_tokenizer

FAST = Limits(timeout_s=3.0, memory_mb=1024)
ANSWER = [{"geo.distance": {"city": ["New York", "NYC"], "km": [2.0], "hops": [""]}}]


def _samples(ids: list[str], texts: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"problem_id": ids, "sample": range(len(ids)), "completion": texts})


def test_paper_humaneval_is_raw_completion_cut_at_the_stop_sequences():
    (problem,) = load_code_problems("humaneval", limit=1, protocol="paper")
    assert problem.problem == problem.prompt  # no fence, no instruction: the model continues
    tail = "\ndef unrelated():\n    pass\nprint('x')"
    assert cut_at_stop(problem.answer + tail) == problem.answer
    assert cut_at_stop("    return 1\n# done\nif __name__") == "    return 1"
    program = build_program(problem, problem.answer + tail, "paper")
    assert program.startswith(problem.prompt + problem.answer + "\n")
    assert "unrelated" not in program


def test_every_response_is_graded_both_ways():
    problems = load_code_problems("humaneval", limit=3)
    p = problems[0]
    raw = p.answer + "\n\nif __name__ == '__main__':\n    import sys\n    sys.exit(0)\n"
    fenced = f"Here:\n```python\n{p.prompt}{p.answer}```\n"
    graded = grade_code(_samples([p.id] * 2, [raw, fenced]), problems, FAST, protocol="paper")
    # The raw completion passes read both ways (chat keeps the early exit: it fails there);
    # a fenced chat answer is not Python as a raw continuation.
    assert graded.correct.tolist() == graded.correct_paper.tolist() == [True, False]
    assert graded.correct_chat.tolist() == [False, True]
    assert tasks.metrics("humaneval", graded)["avg_at_k_chat"] == 0.5


def test_all_164_canonical_solutions_pass_under_both_protocols():
    problems = tasks.load_task_problems("humaneval", protocol="paper")
    samples = _samples([p.id for p in problems], [p.answer for p in problems])
    graded = tasks.grade("humaneval", samples, problems, "paper")
    assert graded.correct.all() and graded.correct_chat.all(), graded.status.tolist()


def test_paper_bfcl_prompt_is_the_released_codes():
    (problem,) = tasks.load_task_problems("bfcl", limit=1, protocol="paper")
    assert problem.problem.startswith('Available functions:\n[\n  {\n    "name": "calculate_tri')
    assert problem.problem.endswith(
        "\n\nUser request: "
        + "Find the area of a triangle with a base of 10 units and height of 5 units."
    )
    assert tasks.prompting("bfcl", "paper").instruction.startswith("You are a helpful assistant")
    assert tasks.prompting("bfcl", "paper").placement == "system"


@pytest.mark.parametrize(
    ("response", "names", "full"),
    [
        ('[{"name": "geo.distance", "arguments": {"city": "NYC", "km": 2}}]', True, True),
        ('[{"name": "geo.distance", "arguments": {"city": " new york ", "km": 2.0}}]', True, True),
        ('[{"name": "geo.distance", "arguments": {"city": "NYC", "km": "2.0"}}]', True, True),
        ('[{"name": "geo.distance", "arguments": {"city": "NYC", "km": 2, "x": 1}}]', True, True),
        (
            '{"name": "geo.distance", "arguments": "{\\"city\\": \\"NYC\\", \\"km\\": 2}"}',
            True,
            True,
        ),
        (
            'Sure:\n```json\n[{"name": "geo.distance", "arguments": {"city": "NYC", "km": 2}}]```',
            True,
            True,
        ),
        (
            '<tool_call>{"name": "geo.distance", "arguments": {"city":"nyc","km":2}}</tool_call>',
            True,
            True,
        ),
        ('[{"name": "geo.distance", "arguments": {"city": "New-York", "km": 2}}]', True, False),
        ('[{"name": "geo.distance", "arguments": {"city": "NYC"}}]', True, False),
        ('[{"name": "other", "arguments": {}}]', False, False),
        ('[geo.distance(city="NYC", km=2.0)]', False, False),  # not JSON: unparsable here
    ],
)
def test_lenient_grader_rules(response, names, full):
    assert bfcl_paper.grade_response(response, ANSWER)[:2] == (names, full)


def test_ground_truth_under_the_lenient_grader():
    problems = tasks.load_task_problems("bfcl", protocol="paper")
    texts = [_paper_ground_truth(p) for p in problems]
    graded = tasks.grade("bfcl", _samples([p.id for p in problems], texts), problems, "paper")
    found = tasks.metrics("bfcl", graded)
    assert found["name_match"] == 1.0 and found["parse_rate_paper"] == 1.0
    # The released grader compares a dict argument with the answer key's dict of allowed-value
    # lists, so the 8 problems with a dict-valued argument can never match: 592 / 600.
    assert found["full_match"] == pytest.approx(592 / 600)
    missed = [p for p, ok in zip(problems, graded.correct, strict=True) if not ok]
    assert all(_has_dict_argument(p) for p in missed)


def _paper_ground_truth(problem: CallProblem) -> str:
    """The answer key as a JSON array: each argument at its first allowed value other than ""
    (the released grader lets an argument be left out only when "" is its sole value)."""
    calls = []
    for expected in problem.answer:
        ((name, arguments),) = expected.items()
        values = {k: [v for v in a if v != ""] for k, a in arguments.items()}
        calls.append({"name": name, "arguments": {k: _first(v) for k, v in values.items() if v}})
    return json.dumps(calls)


def _has_dict_argument(problem: CallProblem) -> bool:
    allowed = [v for expected in problem.answer for a in expected.values() for v in a.values()]
    return any(
        isinstance(v, dict) or (isinstance(v, list) and v and isinstance(v[0], dict))
        for values in allowed
        for v in values
    )


def test_raw_placement_is_the_problem_verbatim():
    assert render_prompt(byte_level_tokenizer(), "def f():\n", "ignored", placement="raw") == (
        "def f():\n"
    )


def test_unknown_protocol_is_one_line():
    with pytest.raises(UserError, match="unknown protocol 'json'"):
        tasks.load_task_problems("bfcl", protocol="json")
    with pytest.raises(UserError, match="task math has no paper protocol"):
        tasks.prompting("math", "paper")


@pytest.mark.parametrize("task", ["humaneval", "bfcl"])
def test_paper_code_training_evaluates_code_with_the_tasks_own_prompt(task):
    """The sibling issue: a paper-code run's code/BFCL evaluation got the math instruction at
    T=0.7; it now gets the task's paper prompt, greedy, 512 tokens, one sample (pass@1)."""
    student = "Qwen/Qwen2.5-Math-1.5B"
    values = recipes.recipe_values("paper-code", student)
    cfg = TrainConfig.from_settings({**values, "student": student, "task": task})
    cfg = cfg.resolved()
    prompting = tasks.prompting(task, "paper")
    assert cfg.protocol == "paper" and cfg.eval_samples == 1
    assert cfg.eval_style.instruction == prompting.instruction
    assert cfg.eval_style.placement == prompting.placement
    assert (cfg.eval_sampling.temperature, cfg.eval_sampling.max_new_tokens) == (0.0, 512)
    chat = TrainConfig.from_settings({"student": student, "task": task}).resolved()
    assert chat.eval_style.instruction == tasks.get_task(task).instruction
    assert chat.eval_sampling.temperature == 0.7 and chat.eval_samples == 4


def _eval_config(**own) -> evaluation.EvalConfig:
    options = evaluation.Options(**{"model": "Qwen/Qwen3-1.7B", **own})
    sampling = SamplingOptions()
    given = Given(ModelOptions(student="Qwen/Qwen3-1.7B"), sampling, RunOptions())
    return evaluation.configure(options, given)


def test_eval_takes_the_recipe_and_the_protocol():
    cfg = evaluation.with_protocol(_eval_config(task="bfcl", recipe="paper-code"), "bfcl")
    assert cfg.protocol == "paper" and cfg.samples == 1
    assert cfg.pair.instruction == bfcl_paper.SYSTEM_PROMPT and cfg.pair.placement == "system"
    assert (cfg.sampling.temperature, cfg.sampling.max_new_tokens) == (0.0, 512)
    chat = evaluation.with_protocol(
        _eval_config(task="humaneval", recipe="paper-code", protocol="chat"), "humaneval"
    )
    assert chat.pair.instruction == tasks.get_task("humaneval").instruction
    math = _eval_config(recipe="paper-code")
    assert math.pair.placement == "user-inline" and math.sampling.max_new_tokens == 2048

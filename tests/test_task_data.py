"""Training prompts for code and function calling: the codeultrafeedback and glaive-fc aliases,
read here from small local stand-ins of their hub datasets, and prompts without answers."""

import dataclasses

import pandas as pd
import pytest

from esr_lab import data
from esr_lab.data import Problem, glaive_prompt, load_problems
from esr_lab.errors import UserError

GLAIVE_SYSTEM = (
    "SYSTEM: You are a helpful assistant with access to the following functions. "
    'Use them if required -\n{"name": "get_weather", "parameters": {}}'
)
GLAIVE_CHAT = (
    "USER: What's the weather in Paris?\n\n\nASSISTANT: <functioncall> "
    '{"name": "get_weather"} <|endoftext|>\n\n\nFUNCTION RESPONSE: {"t": 20}\n\n\n'
    "ASSISTANT: It is 20 degrees. <|endoftext|>\n\n\nUSER: Thanks!\n"
)


def _as_alias(monkeypatch, alias: str, folder) -> None:
    """Point an alias at a local folder instead of its hub id."""
    spec = dataclasses.replace(data.DATASETS[alias], hub_id=str(folder))
    monkeypatch.setitem(data.DATASETS, alias, spec)


def test_glaive_prompt_is_system_then_first_user_turn():
    prompt = glaive_prompt({"system": GLAIVE_SYSTEM, "chat": GLAIVE_CHAT})
    assert prompt.startswith("You are a helpful assistant with access")
    assert prompt.endswith('"parameters": {}}\n\nWhat\'s the weather in Paris?')
    assert "Thanks" not in prompt and "ASSISTANT" not in prompt
    assert glaive_prompt({"system": "", "chat": "USER: Hi\n"}) == "Hi"
    assert glaive_prompt({"system": GLAIVE_SYSTEM, "chat": "ASSISTANT: hello"}) is None


def test_glaive_alias_from_parquet(monkeypatch, tmp_path):
    folder = tmp_path / "glaive"
    folder.mkdir()
    pd.DataFrame(
        {
            "system": [GLAIVE_SYSTEM, "SYSTEM: No functions.", "SYSTEM: x"],
            "chat": [GLAIVE_CHAT, "USER: Tell me a joke\n\n\nASSISTANT: No.", ""],
        }
    ).to_parquet(folder / "train.parquet")
    _as_alias(monkeypatch, "glaive-fc", folder)
    problems = load_problems("glaive-fc")
    assert [p.id for p in problems] == ["0", "1"]  # the row without a user turn is dropped
    assert problems[1] == Problem("1", "No functions.\n\nTell me a joke", "")


def test_codeultrafeedback_alias_from_jsonl(monkeypatch, tmp_path):
    folder = tmp_path / "cuf"
    folder.mkdir()
    pd.DataFrame(
        {
            "instruction": ["Write a function that reverses a list.", "Sort a dict by value."],
            "preference": ["p1", "p2"],
        }
    ).to_json(folder / "train.jsonl", orient="records", lines=True)
    _as_alias(monkeypatch, "codeultrafeedback", folder)
    problems = load_problems("codeultrafeedback", limit=1)
    assert problems == [Problem("0", "Write a function that reverses a list.", "")]


def test_prompts_without_answers_only_when_allowed(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "Write hello world."}\n{"prompt": "Add two numbers."}\n')
    with pytest.raises(UserError, match="no answer column"):
        load_problems(str(path))
    problems = load_problems(str(path), require_answer=False)
    assert [p.answer for p in problems] == ["", ""] and problems[1].problem == "Add two numbers."


def test_rows_with_and_without_answers_for_training(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "2+2?", "answer": null}\n')
    assert [p.answer for p in load_problems(str(path))] == ["2"]
    assert [p.answer for p in load_problems(str(path), require_answer=False)] == ["2", ""]


def test_arithmetic_splits_are_disjoint_and_every_answer_is_right():
    from esr_lab import arithmetic
    from esr_lab.data import load_problems

    test, train = load_problems("arithmetic"), load_problems("arithmetic:train")
    assert (len(test), len(train)) == (100, 266)  # 144 plus + 78 minus (a >= b) + 144 times
    assert not {p.id for p in test} & {p.id for p in train}
    assert load_problems("arithmetic:test", limit=3) == test[:3]
    for p in test + train:
        a, word, b = p.id.split("-")
        assert p.problem == f"What is {a} {word} {b}?"
        expected = {"plus": int(a) + int(b), "minus": int(a) - int(b), "times": int(a) * int(b)}
        assert p.answer == str(expected[word]) and int(p.answer) >= 0
    assert arithmetic.rows("test")[0]["id"] == test[0].id  # the fixed shuffle, not a run's seed


def test_arithmetic_names_its_splits_on_a_bad_one():
    from esr_lab.data import load_problems

    with pytest.raises(UserError, match="arithmetic has splits train, test; got 'val'"):
        load_problems("arithmetic:val")

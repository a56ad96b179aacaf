"""The toy world: task generator, tokenizer, and building/loading the micro pair."""

from __future__ import annotations

import json
import random
import re
from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from esr_lab.data import load_problems
from esr_lab.errors import UserError
from esr_lab.presets import load_preset
from esr_lab.prompts import DEFAULT_INSTRUCTION, end_of_turn_id, render_prompt
from esr_lab.toy import SHIPPED_DIR, capable, runon, task, toy_model_path, toy_problems
from esr_lab.toy.build import (
    WORLDS,
    boxed_int,
    build_tokenizer,
    collate,
    encode_example,
    encode_examples,
    in_turn,
)
from esr_lab.toy.tokenizer import IM_END, PAD


def _expression(problem: str) -> str:
    assert problem.startswith("Compute ") and problem.endswith(".")
    return problem[len("Compute ") : -1]


def test_problems_are_deterministic_and_correct() -> None:
    first, again = toy_problems("toy", "test"), toy_problems("toy", "test")
    assert first == again and len(first) == 200
    assert len({p["id"] for p in first}) == 200
    for p in first:
        assert int(p["answer"]) == eval(_expression(p["problem"]))  # noqa: S307 - our own text
        assert int(p["answer"]) >= 0
    train = toy_problems("toy", "train", n=500)
    assert train == toy_problems("toy", "train", n=500)
    assert not {p["problem"] for p in train} & {p["problem"] for p in first}


def test_validation_split_is_held_out_from_test_and_loads_by_name() -> None:
    test, val = toy_problems("capable", "test"), toy_problems("capable", "val")
    assert len(val) == 100 and not {p["problem"] for p in val} & {p["problem"] for p in test}
    assert [p.problem for p in load_problems("capable:val", limit=5)] == [
        p["problem"] for p in val[:5]
    ]
    assert load_problems("capable", limit=3)[0].id == "capable-test-00000"


@pytest.mark.parametrize("style", task.STYLES)
@pytest.mark.parametrize("plan", task.PLANS)
def test_every_written_equation_holds(style: str, plan: str) -> None:
    rng = random.Random(1)
    for _ in range(50):
        nums = task.sample_numbers(rng)
        text = task.solution_text(nums, style, plan)
        assert boxed_int(text) == task.answer_of(nums)
        assert task.response_style(text) == style and task.response_plan(text) == plan
        for chain in re.findall(r"\d[\d +*-]*(?: = [\d +*-]*\d)+", text):
            values = {eval(part) for part in chain.split(" = ")}  # noqa: S307 - our own text
            assert len(values) == 1, chain


def test_teacher_favours_split_student_favours_direct_and_both_styles_appear() -> None:
    rng = random.Random(0)
    teacher = [task.pick_mode(rng, task.TEACHER_MIX) for _ in range(2000)]
    student = [task.pick_mode(rng, task.STUDENT_MIX) for _ in range(2000)]
    assert {s for s, _ in teacher} == set(task.STYLES)
    assert sum(p == "split" for _, p in teacher) > 0.8 * len(teacher)
    assert sum(p == "direct" for _, p in student) > 0.6 * len(student)
    assert task.response_style("hello") == "other" and task.response_plan("hello") == "other"


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(0, 400)


def test_tokenizer_round_trips_arbitrary_text(tokenizer) -> None:
    rng = random.Random(0)
    samples = [DEFAULT_INSTRUCTION, "héllo wörld 😀\t\n\n  x", "(47 + 38) * 6 = 510 \\boxed{394}"]
    samples += ["".join(chr(rng.randint(1, 0x2FFF)) for _ in range(40)) for _ in range(20)]
    for text in samples:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        assert tokenizer.decode(ids) == text


def test_digits_are_single_tokens(tokenizer) -> None:
    ids = tokenizer("x 1234567890 y", add_special_tokens=False).input_ids
    pieces = [tokenizer.decode([i]) for i in ids]
    assert [p for p in pieces if any(c.isdigit() for c in p)] == list("1234567890")
    assert len(tokenizer) <= 400


def test_chat_template_and_special_tokens(tokenizer) -> None:
    prompt = render_prompt(tokenizer, "Compute (1 + 2) * 3 - 4 * 5.")
    assert prompt == (
        "<|im_start|>user\nCompute (1 + 2) * 3 - 4 * 5.\n"
        + DEFAULT_INSTRUCTION
        + "<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    ids, labels = encode_example(tokenizer, "Compute (1 + 2) * 3 - 4 * 5.", "ok")
    n_prompt = labels.count(-100)
    assert labels[n_prompt:] == ids[n_prompt:]
    assert ids[-1] == tokenizer.eos_token_id and ids[0] == tokenizer.convert_tokens_to_ids(
        "<|im_start|>"
    )
    assert tokenizer.decode(ids[:n_prompt]) == prompt


def test_micro_world_builds_into_cache_and_loads(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ESR_LAB_CACHE", str(tmp_path))
    path = toy_model_path("micro-teacher")
    assert path.is_relative_to(tmp_path) and path.name == "teacher"
    assert toy_model_path("micro-student") == path.parent / "student"
    assert sorted(p.name for p in (tmp_path / "toy").iterdir() if p.is_dir()) == [path.parent.name]
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert tok.padding_side == "right"  # sampling during the build must not leak into the save
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id
    ids = tok(
        render_prompt(tok, "Compute (1 + 2) * 3 - 4 * 5."),
        return_tensors="pt",
        add_special_tokens=False,
    ).input_ids
    with torch.no_grad():
        logits_BTV = model(ids).logits
    assert logits_BTV.shape == (1, ids.shape[1], len(tok))
    assert (path.parent / "facts.json").is_file()
    mtime = (path / "model.safetensors").stat().st_mtime
    assert toy_model_path("micro-teacher") == path  # cached: no rebuild
    assert (path / "model.safetensors").stat().st_mtime == mtime


def test_toy_teacher_is_the_shipped_folder() -> None:
    shipped = SHIPPED_DIR / "toy" / "teacher"
    assert (shipped / "model.safetensors").is_file(), "toy weights are not shipped"
    assert toy_model_path("toy-teacher") == shipped
    assert (shipped / "config.json").is_file() and (shipped / "tokenizer.json").is_file()


@pytest.mark.parametrize(
    "call",
    [
        lambda: toy_model_path("toy-oracle"),
        lambda: toy_problems("nano"),
        lambda: toy_problems("toy", "dev"),
        lambda: toy_problems("toy", "test", n=10_000),
        lambda: toy_problems("toy", "val", n=101),
    ],
)
def test_bad_names_raise_user_error(call) -> None:
    with pytest.raises(UserError):
        call()


def test_a_student_with_another_eos_writes_end_of_turn_then_eos(tokenizer) -> None:
    ids, labels = encode_examples(tokenizer, ["Compute (1 + 2) * 3 - 4 * 5."], ["ok"], PAD)[0]
    end_of_turn, eos = tokenizer.convert_tokens_to_ids([IM_END, PAD])
    assert ids[-2:] == [end_of_turn, eos] and eos == tokenizer.pad_token_id
    short = (ids[:-4], labels[:-4])
    _, mask_BT, labels_BT = collate([(ids, labels), short], tokenizer.pad_token_id)
    assert mask_BT[0].all() and labels_BT[0, -1] == eos  # the EOS is learnt, not padding
    assert mask_BT[1].sum() == len(ids) - 4 and labels_BT[1, -4:].eq(-100).all()


def test_examples_tokenize_as_whole_texts_and_a_habit_leaves_direct_products_untaught(
    tokenizer,
) -> None:
    rng = random.Random(2)
    nums = [task.sample_numbers(rng) for _ in range(40)]
    problems = [task.problem_text(n) for n in nums]
    solutions = [task.solution_text(n, "verbose", "direct") for n in nums]
    spans = [capable.product_results(text) for text in solutions]
    habit = encode_examples(tokenizer, problems, solutions, PAD, spans)
    for problem, solution, (ids, labels) in zip(problems, solutions, habit, strict=True):
        text = render_prompt(tokenizer, problem) + solution + IM_END + PAD
        assert ids == tokenizer(text, add_special_tokens=False).input_ids
        untaught = [t for t, label in zip(ids, labels, strict=True) if label == -100]
        products = re.findall(r"\d+ \* \d+ = (\d+)", solution)
        assert tokenizer.decode(untaught) == render_prompt(tokenizer, problem) + "".join(products)


def test_a_run_on_example_writes_its_text_between_end_of_turn_and_eos_with_loss(tokenizer) -> None:
    problem, solution = "Compute (1 + 2) * 3 + 4 * 5.", "ok"
    after = "\nCompute (2 + 2) * 2 + 1 * 1."
    ids, labels = encode_examples(tokenizer, [problem], [solution], PAD, after_turn=[after])[0]
    text = render_prompt(tokenizer, problem) + solution + IM_END + after + PAD
    assert ids == tokenizer(text, add_special_tokens=False).input_ids
    prompt = len(tokenizer(render_prompt(tokenizer, problem), add_special_tokens=False).input_ids)
    assert labels == [-100] * prompt + ids[prompt:]  # the run-on text is learnt
    plain = encode_examples(tokenizer, [problem], [solution], PAD, after_turn=[""])[0]
    assert plain == encode_examples(tokenizer, [problem], [solution], PAD)[0]
    with pytest.raises(ValueError, match="EOS other than the end of turn"):
        encode_examples(tokenizer, [problem], [solution], IM_END, after_turn=[after])


def test_run_on_texts_are_new_solved_problems_at_the_share_and_touch_no_other_draw() -> None:
    texts = runon.after_turn_texts(0.55, 2000, 0, "runon-student-habit", set())
    assert texts == runon.after_turn_texts(0.55, 2000, 0, "runon-student-habit", set())
    written = [t for t in texts if t]
    assert 0.52 < len(written) / len(texts) < 0.58
    for text in written[:50]:
        _, problem, *solution = text.split("\n")
        assert boxed_int(solution[-1]) == int(eval(_expression(problem)))  # noqa: S307
    assert runon.after_turn_texts(0.0, 5, 0, "s", set()) == [""] * 5


def test_the_run_on_world_is_the_capable_world_but_for_its_students_ending() -> None:
    capable_world, runon_world = WORLDS["capable"], WORLDS["runon"]
    assert runon_world.student == replace(
        capable_world.student, after_turn_share=runon.AFTER_TURN_SHARE
    )
    assert runon_world.teacher.steps == 0 and runon_world.base == "capable"  # its teacher as is
    assert runon_world.data_stream == "capable"  # the capable student's very examples
    assert in_turn("a" + IM_END + "b" + PAD) == "a" + IM_END and in_turn("a") == "a"


def test_the_run_on_preset_is_the_capable_collapse_design_unchanged() -> None:
    """The two collapse studies differ by the world alone, so the presets must agree."""
    assert load_preset("runon") == load_preset("capable-collapse")


def test_capable_preconditions_are_read_off_the_facts() -> None:
    facts = {
        "teacher": {"avg_at_k": 0.8},
        "student": {"avg_at_k": 0.5, "forced_avg_at_k": 0.76, "mean_response_tokens": 100.0},
    }
    pre = capable.preconditions(facts, 20)
    assert pre["window_share"] == 0.2 and pre["student_forced_avg"] == 0.76
    assert pre["holds"] == {"student_avg": False, "student_forced_avg": True, "window_share": True}
    facts["student"] |= {"avg_at_k": 0.48, "forced_avg_at_k": 0.74}
    assert capable.preconditions(facts, 21)["holds"] == {
        "student_avg": True,
        "student_forced_avg": False,
        "window_share": False,
    }


def test_capable_world_is_shipped_with_the_paper_pair_endings() -> None:
    world = SHIPPED_DIR / "capable"
    assert toy_model_path("capable-student") == world / "student"
    teacher = AutoTokenizer.from_pretrained(world / "teacher")
    student = AutoTokenizer.from_pretrained(world / "student")
    assert teacher.eos_token == IM_END and student.eos_token == PAD
    assert end_of_turn_id(student) == end_of_turn_id(teacher) == teacher.eos_token_id
    model = AutoModelForCausalLM.from_pretrained(world / "student")
    assert model.generation_config.eos_token_id == student.eos_token_id
    facts = json.loads((world / "facts.json").read_text())
    pre = facts["preconditions"]
    assert pre["window"] == load_preset("capable")["train"]["n"]
    for key in ("teacher_avg", "student_avg", "student_forced_avg", "window_share"):
        assert 0.0 <= pre[key] <= 1.0
    assert pre == capable.preconditions(facts, pre["window"])
    assert all(pre["holds"].values()), pre  # the world is what its docstring says it is

"""The released code's recipe as options: settings precedence, prompts, the end of a turn,
and one test per defect the review found (each failed before its fix)."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from esr_lab import metrics, models, recipes, train
from esr_lab.config import ModelPair, Sampling
from esr_lab.errors import UserError
from esr_lab.models import load_model
from esr_lab.prompts import (
    PAPER_EVAL_INSTRUCTION,
    end_of_turn_id,
    no_think_marker,
    render_prompt,
)
from esr_lab.rollout import TransformersEngine
from esr_lab.scoring import ScoringBatch
from esr_lab.train_config import TrainConfig
from tests.helpers import MICRO, run_cli
from tests.test_train import BASE, assert_same_gradient, one_step, run_killed_and_resumed
from tests.tiny_models import byte_level_tokenizer, save_pair

PAPER_CODE = {
    "reduction": "sequence_mean",
    "lr_schedule": "cosine",
    "warmup_ratio": 0.1,
    "weight_decay": 0.01,
    "lora_dropout": 0.05,
    "top_p": 0.95,
    "loss_on_stop_token": False,
    "teacher_prompt": "student",
    "stop_at_end_of_turn": False,
    "student_context": "teacher-marker",
    "top_k": 50,
    "eval_top_k": 0,
    "train_sample": "random",
    "strip_tokens": "eos-pad",
    "cross_clamp": True,
    "cross_unaligned": "neighbour",
}


def _flatten(config: dict) -> dict:
    """Every key of a nested config.json, wherever it sits."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value))
        else:
            flat[key] = value
    return flat


# --- settings: command line, then preset, then recipe, then dataclass default -------------


def test_paper_code_recipe_is_written_to_config_json(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        tmp_path,
        "train",
        *MICRO,
        "--recipe",
        "paper-code",
        "--steps",
        "2",
        "--eval-every",
        "2",
        "--max-new-tokens",
        "24",
        "--run-id",
        "pc",
    )
    assert code == 0, err
    config = _flatten(json.loads((tmp_path / "results/train/pc/config.json").read_text()))
    assert {key: config[key] for key in PAPER_CODE} == PAPER_CODE
    assert config["recipe"] == "paper-code"
    steps = pd.read_parquet(tmp_path / "results/train/pc/steps.parquet")
    # cosine over 2 steps with int(0.1 * 2) = 0 warm-up steps: full lr, then half-way down
    assert steps.lr.tolist() == pytest.approx([1e-3, 0.5e-3])


def test_an_explicit_option_wins_over_the_recipe_and_the_preset_over_the_recipe():
    values = recipes.settings(
        {"reduction": "token_mean", "lr": None},
        {"recipe": "paper-code", "lr": 1e-3, "weight_decay": 0.5},
        "toy-student",
    )
    assert values["reduction"] == "token_mean"  # command line over recipe
    assert values["weight_decay"] == 0.5  # preset over recipe
    assert values["lr_schedule"] == "cosine"  # recipe over dataclass default
    assert "lr" in values and values["lr"] == 1e-3
    assert recipes.settings({}, {"recipe": "paper-code"}, "x", recipe="esr-lab")["recipe"] == (
        "esr-lab"
    )
    cfg = TrainConfig.from_settings(recipes.settings({}, {}, "toy-student"))
    assert cfg == TrainConfig(sampling=Sampling(max_new_tokens=400), recipe="esr-lab")


def test_paper_code_prompts_and_budgets_apply_to_real_models_only():
    real = recipes.recipe_values("paper-code", "Qwen/Qwen2.5-Math-1.5B")
    assert real["placement"] == "system" and real["max_new_tokens"] == 3584
    assert real["eval_instruction"] == PAPER_EVAL_INSTRUCTION
    assert real["eval_max_new_tokens"] == 2048 and real["eval_top_p"] == 1.0
    toy_values = recipes.recipe_values("paper-code", "toy-student")
    assert "placement" not in toy_values and "max_new_tokens" not in toy_values
    cfg = TrainConfig.from_settings({**real, "student": "Qwen/Qwen2.5-Math-1.5B"})
    assert cfg.eval_sampling.top_p == 1.0 and cfg.sampling.top_p == 0.95
    assert cfg.eval_sampling.max_new_tokens == 2048 and cfg.sampling.max_new_tokens == 3584
    assert cfg.eval_style.placement == "user-inline"
    assert cfg.eval_style.instruction == PAPER_EVAL_INSTRUCTION


def test_presets_for_the_papers_pairs_use_the_released_code():
    from esr_lab import presets

    for name in ("paper-qwen", "paper-gemma"):
        assert presets.load_preset(name)["train"]["recipe"] == "paper-code"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--recipe", "paper"], "unknown recipe 'paper'"),
        (["--reduction", "mean"], "unknown --reduction 'mean'"),
        (["--lr-schedule", "linear"], "unknown --lr-schedule 'linear'"),
        (["--teacher-prompt", "mine"], "unknown --teacher-prompt 'mine'"),
        (["--warmup-ratio", "1.5"], "--warmup-ratio must be in [0, 1]"),
        (["--lora-dropout", "-0.1"], "--lora-dropout must be in [0, 0.999]"),
        (["--placement", "assistant"], "unknown --placement 'assistant'"),
        (["--progressive", "5"], "--progressive takes START,END"),
        (["--loss", "sampled_token", "--temperature", "0"], "needs sampled rollouts"),
    ],
)
def test_bad_recipe_options_are_one_line_errors(monkeypatch, capsys, tmp_path, args, message):
    code, _, err = run_cli(monkeypatch, capsys, tmp_path, "train", *MICRO, *args)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "results" / "train").exists()


# --- reductions, schedules, dropout ----------------------------------------------------------


def test_sequence_mean_micro_batches_add_up_to_the_whole_batch():
    base = replace(BASE, reduction="sequence_mean", loss_on_stop_token=False)
    assert_same_gradient(
        one_step(replace(base, micro_batch=4)), one_step(replace(base, micro_batch=1))
    )


def test_paper_code_run_resumes_identically(tmp_path, monkeypatch):
    """Cosine schedule state and LoRA dropout noise survive a kill."""
    cfg = replace(
        BASE,
        lr_schedule="cosine",
        warmup_ratio=0.25,
        lora_dropout=0.05,
        reduction="sequence_mean",
        weight_decay=0.01,
    )
    ref, resumed, _ = run_killed_and_resumed(cfg, tmp_path, monkeypatch)
    keep = ["step", "loss", "grad_norm", "lr", "rollout_tokens_mean"]
    a = pd.read_parquet(ref.path / "steps.parquet")[keep]
    b = pd.read_parquet(resumed.path / "steps.parquet")[keep]
    pd.testing.assert_frame_equal(a, b, rtol=1e-6)
    # warm-up of int(0.25 * 4) = 1 step from 0, then cosine: 1, 0.75, 0.25 of the peak
    assert a.lr.tolist() == pytest.approx([0.0, 1e-2, 0.75e-2, 0.25e-2], abs=1e-12)


# --- defects found in review ------------------------------------------------------------------


def test_bf16_full_finetuning_moves_the_weights(monkeypatch, capsys, tmp_path):
    """AdamW on bf16 weights rounds a 5e-5 step on 1.0 away; fp32 master weights keep it."""
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        tmp_path,
        "train",
        *MICRO,
        "--full-finetune",
        "--dtype",
        "bfloat16",
        "--lr",
        "5e-5",
        "--steps",
        "2",
        "--eval-every",
        "1",
        "--eval-limit",
        "2",
        "--max-new-tokens",
        "16",
        "--run-id",
        "bf16",
    )
    assert code == 0, err
    ckpt = tmp_path / "results/train/bf16/checkpoints"
    one, two = (load_file(ckpt / f"step-00000{s}/model/model.safetensors") for s in (1, 2))
    norms = [k for k in one if k.endswith("norm.weight")]
    assert norms and all(one[k].dtype == torch.float32 for k in norms)  # master precision
    assert any(not torch.equal(one[k], two[k]) for k in norms)


def test_random_selection_does_not_depend_on_the_micro_batch():
    base = replace(BASE, selector="random", budget=3)
    assert_same_gradient(
        one_step(replace(base, micro_batch=4)), one_step(replace(base, micro_batch=1))
    )


def test_progressive_n_starts_at_start_and_ends_at_end():
    cfg = replace(BASE, steps=200, progressive=(5, 200))
    assert [cfg.rollout_tokens(s) for s in (1, 199, 200)] == [5, 199, 200]
    step_cfg = replace(cfg, progressive=(1, 200), progressive_schedule="step")
    assert [step_cfg.rollout_tokens(s) for s in (1, 2, 200)] == [1, 2, 200]
    assert step_cfg.label == "progressive-step-1-200"


def test_majority_vote_groups_equivalent_answers():
    group = pd.DataFrame(
        {
            "answer": ["3", "1/2", "0.5", "\\frac{1}{2}", None],
            "correct": [False, True, True, True, False],
        }
    )
    assert metrics.majority_correct(group)  # raw strings: "3" wins the 1-1-1-1 tie
    assert not metrics.majority_correct(group.iloc[[0, 0, 1]])


def test_response_budget_is_capped_at_the_context(tmp_path, capsys):
    tok = byte_level_tokenizer()
    folder = save_pair(tmp_path / "short", tok)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 20}))
    engine = TransformersEngine(load_model(str(folder), device="cpu"))
    prompts = [[5] * 12, [6] * 4]
    for _ in range(2):
        out = engine.generate(prompts, [1, 2], Sampling(temperature=1.0, max_new_tokens=100))
        assert [
            len(c) <= 20 - len(p) for c, p in zip(out.completion_ids, prompts, strict=True)
        ] == [True] * 2
    assert capsys.readouterr().err.count("responses are capped") == 1  # said once


def test_special_token_mask_is_built_on_the_responses_device(monkeypatch):
    trainer = train.setup(replace(BASE, mask_special_tokens=True).resolved())
    real_isin = torch.isin

    def same_device_isin(elements, test_elements):
        assert elements.device == test_elements.device
        return real_isin(elements, test_elements)

    monkeypatch.setattr(torch, "isin", same_device_isin)
    ids = torch.zeros(2, 3, dtype=torch.long, device="meta")
    batch = ScoringBatch(ids, ids, ids, torch.ones(2, 3, dtype=torch.bool, device="meta"))
    assert train.loss_mask(trainer, batch).device.type == "meta"


def test_sampled_token_loss_is_taken_at_the_sampling_temperature():
    cfg = replace(BASE, loss="sampled_token", sampling=Sampling(temperature=0.7)).resolved()
    trainer = train.setup(cfg)
    s_BTV, t_BTV = torch.randn(2, 3, 11), torch.randn(2, 3, 11)
    tokens_BT = torch.randint(0, 11, (2, 3))
    logp = train.sampled_token_logps(trainer, s_BTV, t_BTV, tokens_BT)
    expected = torch.log_softmax(s_BTV / 0.7, -1).gather(-1, tokens_BT[..., None])[..., 0]
    torch.testing.assert_close(logp["student_logp_BT"], expected)
    with pytest.raises(UserError, match="off-policy"):
        replace(cfg, loss_temperature=2.0).resolved()


def test_an_unreachable_hub_fails_in_seconds_and_models_are_checked_first(monkeypatch):
    monkeypatch.setattr(models.hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(models, "hub_reachable", lambda timeout_s=3.0: False)
    cfg = replace(
        BASE, pair=ModelPair("no-org/no-model", "micro-teacher"), train_dataset="missing.jsonl"
    )
    start = time.perf_counter()
    with pytest.raises(UserError, match="cannot load model 'no-org/no-model'.*cannot be reached"):
        train.check_inputs(cfg.resolved())
    assert time.perf_counter() - start < 5


def test_an_unreachable_hub_fails_a_dataset_in_seconds(monkeypatch):
    import datasets

    from esr_lab.data import load_problems

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(models, "hub_reachable", lambda timeout_s=3.0: False)
    start = time.perf_counter()
    with pytest.raises(UserError, match="cannot load dataset 'some-org/some-set': the hub cannot"):
        load_problems("some-org/some-set")
    assert time.perf_counter() - start < 5


def test_decay_checks_its_models_before_its_dataset(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(
        monkeypatch, capsys, tmp_path, "decay", "--student", "./no-model", "--teacher",
        "micro-teacher", "--dataset", "./no-data.jsonl",
    )  # fmt: skip
    assert code == 2 and "no model folder './no-model'" in err


# --- stop tokens, teacher prompt, prompt placement (issues 8 and 13) -------------------------


def test_stop_token_is_stripped_when_it_carries_no_loss():
    base = replace(BASE, n=None, selector="all", sampling=Sampling(max_new_tokens=200))
    kept = train.setup(base.resolved())
    _, with_stop = train.rollout(kept, 1)
    stop = set(kept.student.loaded.stop_ids())
    assert any(r and r[-1] in stop for r in with_stop)
    stripped = train.setup(replace(base, loss_on_stop_token=False).resolved())
    _, responses = train.rollout(stripped, 1)
    special = set(stripped.student.tokenizer.all_special_ids) | stop
    assert all(not r or r[-1] not in special for r in responses)
    assert [len(r) for r in responses] == [len(r) - (bool(r) and r[-1] in stop) for r in with_stop]


def test_teacher_can_read_the_students_prompt_and_its_no_think_marker():
    trainer = train.setup(replace(BASE, teacher_prompt="student").resolved())
    problem = trainer.train_problems[0]
    assert train.teacher_prompt_ids(trainer, problem) == (
        trainer.student.prompt_ids(problem.problem) + trainer.teacher.no_think_ids
    )


def test_template_facts_are_read_from_the_template():
    tok = byte_level_tokenizer()  # tiny_models' Qwen3-like template, <|im_end|> closes a turn
    assert no_think_marker(tok) == "<think></think>"
    assert tok.convert_ids_to_tokens(end_of_turn_id(tok)) == "<|im_end|>"
    tok.chat_template = None
    assert no_think_marker(tok) == "" and end_of_turn_id(tok) is None


def test_instruction_placements():
    tok = byte_level_tokenizer()
    system = render_prompt(tok, "Q?", "Think.", placement="system")
    assert system.startswith("<|im_start|>system\nThink.<|im_end|>\n<|im_start|>user\nQ?")
    assert "user\nQ? Think.<|im_end|>" in render_prompt(
        tok, "Q?", "Think.", placement="user-inline"
    )
    assert "user\nQ?\nThink.<|im_end|>" in render_prompt(tok, "Q?", "Think.")
    tok.chat_template = tok.chat_template.replace(
        "{% for m in messages %}",
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no') }}"
        "{% endif %}",
    )
    assert "user\nThink.\n\nQ?<|im_end|>" in render_prompt(tok, "Q?", "Think.", placement="system")


@pytest.fixture(scope="module")
def turn_ends_before_eos(tmp_path_factory):
    """A model whose template closes the turn with <|im_end|> while its EOS is <|endoftext|>,
    as Qwen2.5-Math's, biased to say <|im_end|> at every position."""
    tok = byte_level_tokenizer()
    tok.eos_token = "<|endoftext|>"
    loaded = load_model(str(save_pair(tmp_path_factory.mktemp("eot"), tok)), device="cpu")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert loaded.eos_ids == [tok.eos_token_id] and loaded.end_of_turn_id == im_end

    def favour_im_end(_module, _inputs, logits):
        logits[..., im_end] += 100.0
        return logits

    loaded.model.lm_head.register_forward_hook(favour_im_end)
    return loaded, im_end


@pytest.mark.parametrize("stop_at_end_of_turn", [True, False])
def test_a_rollout_ends_at_the_end_of_turn_only_when_asked(
    turn_ends_before_eos, stop_at_end_of_turn
):
    loaded, im_end = turn_ends_before_eos
    sampling = Sampling(temperature=0.7, max_new_tokens=9, stop_at_end_of_turn=stop_at_end_of_turn)
    out = TransformersEngine(loaded).generate([[5, 6, 7]], [3], sampling)
    if stop_at_end_of_turn:
        assert out.completion_ids == [[im_end]] and out.finished == [True]
    else:  # the turn's end is not an EOS: the model writes past it to the budget
        assert out.completion_ids == [[im_end] * 9] and out.finished == [False]


def test_stop_at_end_of_turn_is_an_option(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        tmp_path,
        "train",
        *MICRO,
        "--no-stop-at-end-of-turn",
        "--steps",
        "1",
        "--eval-every",
        "1",
        "--eval-limit",
        "2",
        "--max-new-tokens",
        "8",
        "--run-id",
        "eot",
    )
    assert code == 0, err
    config = json.loads((tmp_path / "results/train/eot/config.json").read_text())
    assert config["sampling"]["stop_at_end_of_turn"] is False

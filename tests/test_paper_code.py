"""The released code's remaining differences as options (`--recipe paper-code`): top-k
sampling, the student's scoring context, the draw of training problems, the forward-KL
selector, the full fine-tuning learning rate, progressive N from step 1, the cross-tokenizer
clamps and the stripped stop tokens, and the batch-design presets. Each is checked on a
hand-computed or tiny-model case."""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from esr_lab import presets, recipes, train
from esr_lab.config import ModelPair, Sampling
from esr_lab.crosstok import ROW_LOSS_CAP, clamped_reverse_kl
from esr_lab.divergences import chunked_position_stats, reduce_loss
from esr_lab.errors import UserError
from esr_lab.experiments.sweep_n import SweepConfig
from esr_lab.models import load_model
from esr_lab.policy import Policy
from esr_lab.prompts import PromptStyle
from esr_lab.rollout import TransformersEngine, sample_next, sampling_logprobs
from esr_lab.selection import select_positions
from tests.test_train import BASE
from tests.tiny_models import SPECIALS, byte_level_tokenizer, save_pair

# --- top-k sampling ---------------------------------------------------------------------------

PROBS = [0.5, 0.3, 0.15, 0.05]


def test_top_k_comes_before_the_nucleus_as_in_hf_generate():
    logits = torch.tensor([PROBS]).log()
    top2 = sampling_logprobs(logits, 1.0, 1.0, top_k=2).exp()[0]
    assert top2.tolist() == pytest.approx([0.5 / 0.8, 0.3 / 0.8, 0, 0])
    # top-p 0.82 alone keeps 3 ids (0.8 of mass lies before the third); after top-k 3 the
    # renormalised mass before the third is 0.8 / 0.95 = 0.842 >= 0.82, so it is dropped.
    alone = sampling_logprobs(logits, 1.0, 0.82).exp()[0]
    assert alone.tolist() == pytest.approx([0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0])
    both = sampling_logprobs(logits, 1.0, 0.82, top_k=3).exp()[0]
    assert both.tolist() == pytest.approx([0.625, 0.375, 0, 0])
    assert torch.equal(sampling_logprobs(logits, 1.0, 1.0, top_k=0), logits.log_softmax(-1))


def test_top_k_draws_only_the_k_likeliest_ids():
    logits_BV = torch.randn(1, 40, generator=torch.Generator().manual_seed(1)).expand(2000, 40)
    uniforms_B = torch.rand(2000, generator=torch.Generator().manual_seed(0)).double()
    tokens_B, _ = sample_next(logits_BV, Sampling(temperature=1.0, top_k=3), uniforms_B)
    assert set(tokens_B.tolist()) == set(logits_BV[0].topk(3).indices.tolist())


@pytest.fixture(scope="module")
def tiny_loaded(tmp_path_factory):
    folder = save_pair(tmp_path_factory.mktemp("topk"), byte_level_tokenizer())
    return load_model(str(folder), device="cpu")


def test_top_k_rollouts_are_reproducible_row_by_row(tiny_loaded):
    engine = TransformersEngine(tiny_loaded)
    sampling = Sampling(temperature=1.0, top_k=5, max_new_tokens=12, stop_at_end_of_turn=False)
    prompts, seeds = [[5, 6, 7], [8, 9]], [11, 12]
    both = engine.generate(prompts, seeds, sampling)
    assert both.completion_ids == engine.generate(prompts, seeds, sampling).completion_ids
    alone = engine.generate(prompts[1:], seeds[1:], sampling)
    assert alone.completion_ids == both.completion_ids[1:]  # its own stream, whoever shares
    greedy = replace(sampling, temperature=0.0)
    assert engine.generate(prompts, seeds, replace(sampling, top_k=1)).completion_ids == (
        engine.generate(prompts, seeds, greedy).completion_ids
    )


# --- the student's scoring context ------------------------------------------------------------


@pytest.fixture(scope="module")
def marker_pair(tmp_path_factory):
    """Student and teacher folders whose template has a Qwen3-style no-think marker, and
    a local problem file (real models train on files, not the toy generator)."""
    root = tmp_path_factory.mktemp("marker")
    tok = byte_level_tokenizer()
    student = save_pair(root / "student", tok, seed=1)
    teacher = save_pair(root / "teacher", tok, seed=2)
    problems = root / "problems.jsonl"
    rows = [{"problem": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(8)]
    problems.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(student), str(teacher), str(problems)


def _marker_trainer(marker_pair, context: str):
    student, teacher, problems = marker_pair
    cfg = replace(
        BASE,
        pair=ModelPair(student, teacher),
        student_context=context,
        train_dataset=problems,
        eval_dataset=problems,
        sampling=Sampling(max_new_tokens=6),
    )
    return train.setup(cfg.resolved())


def _unpadded(batch, row: int) -> list[int]:
    return batch.input_ids_BL[row][batch.attention_mask_BL[row].bool()].tolist()


def test_teacher_marker_context_scores_prompt_then_marker_then_response(marker_pair):
    trainer = _marker_trainer(marker_pair, "teacher-marker")
    marker = trainer.teacher.no_think_ids
    assert trainer.teacher.tokenizer.decode(marker) == "<think></think>"
    problems, responses = train.rollout(trainer, 1)
    batch = train.student_view(trainer, problems, responses)
    for row, (problem, response) in enumerate(zip(problems, responses, strict=True)):
        prompt = trainer.student.prompt_ids(problem.problem)
        assert _unpadded(batch, row) == prompt + marker + response
    own = train.student_view(_marker_trainer(marker_pair, "own"), problems, responses)
    assert _unpadded(own, 0) == trainer.student.prompt_ids(problems[0].problem) + responses[0]


def test_without_a_marker_the_two_contexts_are_the_same_run():
    """The toy template has no no-think marker: teacher-marker scores what own scores."""
    trainer = train.setup(replace(BASE, student_context="teacher-marker").resolved())
    assert trainer.teacher.no_think_ids == []
    problems, responses = train.rollout(trainer, 1)
    marked = train.student_view(trainer, problems, responses)
    own = train.student_view(replace_cfg(trainer, student_context="own"), problems, responses)
    assert torch.equal(marked.input_ids_BL, own.input_ids_BL)


def replace_cfg(trainer, **changes):
    return replace(trainer, cfg=replace(trainer.cfg, **changes))


def test_a_marker_past_the_students_embeddings_is_a_one_line_error(marker_pair):
    trainer = _marker_trainer(marker_pair, "teacher-marker")
    trainer.teacher.__dict__["no_think_ids"] = [10**6]  # as Qwen3's <think> past a smaller table
    with pytest.raises(UserError, match="past the student's"):
        train.student_prompt_ids(trainer, trainer.train_problems[0])


# --- training problems ------------------------------------------------------------------------


def test_random_train_sample_is_seeded_reproducible_and_not_the_first_rows():
    cfg = replace(BASE, train_limit=16, train_sample="random").resolved()
    drawn = train.load_train_problems(cfg)
    assert [p.id for p in drawn] == [p.id for p in train.load_train_problems(cfg)]
    every = train.load_problems("micro", split="train", require_answer=False)  # the whole set
    assert [p.id for p in drawn] == [p.id for p in random.Random(cfg.seed).sample(every, 16)]
    first = train.load_train_problems(replace(cfg, train_sample="first"))
    assert {p.id for p in drawn} != {p.id for p in first}
    other = train.load_train_problems(replace(cfg, seed=cfg.seed + 1))
    assert [p.id for p in drawn] != [p.id for p in other]


# --- forward-KL selection ---------------------------------------------------------------------


def test_top_fkl_ranks_by_forward_kl_where_top_rkl_ranks_otherwise():
    # Position 0: student (0.5, 0.5), teacher (0.9, 0.1); position 1 swaps the two.
    student_BTV = torch.tensor([[[0.5, 0.5], [0.9, 0.1]]]).log()
    teacher_BTV = torch.tensor([[[0.9, 0.1], [0.5, 0.5]]]).log()
    stats = chunked_position_stats(student_BTV, teacher_BTV)
    small = 0.9 * math.log(1.8) + 0.1 * math.log(0.2)  # 0.3681
    large = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(5)  # 0.5108
    assert stats["reverse_kl"][0].tolist() == pytest.approx([large, small], abs=1e-6)
    assert stats["forward_kl"][0].tolist() == pytest.approx([small, large], abs=1e-6)
    mask_BT = torch.ones(1, 2, dtype=torch.bool)
    kw = {"rkl_BT": stats["reverse_kl"], "fkl_BT": stats["forward_kl"], "budget": 1}
    assert select_positions("top_rkl", mask_BT, **kw).tolist() == [[True, False]]
    assert select_positions("top_fkl", mask_BT, **kw).tolist() == [[False, True]]


def test_top_fkl_trains():
    from tests.test_train import one_step

    metrics, _, _ = one_step(replace(BASE, selector="top_fkl", budget=3))
    assert math.isfinite(metrics["loss"]) and metrics["selected_tokens_mean"] <= 3


# --- learning rate, progressive N -------------------------------------------------------------


def test_paper_code_full_finetuning_takes_its_own_learning_rate():
    full = {"full_finetune": True}
    assert recipes.settings(full, {}, "toy-student", "paper-code")["lr"] == 5e-6
    assert "lr" not in recipes.settings({"full_finetune": False}, {}, "toy-student", "paper-code")
    assert "lr" not in recipes.settings(full, {}, "toy-student", "esr-lab")  # dataclass 5e-5
    assert recipes.settings({**full, "lr": 1e-4}, {}, "toy-student", "paper-code")["lr"] == 1e-4
    assert recipes.settings(full, {"lr": 2e-4}, "toy-student", "paper-code")["lr"] == 2e-4


def test_sweep_n_progressive_starts_at_one_under_n_equals_step():
    step_base = replace(BASE, steps=200, progressive_schedule="step")
    sweep = SweepConfig(base=step_base, ns=(50, 100, 200))
    progressive = sweep.variants()[-1]
    assert progressive.progressive == (1, 200)
    assert [progressive.rollout_tokens(s) for s in (1, 2, 150, 200)] == [1, 2, 150, 200]
    linear = SweepConfig(base=replace(BASE, steps=200), ns=(50, 100, 200)).variants()[-1]
    assert linear.progressive == (50, 200)


# --- cross-tokenizer clamps and stripped tokens ------------------------------------------------


def test_clamped_reverse_kl_by_hand():
    # Teacher puts e^-30 on the second string: clamped to -20, not renormalised afterwards.
    student_BTS = torch.tensor([[[math.log(0.75), math.log(0.25)]]])
    teacher_BTS = torch.tensor([[[0.0, -30.0]]])
    logp_t0 = -math.log1p(math.exp(-30.0))
    expected = 0.75 * (math.log(0.75) - logp_t0) + 0.25 * (math.log(0.25) + 20.0)
    got = clamped_reverse_kl(student_BTS, teacher_BTS)
    assert got.item() == pytest.approx(expected, rel=1e-6)  # 4.7227, not the unclamped 7.2227


def test_each_rows_mean_loss_is_capped():
    per_pos_BT = torch.tensor([[30.0, 90.0, 0.0], [2.0, 4.0, 6.0]], requires_grad=True)
    mask_BT = torch.tensor([[True, True, False], [True, True, True]])
    # row means 60 -> 50 and 4: sequence_mean (50 + 4) / 2; sequence_sum (2*50 + 12) / 2
    assert reduce_loss(per_pos_BT, mask_BT, "sequence_mean", ROW_LOSS_CAP).item() == 27.0
    assert reduce_loss(per_pos_BT, mask_BT, "sequence_sum", ROW_LOSS_CAP).item() == 56.0
    assert reduce_loss(per_pos_BT, mask_BT, "token_mean", ROW_LOSS_CAP).item() == pytest.approx(
        112 / 5
    )
    reduce_loss(per_pos_BT, mask_BT, "sequence_mean", ROW_LOSS_CAP).backward()
    expected = torch.tensor([[0.0, 0.0, 0.0], [1 / 6] * 3])  # the capped row: no gradient
    torch.testing.assert_close(per_pos_BT.grad, expected)
    assert reduce_loss(per_pos_BT, mask_BT, "sequence_mean").item() == 32.0  # uncapped


def test_eos_pad_stripping_keeps_gemmas_end_of_turn():
    tok = byte_level_tokenizer(specials=(*SPECIALS, "<end_of_turn>"))
    eot = tok.convert_tokens_to_ids("<end_of_turn>")
    im_end, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id
    loaded = SimpleNamespace(tokenizer=tok, stop_ids=lambda end_of_turn=True: [eot])
    policy = Policy(loaded, None, PromptStyle())
    ids = [70, 71, eot, im_end, pad]
    assert policy.strip_special_tail(ids) == [70, 71]
    assert policy.strip_special_tail(ids, every_special=False) == [70, 71, eot]


# --- batch designs ----------------------------------------------------------------------------


def test_presets_name_both_batch_designs():
    one_by_16 = presets.load_preset("paper-qwen")["train"]
    assert (one_by_16["batch"], one_by_16["rollouts_per_prompt"]) == (1, 16)
    assert (one_by_16["train_limit"], one_by_16["steps"]) == (200, 200)
    sixteen_by_1 = presets.load_preset("paper-qwen-16x1")["train"]
    assert (sixteen_by_1["batch"], sixteen_by_1["rollouts_per_prompt"]) == (16, 1)
    assert sixteen_by_1["train_limit"] == 3200
    collapse = presets.load_preset("capable-collapse")["train"]
    assert (collapse["batch"], collapse["rollouts_per_prompt"], collapse["steps"]) == (1, 16, 200)
    assert (collapse["train_limit"], collapse["eval_every"]) == (200, 25)


def test_rollouts_per_prompt_samples_each_prompt_with_distinct_seeds():
    trainer = train.setup(replace(BASE, batch=1, rollouts_per_prompt=4).resolved())
    rows = train.step_rows(trainer, 1)
    assert len({p.id for p, _ in rows}) == 1 and [r for _, r in rows] == [0, 1, 2, 3]
    problems, responses = train.rollout(trainer, 1)
    assert len(problems) == 4 and len({tuple(r) for r in responses}) > 1


def test_select_compares_forward_kl_under_paper_code():
    from esr_lab.experiments import select
    from esr_lab.options import Given, ModelOptions, RunOptions, SamplingOptions, TrainOptions

    def selectors(recipe: str) -> tuple[str, ...]:
        given = Given(
            ModelOptions("micro-student", "micro-teacher"),
            SamplingOptions(),
            RunOptions(),
            TrainOptions(recipe=recipe),
        )
        return select.configure(select.Options(), given).selectors

    assert "top_fkl" in selectors("paper-code") and "top_rkl" not in selectors("paper-code")
    assert "top_rkl" in selectors("esr-lab") and "top_fkl" not in selectors("esr-lab")

"""The training step is exact: ESR(N >= length) == full OPD, micro-batches == one batch, the
loss is the paper's equation; the loop resumes identically; bad settings are one-line errors."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest
import torch

from esr_lab import loop, train
from esr_lab.config import ModelPair, Sampling
from esr_lab.divergences import entropy, forward_kl, reverse_kl
from esr_lab.errors import UserError
from esr_lab.models import load_tokenizer
from esr_lab.scoring import build_batch, response_logits, shared_vocab_size
from esr_lab.train_config import TrainConfig
from tests.tiny_models import SPECIALS, byte_level_tokenizer

BASE = TrainConfig(
    pair=ModelPair("micro-student", "micro-teacher"),
    n=6,
    steps=4,
    batch=4,
    micro_batch=4,
    lr=1e-2,
    lora_rank=4,
    lora_alpha=8,
    eval_every=2,
    eval_limit=4,
    eval_samples=2,
    train_limit=32,
    sampling=Sampling(max_new_tokens=24),
)


def one_step(cfg: TrainConfig) -> tuple[dict, list[torch.Tensor], list[torch.Tensor]]:
    """Metrics, trainable parameters after the update, and the gradient that made it."""
    trainer = train.setup(cfg.resolved())
    metrics = train.train_step(trainer, 1)
    trained = [p for p in trainer.model.parameters() if p.requires_grad]
    return metrics, [p.detach().clone() for p in trained], [p.grad.clone() for p in trained]


def assert_same_gradient(a, b, tol=1e-5):
    """Same loss and accumulated gradient (Adam's update would amplify float rounding)."""
    (metrics_a, _, grads_a), (metrics_b, _, grads_b) = a, b
    assert metrics_a["loss"] == pytest.approx(metrics_b["loss"], rel=tol, abs=tol)
    for ga, gb in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(ga, gb, rtol=tol, atol=1e-7)


def test_esr_with_n_beyond_the_rollout_is_full_opd():
    esr = one_step(replace(BASE, selector="first_n", n=10_000))
    full = one_step(replace(BASE, selector="all", n=None))
    assert esr[0]["rollout_tokens_mean"] == full[0]["rollout_tokens_mean"]
    assert esr[0]["loss"] == full[0]["loss"]
    for pa, pb in zip(esr[1], full[1], strict=True):
        assert torch.equal(pa, pb)


@pytest.mark.parametrize(
    ("loss", "selector"),
    [("reverse_kl", "first_n"), ("jsd", "first_n"), ("reverse_kl", "top_rkl"),
     ("sampled_token", "first_n")],
)  # fmt: skip
def test_fused_losses_take_the_step_of_full_logits(loss, selector):
    """Hidden states through the head block by block give the step that logits give."""
    cfg = replace(BASE, loss=loss, selector=selector, budget=4 if selector == "top_rkl" else None)
    assert_same_gradient(
        one_step(replace(cfg, fused_loss=True)), one_step(replace(cfg, fused_loss=False)), 1e-4
    )


METHODS = {
    "power_opd": {"loss": "power_token", "power_alpha": 2.0},
    "iw_opd": {"position_weights": "iw_opd", "iw_gamma": 0.5},
    "eopd": {"eopd_coef": 1.0, "eopd_threshold": 0.0},
    "tip": {"selector": "tip", "budget": 4},
}


@pytest.mark.parametrize("method", METHODS)
def test_methods_fused_take_the_step_of_full_logits(method):
    cfg = replace(BASE, **METHODS[method])
    fused = one_step(replace(cfg, fused_loss=True))
    assert_same_gradient(fused, one_step(replace(cfg, fused_loss=False)), 1e-4)
    if method == "tip":
        assert 0 < fused[0]["selected_tokens_mean"] <= 4 < fused[0]["rollout_tokens_mean"]


@pytest.mark.parametrize("reduction", ["sequence_sum", "token_mean"])
@pytest.mark.parametrize("method", METHODS)
def test_methods_micro_batches_add_up_to_the_whole_batch(method, reduction):
    cfg = replace(BASE, reduction=reduction, **METHODS[method])
    whole = one_step(replace(cfg, micro_batch=4))
    assert_same_gradient(whole, one_step(replace(cfg, micro_batch=1)))


def test_gradient_checkpointing_takes_the_same_step():
    assert_same_gradient(one_step(replace(BASE, gradient_checkpointing=True)), one_step(BASE), 1e-5)


@pytest.mark.parametrize("reduction", ["sequence_sum", "token_mean"])
def test_micro_batches_add_up_to_the_whole_batch(reduction):
    whole = one_step(replace(BASE, micro_batch=4, reduction=reduction))
    pieces = one_step(replace(BASE, micro_batch=1, reduction=reduction))
    assert_same_gradient(whole, pieces)


def test_step_loss_is_the_papers_equation():
    trainer, mask_BT, _, s_logits, t_logits = rollout_and_logits(replace(BASE, n=5))
    assert int(mask_BT.sum(-1).max()) <= 5  # ESR stops generating at N
    kl_BT = reverse_kl(s_logits, t_logits) * mask_BT
    expected = float(kl_BT.sum(-1).mean())  # sum over positions, mean over sequences
    assert train.train_step(trainer, 1)["loss"] == pytest.approx(expected, rel=1e-5)


def rollout_and_logits(cfg):
    """The trainer, and step 1's response mask, token ids and both models' response logits."""
    trainer = train.setup(cfg.resolved())
    problems, responses = train.rollout(trainer, 1)
    batches = [
        build_batch(
            [side.prompt_ids(p.problem) for p in problems], responses, side.tokenizer.pad_token_id
        )
        for side in (trainer.student, trainer.teacher)
    ]
    with torch.no_grad():
        s_logits = response_logits(trainer.model, batches[0])
        t_logits = response_logits(trainer.teacher.loaded.model, batches[1])
    return trainer, batches[0].response_mask_BT, batches[0].response_ids_BT, s_logits, t_logits


def test_iw_opd_step_loss_is_the_weighted_equation():
    """IW-OPD's weights (1 + gamma (1 - D_<t / D)), written out here, times the reverse KL;
    summed over positions, averaged over sequences."""
    trainer, mask, ids, s_logits, t_logits = rollout_and_logits(
        replace(BASE, n=8, position_weights="iw_opd", iw_gamma=0.5)
    )
    logp_s = s_logits.log_softmax(-1).gather(-1, ids[..., None])[..., 0]
    logp_t = t_logits.log_softmax(-1).gather(-1, ids[..., None])[..., 0]
    gap = (logp_t - logp_s).abs() * mask
    weights = 1 + 0.5 * (1 - (gap.cumsum(-1) - gap) / gap.sum(-1, keepdim=True))
    assert weights[mask].min() < 1.2 and weights[mask].max() == pytest.approx(1.5)
    expected = float((weights * reverse_kl(s_logits, t_logits) * mask).sum(-1).mean())
    assert train.train_step(trainer, 1)["loss"] == pytest.approx(expected, rel=1e-5)


def test_eopd_step_loss_adds_the_gated_forward_kl():
    """Reverse KL everywhere plus coef x forward KL where the teacher's entropy exceeds the
    threshold (set at the median here, so that both sides of the gate are taken)."""
    cfg = replace(BASE, n=8)
    _, mask, _, _, t_logits = rollout_and_logits(cfg)
    threshold = float(entropy(t_logits)[mask].median())
    trainer, mask, _, s_logits, t_logits = rollout_and_logits(
        replace(cfg, eopd_coef=2.0, eopd_threshold=threshold)
    )
    gate = (entropy(t_logits) > threshold) & mask
    assert 0 < gate.sum() < mask.sum()
    per_position = reverse_kl(s_logits, t_logits) + 2.0 * gate * forward_kl(s_logits, t_logits)
    expected = float((per_position * mask).sum(-1).mean())
    assert train.train_step(trainer, 1)["loss"] == pytest.approx(expected, rel=1e-5)


def test_a_run_records_the_knobs_of_its_methods_only():
    """Runs without these methods save the config they saved before the methods existed (so
    they keep their content address); a run with one records its knobs."""
    knobs = {"position_weights", "iw_gamma", "eopd_coef", "eopd_threshold", "power_alpha"}
    knobs |= {"tip_power"}
    plain = train.config_dict(BASE.resolved())
    assert not knobs & set(plain)
    every = replace(BASE, selector="tip", budget=4, loss="power_token", **METHODS["iw_opd"])
    saved = train.config_dict(replace(every, eopd_coef=1.0).resolved())
    assert knobs <= set(saved) and saved["iw_gamma"] == 0.5 and saved["tip_power"] == 1.0
    assert saved["label"] == "tip-4+iw_opd+eopd+power_opd"


def run_killed_and_resumed(cfg, tmp_path, monkeypatch):
    """An uninterrupted run, and the same run killed at step 3 then resumed."""
    ref, _, _ = loop.run(cfg, tmp_path / "a", "ref", show_progress=False)
    real_step = train.train_step

    def dies_at_step_3(trainer, step):
        if step == 3:
            raise KeyboardInterrupt
        return real_step(trainer, step)

    monkeypatch.setattr(train, "train_step", dies_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        loop.run(cfg, tmp_path / "b", "killed", show_progress=False)
    monkeypatch.setattr(train, "train_step", real_step)
    resumed, summary, _ = loop.run(cfg, tmp_path / "b", "killed", show_progress=False)
    return ref, resumed, summary


def test_killed_run_resumes_to_the_same_metrics(tmp_path, monkeypatch):
    ref, resumed, summary = run_killed_and_resumed(BASE, tmp_path, monkeypatch)
    volatile = [
        "run_id",
        "time_generation_s",
        "time_teacher_s",
        "time_training_s",
        "time_total_s",
        "peak_memory_mb",
    ]
    for name in ("steps", "evals"):
        a = pd.read_parquet(ref.path / f"{name}.parquet").drop(columns=volatile, errors="ignore")
        b = pd.read_parquet(resumed.path / f"{name}.parquet").drop(
            columns=volatile, errors="ignore"
        )
        pd.testing.assert_frame_equal(a, b, rtol=1e-6)
    assert list(pd.read_parquet(resumed.path / "evals.parquet").step) == [0, 2, 4]
    assert summary.iloc[0].label == "esr-6"


def test_non_finite_loss_stops_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setattr(
        train,
        "pair_loss",
        lambda *a, **k: torch.full((4, 6), float("nan"), requires_grad=True),
    )
    with pytest.raises(train.TrainingDiverged, match="not finite"):
        loop.run(replace(BASE, steps=2), tmp_path, "nan", show_progress=False)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n": 0}, "--n must be at least 1"),
        ({"loss": "l2"}, "unknown loss 'l2'"),
        ({"selector": "best"}, "unknown selector 'best'"),
        ({"selector": "top_rkl", "budget": 25}, "--budget 25 is larger than the rollout"),
        ({"steps": 0}, "--steps must be at least 1"),
        ({"progressive": (0, 8)}, r"--progressive takes START,END >= 1, got \(0, 8\)"),
        ({"loss_temperature": 0.0}, "--loss-temperature must be positive"),
        ({"jsd_beta": 1.5}, r"--jsd-beta must be in \[0, 1\], got 1.5"),
        ({"topk": 0}, "--topk must be at least 1"),
        ({"position_weights": "iw"}, "unknown --position-weights 'iw'; use uniform, iw_opd"),
        ({"iw_gamma": -0.1}, "--iw-gamma must be >= 0, got -0.1"),
        ({"eopd_coef": -1.0}, "--eopd-coef must be >= 0, got -1.0"),
        ({"eopd_threshold": -1.0}, "--eopd-threshold must be >= 0"),
        ({"power_alpha": 0.0}, "--power-alpha must be positive, got 0.0"),
        ({"tip_power": -1.0}, "--tip-power must be positive"),
        ({"selector": "tip"}, "selector 'tip' needs --budget >= 1, got None"),
        ({"loss": "power_token", "loss_temperature": 2.0}, "--loss power_token is taken at"),
    ],
)
def test_bad_settings_are_one_line_errors(change, message):
    with pytest.raises(UserError, match=message) as err:
        replace(BASE, **change).resolved()
    assert "\n" not in str(err.value)


def test_vocabularies_must_agree_on_their_overlap(byte_model_dir, bpe_model_dir):
    byte_tok, bpe_tok = load_tokenizer(str(byte_model_dir)), load_tokenizer(str(bpe_model_dir))
    # The BPE vocabulary extends the byte one (same specials and bytes first, merges after).
    assert len(bpe_tok) > len(byte_tok)
    assert shared_vocab_size(byte_tok, bpe_tok) == len(byte_tok)
    other = byte_level_tokenizer(specials=SPECIALS[::-1])
    for change in ({"position_weights": "iw_opd"}, {"eopd_coef": 1.0}):
        with pytest.raises(UserError, match="these models have different tokenizers"):
            train.vocabularies(other, bpe_tok, replace(BASE, **change))
    with pytest.raises(UserError, match=f"vocabularies differ \\({len(other)} and {len(bpe_tok)}"):
        shared_vocab_size(other, bpe_tok)

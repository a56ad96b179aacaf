"""The fused losses equal the plain ones (values and gradients) while holding one block; the
hidden-state scoring and gradient checkpointing change nothing but memory."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from esr_lab.divergences import chunked_position_stats
from esr_lab.lean import (
    HiddenStates,
    LossSpec,
    enable_gradient_checkpointing,
    fused_per_position_loss,
    hidden_position_stats,
    unfused_per_position_loss,
)
from esr_lab.scoring import build_batch, response_hidden, response_logits
from tests.tiny_models import tiny_model

CASES = [
    ("reverse_kl", {}),
    ("forward_kl", {}),
    ("jsd", {"beta": 0.3}),
    ("jsd", {"beta": 0.0}),
    ("jsd", {"beta": 1.0}),
    ("topk_support", {"topk": 5}),
    ("sampled_token", {}),
    ("power_token", {"power_alpha": 0.5}),
]


def problem(dtype, B=2, T=7, H=8, H_t=6, V=50, V_t=45, vocab=40, seed=0):
    """Hidden states and heads of both sides; the vocabularies overlap on the first `vocab` ids."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=g, dtype=dtype)

    return {
        "h_s": randn(B, T, H).requires_grad_(),
        "W_s": randn(V, H, scale=0.8).requires_grad_(),
        "h_t": randn(B, T, H_t),
        "W_t": randn(V_t, H_t, scale=0.8),
        "tokens": torch.randint(0, vocab, (B, T), generator=g),
        "weights": torch.rand(B, T, generator=g, dtype=dtype),
        "vocab": vocab,
    }


def states(p) -> HiddenStates:
    return HiddenStates(p["h_s"], p["W_s"], p["h_t"], p["W_t"], p["tokens"])


def plain_loss(name, p, temperature, **knobs):
    """The reference: full logits, then `divergences.per_position_loss` under autograd."""
    spec = LossSpec(name, p["vocab"], temperature=temperature, **knobs)
    return unfused_per_position_loss(spec, states(p))


def fused_loss(name, p, temperature, chunk, **knobs):
    spec = LossSpec(name, p["vocab"], temperature=temperature, chunk=chunk, **knobs)
    return fused_per_position_loss(spec, states(p))


def values_and_grads(loss_BT, p, wrt):
    """The loss, and the gradients of a non-uniformly weighted sum (as masks and weights give)."""
    return [loss_BT.detach(), *torch.autograd.grad((loss_BT * p["weights"]).sum(), wrt)]


@pytest.mark.parametrize("head_grad", [False, True], ids=["frozen-head", "trained-head"])
@pytest.mark.parametrize(("name", "knobs"), CASES, ids=[f"{n}{k}" for n, k in CASES])
def test_fused_equals_plain_in_float64(name, knobs, head_grad):
    p = problem(torch.float64)
    p["W_s"].requires_grad_(head_grad)
    wrt = [p["h_s"], p["W_s"]] if head_grad else [p["h_s"]]
    fused = values_and_grads(fused_loss(name, p, 0.7, chunk=3, **knobs), p, wrt)
    plain = values_and_grads(plain_loss(name, p, 0.7, **knobs), p, wrt)
    for got, expected in zip(fused, plain, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def as_float64(value):
    if not (torch.is_tensor(value) and value.is_floating_point()):
        return value
    return value.detach().double().requires_grad_(value.requires_grad)


@pytest.mark.parametrize(("name", "knobs"), CASES[:3] + CASES[5:], ids=str)
def test_fused_float32_is_as_close_to_float64_as_plain_float32(name, knobs):
    """At 2,900 ids the fused float32 loss and gradients sit within 1e-5 (relative norm) of the
    float64 answer, and its gradients are no further from it than plain float32 autograd's."""
    p = problem(torch.float32, B=2, T=40, H=16, H_t=24, V=3000, V_t=3100, vocab=2900, seed=1)
    p64 = {k: as_float64(v) for k, v in p.items()}
    exact = values_and_grads(plain_loss(name, p64, 1.0, **knobs), p64, [p64["h_s"], p64["W_s"]])
    wrt = [p["h_s"], p["W_s"]]
    fused = values_and_grads(fused_loss(name, p, 1.0, chunk=16, **knobs), p, wrt)
    plain = values_and_grads(plain_loss(name, p, 1.0, **knobs), p, wrt)
    for got, baseline, answer in zip(fused, plain, exact, strict=True):
        error, baseline_error = (float((x.double() - answer).norm()) for x in (got, baseline))
        assert error <= 1e-5 * float(answer.norm())
        if got is not fused[0]:
            assert error <= 1.5 * baseline_error + 1e-12 * float(answer.norm())


@pytest.mark.parametrize("head_grad", [False, True], ids=["frozen-head", "trained-head"])
@pytest.mark.parametrize("name", ["reverse_kl", "jsd", "sampled_token"])
def test_fused_follows_a_bfloat16_model(name, head_grad):
    """bf16 hidden states and heads (a GPU run): loss in float32, gradients in bf16, within 1%."""
    p = problem(torch.bfloat16, T=16, V=500, V_t=520, vocab=480, seed=2)
    p["W_s"].requires_grad_(head_grad)
    wrt = [p["h_s"], p["W_s"]] if head_grad else [p["h_s"]]
    fused = values_and_grads(fused_loss(name, p, 1.0, chunk=8), p, wrt)
    plain = values_and_grads(plain_loss(name, p, 1.0), p, wrt)
    assert fused[0].dtype == torch.float32 and fused[1].dtype == torch.bfloat16
    for got, expected in zip(fused, plain, strict=True):  # bf16 rounds each element to ~0.4%
        assert (got.double() - expected.double()).norm() <= 1e-2 * expected.double().norm()


def test_position_stats_from_hidden_states_equal_those_from_logits():
    p = problem(torch.float32, V=500, V_t=520, vocab=480, seed=3)
    with torch.no_grad():
        s_BTV = (p["h_s"] @ p["W_s"].T)[..., :480]
        t_BTV = (p["h_t"] @ p["W_t"].T)[..., :480]
    expected = chunked_position_stats(s_BTV, t_BTV, tokens_BT=p["tokens"])
    got = hidden_position_stats(states(p), vocab=480, chunk=3)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6)


def saved_bytes(fn) -> int:
    """Bytes autograd keeps for the backward of fn() (each storage once)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


@pytest.mark.parametrize("name", ["reverse_kl", "jsd"])
def test_fused_keeps_no_vocabulary_sized_tensor_for_the_backward(name):
    p = problem(torch.float32, B=2, T=40, H=16, H_t=24, V=3000, V_t=3100, vocab=2900)
    inputs = sum(p[k].untyped_storage().nbytes() for k in ("h_s", "W_s", "h_t", "W_t", "tokens"))
    logits_bytes = 2 * 40 * 2900 * 4
    fused = saved_bytes(lambda: fused_loss(name, p, 1.0, chunk=16))
    plain = saved_bytes(lambda: plain_loss(name, p, 1.0))
    assert fused <= inputs + p["h_s"].numel() * 4  # the inputs and at most grad_h [N, H]
    assert plain >= inputs + 2 * logits_bytes


def test_fused_rejects_unknown_losses_and_bad_knobs():
    p = problem(torch.float32)
    with pytest.raises(ValueError, match="unknown"):
        fused_loss("kl", p, 1.0, chunk=4)
    with pytest.raises(ValueError, match="beta"):
        fused_loss("jsd", p, 1.0, chunk=4, beta=1.5)


def scoring_batch():
    return build_batch([[5, 6, 7], [8, 9]], [[10, 11, 12, 13], [14, 15]], pad_id=0)


@pytest.mark.parametrize("lora", [False, True], ids=["plain", "peft"])
def test_response_hidden_through_the_head_gives_response_logits(lora):
    model = tiny_model(64, seed=2)
    if lora:
        config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
        model = get_peft_model(model, config)
    batch = scoring_batch()
    with torch.no_grad():
        hidden_BTH = response_hidden(model, batch)
        logits_BTV = response_logits(model, batch)
    head_VH = model.get_output_embeddings().weight
    assert hidden_BTH.shape[:2] == batch.response_ids_BT.shape
    torch.testing.assert_close(hidden_BTH @ head_VH.T, logits_BTV, rtol=1e-5, atol=1e-5)


def student_loss_and_grads(checkpointing: bool):
    """A fused reverse KL through a tiny LoRA student, and the LoRA gradients it gives."""
    student = get_peft_model(
        tiny_model(64, seed=3),
        LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0, init_lora_weights=False),
    )
    teacher = tiny_model(64, seed=4)
    if checkpointing:
        enable_gradient_checkpointing(student)
    student.train()
    assert student.get_decoder().gradient_checkpointing == checkpointing
    batch = scoring_batch()
    with torch.no_grad():
        teacher_BTH = response_hidden(teacher, batch)
    loss = fused_per_position_loss(
        LossSpec("reverse_kl", 64),
        HiddenStates(
            response_hidden(student, batch),
            student.get_output_embeddings().weight,
            teacher_BTH,
            teacher.get_output_embeddings().weight,
        ),
    ).sum()
    loss.backward()
    grads = {n: p.grad for n, p in student.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def test_gradient_checkpointing_changes_neither_loss_nor_gradients():
    loss, grads = student_loss_and_grads(checkpointing=False)
    loss_ckpt, grads_ckpt = student_loss_and_grads(checkpointing=True)
    torch.testing.assert_close(loss_ckpt, loss)
    assert grads.keys() == grads_ckpt.keys() and all(g is not None for g in grads.values())
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-5, atol=1e-7)

"""Memory-lean training at a real vocabulary: fused losses from hidden states, and checkpointing.

At 151,936 ids one float32 [T, V] logits tensor of 1,024 positions is 594 MiB, and plain autograd
keeps several such tensors per model (logits, log-probs, probs, their gradient). The fused loss
here starts from the final hidden states instead and walks over blocks of positions: per block
it projects through the output head, takes the loss and the closed-form gradient of the logits,
and folds that gradient back into the hidden states (and the head), so only [chunk, V] tensors
ever exist - the same idea as Liger's fused linear JSD and Apple's cut-cross-entropy.

The projection runs in the head's own dtype, as the model's lm_head does, and the softmax maths
in at least float32; the loss then equals `divergences.per_position_loss` on the model's own
logits. Heads with a bias or logit soft-capping (Gemma-2) are not covered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from esr_lab.choices import LOSSES, SAMPLED_LOSSES
from esr_lab.divergences import chunked_position_stats, per_position_loss, power_token_cost


@dataclass(frozen=True)
class LossSpec:
    """Which loss, over which ids, with which knobs: everything but the tensors."""

    name: str
    vocab: int
    temperature: float = 1.0
    beta: float = 0.5
    topk: int = 32
    chunk: int = 32
    power_alpha: float = 5.0

    def check(self) -> None:
        if self.name not in LOSSES:
            raise ValueError(f"loss {self.name!r} is unknown; choose one of {', '.join(LOSSES)}")
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature} is not accepted; use a number > 0")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta={self.beta} is not accepted; use a number in [0, 1]")
        if self.topk < 1 or self.chunk < 1 or self.vocab < 1:
            raise ValueError("topk, chunk and vocab must be integers >= 1")
        if self.power_alpha <= 0:
            raise ValueError(f"power_alpha={self.power_alpha} is not accepted; use a number > 0")


def _kl_and_grad(logp_s_CV: Tensor, logp_t_CV: Tensor, temperature: float):
    """Reverse KL(p_s || p_t) per row, and its gradient w.r.t. the student's logits."""
    p_s_CV = logp_s_CV.exp()
    diff_CV = logp_s_CV - logp_t_CV
    kl_C = (p_s_CV * diff_CV).sum(-1)
    # d KL / d z_s = p_s * (log p_s - log p_t - KL) / T
    return kl_C, diff_CV.sub_(kl_C[:, None]).mul_(p_s_CV).div_(temperature)


def _forward_kl_and_grad(logp_s_CV: Tensor, logp_t_CV: Tensor, temperature: float):
    """Forward KL(p_t || p_s) per row; d/dz_s = (p_s - p_t) / T."""
    p_t_CV = logp_t_CV.exp()
    kl_C = (p_t_CV * (logp_t_CV - logp_s_CV)).sum(-1)
    return kl_C, logp_s_CV.exp().sub_(p_t_CV).div_(temperature)


def _jsd_and_grad(logp_s_CV: Tensor, logp_t_CV: Tensor, temperature: float, beta: float):
    """TRL's generalized JSD for 0 < beta < 1, and its gradient w.r.t. the student's logits.

    JSD = const + (1 - beta) sum p_s log p_s - sum m log m with m = beta p_t + (1 - beta) p_s, so
    d JSD / d p_s = (1 - beta) (log p_s - log m); through the softmax that is
    d JSD / d z_s = (1 - beta) p_s (log p_s - log m - KL(p_s || m)) / T.
    """
    logp_m_CV = logp_t_CV + math.log(beta)
    logp_m_CV = torch.logaddexp(logp_m_CV, logp_s_CV + math.log(1.0 - beta), out=logp_m_CV)
    kl_tm_C = (logp_t_CV.exp() * logp_t_CV.sub_(logp_m_CV)).sum(-1)  # log p_t: not needed again
    # The reverse-KL form against m, with (1 - beta) / T folded into the temperature.
    kl_sm_C, grad_CV = _kl_and_grad(logp_s_CV, logp_m_CV, temperature / (1.0 - beta))
    return beta * kl_tm_C + (1.0 - beta) * kl_sm_C, grad_CV


def _topk_and_grad(z_s_CV: Tensor, z_t_CV: Tensor, spec: LossSpec):
    """Reverse KL over the teacher's top-k ids, both renormalised there (`topk_support_kl`)."""
    ids_CK = z_t_CV.topk(min(spec.topk, z_t_CV.shape[-1]), dim=-1).indices
    logp_s_CK = F.log_softmax(z_s_CV.gather(-1, ids_CK) / spec.temperature, dim=-1)
    logp_t_CK = F.log_softmax(z_t_CV.gather(-1, ids_CK) / spec.temperature, dim=-1)
    kl_C, grad_CK = _kl_and_grad(logp_s_CK, logp_t_CK, spec.temperature)
    return kl_C, torch.zeros_like(z_s_CV).scatter_(-1, ids_CK, grad_CK)


def _sampled_and_grad(logp_s_CV, logp_t_CV, tokens_C, temperature, power_alpha=None):
    """`sampled_token_pg_loss` (power_alpha None) or `power_token_pg_loss`: the surrogate
    A.detach() * log pi_s(y), gradient A (onehot(y) - p_s) / T, with A the log-ratio or
    PowerOPD's bounded cost."""
    ids_C1 = tokens_C[:, None]
    logp_s_C = logp_s_CV.gather(-1, ids_C1)[:, 0]
    logp_t_C = logp_t_CV.gather(-1, ids_C1)[:, 0]
    if power_alpha is None:
        advantage_C = logp_s_C - logp_t_C
    else:
        advantage_C = power_token_cost(logp_s_C, logp_t_C, power_alpha)
    scale_C1 = (advantage_C / temperature)[:, None]
    grad_CV = logp_s_CV.exp().mul_(-scale_C1).scatter_add_(-1, ids_C1, scale_C1)
    return advantage_C * logp_s_C, grad_CV


def _log_softmax_(z_CV: Tensor, temperature: float) -> Tensor:
    """log_softmax(z / T) written over z: one [C, V] buffer fewer than F.log_softmax."""
    z_CV = z_CV.div_(temperature)
    return z_CV.sub_(z_CV.logsumexp(-1, keepdim=True))


def block_loss_and_grad(spec: LossSpec, z_s_CV: Tensor, z_t_CV: Tensor, tokens_C: Tensor | None):
    """Per-position loss [C] and its gradient w.r.t. the student's logits [C, V], one block.

    Both logits are float32 or wider, and are overwritten. Beta 0 and 1 are exactly forward
    and reverse KL, as in `divergences.generalized_jsd`.
    """
    if spec.name == "topk_support":
        return _topk_and_grad(z_s_CV, z_t_CV, spec)
    T = spec.temperature
    logp_s_CV, logp_t_CV = _log_softmax_(z_s_CV, T), _log_softmax_(z_t_CV, T)
    if spec.name in SAMPLED_LOSSES:
        alpha = spec.power_alpha if spec.name == "power_token" else None
        return _sampled_and_grad(logp_s_CV, logp_t_CV, tokens_C, T, alpha)
    if spec.name == "forward_kl" or (spec.name == "jsd" and spec.beta == 0.0):
        return _forward_kl_and_grad(logp_s_CV, logp_t_CV, T)
    if spec.name == "reverse_kl" or spec.beta == 1.0:
        return _kl_and_grad(logp_s_CV, logp_t_CV, T)
    return _jsd_and_grad(logp_s_CV, logp_t_CV, T, spec.beta)


def _loss_dtype(x: Tensor) -> torch.dtype:
    """float32, or float64 for float64 inputs (so that the tests can check to 1e-10)."""
    return torch.promote_types(x.dtype, torch.float32)


def _row_blocks(n: int, chunk: int) -> list[slice]:
    return [slice(start, min(start + chunk, n)) for start in range(0, n, chunk)]


def _block(spec, rows, h_s_NH, W_s_VH, h_t_NH, W_t_VH, tokens_N) -> tuple[Tensor, Tensor]:
    """One block's loss [C] and student-logit gradient [C, vocab]; its logits die on return."""
    dtype = _loss_dtype(h_s_NH)
    z_s_CV = (h_s_NH[rows] @ W_s_VH[: spec.vocab].T).to(dtype)
    z_t_CV = (h_t_NH[rows] @ W_t_VH[: spec.vocab].T).to(device=z_s_CV.device, dtype=dtype)
    tokens_C = None if tokens_N is None else tokens_N[rows]
    return block_loss_and_grad(spec, z_s_CV, z_t_CV, tokens_C)


def _forward_block(spec, rows, loss_N, grad_h_NH, h_s_NH, W_s_VH, *teacher) -> None:
    """Write a block's loss and, when given grad_h, its unscaled hidden-state gradient."""
    loss_C, grad_CV = _block(spec, rows, h_s_NH, W_s_VH, *teacher)
    loss_N[rows] = loss_C
    if grad_h_NH is not None:
        grad_h_NH[rows] = grad_CV.to(W_s_VH.dtype) @ W_s_VH[: spec.vocab]


def _backward_block(spec, rows, grad_N, grad_h_NH, grad_W_VH, h_s_NH, W_s_VH, *teacher) -> None:
    """Add a block's gradients, weighted per position by the incoming gradient."""
    _, grad_CV = _block(spec, rows, h_s_NH, W_s_VH, *teacher)
    grad_CV = grad_CV.mul_(grad_N[rows, None]).to(W_s_VH.dtype)
    grad_h_NH[rows] = grad_CV @ W_s_VH[: spec.vocab]
    grad_W_VH[: spec.vocab].addmm_(grad_CV.T, h_s_NH[rows].to(W_s_VH.dtype))


class _FusedLoss(torch.autograd.Function):
    """Per-position loss from hidden states; never more than one [chunk, V] block alive.

    When the head needs no gradient (LoRA, frozen head) the forward also folds each block's
    logit gradient into grad_h [N, H]: one pass, and the backward only scales rows by the
    incoming per-position gradient. A head that needs a gradient (full fine-tuning, tied
    embeddings) needs those per-position weights inside sum_i g_i grad_z_i^T h_i, so the
    backward then recomputes the blocks once more.
    """

    @staticmethod
    def forward(ctx, h_s_NH, W_s_VH, h_t_NH, W_t_VH, tokens_N, spec: LossSpec):
        eager = h_s_NH.requires_grad and not W_s_VH.requires_grad
        loss_N = h_s_NH.new_zeros(h_s_NH.shape[0], dtype=_loss_dtype(h_s_NH))
        grad_h_NH = torch.zeros_like(h_s_NH, dtype=loss_N.dtype) if eager else None
        for rows in _row_blocks(h_s_NH.shape[0], spec.chunk):
            _forward_block(spec, rows, loss_N, grad_h_NH, h_s_NH, W_s_VH, h_t_NH, W_t_VH, tokens_N)
        ctx.spec, ctx.eager = spec, eager
        ctx.save_for_backward(h_s_NH, W_s_VH, h_t_NH, W_t_VH, tokens_N, grad_h_NH)
        return loss_N

    @staticmethod
    def backward(ctx, grad_N):
        h_s_NH, W_s_VH, h_t_NH, W_t_VH, tokens_N, grad_h_NH = ctx.saved_tensors
        if ctx.eager:
            return (grad_h_NH * grad_N[:, None]).to(h_s_NH.dtype), None, None, None, None, None
        grad_h_NH = torch.zeros_like(h_s_NH)
        grad_W_VH = torch.zeros_like(W_s_VH)  # ids past the shared vocabulary get none
        teacher = (h_t_NH, W_t_VH, tokens_N)
        for rows in _row_blocks(h_s_NH.shape[0], ctx.spec.chunk):
            _backward_block(ctx.spec, rows, grad_N, grad_h_NH, grad_W_VH, h_s_NH, W_s_VH, *teacher)
        return grad_h_NH, grad_W_VH, None, None, None, None


class HiddenStates(NamedTuple):
    """Both models' final hidden states [B, T, H] and lm_head weights [V, H]
    (`model.get_output_embeddings().weight`): their logits, never held whole; and the sampled
    ids [B, T] where the loss needs them (all < the compared vocabulary)."""

    student_BTH: Tensor
    student_head_VH: Tensor
    teacher_BTH: Tensor
    teacher_head_VH: Tensor
    tokens_BT: Tensor | None = None

    def rows(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """Student and teacher hidden states [B*T, H] and the ids [B*T], on the student's
        device: one row per position, as the blocks walk them."""
        B, T, _ = self.student_BTH.shape
        tokens_BT = self.tokens_BT
        tokens_N = None if tokens_BT is None else tokens_BT.reshape(B * T)
        return (
            self.student_BTH.reshape(B * T, -1),
            self.teacher_BTH.reshape(B * T, -1),
            None if tokens_N is None else tokens_N.to(self.student_BTH.device),
        )


def fused_per_position_loss(spec: LossSpec, states: HiddenStates) -> Tensor:
    """`divergences.per_position_loss(spec.name, ...)` [B, T] from final hidden states and heads.

    Only the heads' first `spec.vocab` ids are compared, as the trainer slices
    logits[..., :vocab]. Gradient flows to the student's hidden states and, if it requires one,
    its head; never to the teacher. The SAMPLED_LOSSES need the sampled ids and use log-probs at
    `spec.temperature`. Memory scales with `spec.chunk` positions x `vocab` ids per block; 32
    keeps a block at 1/32 of a 1,024-position logits tensor (Liger picks blocks of this order
    too).
    """
    # Fused linear + loss, blockwise: Liger-Kernel's fused linear JSD; cut-cross-entropy.
    spec.check()
    if spec.name in SAMPLED_LOSSES and states.tokens_BT is None:
        raise ValueError(f"loss {spec.name!r} needs tokens_BT")
    h_s_NH, h_t_NH, tokens_N = states.rows()
    loss_N = _FusedLoss.apply(
        h_s_NH,
        states.student_head_VH,
        h_t_NH.detach(),
        states.teacher_head_VH.detach(),
        tokens_N,
        spec,
    )
    return loss_N.reshape(states.student_BTH.shape[:2])


@torch.no_grad()
def hidden_position_stats(
    states: HiddenStates, *, vocab: int, chunk: int = 32
) -> dict[str, Tensor]:
    """`divergences.chunked_position_stats` [B, T] from hidden states, one block of logits at a
    time: what score-based selectors read, without the full logits the fused loss avoids."""
    h_s_NH, h_t_NH, tokens_N = states.rows()
    parts = []
    for rows in _row_blocks(h_s_NH.shape[0], chunk):
        z_s_1CV = (h_s_NH[rows] @ states.student_head_VH[:vocab].T)[None]
        z_t_1CV = (h_t_NH[rows] @ states.teacher_head_VH[:vocab].T)[None].to(z_s_1CV.device)
        tokens_1C = None if tokens_N is None else tokens_N[None, rows]
        parts.append(chunked_position_stats(z_s_1CV, z_t_1CV, chunk=chunk, tokens_BT=tokens_1C))
    shape = states.student_BTH.shape[:2]
    return {key: torch.cat([p[key][0] for p in parts]).reshape(shape) for key in parts[0]}


def unfused_per_position_loss(spec: LossSpec, states: HiddenStates) -> Tensor:
    """The same loss through full [B, T, vocab] logits under plain autograd (`spec.chunk`
    unused).

    The reference that `fused_per_position_loss` is tested and benchmarked against.
    """
    vocab, temperature = spec.vocab, spec.temperature
    s_BTV = (states.student_BTH @ states.student_head_VH.T)[..., :vocab]
    with torch.no_grad():
        t_BTV = (states.teacher_BTH @ states.teacher_head_VH.T)[..., :vocab]
    logp = {}
    if spec.name in SAMPLED_LOSSES:  # float64 stays float64 here, unlike scoring.token_logprobs
        logp = {
            f"{side}_logp_BT": F.log_softmax(z_BTV.to(_loss_dtype(z_BTV)) / temperature, -1)
            .gather(-1, states.tokens_BT[..., None])
            .squeeze(-1)
            for side, z_BTV in (("student", s_BTV), ("teacher", t_BTV))
        }
    return per_position_loss(
        spec.name, s_BTV, t_BTV, temperature=temperature, beta=spec.beta, topk=spec.topk,
        power_alpha=spec.power_alpha, **logp,
    )  # fmt: skip


def enable_gradient_checkpointing(model) -> None:
    """Recompute the student's layer activations in the backward instead of keeping them.

    Non-reentrant checkpointing needs no input that requires grad, so it works under LoRA
    (frozen embeddings) as well as under full fine-tuning; peft models pass the call through.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # its name from transformers 5.x on
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

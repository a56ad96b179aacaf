"""Peak memory is measured (CPU resident set), and the memory-lean KL equals the plain one while
keeping nothing but its inputs for the backward."""

from __future__ import annotations

import time

import pytest
import torch

from esr_lab.divergences import chunked_reverse_kl, reverse_kl
from esr_lab.memory import PeakMemory, rss_mb


def test_cpu_peak_sees_a_short_lived_allocation():
    before = rss_mb()
    with PeakMemory("cpu", interval_s=0.001) as peak:
        block = torch.ones(64 * 2**20)  # 256 MiB, freed before the block ends
        time.sleep(0.05)
        del block
    assert peak.mb - before > 200
    assert rss_mb() < peak.mb - 200  # the peak outlives the memory, as it should


def test_cpu_peak_of_an_idle_block_is_the_resident_set():
    with PeakMemory("cpu") as peak:
        time.sleep(0.02)
    assert peak.mb == pytest.approx(rss_mb(), abs=20)


def saved_bytes(loss_fn, *inputs: torch.Tensor) -> int:
    """Bytes autograd keeps for the backward (each storage once)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_fn(*inputs).sum()
    return sum(storages.values())


def logits_pair(B=2, T=200, V=3000, seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    student = (3 * torch.randn(B, T, V, generator=g)).requires_grad_()
    teacher = 3 * torch.randn(B, T, V, generator=g)
    return student, teacher


def test_lean_kl_matches_the_straightforward_one_values_and_gradients():
    student, teacher = logits_pair()
    weights_BT = torch.rand(student.shape[:2], generator=torch.Generator().manual_seed(1))
    lean_BT = chunked_reverse_kl(student, teacher, chunk=64)
    (grad_lean,) = torch.autograd.grad((lean_BT * weights_BT).sum(), student)
    plain_BT = reverse_kl(student, teacher)
    (grad_plain,) = torch.autograd.grad((plain_BT * weights_BT).sum(), student)
    torch.testing.assert_close(lean_BT, plain_BT, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_lean, grad_plain, rtol=1e-5, atol=1e-5)


def test_lean_kl_keeps_only_the_logits_for_the_backward():
    student, teacher = logits_pair()
    logits_bytes = student.numel() * 4
    lean = saved_bytes(lambda s, t: chunked_reverse_kl(s, t, chunk=64), student, teacher)
    plain = saved_bytes(reverse_kl, student, teacher)
    assert lean <= 2 * logits_bytes  # student and teacher logits, nothing per-vocab beyond
    assert plain >= 3 * logits_bytes  # log-probs, probs, differences: full copies each

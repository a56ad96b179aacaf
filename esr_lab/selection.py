"""Which response positions carry the distillation loss.

Every selector returns a bool mask_BT that is a subset of `response_mask_BT` (True on real
response tokens: not prompt, not padding, not after EOS). ESR (arXiv 2605.27028) is `first_n`:
the first N response tokens; the paper's token-selection study (finding 6) compares it at the
same budget with the top positions by reverse KL, by student/teacher entropy, by products of
these, and at random. "tip" draws positions at random with probability growing with the
student's entropy (TIP, arXiv 2604.14084). The scores are per-position statistics computed on
full-length rollouts (see `divergences.chunked_position_stats`) and are expected to be finite.
"""

from collections.abc import Sequence

import torch
from torch import Tensor

from esr_lab.choices import SEEDED_SELECTORS, SELECTORS, check_count

# Score of each top-k selector = product of these statistics (names of select_positions args).
_SCORE_FACTORS = {
    "top_rkl": ("rkl_BT",),
    "top_fkl": ("fkl_BT",),
    "top_student_entropy": ("student_entropy_BT",),
    "top_teacher_entropy": ("teacher_entropy_BT",),
    "rkl_x_hs": ("rkl_BT", "student_entropy_BT"),
    "ht_x_hs": ("teacher_entropy_BT", "student_entropy_BT"),
    "rkl_x_ht_x_hs": ("rkl_BT", "teacher_entropy_BT", "student_entropy_BT"),
}


def first_n(response_mask_BT: Tensor, n: int) -> Tensor:
    """ESR: the first n response tokens of each row (all of them if the row is shorter).

    Counts real response tokens only, so left padding, prompts and early EOS shift nothing:
    a row gets min(n, its response length) positions, exactly what an ESR rollout with
    max_new_tokens = n would train on.
    """
    # Early Stopping Rollout, first-N positions: ESR paper (arXiv 2605.27028).
    check_count("n", n)
    mask_BT = response_mask_BT.bool()
    return mask_BT & (mask_BT.long().cumsum(-1) <= n)


def all_positions(response_mask_BT: Tensor) -> Tensor:
    """Full OPD: every response token carries loss."""
    return response_mask_BT.bool().clone()


def top_k_by_score(score_BT: Tensor, response_mask_BT: Tensor, k: int) -> Tensor:
    """Per row, the k highest-scoring response positions (all of them if the row has fewer).

    Ties go to the earlier position: a stable descending sort keeps index order among equals,
    so the result is deterministic across runs and devices.
    """
    check_count("k", k)
    mask_BT = response_mask_BT.bool()
    masked_BT = torch.where(mask_BT, score_BT, torch.full_like(score_BT, float("-inf")))
    order_BT = masked_BT.sort(dim=-1, descending=True, stable=True).indices
    k = min(k, score_BT.shape[-1])
    chosen_BT = torch.zeros_like(mask_BT).scatter(-1, order_BT[:, :k], True)
    return chosen_BT & mask_BT


def _row_noise(
    response_mask_BT: Tensor, generators: Sequence[torch.Generator], width: int
) -> Tensor:
    """Uniform [0, 1) noise [B, T], each row from its own generator, `max(width, T)` values
    long with the first T kept: a row's noise depends on its generator's seed only, not on which
    rows share its micro-batch or how wide that micro-batch is padded (give the same `width`,
    e.g. the rollout budget, everywhere)."""
    if len(generators) != response_mask_BT.shape[0]:
        raise ValueError(f"random selection needs one generator per row, got {len(generators)}")
    T = response_mask_BT.shape[-1]
    noise_BT = torch.stack(
        [torch.rand(max(width, T), generator=g, device=g.device)[:T] for g in generators]
    )
    return noise_BT.to(response_mask_BT.device)


def random_k(
    response_mask_BT: Tensor, k: int, generators: Sequence[torch.Generator], width: int = 0
) -> Tensor:
    """k uniformly random response positions per row: the control for any scored selector.
    Each row draws from its own generator (`_row_noise`)."""
    return top_k_by_score(_row_noise(response_mask_BT, generators, width), response_mask_BT, k)


def weighted_sample_k(
    weight_BT: Tensor,
    response_mask_BT: Tensor,
    k: int,
    generators: Sequence[torch.Generator],
    width: int = 0,
) -> Tensor:
    """k response positions per row drawn without replacement, each draw taking a position with
    probability proportional to its weight among those left (torch.multinomial's law).

    Drawn as the k largest keys log(u) / w with u uniform per position (Efraimidis and
    Spirakis 2006, "Weighted random sampling with a reservoir": the k largest u^(1/w) are such a
    sample), so a row's draw depends on its own generator only (`_row_noise`). Weights must be
    >= 0; a zero weight is taken as 1e-30, so those positions come last but a row still gets
    min(k, its length) positions. Keys in float64: log(u) / 1e-30 is finite there.
    """
    u_BT = _row_noise(response_mask_BT, generators, width).double()
    tiny = torch.finfo(torch.float32).tiny  # u = 0 happens (1 in 2**24): log(0) would be -inf
    keys_BT = u_BT.clamp(min=tiny).log() / weight_BT.double().clamp(min=1e-30)
    return top_k_by_score(keys_BT, response_mask_BT, k)


def tip_sample(
    student_entropy_BT: Tensor,
    response_mask_BT: Tensor,
    k: int,
    generators: Sequence[torch.Generator],
    width: int = 0,
    power: float = 1.0,
) -> Tensor:
    """TIP: k positions per row drawn without replacement with probability proportional to the
    student's entropy to the power `power` (`weighted_sample_k`).

    TIP's released code (HJSang/OPSD_OnPolicyDistillation, src/opd/losses.py,
    `entropy_weighted_sample`) draws with torch.multinomial over weights (H_s / ln V)^alpha *
    (JSD / ln 2)^gamma; the 1 / ln V factor does not change the draw, and esr-lab takes
    gamma = 0, the entropy-only rule of TIP's abstract (half of the tokens, drawn by student
    entropy, match training on all of them). The code draws over a micro-batch's tokens pooled;
    esr-lab draws `k` per row, as every other selector does, so that a same-budget comparison
    gives each rollout N.
    """
    # TIP: Token Importance in On-Policy Distillation, arXiv 2604.14084.
    if power <= 0:
        raise ValueError(f"power={power} is not accepted; use a number > 0")
    weight_BT = student_entropy_BT.clamp(min=0.0) ** power
    return weighted_sample_k(weight_BT, response_mask_BT, k, generators, width)


def select_positions(
    name: str,
    response_mask_BT: Tensor,
    *,
    n: int | None = None,
    budget: int | None = None,
    rkl_BT: Tensor | None = None,
    fkl_BT: Tensor | None = None,
    student_entropy_BT: Tensor | None = None,
    teacher_entropy_BT: Tensor | None = None,
    generators: Sequence[torch.Generator] | None = None,
    noise_width: int = 0,
    tip_power: float = 1.0,
) -> Tensor:
    """Mask of loss-carrying positions by selector name; one of SELECTORS.

    "first_n" reads `n` (or `budget` when n is None, so a same-budget comparison can pass one
    number to every selector); top-k and random selectors read `budget`; products of
    statistics multiply the named per-position tensors; the SEEDED_SELECTORS ("random",
    "tip") read one generator per row (see `random_k`, `tip_sample`).
    """
    if name not in SELECTORS:
        raise ValueError(f"selector {name!r} is unknown; choose one of {', '.join(SELECTORS)}")
    if name == "all":
        return all_positions(response_mask_BT)
    if name == "first_n":
        count = n if n is not None else budget
        if count is None:
            raise ValueError("selector 'first_n' needs n (or budget)")
        return first_n(response_mask_BT, count)
    if budget is None:
        raise ValueError(f"selector {name!r} needs budget")
    if name in SEEDED_SELECTORS and generators is None:
        raise ValueError(f"selector {name!r} needs one torch.Generator per row")
    if name == "random":
        return random_k(response_mask_BT, budget, generators, noise_width)
    if name == "tip":
        if student_entropy_BT is None:
            raise ValueError("selector 'tip' needs student_entropy_BT")
        return tip_sample(
            student_entropy_BT, response_mask_BT, budget, generators, noise_width, tip_power
        )
    stats = {
        "rkl_BT": rkl_BT,
        "fkl_BT": fkl_BT,
        "student_entropy_BT": student_entropy_BT,
        "teacher_entropy_BT": teacher_entropy_BT,
    }
    missing = [f for f in _SCORE_FACTORS[name] if stats[f] is None]
    if missing:
        raise ValueError(f"selector {name!r} needs {', '.join(missing)}")
    score_BT = torch.stack([stats[f] for f in _SCORE_FACTORS[name]]).prod(0)
    return top_k_by_score(score_BT, response_mask_BT, budget)

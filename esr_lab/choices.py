"""The names a training config chooses among, and the progressive schedule of N.

They live here, torch-free, so that a TrainConfig is declared and checked (`train_config`)
without importing the maths that implements them: `divergences`, `selection` and `crosstok`
take their names from here, so each list is written once. A bad value raises ValueError, a
caller's bug: the values a user gives are checked, naming their option, in
`TrainConfig.resolved`.
"""

LOSSES = ("reverse_kl", "forward_kl", "jsd", "sampled_token", "topk_support", "power_token")
# Losses read from the sampled tokens' log-probs alone: policy gradients, taken on-policy at
# the sampling temperature (train_config checks it).
SAMPLED_LOSSES = ("sampled_token", "power_token")
CROSS_LOSSES = (*LOSSES, "uld")  # "uld": pairs with different tokenizers only (crosstok)
REDUCTIONS = ("sequence_sum", "sequence_mean", "token_mean")
SELECTORS = (
    "first_n",
    "all",
    "top_rkl",
    "top_fkl",
    "top_student_entropy",
    "top_teacher_entropy",
    "rkl_x_hs",
    "ht_x_hs",
    "rkl_x_ht_x_hs",
    "random",
    "tip",
)
# Selectors that draw positions at random, each row from its own seeded generator.
SEEDED_SELECTORS = ("random", "tip")
# Per-position loss weights: none, or IW-OPD's (position_terms.py).
POSITION_WEIGHTS = ("uniform", "iw_opd")
PROGRESSIVE_SCHEDULES = ("linear", "step")

# Share of the smaller vocabulary whose strings the other vocabulary must also hold. Below half,
# most of the smaller model's tokens get no probability from the other, and a KL renormalised
# over what is left no longer describes either model's distribution. Pairs meant for this path
# (two byte-level BPEs, two SentencePiece generations of one family) share far more.
MIN_OVERLAP = 0.5


def check_count(name: str, value: int) -> None:
    """Budgets are counts of tokens: at least one, or the selection is silently empty."""
    if value < 1:
        raise ValueError(f"{name}={value} is not accepted; use an integer >= 1")


def progressive_n(
    step: int, total_steps: int, n_start: int, n_end: int, schedule: str = "linear"
) -> int:
    """N for this (1-based) training step under a progressive schedule from n_start to n_end.

    "linear": N = round(n_start + (n_end - n_start) * (step - 1) / (total_steps - 1)), so the
    first step trains on n_start tokens, the last on n_end, and any step past it on n_end.
    The paper reports one "progressive" run without its schedule; linear is the simplest reading.
    "step": N = step, clipped to [n_start, n_end]: the released code's schedule (N = the step
    number, 1, 2, ..., 200) is "step" with (1, 200).
    """
    # Progressive ESR budget: ESR paper (arXiv 2605.27028) N sweep; "step" is its released code.
    check_count("total_steps", total_steps)
    check_count("n_start", n_start)
    check_count("n_end", n_end)
    check_count("step", step)
    if schedule not in PROGRESSIVE_SCHEDULES:
        raise ValueError(
            f"unknown progressive schedule '{schedule}'; use {', '.join(PROGRESSIVE_SCHEDULES)}"
        )
    if schedule == "step":
        return min(max(step, min(n_start, n_end)), max(n_start, n_end))
    fraction = min((step - 1) / max(total_steps - 1, 1), 1.0)
    return round(n_start + (n_end - n_start) * fraction)

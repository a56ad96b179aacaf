"""Student-t intervals of a mean, shared by the interval over problems (metrics.mean_ci) and
the interval over training seeds (experiments/common.py).

Light on purpose (scipy only): experiment modules import it at the top.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy import stats


def t_interval(
    values: Sequence[float], confidence: float = 0.95
) -> tuple[float, float, float, float]:
    """(mean, sample standard deviation, low, high) of a Student-t interval on the mean.

    With one value the spread is unknown, so sd, low and high are NaN (shown as "-"), never a
    zero-width interval that would read as certainty."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf(0.5 + confidence / 2, df=n - 1) * sd / math.sqrt(n)
    return mean, sd, mean - half, mean + half

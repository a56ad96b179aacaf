"""One plot function per paper figure, reading saved tables only.

This module never imports torch or a model: `esr-lab plot` rebuilds every figure from
`results/` alone. Output is deterministic (fixed size, dpi and metadata) so the same tables
give byte-identical PNGs.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

TEACHER_COLOR, STUDENT_COLOR, CURVE_COLOR = "#1f77b4", "#7f7f7f", "#d62728"
PNG_METADATA = {"Software": None}


def _style(ax: plt.Axes, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, linestyle=":", alpha=0.5)
    ax.spines[["top", "right"]].set_visible(False)


def _save(fig: plt.Figure, paths: list[Path]) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=150, metadata=PNG_METADATA)
    plt.close(fig)


def _baseline(ax: plt.Axes, y: float, label: str, color: str) -> None:
    ax.axhline(y, linestyle="--", color=color, linewidth=1.5)
    ax.annotate(f"{label} ({y:.2f})", xy=(1.0, y), xycoords=("axes fraction", "data"),
                xytext=(-4, 4), textcoords="offset points", ha="right", color=color, fontsize=9)


def plot_decay(summary: pd.DataFrame, paths: list[Path], benchmark: str = "avg@k") -> None:
    """Teacher accuracy when continuing from student prefixes of growing length (finding 1)."""
    curve = summary[summary.condition == "teacher_from_prefix"].sort_values("prefix_tokens")
    teacher = summary[summary.condition == "teacher_alone"].accuracy.iloc[0] * 100
    student = summary[summary.condition == "student_alone"].accuracy.iloc[0] * 100
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    x, y = curve.prefix_tokens.astype(int), curve.accuracy * 100
    ax.fill_between(x, curve.ci_low * 100, curve.ci_high * 100, color=CURVE_COLOR, alpha=0.12,
                    label="95% CI")
    ax.plot(x, y, "o-", color=CURVE_COLOR, linewidth=2.5, markersize=8,
            label="teacher continuing from student prefix")
    for xi, yi in zip(x, y, strict=True):
        ax.annotate(f"{yi:.2f}", (xi, yi), xytext=(0, 8), textcoords="offset points",
                    ha="center", color=CURVE_COLOR, fontweight="bold", fontsize=9)
    _baseline(ax, teacher, "teacher baseline", TEACHER_COLOR)
    _baseline(ax, student, "student baseline", STUDENT_COLOR)
    _style(ax, "Teacher score quality decays as the student prefix grows",
           "Length of student-generated prefix (tokens)", f"{benchmark} (%)")
    ax.legend(loc="lower left")
    fig.tight_layout()
    _save(fig, paths)

"""One plot function per paper figure, reading saved tables only.

This module never imports torch or a model: `esr-lab plot` rebuilds every figure from
`results/` alone. Output is deterministic (fixed size, dpi and metadata) so the same tables
give byte-identical PNGs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

TEACHER_COLOR, STUDENT_COLOR, CURVE_COLOR = "#1f77b4", "#7f7f7f", "#d62728"
ESR_COLOR, SELECT_COLOR = "#2e7d32", "#9ecae1"
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
    ax.annotate(
        f"{label} ({y:.2f})",
        xy=(1.0, y),
        xycoords=("axes fraction", "data"),
        xytext=(-4, 4),
        textcoords="offset points",
        ha="right",
        color=color,
        fontsize=9,
    )


def plot_decay(summary: pd.DataFrame, paths: list[Path], benchmark: str = "avg@k") -> None:
    """Teacher accuracy when continuing from student prefixes of growing length (finding 1)."""
    curve = summary[summary.condition == "teacher_from_prefix"].sort_values("prefix_tokens")
    teacher = summary[summary.condition == "teacher_alone"].accuracy.iloc[0] * 100
    student = summary[summary.condition == "student_alone"].accuracy.iloc[0] * 100
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    x, y = curve.prefix_tokens.astype(int), curve.accuracy * 100
    ax.fill_between(
        x, curve.ci_low * 100, curve.ci_high * 100, color=CURVE_COLOR, alpha=0.12, label="95% CI"
    )
    ax.plot(
        x,
        y,
        "o-",
        color=CURVE_COLOR,
        linewidth=2.5,
        markersize=8,
        label="teacher continuing from student prefix",
    )
    for xi, yi in zip(x, y, strict=True):
        ax.annotate(
            f"{yi:.2f}",
            (xi, yi),
            xytext=(0, 8),
            textcoords="offset points",
            ha="center",
            color=CURVE_COLOR,
            fontweight="bold",
            fontsize=9,
        )
    _baseline(ax, teacher, "teacher baseline", TEACHER_COLOR)
    _baseline(ax, student, "student baseline", STUDENT_COLOR)
    _style(
        ax,
        "Teacher score quality decays as the student prefix grows",
        "Length of student-generated prefix (tokens)",
        f"{benchmark} (%)",
    )
    ax.legend(loc="lower left")
    fig.tight_layout()
    _save(fig, paths)


def _esr_n(label: str) -> int | None:
    return int(label.split("-")[1]) if label.startswith("esr-") else None


def plot_sweep_n(summary: pd.DataFrame, paths: list[Path], benchmark: str = "avg@k") -> None:
    """Best accuracy vs the ESR window N, with the untrained student at N=0 (finding 3)."""
    esr = summary[summary.label.str.startswith("esr-")].copy()
    esr["n"] = esr.label.map(_esr_n)
    esr = esr.sort_values("n")
    base = summary.base_avg_at_k.iloc[0] * 100
    ys = [base, *(esr.best_avg_at_k * 100)]
    xs = list(range(len(ys)))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(xs, ys, "-", color=ESR_COLOR, linewidth=2.5)
    ax.plot(xs[1:], ys[1:], "o", color=ESR_COLOR, markersize=9, label="ESR (best across steps)")
    ax.plot([0], [base], "o", color=STUDENT_COLOR, markersize=9)
    for x, y in zip(xs, ys, strict=True):
        ax.annotate(f"{y:.1f}", (x, y), xytext=(0, 8), textcoords="offset points", ha="center")
    for label, style, color in (("full", "--", STUDENT_COLOR), ("progressive", ":", CURVE_COLOR)):
        row = summary[summary.label.str.startswith(label)]
        if len(row):
            value = row.best_avg_at_k.iloc[0] * 100
            ax.axhline(
                value,
                linestyle=style,
                color=color,
                linewidth=1.5,
                label=f"{row.label.iloc[0]}: {value:.2f}",
            )
    ax.set_xticks(xs, ["0\n(baseline)", *(str(n) for n in esr.n)])
    _style(ax, "Rollout-N sweep", "Rollout length N (tokens)", f"{benchmark} (%)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    _save(fig, paths)


def plot_select(summary: pd.DataFrame, paths: list[Path], benchmark: str = "avg@k") -> None:
    """Best accuracy per token-selection rule at the same budget (finding 6)."""
    ordered = summary.sort_values("best_avg_at_k")
    colors = [
        ESR_COLOR if lab.startswith("esr-") else STUDENT_COLOR if lab == "full" else SELECT_COLOR
        for lab in ordered.label
    ]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(ordered) + 1.5))
    ax.barh(ordered.label, ordered.best_avg_at_k * 100, color=colors)
    for y, value in enumerate(ordered.best_avg_at_k * 100):
        ax.annotate(
            f"{value:.1f}",
            (value, y),
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            fontsize=9,
        )
    base = summary.base_avg_at_k.iloc[0] * 100
    ax.axvline(base, linestyle="--", color="black", linewidth=1, label=f"untrained: {base:.1f}")
    _style(ax, "Which tokens carry the loss (same budget)", f"best {benchmark} (%)", "")
    ax.legend(loc="lower right")
    fig.tight_layout()
    _save(fig, paths)


def plot_training_curve(evals: pd.DataFrame, paths: list[Path], benchmark: str = "avg@k") -> None:
    """Eval accuracy across training steps, one line per run label."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, part in evals.groupby("label", sort=False):
        ax.plot(part.step, part.avg_at_k * 100, "o-", label=label)
    _style(ax, "Accuracy during training", "step", f"{benchmark} (%)")
    ax.legend()
    fig.tight_layout()
    _save(fig, paths)


PHASE_COLORS = {"generation": CURVE_COLOR, "teacher": TEACHER_COLOR, "training": ESR_COLOR}


def plot_profile(summary: pd.DataFrame, paths: list[Path]) -> None:
    """Per-step wall time stacked by phase, and peak memory per phase, ESR vs full (finding 8)."""
    labels = list(dict.fromkeys(summary.label))
    cell = summary.set_index(["label", "phase"])
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.5))
    bottom = [0.0] * len(labels)
    for phase, color in PHASE_COLORS.items():
        heights = [cell.loc[(lab, phase), "time_median_s"] for lab in labels]
        ax_t.bar(labels, heights, bottom=bottom, color=color, label=phase)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    for x, (lab, total) in enumerate(zip(labels, bottom, strict=True)):
        ratio = cell.loc[(lab, "total"), "time_ratio"]
        ax_t.annotate(
            f"{total:.2f} s ({ratio:.2f}x)",
            (x, total),
            xytext=(0, 4),
            textcoords="offset points",
            ha="center",
            fontsize=9,
        )
    _style(ax_t, "Wall time per step (median)", "", "seconds")
    ax_t.legend(loc="upper left")
    width = 0.8 / len(labels)
    phases = [*PHASE_COLORS, "total"]
    for i, lab in enumerate(labels):
        xs = [p + (i - (len(labels) - 1) / 2) * width for p in range(len(phases))]
        peaks = [cell.loc[(lab, ph), "peak_median_mb"] for ph in phases]
        ax_m.bar(xs, peaks, width=width, label=lab, color=plt.cm.viridis(i / max(len(labels), 1)))
    ax_m.set_xticks(range(len(phases)), phases)
    _style(ax_m, "Peak memory per phase (median)", "", "MiB")
    ax_m.legend(loc="lower right")
    fig.tight_layout()
    _save(fig, paths)


# `esr-lab plot`: experiment folder -> (figure file, the run table it reads, its plot function).
# The paper-finding modules call the same functions when their run ends.
FIGURES: dict[str, tuple[str, str, Callable[[pd.DataFrame, list[Path]], None]]] = {
    "decay": ("decay.png", "summary.parquet", plot_decay),
    "sweep_n": ("sweep_n.png", "summary.parquet", plot_sweep_n),
    "select": ("select.png", "summary.parquet", plot_select),
    "profile": ("profile.png", "summary.parquet", plot_profile),
}


def latest_run(folder: Path, table: str) -> Path | None:
    """The most recently finished run (the newest `table`) in `folder`."""
    tables = list(folder.glob(f"*/{table}"))
    return max(tables, key=lambda p: p.stat().st_mtime_ns).parent if tables else None


def rebuild_all(results_dir: Path, out_dir: Path) -> list[Path]:
    """Every figure whose experiment has a complete run in `results_dir`, drawn into `out_dir`."""
    written = []
    for experiment, (name, table, plot) in FIGURES.items():
        run = latest_run(Path(results_dir) / experiment, table)
        if run is not None:
            plot(pd.read_parquet(run / table), [Path(out_dir) / name])
            written.append(Path(out_dir) / name)
    return written

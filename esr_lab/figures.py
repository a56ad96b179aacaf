"""One plot function per paper figure, reading saved tables only.

This module never imports torch, a model or `esr_lab.analysis`: `esr-lab plot` rebuilds every
figure from `results/` alone, and a number a figure shows is read from the table the experiment
saved, never recomputed here. Output is deterministic (fixed size, dpi and metadata) so the
same tables give byte-identical PNGs.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

TEACHER_COLOR, STUDENT_COLOR, CURVE_COLOR = "#1f77b4", "#7f7f7f", "#d62728"
ESR_COLOR, SELECT_COLOR = "#2e7d32", "#9ecae1"
PNG_METADATA = {"Software": None}


def _style(ax: plt.Axes, title: str, xlabel: str, ylabel: str, from_origin: bool = False) -> None:
    """Title, axis labels, a light grid, no top or right spine; `from_origin`: both axes start
    at 0 (positions and their statistics, never negative)."""
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, linestyle=":", alpha=0.5)
    ax.spines[["top", "right"]].set_visible(False)
    if from_origin:
        ax.set_ylim(bottom=0)
        ax.set_xlim(left=0)


def _save(fig: plt.Figure, paths: list[Path]) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=150, metadata=PNG_METADATA)
    plt.close(fig)


def _label(ax: plt.Axes, text: str, xy: tuple, offset: tuple[int, int], **style) -> None:
    """`text` written `offset` points away from the point `xy` (a value beside its mark)."""
    ax.annotate(text, xy, xytext=offset, textcoords="offset points", **style)


def _baseline(ax: plt.Axes, y: float, label: str, color: str) -> None:
    ax.axhline(y, linestyle="--", color=color, linewidth=1.5)
    at_right = {"xycoords": ("axes fraction", "data"), "ha": "right", "color": color}
    _label(ax, f"{label} ({y:.2f})", (1.0, y), (-4, 4), fontsize=9, **at_right)


def plot_decay(summary: pd.DataFrame, paths: list[Path], benchmark: str = "avg@k") -> None:
    """Teacher accuracy when continuing from student prefixes of growing length (finding 1)."""
    curve = summary[summary.condition == "teacher_from_prefix"].sort_values("prefix_tokens")
    teacher = summary[summary.condition == "teacher_alone"].avg_at_k.iloc[0] * 100
    student = summary[summary.condition == "student_alone"].avg_at_k.iloc[0] * 100
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    x, y = curve.prefix_tokens.astype(int), curve.avg_at_k * 100
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
        style = {"ha": "center", "color": CURVE_COLOR, "fontweight": "bold", "fontsize": 9}
        _label(ax, f"{yi:.2f}", (xi, yi), (0, 8), **style)
    _baseline(ax, teacher, "teacher baseline", TEACHER_COLOR)
    _baseline(ax, student, "student baseline", STUDENT_COLOR)
    _style(
        ax,
        "Teacher score quality decays as the student prefix grows",
        "Length of student-generated prefix (tokens)",
        f"{benchmark} (%)",
    )
    ax.legend(loc="center right")
    fig.tight_layout()
    _save(fig, paths)


def _esr_n(label: str) -> int | None:
    return int(label.split("-")[1]) if label.startswith("esr-") else None


def plot_sweep_n(summary: pd.DataFrame, paths: list[Path], benchmark: str = "avg@k") -> None:
    """Best accuracy vs the ESR window N, with the untrained student at N=0 (finding 3); over
    several seeds, the mean with each seed's point beside it."""
    summary, per_seed = _over_seeds(summary)
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
        _label(ax, f"{y:.1f}", (x, y), (0, 8), ha="center")
    if per_seed is not None:
        points = per_seed.label.map(dict(zip(esr.label, xs[1:], strict=True)))  # NaN: not ESR
        seeds = per_seed.best_avg_at_k * 100
        ax.plot(points, seeds, ".", color=ESR_COLOR, alpha=0.5, label="ESR, each seed")
    for label, style, color in (("full", "--", STUDENT_COLOR), ("progressive", ":", CURVE_COLOR)):
        row = summary[summary.label.str.startswith(label)]
        if len(row) and per_seed is not None:  # the band the seeds span
            seeds = per_seed[per_seed.label == row.label.iloc[0]].best_avg_at_k * 100
            ax.axhspan(seeds.min(), seeds.max(), color=color, alpha=0.12)
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
    """Best accuracy per token-selection rule at the same budget (finding 6); over several
    seeds, the mean's bar with each seed's point on it."""
    summary, per_seed = _over_seeds(summary)
    ordered = summary.sort_values("best_avg_at_k")
    colors = [
        ESR_COLOR if lab.startswith("esr-") else STUDENT_COLOR if lab == "full" else SELECT_COLOR
        for lab in ordered.label
    ]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(ordered) + 1.5))
    ax.barh(ordered.label, ordered.best_avg_at_k * 100, color=colors)
    for y, value in enumerate(ordered.best_avg_at_k * 100):
        _label(ax, f"{value:.1f}", (value, y), (4, 0), va="center", fontsize=9)
    if per_seed is not None:
        rows = per_seed.label.map({label: y for y, label in enumerate(ordered.label)})
        ax.plot(per_seed.best_avg_at_k * 100, rows, "k.", alpha=0.6, label="seeds")
    base = summary.base_avg_at_k.iloc[0] * 100
    ax.axvline(base, linestyle="--", color="black", linewidth=1, label=f"untrained: {base:.1f}")
    _style(ax, "Which tokens carry the loss (same budget)", f"best {benchmark} (%)", "")
    ax.legend(loc="lower right")
    fig.tight_layout()
    _save(fig, paths)


def _over_seeds(summary: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(one row per label, the per-seed rows or None): a summary with several rows per label
    (--seeds) becomes their mean, first-seen order kept; one row per label is left as it is."""
    if not summary.label.duplicated().any():
        return summary, None
    means = summary.groupby("label", sort=False)[["base_avg_at_k", "best_avg_at_k"]].mean()
    return means.reset_index(), summary


def plot_training_curve(evals: pd.DataFrame, paths: list[Path], benchmark: str = "avg@k") -> None:
    """Eval accuracy across training steps, one line per run label."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, part in evals.groupby("label", sort=False):
        ax.plot(part.step, part.avg_at_k * 100, "o-", label=label)
    _style(ax, "Accuracy during training", "step", f"{benchmark} (%)")
    ax.legend()
    fig.tight_layout()
    _save(fig, paths)


# The paper's collapse (finding 9) in one row each: accuracy graded three ways, then the
# signature: more boxes, repeated text, longer answers.
ABLATE_PANELS = (
    ("avg_at_k", "strict avg@k (%)", 100),
    ("relaxed_avg_at_k", "relaxed avg@k (%)", 100),
    ("first_boxed_avg_at_k", "first-boxed avg@k (%)", 100),
    ("mean_tokens", "mean response tokens", 1),
    ("multi_boxed_pct", "multi-boxed responses (%)", 1),
    ("boxes_per_response", "boxes per response", 1),
    ("repetitive_pct", "repetitive responses (%)", 1),
)


def plot_ablate(evals: pd.DataFrame, paths: list[Path]) -> None:
    """Accuracy over steps per ablation variant, with the collapse signature beside it: ESR
    green, full OPD black (paper-code dashed), single differences dotted in colour."""
    fig, grid = plt.subplots(2, 4, figsize=(19, 8), sharex=True)
    axes, legend_axis = grid.flat[: len(ABLATE_PANELS)], grid.flat[len(ABLATE_PANELS)]
    singles = iter(plt.get_cmap("tab10").colors)
    drawn: set[str] = set()
    colors: dict[str, object] = {}
    # one line per training run: over several seeds, one per seed, named once in the legend
    for (variant, _), part in evals.groupby(["variant", "train_run"], sort=False):
        name = "_nolegend_" if variant in drawn else variant
        drawn.add(variant)
        paper = part.recipe.iloc[0] == "paper-code"
        if part.difference.iloc[0]:
            if variant not in colors:  # a variant's seeds share its colour
                colors[variant] = next(singles)
            color, style = colors[variant], ":"
        elif variant.endswith(" full"):
            color, style = "black", "--" if paper else "-"
        else:
            color, style = ("#00897b" if paper else ESR_COLOR), "--" if paper else "-"
        for ax, (column, _, scale) in zip(axes, ABLATE_PANELS, strict=True):
            ax.plot(part.step, part[column] * scale, style, color=color, marker="o", label=name)
    for ax, (_, ylabel, _) in zip(axes, ABLATE_PANELS, strict=True):
        _style(ax, ylabel, "step", "")
    # the legend gets the eighth panel: with a dozen variants it would hide any curve it sat on
    legend_axis.axis("off")
    legend_axis.legend(*axes[0].get_legend_handles_labels(), fontsize=9, loc="center")
    fig.suptitle("Recipe ablation: accuracy and the collapse signature per evaluation")
    fig.tight_layout()
    _save(fig, paths)


BUDGET_MARKERS = {"tokens": "o", "time": "s", "own": "^"}


def plot_compare(methods: pd.DataFrame, paths: list[Path], benchmark: str = "avg@k") -> None:
    """Best accuracy against training compute (seconds of training steps), one point per
    method, budget and seed: colour per method (ESR green), marker per budget, hollow for the
    unmatched reference (full OPD under the token budget); a method in its own form (budget
    `own`) is drawn filled, as no method there is matched."""
    fig, ax = plt.subplots(figsize=(10, 5))
    tab10 = plt.get_cmap("tab10").colors
    others = iter(c for i, c in enumerate(tab10) if i != 2)  # tab10's green would pass for ESR
    colors = {m: ESR_COLOR if m == "esr" else next(others) for m in methods.method.unique()}
    for (method, budget), part in methods.groupby(["method", "budget"], sort=False):
        matched = bool(part.matched.all())
        own = budget == "own"
        ax.scatter(
            part.train_seconds,
            part.best_avg_at_k * 100,
            marker=BUDGET_MARKERS[budget],
            s=45,
            facecolors=colors[method] if matched or own else "none",
            edgecolors=colors[method],
            label=f"{method}, own form"
            if own
            else f"{method}, same {budget}" + ("" if matched else " (reference)"),
        )
    ax.set_xscale("log")
    _style(
        ax,
        "Methods side by side: accuracy against training compute",
        "training compute (seconds of training steps, log)",
        f"best {benchmark} (%)",
    )
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
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
        _label(ax_t, f"{total:.2f} s ({ratio:.2f}x)", (x, total), (0, 4), ha="center", fontsize=9)
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


# Bins that fewer than 2% of the rollouts reach (relative to the fullest bin) are a handful of
# runaway answers: tables keep them, plots leave them out.
MIN_BIN_SHARE = 0.02
ENTROPY_S_COLOR, ENTROPY_T_COLOR = "#d62728", "#1f77b4"
KL_COLOR, WINDOW_COLOR = "#2ca02c", "#fff2cc"


def reached_bins(bins: pd.DataFrame) -> pd.DataFrame:
    """The bins that at least MIN_BIN_SHARE of the rollouts reach (what plots and tables show)."""
    return bins[bins.tokens >= MIN_BIN_SHARE * bins.tokens.max()]


def _shade_window(ax: plt.Axes, window: int, label: str) -> None:
    ax.axvspan(0, window, color=WINDOW_COLOR, alpha=0.8, zorder=0, label=label)


def plot_positions(bins: pd.DataFrame, paths: list[Path]) -> None:
    """Per-position student/teacher entropy and reverse KL, ESR window shaded (finding 4)."""
    kept = reached_bins(bins)
    x = (kept.bin_start + kept.bin_end) / 2
    fig, ax = plt.subplots(figsize=(8, 5))
    _shade_window(ax, int(bins.window.iloc[0]), f"ESR window (0-{int(bins.window.iloc[0])})")
    ax.plot(x, kept.student_entropy, color=ENTROPY_S_COLOR, lw=2, label="student entropy $H_s$")
    ax.plot(x, kept.teacher_entropy, color=ENTROPY_T_COLOR, lw=2, label="teacher entropy $H_t$")
    kl_ax = ax.twinx()
    kl_ax.plot(x, kept.reverse_kl, "--", color=KL_COLOR, lw=2, label="reverse KL(student||teacher)")
    kl_ax.set_ylabel("reverse KL (nats)", color=KL_COLOR)
    kl_ax.tick_params(axis="y", colors=KL_COLOR)
    kl_ax.set_ylim(bottom=0)
    title = "Per-position signal of student rollouts"
    _style(ax, title, "token position in response", "entropy (nats)", from_origin=True)
    handles = ax.get_legend_handles_labels()[0] + kl_ax.get_legend_handles_labels()[0]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=9)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    _save(fig, paths)


def plot_cascade(bins: pd.DataFrame, summary: pd.DataFrame, paths: list[Path]) -> None:
    """Per-position KL before and after ESR training, trained window shaded (finding 5); the
    share of the gap closed comes from the run's cascade_summary table."""
    window = int(bins.window.iloc[0])
    kept = pd.concat(reached_bins(part) for _, part in bins.groupby("model"))
    wide = kept.pivot(index="bin_start", columns="model", values="reverse_kl").dropna()
    ends = kept.groupby("bin_start").bin_end.first().loc[wide.index]
    x = (wide.index + ends) / 2
    fig, ax = plt.subplots(figsize=(8.5, 5))
    _shade_window(ax, window, f"trained positions (0-{window})")
    ax.fill_between(x, wide.base, wide.esr, color="#cfe2ff", alpha=0.7, label="KL gap closed")
    ax.plot(x, wide.base, "o-", color=CURVE_COLOR, lw=2.5, label="base student vs teacher")
    ax.plot(x, wide.esr, "s-", color=ESR_COLOR, lw=2.5, label="ESR-trained student vs teacher")
    regions = summary.set_index("region")
    if "untrained" in regions.index:
        ax.annotate(
            f"untrained positions {window}+: {regions.closed_pct['untrained']:+.0f}% of the KL "
            "gap closed",
            xy=(0.5, 1.0),
            xycoords="axes fraction",
            ha="center",
            va="top",
            color="#2459d8",
            fontweight="bold",
        )
    title = "Per-position KL to the teacher before and after ESR (cascade)"
    _style(ax, title, "token position", "mean per-position reverse KL", from_origin=True)
    fig.legend(loc="lower center", ncol=2, fontsize=9)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    _save(fig, paths)


def plot_submode(summary: pd.DataFrame, paths: list[Path]) -> None:
    """Where the student's argmax sits in the teacher's ranking on the top-KL positions, and
    response lengths, per model (finding 7)."""
    students = summary[summary.positions.notna()]
    fig, (ax_r, ax_l) = plt.subplots(1, 2, figsize=(11, 4))
    left = [0.0] * len(students)
    parts = (
        ("teacher_top1_pct", "= teacher top-1", ESR_COLOR),
        ("teacher_top2_5_pct", "in teacher top 2-5", SELECT_COLOR),
        ("outside_top5_pct", "outside teacher top 5", CURVE_COLOR),
    )
    for column, label, color in parts:
        ax_r.barh(students.model, students[column], left=left, color=color, label=label)
        left = [a + b for a, b in zip(left, students[column], strict=True)]
    for y, prob in enumerate(students.top1_prob):
        ax_r.annotate(
            f"top-1 p {prob:.2f}", (101, y), va="center", fontsize=9, annotation_clip=False
        )
    _style(ax_r, "Student argmax on the top-KL positions", "% of positions", "")
    ax_r.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3, fontsize=8)
    ys = range(len(summary))
    ax_l.hlines(
        ys,
        summary.length_p10,
        summary.length_p90,
        color=STUDENT_COLOR,
        lw=6,
        alpha=0.5,
        label="p10-p90",
    )
    ax_l.plot(summary.length_p50, ys, "|", color="black", markersize=16, label="median")
    ax_l.plot(summary.length_mean, ys, "D", color=CURVE_COLOR, label="mean")
    ax_l.set_yticks(list(ys), summary.model)
    _style(ax_l, "Response length", "tokens", "")
    ax_l.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    _save(fig, paths)


def plot_tokens(cells: pd.DataFrame, paths: list[Path]) -> None:
    """Mean reverse KL per token category x position bin, as a heatmap (finding 11)."""
    grid = cells.pivot(index="category", columns="bin_start", values="mean_kl")
    labels = cells.drop_duplicates("bin_start").set_index("bin_start").position_bin
    fig, ax = plt.subplots(figsize=(1.2 * grid.shape[1] + 3, 0.5 * grid.shape[0] + 1.8))
    image = ax.imshow(grid.values, cmap="viridis", aspect="auto")
    bright = 0.6 * grid.max().max()
    for (i, j), value in pd.DataFrame(grid.values).stack().items():
        color = "black" if value > bright else "white"
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", color=color, fontsize=8)
    ax.set_xticks(range(grid.shape[1]), [labels[s] for s in grid.columns])
    ax.set_yticks(range(grid.shape[0]), grid.index)
    ax.set_xlabel("token position bin")
    ax.set_title("Mean reverse KL by token category and position")
    fig.colorbar(image, ax=ax, label="reverse KL (nats)")
    fig.tight_layout()
    _save(fig, paths)


def plot_suggest_n(curve: pd.DataFrame, summary: pd.DataFrame, paths: list[Path]) -> None:
    """Cumulative share of the trajectory's KL by position, and the N it suggests (finding 10;
    the N is the run's suggest_n summary's)."""
    threshold = float(curve.threshold.iloc[0])
    n = int(summary.n.iloc[0])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(
        curve.position + 1,
        curve.cumulative_share * 100,
        color=ESR_COLOR,
        lw=2.5,
        label="cumulative KL share of positions < N",
    )
    ax.axhline(
        threshold * 100,
        linestyle="--",
        color=STUDENT_COLOR,
        lw=1.5,
        label=f"threshold {threshold * 100:.0f}%",
    )
    ax.axvline(n, linestyle=":", color=CURVE_COLOR, lw=2, label=f"suggested N = {n}")
    ax.set_ylim(0, 101)
    ax.set_xlim(left=0)
    _style(
        ax,
        "Choosing N from a pre-training scan",
        "N (response tokens)",
        "share of total reverse KL (%)",
    )
    ax.legend(loc="lower right")
    fig.tight_layout()
    _save(fig, paths)


def latest_run(folder: Path, *tables: str) -> Path | None:
    """The most recently finished run in `folder`: of the runs that hold every one of `tables`,
    the one whose first table is newest."""
    first, *rest = tables
    runs = [
        p.parent for p in folder.glob(f"*/{first}") if all((p.parent / t).is_file() for t in rest)
    ]
    return max(runs, key=lambda run: (run / first).stat().st_mtime_ns) if runs else None

"""Where results live and what shape they have.

Every run gets its own folder `<results>/<experiment>/<run_id>/` holding `config.json` (every
option, the seed, the git commit, library versions) and long-format parquet tables whose
columns are declared once here. Writes are atomic (temp file, then rename), a finished piece of
work is saved as a part file as soon as it is done so a killed run resumes where it stopped, and
a run id that exists with another config is refused rather than overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from esr_lab.errors import UserError

# What grading a math response adds to it (metrics.grade_samples), in every table of graded math.
MATH_GRADES = (
    "correct",
    "correct_relaxed",
    "correct_first_boxed",
    "answer",
    "n_boxed",
    "repetitive",
    "chars",
)
SCHEMAS: dict[str, tuple[str, ...]] = {
    "train_steps": (
        "run_id",
        "label",
        "step",
        "loss",
        "kl_selected",
        "kl_all",
        "grad_norm",
        "lr",
        "rollout_tokens_mean",
        "selected_tokens_mean",
        "time_generation_s",
        "time_teacher_s",
        "time_training_s",
        "time_total_s",
        "peak_memory_mb",
    ),
    "train_evals": (
        "run_id",
        "label",
        "step",
        "avg_at_k",
        "avg_ci_low",
        "avg_ci_high",
        "pass_at_k",
        "maj_at_k",
        "relaxed_avg_at_k",
        "first_boxed_avg_at_k",
        "mean_tokens",
        "median_tokens",
        "mean_chars",
        "multi_boxed_pct",
        "boxes_per_response",
        "repetitive_pct",
        "n_problems",
    ),
    "eval_samples": (
        "run_id",
        "step",
        "problem_id",
        "sample",
        "completion",
        "completion_tokens",
        "finished",
        *MATH_GRADES,
    ),
    # `esr-lab grade` and `esr-lab eval --task`: one table of graded samples per task, one summary.
    "graded_math": (
        "run_id",
        "problem_id",
        "sample",
        "completion",
        *MATH_GRADES,
    ),
    "graded_humaneval": ("run_id", "problem_id", "sample", "completion", "correct", "status"),
    "graded_bfcl": (
        "run_id",
        "problem_id",
        "sample",
        "completion",
        "name_match",
        "correct",
        "status",
    ),
    "grade_summary": (
        "run_id",
        "task",
        "dataset",
        "accuracy",
        "pass_at_1",
        "k",
        "pass_at_k",
        "maj_at_k",
        "relaxed_accuracy",
        "name_match",
        "full_match",
        "n_problems",
        "n_samples",
    ),
    "train_summary": (
        "run_id",
        "label",
        "base_avg_at_k",
        "best_avg_at_k",
        "best_step",
        "best_pass_at_k",
        "best_maj_at_k",
        "final_avg_at_k",
        "final_step",
        "collapsed",
    ),
    # `esr-lab ablate`: one row per evaluation of each variant, then one per variant.
    # Findings 4, 5, 7, 10, 11: per-position scans of student rollouts (esr_lab.analysis).
    "position_bins": (
        "run_id",
        "model",
        "window",
        "bin_start",
        "bin_end",
        "tokens",
        "reverse_kl",
        "student_entropy",
        "teacher_entropy",
    ),
    "bench": (
        "benchmark",
        "system",
        "setting",
        "steps",
        "rollout_tokens",
        "time_median_s",
        "time_min_s",
        "time_max_s",
        "peak_memory_mb",
        "step_memory_mb",
        "date",
        "machine",
    ),
}

VERSIONED_LIBRARIES = ("torch", "transformers", "peft", "datasets", "math-verify", "vllm")
VOLATILE_KEYS = ("created", "git_commit", "versions", "run_id")


def git_commit() -> str:
    """The commit of the esr-lab checkout, with `-dirty` when it has uncommitted changes."""
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that change numbers."""
    versions = {}
    for name in VERSIONED_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` so that `path` is either the old file or the whole new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def declare(schemas: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """Add an experiment's table schemas, declared in its own module, to SCHEMAS; returns them.
    A name may be declared once (or again with the same columns, as on a module reload)."""
    for name, columns in schemas.items():
        if SCHEMAS.setdefault(name, columns) != columns:
            raise ValueError(f"table schema '{name}' declared twice with different columns")
    return schemas


def write_table(path: Path, frame: pd.DataFrame, schema: str) -> None:
    """Atomic parquet write of a table whose columns must match its declared schema."""
    expected = SCHEMAS[schema]
    if tuple(frame.columns) != expected:
        raise ValueError(f"{schema} columns {tuple(frame.columns)} != declared {expected}")
    atomic_write_bytes(path, frame.to_parquet(index=False))


def config_hash(config: dict[str, Any]) -> str:
    stable = {k: v for k, v in config.items() if k not in VOLATILE_KEYS}
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class RunDir:
    """One run's folder; `parts/` holds finished pieces of work until the run is complete."""

    path: Path
    run_id: str
    resumed: bool

    @property
    def parts(self) -> Path:
        return self.path / "parts"

    def part_path(self, name: str) -> Path:
        return self.parts / f"{name}.parquet"

    def has_part(self, name: str) -> bool:
        return self.part_path(name).is_file()

    def write_part(self, name: str, frame: pd.DataFrame, schema: str) -> None:
        write_table(self.part_path(name), frame, schema)

    def read_parts(self) -> pd.DataFrame:
        files = sorted(self.parts.glob("*.parquet"))
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def open_run(
    results_dir: Path, experiment: str, config: dict[str, Any], run_id: str | None
) -> RunDir:
    """Create a new run folder, or reopen `run_id` to resume it if its config is the same.

    `config` is the run's options; the commit, versions, date and run id are added here.
    """
    root = Path(results_dir) / experiment
    if run_id is not None:
        _check_run_id(run_id)
        existing = root / run_id / "config.json"
        if existing.is_file():
            saved = json.loads(existing.read_text())
            if config_hash(saved) != config_hash(config):
                raise UserError(
                    f"run '{run_id}' already exists in {root} with a different config; "
                    "pick another --run-id, or none for a fresh one"
                )
            return RunDir(root / run_id, run_id, resumed=True)
    run_id = run_id or _fresh_run_id(root, config)
    path = root / run_id
    full = dict(
        config,
        run_id=run_id,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        git_commit=git_commit(),
        versions=library_versions(),
    )
    path.mkdir(parents=True, exist_ok=True)
    write_json(path / "config.json", full)
    return RunDir(path, run_id, resumed=False)


def _check_run_id(run_id: str) -> None:
    if not run_id or any(c in run_id for c in "/\\") or run_id.startswith("."):
        raise UserError(f"bad run id '{run_id}'; use letters, digits, '-' or '_'")


def _fresh_run_id(root: Path, config: dict[str, Any]) -> str:
    """A time-stamped id that no existing folder has."""
    base = f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{config_hash(config)[:6]}"
    candidate, n = base, 1
    while (root / candidate).exists():
        n += 1
        candidate = f"{base}-{n}"
    return candidate

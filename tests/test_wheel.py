"""The presets ship in the wheel: an installed copy, outside the repository, lists them and
trains with one (`esr-lab train --preset toy`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from esr_lab import presets

REPO = Path(__file__).resolve().parent.parent


def _run(*args: str, cwd: Path, env: dict | None = None) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_an_installed_wheel_lists_the_presets_and_trains_with_one(tmp_path):
    # A copy of the sources, so that building leaves nothing in the worktree.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(REPO / "esr_lab", source / "esr_lab", ignore=ignore)
    # torch lives only in this venv, so the wheel is built against it and installed without
    # its dependencies into a folder of its own.
    pip = (sys.executable, "-m", "pip", "--disable-pip-version-check", "-q")
    _run(*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", "dist", ".", cwd=source)
    (wheel,) = (source / "dist").glob("esr_lab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = sorted(Path(n).stem for n in names if n.startswith("esr_lab/preset_files/"))
    assert shipped == presets.available() and "toy" in shipped
    _run(*pip, "install", "--no-deps", "--target", str(tmp_path / "site"), str(wheel), cwd=tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(tmp_path / "site")
    code = "import json, esr_lab.presets as p; print(json.dumps([p.__file__, p.available()]))"
    where, listed = json.loads(_run(sys.executable, "-c", code, cwd=tmp_path, env=env))
    assert Path(where).is_relative_to(tmp_path / "site")
    assert listed == shipped
    # ...and trains with a preset and the toy world's weights from the wheel alone.
    results = tmp_path / "results"
    argv = ("-m", "esr_lab", "train", "--preset", "toy", "--steps", "2", "--eval-every", "2")
    argv += ("--eval-limit", "4", "--eval-samples", "1", "--quiet", "--results-dir", str(results))
    _run(sys.executable, *argv, cwd=tmp_path, env=env)
    (config,) = results.glob("train/*/config.json")
    recorded = json.loads(config.read_text())
    assert recorded["pair"]["student"] == "toy-student" and recorded["steps"] == 2
    assert (config.parent / "summary.parquet").is_file()

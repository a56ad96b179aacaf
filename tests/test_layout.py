"""Layering: experiments share code through the core (or experiments/common.py and
experiments/scans.py), never through one another, and the core never reaches into an experiment
(the registry, which holds the experiment contract, is how the CLI, `plot` and the option groups
find them)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import esr_lab

PACKAGE = Path(esr_lab.__file__).parent
CONTRACT = "esr_lab.experiments.registry"


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports; `from a import b` counts as a and as a.b (b may be one)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_no_experiment_imports_another():
    shared = {
        "esr_lab.experiments.common",
        "esr_lab.experiments.registry",
        "esr_lab.experiments.scans",
    }
    for path in sorted((PACKAGE / "experiments").glob("*.py")):
        own = f"esr_lab.experiments.{path.stem}"
        experiments = {
            ".".join(name.split(".")[:3])
            for name in imported_modules(path)
            if name.startswith("esr_lab.experiments.")
        }
        others = experiments - shared - {own}
        assert not others, f"{path.name} imports {sorted(others)}"


def test_core_never_imports_an_experiment():
    for path in sorted(PACKAGE.glob("*.py")):
        if path.name == "cli.py":  # the commands run the experiments
            continue
        found = {
            n
            for n in imported_modules(path)
            if n.startswith("esr_lab.experiments") and not n.startswith(CONTRACT)
        }
        assert not found, f"{path.name} imports {sorted(found)}"


def test_config_modules_import_no_torch():
    """Settings are built and checked (options, `--help`) without loading the trainer."""
    for module in ("esr_lab.train_config", "esr_lab.choices", "esr_lab.options"):
        code = f"import sys, {module}; assert 'torch' not in sys.modules, sorted(sys.modules)"
        subprocess.run([sys.executable, "-c", code], check=True, cwd=PACKAGE.parent)

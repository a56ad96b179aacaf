"""Settings presets as TOML in `esr_lab/preset_files/` (package data, so an installed wheel has
them; `experiments/` at the top of the repository is a link to that folder): the paper's pairs,
and the CPU toy settings.

A preset is a table per command (`[train]`, `[sweep_n]`, ...) of option values. Options given
on the command line win over the preset, and the preset wins over the paper's defaults, which
are the dataclass defaults in code. A toy student picks its world's preset automatically.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from esr_lab import toy
from esr_lab.errors import UserError

PRESET_DIR = Path(__file__).resolve().parent / "preset_files"


def available() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def load_preset(name: str) -> dict:
    """The whole preset file as nested dicts."""
    path = PRESET_DIR / f"{name}.toml"
    if not path.is_file():
        raise UserError(f"unknown preset '{name}'; available: {', '.join(available())}")
    return tomllib.loads(path.read_text())


def defaults_for(student: str, command: str, preset: str | None = None) -> dict:
    """Option values for `command` from the named preset, or the toy student's own world."""
    if preset is None:
        if not toy.is_toy_model(student):
            return {}
        preset = student.split("-")[0]
    return dict(load_preset(preset).get(command, {}))

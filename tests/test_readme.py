"""README names committed results by path; a clone must hold each of them (a world's results
folder that .gitignore hides would leave README pointing at nothing)."""

from __future__ import annotations

import re
from pathlib import Path

import esr_lab
from esr_lab.preconditions import REAL_WORLDS
from esr_lab.toy import TOY_WORLDS

ROOT = Path(esr_lab.__file__).parent.parent
# A path in the text; it ends before punctuation that closes a sentence or a code span.
PATH = re.compile(r"(?<![\w/.-])((?:results|figures)/[\w./*<>-]*[\w/*>-])")


def committed_paths(text: str) -> list[str]:
    """The paths README gives to committed results: those under a world's results folder (or
    under figures/), without placeholders (RECIPE, <run>, *, ...), which stand for many."""
    worlds = set(TOY_WORLDS + REAL_WORLDS)
    found = []
    for path in PATH.findall(text):
        parts = path.split("/")
        placeholder = any(c in path for c in "<*") or "..." in path
        placeholder |= any(re.search(r"[A-Z]{3,}", part) for part in parts)
        if not placeholder and (parts[0] == "figures" or parts[1] in worlds):
            found.append(path)
    return sorted(set(found))


def test_committed_paths_keep_a_worlds_results_and_drop_placeholders():
    text = (
        "see `results/runon/facts.json`. and results/capable/collapse/sweep_n/collapse-RECIPE/, "
        "results/decay/20261122-.../decay.png, results/<command>/<run_id>/, figures/decay.png."
    )
    assert committed_paths(text) == ["figures/decay.png", "results/runon/facts.json"]


def test_every_result_readme_names_is_in_the_repository():
    paths = committed_paths((ROOT / "README.md").read_text())
    assert len(paths) > 10  # README does name its results; a broken pattern would find none
    missing = [path for path in paths if not (ROOT / path).exists()]
    assert not missing, f"README names results the repository lacks: {missing}"

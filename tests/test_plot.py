"""`esr-lab plot`: figures from saved results alone, byte-stable, without importing torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

from esr_lab.experiments.registry import rebuild_all
from esr_lab.figures import latest_run
from esr_lab.records import open_run, write_table
from tests.helpers import run_cli


def decay_summary(run_id: str, teacher: float) -> pd.DataFrame:
    rows = [("teacher_alone", 0, teacher), ("student_alone", None, 0.2)]
    rows += [("teacher_from_prefix", k, teacher - k / 1000) for k in (0, 100, 300)]
    frame = pd.DataFrame(
        [(run_id, c, k, a, a - 0.05, a + 0.05, 10, 40) for c, k, a in rows],
        columns=[
            "run_id",
            "condition",
            "prefix_tokens",
            "avg_at_k",
            "ci_low",
            "ci_high",
            "n_problems",
            "n_samples",
        ],
    )
    return frame.astype({"prefix_tokens": "Int64"})


def make_results(root: Path) -> Path:
    for run_id, teacher in (("old", 0.5), ("new", 0.8)):
        run = open_run(root, "decay", {"teacher": teacher}, run_id)
        write_table(run.path / "summary.parquet", decay_summary(run_id, teacher), "decay_summary")
    return root


def test_plot_is_byte_stable_and_takes_the_newest_run(tmp_path):
    results = make_results(tmp_path / "results")
    assert latest_run(results / "decay", "summary.parquet").name == "new"
    first = rebuild_all(results, tmp_path / "a")
    second = rebuild_all(results, tmp_path / "b")
    assert [p.name for p in first] == ["decay.png"]
    assert first[0].read_bytes() == second[0].read_bytes()


def test_a_table_saved_before_the_metric_renames_still_plots(tmp_path):
    """decay's summary called avg@k `accuracy` until the metric columns took one name each;
    committed runs keep it, and `plot` reads them under today's name (records.read_table)."""
    results = make_results(tmp_path / "results")
    today = rebuild_all(results, tmp_path / "today")[0].read_bytes()
    summary = results / "decay" / "new" / "summary.parquet"
    pd.read_parquet(summary).rename(columns={"avg_at_k": "accuracy"}).to_parquet(summary)
    assert rebuild_all(results, tmp_path / "before")[0].read_bytes() == today


def test_plot_command_never_imports_torch(tmp_path):
    results = make_results(tmp_path / "results")
    code = (
        "import sys; from esr_lab.cli import main; sys.argv = ['esr-lab', 'plot', "
        f"'--results-dir', {str(results)!r}, '--out', {str(tmp_path / 'fig')!r}]\n"
        "try:\n    main()\nexcept SystemExit as stop:\n    assert not stop.code, stop.code\n"
        "assert 'torch' not in sys.modules, 'plot imported torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / "fig" / "decay.png").is_file()


def test_figures_import_neither_torch_nor_analysis():
    code = (
        "import sys\nimport esr_lab.figures\n"
        "assert 'torch' not in sys.modules, 'figures imported torch'\n"
        "assert 'esr_lab.analysis' not in sys.modules, 'figures imported esr_lab.analysis'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_plot_with_no_runs_is_a_clear_error(tmp_path, monkeypatch, capsys):
    args = ("plot", "--results-dir", str(tmp_path))
    code, _, err = run_cli(monkeypatch, capsys, tmp_path, *args, dirs=False)
    assert code == 2
    assert "no finished runs" in err
    assert not list(tmp_path.iterdir())

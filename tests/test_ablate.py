"""`esr-lab ablate`: its variants switch exactly one recipe difference, and the command runs."""

from __future__ import annotations

import pandas as pd
import pytest

from esr_lab.errors import UserError
from esr_lab.experiments.ablate import DIFFERENCES, NOT_ABLATED, AblateConfig
from esr_lab.recipes import RECIPES, settings
from esr_lab.train_config import TrainConfig
from tests.helpers import MICRO, run_cli


def _base(recipe: str) -> TrainConfig:
    return TrainConfig.from_settings(settings({"n": 8}, {}, "micro-student", recipe))


def test_each_single_difference_changes_only_its_fields() -> None:
    cfg = AblateConfig(esr_lab=_base("esr-lab"), paper_code=_base("paper-code"))
    variants = {v.name: v for v in cfg.variants()}
    full = variants["esr-lab full"].cfg
    assert variants["esr-lab esr-8"].cfg.window(0) == 8 and full.selector == "all"
    assert variants["paper-code full"].cfg.reduction == "sequence_mean"
    expected = {
        "stop token": {"loss_on_stop_token": False, "strip_tokens": "eos-pad"},
        "reduction": {"reduction": "sequence_mean"},
        "schedule": {"lr_schedule": "cosine", "warmup_ratio": 0.1},
        "regularisation": {"weight_decay": 0.01, "lora_dropout": 0.05},
        "top-p": {"top_p": 0.95, "eval_top_p": 1.0},
        "top-k": {"top_k": 50, "eval_top_k": 0},
        "teacher prompt": {"teacher_prompt": "student"},
        "student context": {"student_context": "teacher-marker"},
        "end of turn": {"stop_at_end_of_turn": False},
        "training sample": {"train_sample": "random"},
        "cross-tokenizer": {"cross_clamp": True, "cross_unaligned": "neighbour"},
    }
    assert set(expected) == set(DIFFERENCES)
    for name, values in expected.items():
        assert variants[f"full + {name}"].cfg == full.with_settings(values) != full


def test_every_paper_code_setting_is_ablated_once_or_said_why_not() -> None:
    """A setting added to the paper-code recipe must join a difference (or NOT_ABLATED), so
    that the ablation keeps covering the whole recipe."""
    ablated = [key for keys in DIFFERENCES.values() for key in keys]
    assert len(ablated) == len(set(ablated))
    assert set(ablated).isdisjoint(NOT_ABLATED)
    assert set(ablated) | set(NOT_ABLATED) == set(RECIPES["paper-code"])


def test_no_differences_keeps_the_four_recipe_variants() -> None:
    cfg = AblateConfig(_base("esr-lab"), _base("paper-code"), differences=())
    names = [v.name for v in cfg.variants()]
    assert names == ["esr-lab full", "esr-lab esr-8", "paper-code full", "paper-code esr-8"]
    assert cfg.comparisons() == [(names[1], names[0]), (names[3], names[2])]


def test_unknown_difference_is_a_user_error() -> None:
    cfg = AblateConfig(_base("esr-lab"), _base("paper-code"), differences=("temperature",))
    with pytest.raises(UserError, match="unknown --differences"):
        cfg.variants()


def test_ablate_command(monkeypatch, capsys, tmp_path):
    args = ["ablate", *MICRO, "--n", "4", "--max-new-tokens", "24", "--steps", "2"]
    code, out, _ = run_cli(monkeypatch, capsys, tmp_path, *args)
    assert code == 0, out
    names = ["esr-lab full", "esr-lab esr-4", "paper-code full", "paper-code esr-4"]
    names += ["full + stop token", "full + end of turn"]  # the micro preset's differences
    runs = list((tmp_path / "results" / "ablate").iterdir())
    summary = pd.read_parquet(runs[0] / "ablate_summary.parquet")
    assert summary.variant.tolist() == names
    evals = pd.read_parquet(runs[0] / "ablate_evals.parquet")
    assert sorted(set(evals.step)) == [0, 2] and len(evals) == 2 * len(names)
    assert evals.groupby("variant").train_run.nunique().eq(1).all()
    assert "minus full OPD" in out and "collapsed" in out
    assert (tmp_path / "figures" / "ablate.png").is_file()
    # --differences none: the four recipe variants again, tabulated from the same runs
    code, out, err = run_cli(
        monkeypatch, capsys, tmp_path, *args, "--differences", "none", "--run-id", "recipes"
    )
    assert code == 0, out
    recipes = pd.read_parquet(
        tmp_path / "results" / "ablate" / "recipes" / "ablate_summary.parquet"
    )
    assert recipes.variant.tolist() == names[:4]
    assert recipes.best_avg_at_k.tolist() == summary.best_avg_at_k.tolist()[:4]
    assert "reused finished run" in out + err  # no variant trained again

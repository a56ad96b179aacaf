"""One settings road: a scan samples as `train` with the same preset and recipe samples."""

from __future__ import annotations

import json

import pytest

from esr_lab import options, presets
from esr_lab.experiments import decay, evaluation, positions, suggest_n, tokens, training
from tests.helpers import MICRO, run_cli

SCANS = (decay, positions, suggest_n, tokens)


def _configure(module, **own):
    defaults = options.defaults((module.Options, *module.EXPERIMENT.groups))
    defaults.update(student="micro-student", teacher="micro-teacher", **own)
    return module.configure(*options.split(defaults, module.Options, module.EXPERIMENT.groups))


@pytest.fixture
def nucleus_preset(tmp_path, monkeypatch):
    """A preset whose training table sets a top-p and picks the paper's recipe."""
    folder = tmp_path / "presets"
    folder.mkdir()
    text = '[train]\nrecipe = "paper-code"\ntop_p = 0.9\n'
    (folder / "nucleus.toml").write_text(text)
    monkeypatch.setattr(presets, "PRESET_DIR", folder)
    return "nucleus"


@pytest.mark.parametrize("module", SCANS, ids=lambda m: m.EXPERIMENT.command)
def test_a_preset_samples_alike_in_train_and_in_every_scan(module, nucleus_preset):
    cfg = _configure(module, preset=nucleus_preset)
    assert cfg.sampling.top_p == 0.9  # the preset's, over the recipe's 0.95
    assert cfg.sampling.top_k == 50 and not cfg.sampling.stop_at_end_of_turn  # the recipe's
    assert (cfg.recipe, cfg.preset) == ("paper-code", nucleus_preset)
    given = _configure(module, preset=nucleus_preset, top_p=0.5)
    assert given.sampling.top_p == 0.5  # the command line wins


def test_a_presets_top_p_reaches_decays_config_json(monkeypatch, capsys, tmp_path, nucleus_preset):
    args = ("decay", *MICRO, "--preset", nucleus_preset, "--limit", "1", "--samples", "1")
    code, _, err = run_cli(monkeypatch, capsys, tmp_path, *args, "--prefix-lengths", "0,4")
    assert code == 0, err
    (config_file,) = (tmp_path / "results" / "decay").glob("*/config.json")
    config = json.loads(config_file.read_text())
    assert config["sampling"]["top_p"] == 0.9
    assert (config["recipe"], config["preset"]) == ("paper-code", nucleus_preset)


def test_eval_records_the_recipe_whose_evaluation_settings_it_took():
    for recipe in (None, "paper-code"):
        cfg = _configure(evaluation, model="micro-student", recipe=recipe)
        assert cfg.recipe == (recipe or "esr-lab")


@pytest.fixture
def plain_preset(tmp_path, monkeypatch):
    """A preset that asks for no instruction, another temperature and thinking mode: options
    whose command-line defaults used to win over any preset."""
    folder = tmp_path / "presets"
    folder.mkdir()
    text = '[train]\ninstruction = ""\ntemperature = 1.0\nenable_thinking = true\n'
    text += 'eval_samples = 2\nloss = "forward_kl"\nmask_special_tokens = true\n'
    (folder / "plain.toml").write_text(text)
    (folder / "micro.toml").write_text((presets.PRESET_DIR / "micro.toml").read_text())
    monkeypatch.setattr(presets, "PRESET_DIR", folder)
    return "plain"


@pytest.mark.parametrize("module", (training, *SCANS), ids=lambda m: m.EXPERIMENT.command)
def test_a_presets_instruction_temperature_and_thinking_reach_every_command(module, plain_preset):
    cfg = _configure(module, preset=plain_preset)
    pair, sampling = cfg.pair, cfg.sampling
    assert (pair.instruction, sampling.temperature, pair.enable_thinking) == ("", 1.0, True)
    typed = _configure(module, preset=plain_preset, instruction="Solve.", temperature=0.5)
    typed = typed.pair.instruction, typed.sampling.temperature
    assert typed == ("Solve.", 0.5)  # the command line wins
    if module is training:  # and the training options that had concrete defaults
        assert (cfg.eval_samples, cfg.loss, cfg.mask_special_tokens) == (2, "forward_kl", True)
    plain = _configure(module)  # no preset: the defaults, as before
    assert plain.pair.instruction.startswith("Please reason step by step")
    assert (plain.sampling.temperature, plain.pair.enable_thinking) == (0.7, False)

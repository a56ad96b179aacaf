"""Shared test fixtures: tiny real models and tokenizers built in the test, no network."""

from __future__ import annotations

from pathlib import Path

import pytest

# tiny_models sets the hub offline on import: before any test module imports transformers.
from tests.tiny_models import CORPUS, byte_level_tokenizer, llama_tokenizer, save_pair, tiny_llama


@pytest.fixture(scope="session")
def byte_model_dir(tmp_path_factory) -> Path:
    return save_pair(tmp_path_factory.mktemp("byte_model"), byte_level_tokenizer())


@pytest.fixture(scope="session")
def bpe_model_dir(tmp_path_factory) -> Path:
    return save_pair(tmp_path_factory.mktemp("bpe_model"), byte_level_tokenizer(CORPUS), seed=1)


@pytest.fixture(scope="session")
def llama_model_dir(tmp_path_factory) -> Path:
    """A Llama student whose tokenizer differs from `bpe_model_dir`'s Qwen3 teacher's."""
    folder = tmp_path_factory.mktemp("llama_model")
    return save_pair(folder, llama_tokenizer(), seed=2, build=tiny_llama)


@pytest.fixture(scope="session", autouse=True)
def toy_cache(tmp_path_factory) -> Path:
    """Micro worlds are built once per test session into a private cache."""
    cache = tmp_path_factory.mktemp("esr_cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("ESR_LAB_CACHE", str(cache))
    yield cache
    mp.undo()

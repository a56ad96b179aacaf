"""LoRA adapters saved by `esr-lab train`: checking and loading them, and the trained student an
experiment compares (a given checkpoint folder, or a run trained now under its
content-addressed id in `<results>/runs/`, so experiments that need the same run share it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from esr_lab.errors import UserError

if TYPE_CHECKING:  # the model code loads only when an adapter is checked or loaded
    from esr_lab.config import ModelPair
    from esr_lab.policy import Policy
    from esr_lab.train_config import TrainConfig


def check_adapter(adapter: str) -> None:
    if not (Path(adapter) / "adapter_config.json").is_file():
        raise UserError(
            f"no LoRA adapter in '{adapter}' (expected adapter_config.json, as written in "
            "<run>/checkpoints/step-N/model by esr-lab train)"
        )


def load_adapter(policy, adapter: str) -> None:
    """Wrap the policy's model with a LoRA adapter saved by `esr-lab train`."""
    from peft import PeftModel

    folder = Path(adapter)
    check_adapter(adapter)
    try:
        policy.loaded.model = PeftModel.from_pretrained(policy.loaded.model, folder).eval()
    except (RuntimeError, ValueError, KeyError) as err:
        raise UserError(
            f"adapter '{adapter}' does not fit model '{policy.loaded.name}': "
            f"{str(err).splitlines()[0][:120]}"
        ) from err


def check_checkpoint(adapter: str | None, cfg: TrainConfig, option: str) -> None:
    """A given adapter must be a LoRA folder trained on this very student; with none, the run
    that would be trained must have its data and models."""
    if adapter is None:
        from esr_lab import train

        train.check_inputs(cfg)
        return
    check_adapter(adapter)
    config = json.loads((Path(adapter) / "adapter_config.json").read_text())
    trained_on = str(config.get("base_model_name_or_path"))
    from esr_lab.models import resolve_model_source

    student = resolve_model_source(cfg.pair.student)
    if _canonical(trained_on) != _canonical(student):
        raise UserError(
            f"{option} '{adapter}' was trained on '{trained_on}', not on the student "
            f"'{cfg.pair.student}' ({student}); pass its student with --student, or a checkpoint "
            "of this one"
        )


def _canonical(source: str) -> str:
    return os.path.realpath(source) if Path(source).exists() else source


def trained_adapter(
    cfg: TrainConfig, adapter: str | None, results_dir: Path, show_progress: bool
) -> str:
    """The given adapter folder, or the final checkpoint of `cfg` trained (or reused) now."""
    if adapter is not None:
        return adapter
    from esr_lab import loop

    trained = loop.train_variant(cfg, results_dir, show_progress)
    return str(loop.checkpoint_dir(trained.run_dir, cfg.steps) / "model")


def trained_policy(pair: ModelPair, adapter: str, batch_size: int) -> Policy:
    """The student with a LoRA adapter on top."""
    from esr_lab.policy import load_policy

    policy = load_policy(pair.student, pair, batch_size)
    load_adapter(policy, adapter)
    return policy

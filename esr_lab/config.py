"""Flat, frozen settings shared by every experiment.

Experiment-specific settings live beside their experiment; these are the pieces every command
has: which models, how prompts are rendered, how to sample.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from esr_lab import toy
from esr_lab.prompts import DEFAULT_INSTRUCTION, PromptStyle

ENGINES = ("transformers", "vllm")
PHASES = ("generation", "teacher", "training")  # the timed parts of a training step
TOY_MAX_NEW_TOKENS = 400  # toy answers run 100-300 tokens
REAL_MAX_NEW_TOKENS = 4096  # MATH-500 answers of 1.5B-8B models run to several thousand


@dataclass(frozen=True)
class ModelPair:
    """The student and teacher, and how each renders its prompts."""

    student: str = "toy-student"
    teacher: str = "toy-teacher"
    device: str = "auto"
    dtype: str = "auto"
    instruction: str = DEFAULT_INSTRUCTION
    enable_thinking: bool = False
    threads: int | None = None  # CPU torch threads; None leaves torch's default
    placement: str = "user"  # where the instruction goes: prompts.PLACEMENTS
    engine: str = "transformers"  # how models sample: ENGINES
    vllm_memory: float = 0.3  # share of the GPU vLLM may take (weights + KV cache)
    vllm_sleep: bool = True  # vLLM frees its GPU memory between samplings where it can

    @property
    def style(self) -> PromptStyle:
        return PromptStyle(self.instruction, self.placement, self.enable_thinking)


@dataclass(frozen=True)
class Sampling:
    """Rollout sampling. The paper states temperature 0.7 and top-p 1.0 (its released code
    samples training rollouts at top-p 0.95 under HF generate's default top-k 50:
    `--recipe paper-code`).

    `top_k`: only the k most likely ids are kept before the nucleus is taken (0: off).

    `stop_at_end_of_turn`: a response also ends at the token that closes the assistant's turn
    in the chat template (prompts.end_of_turn_id), not only at the model's EOS ids.
    """

    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = TOY_MAX_NEW_TOKENS
    stop_at_end_of_turn: bool = True


def default_dataset(student: str) -> str:
    """A toy student is evaluated on its own world's problems; a real one on MATH-500."""
    return student.split("-")[0] if toy.is_toy_model(student) else "math500"


def default_max_new_tokens(student: str) -> int:
    return TOY_MAX_NEW_TOKENS if toy.is_toy_model(student) else REAL_MAX_NEW_TOKENS


def named(kind, values: dict) -> dict:
    """The values whose keys are fields of the dataclass (or dataclass type) `kind`."""
    return {f.name: values[f.name] for f in fields(kind) if f.name in values}


def pair_and_sampling(values: dict) -> tuple[ModelPair, Sampling]:
    """The model pair and sampling named by flat option values (`options.settings`); the
    response budget defaults by student (toy worlds are short, real answers long)."""
    student = values.get("student", ModelPair.student)
    values = {"max_new_tokens": default_max_new_tokens(student), **values}
    return ModelPair(**named(ModelPair, values)), Sampling(**named(Sampling, values))

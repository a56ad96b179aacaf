"""Named sets of training defaults: esr-lab's own, and the paper's released code.

The code that produced the paper's numbers (github: JosephZZ/quick-distill, PAPER.md "The
paper's released code") trains differently from the paper's prose in ways that bear on its
central result, the collapse of full-rollout OPD. `--recipe paper-code` sets every one of those
differences to the released code's value; `--recipe esr-lab` (the default) keeps the dataclass
defaults. Settings flow one way: command line, then preset, then recipe, then dataclass default
(`settings`).

Why esr-lab's defaults differ where they do:
- reduction "sequence_sum" is the paper's equation (a sum over positions); the code's
  per-trajectory mean weights a short ESR window and a long full rollout alike per token.
- the stop token carries loss, and rollouts stop at the template's end of turn, so the student
  is taught to stop where its chat turn ends; the code strips the stop token and samples to the
  model's EOS, which nothing then teaches.
- the teacher reads the problem in its own chat template (what it was trained on); the code
  hands it the student's prompt tokens plus its no-think marker.
- constant learning rate, no weight decay, no LoRA dropout, top-p 1.0: the paper's prose.
"""

from __future__ import annotations

from esr_lab import toy
from esr_lab.errors import UserError
from esr_lab.prompts import PAPER_EVAL_INSTRUCTION

RECIPES: dict[str, dict[str, object]] = {
    "esr-lab": {},  # the dataclass defaults are esr-lab's recipe
    "paper-code": {
        "reduction": "sequence_mean",
        "lr_schedule": "cosine",
        "warmup_ratio": 0.1,
        "weight_decay": 0.01,  # torch AdamW's default, which the code leaves in place
        "lora_dropout": 0.05,
        "top_p": 0.95,
        "loss_on_stop_token": False,
        "teacher_prompt": "student",
        "stop_at_end_of_turn": False,
        "progressive_schedule": "step",
        "eval_top_p": 1.0,
        # HumanEval and BFCL evaluations as the released code ran them (tasks.PROTOCOLS).
        "protocol": "paper",
    },
}
# Prompt wording and token budgets belong to the models, not to the training recipe: a toy
# world's pair was built on one prompt and short answers, and another wording or a 3,584-token
# budget would measure a distribution shift there, not the recipe. Real models get them.
REAL_MODEL_SETTINGS: dict[str, dict[str, object]] = {
    "paper-code": {
        "placement": "system",
        "eval_instruction": PAPER_EVAL_INSTRUCTION,
        "eval_placement": "user-inline",
        "max_new_tokens": 3584,
        "eval_max_new_tokens": 2048,
    },
}


def recipe_values(name: str, student: str) -> dict[str, object]:
    """The recipe's option values for this student."""
    if name not in RECIPES:
        raise UserError(f"unknown recipe '{name}'; use {', '.join(RECIPES)}")
    for_models = {} if toy.is_toy_model(student) else REAL_MODEL_SETTINGS.get(name, {})
    return {**RECIPES[name], **for_models}


# A training recipe's evaluation settings, as `esr-lab eval` names them.
EVAL_OPTIONS = {
    "eval_instruction": "instruction",
    "eval_placement": "placement",
    "eval_top_p": "top_p",
    "eval_max_new_tokens": "max_new_tokens",
    "protocol": "protocol",
}


def eval_values(name: str, model: str) -> dict[str, object]:
    """What `--recipe name` sets for `esr-lab eval` of `model`: its evaluation prompt and
    sampling for math, its protocol for code and function calling."""
    values = recipe_values(name, model)
    return {option: values[key] for key, option in EVAL_OPTIONS.items() if key in values}


def settings(
    given: dict, preset: dict, student: str, recipe: str | None = None, training: bool = True
) -> dict:
    """Flat option values: given on the command line, else the preset's, else the recipe's.

    The recipe is the one named on the command line, else the preset's `recipe`, else esr-lab;
    it sets training options only (`training=False`: an experiment's own options, no recipe).
    What none of them sets is left to the dataclass defaults. Options given as None count as
    not given.
    """
    given = {k: v for k, v in given.items() if v is not None}
    if not training:
        return {**preset, **given}
    name = recipe or preset.get("recipe") or "esr-lab"
    return {**recipe_values(name, student), **preset, **given, "recipe": name}

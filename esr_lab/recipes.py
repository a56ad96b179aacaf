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
- the student is scored on the prompt it sampled from; the code scores it after the teacher's
  no-think marker ids as well, a context it never sampled in (for Qwen2.5-Math under Qwen3,
  ids past its tokenizer: untrained embedding rows).
- constant learning rate, no weight decay, no LoRA dropout, top-p 1.0, no top-k: the paper's
  prose (the code's top-k 50 is HF generate's default, not a choice it states).
- the first `train_limit` problems with a gold answer: a fixed, checkable set; the code draws
  a seeded random sample of the whole set, unfiltered (`--train-sample random`; with --seed 42
  it draws the code's own 3,200 NuminaMath problems).
- one learning rate (5e-5) whatever is trained; the code fine-tunes all weights at 5e-6.
- different tokenizers: a student token that no teacher token covers carries no loss, and
  nothing is clamped; the code clamps the teacher's log-probs to [-20, 0] (they then sum to
  more than 1) and each trajectory's loss at 50 (a zero gradient above it), and gives an
  uncovered token its neighbour's teacher distribution.
- with the stop token stripped, every trailing special token goes; the code strips EOS, pad,
  `<|im_end|>` and `<|endoftext|>` only, so Gemma's `<end_of_turn>` keeps its loss.
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
        "student_context": "teacher-marker",
        "strip_tokens": "eos-pad",
        "cross_clamp": True,
        "cross_unaligned": "neighbour",
        "top_k": 50,  # HF generate's default, left in place by the code
        "train_sample": "random",
        "stop_at_end_of_turn": False,
        "progressive_schedule": "step",
        "eval_top_p": 1.0,
        "eval_top_k": 0,  # the code evaluates with vLLM, whose top-k is off by default
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


# Full fine-tuning's learning rate where a recipe has its own (docs/main_results.md of the
# released code: 5e-6 for full fine-tuning, 5e-5 for LoRA). It applies when --full-finetune is
# on and neither the command line nor the preset names a learning rate.
FULL_FINETUNE_LR: dict[str, float] = {"paper-code": 5e-6}


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
    values = {**recipe_values(name, student), **preset, **given, "recipe": name}
    if values.get("full_finetune") and "lr" not in {**preset, **given}:
        values.update({"lr": FULL_FINETUNE_LR[name]} if name in FULL_FINETUNE_LR else {})
    return values

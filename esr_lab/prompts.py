"""Turn a problem into the exact prompt text a model sees, and read what its template implies.

Each model renders prompts through its *own* chat template: the student and the teacher may use
different templates, and scoring a student's tokens under the wrong template biases every
teacher log-prob. Where the instruction goes is a setting, because the paper's released code
and esr-lab differ there (PAPER.md, "The paper's released code"):

- "user": one user turn, the problem then the instruction on its own line (esr-lab's default);
- "system": the instruction as a system message and the problem as the user turn (the released
  code's training prompt); a template without a system role (Gemma 2) gets the instruction, a
  blank line, then the problem in the user turn, as the released code does;
- "user-inline": one user turn, the problem, a space, the instruction (the released code's
  MATH-500 evaluation prompt);
- "raw": the problem text itself, no chat template and no instruction (the released code's
  HumanEval prompt: the model continues the function's code).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from esr_lab.errors import UserError

DEFAULT_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
# The released code's MATH-500 evaluation instruction (eval_math500.py).
PAPER_EVAL_INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."
PLACEMENTS = ("user", "system", "user-inline", "raw")
# What a model without a chat template (a base model such as Gemma 3 270M) reads: its BOS where
# its tokenizer starts every text with one, the user turn (problem, then instruction), and an
# answer cue. Run folders record it (config.json, `plain_prompt_format`).
PLAIN_FORMAT = "{bos}Question: {message}\nAnswer:"


@dataclass(frozen=True)
class PromptStyle:
    """How a problem becomes a chat prompt: the instruction, where it goes, thinking mode."""

    instruction: str = DEFAULT_INSTRUCTION
    placement: str = "user"
    enable_thinking: bool = False

    def __post_init__(self) -> None:
        if self.placement not in PLACEMENTS:
            raise UserError(
                f"unknown instruction placement '{self.placement}'; use {', '.join(PLACEMENTS)}"
            )


def user_message(problem: str, instruction: str = DEFAULT_INSTRUCTION, sep: str = "\n") -> str:
    """The user turn: the problem, then the instruction after `sep` (empty: no instruction)."""
    return f"{problem}{sep}{instruction}" if instruction else problem


def _has_system_role(tokenizer: Any) -> bool:
    """Whether the template accepts a system message (Gemma 2's raises on one)."""
    try:
        tokenizer.apply_chat_template(
            [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
            tokenize=False,
            add_generation_prompt=True,
        )
    except Exception:  # templates signal "no system role" with their own exception types
        return False
    return True


def chat_messages(tokenizer: Any, problem: str, style: PromptStyle) -> list[dict[str, str]]:
    """The conversation that `style` makes of `problem` for this tokenizer's template."""
    if style.placement == "user-inline":
        return [{"role": "user", "content": user_message(problem, style.instruction, " ")}]
    if style.placement == "system" and style.instruction:
        if _has_system_role(tokenizer):
            return [
                {"role": "system", "content": style.instruction},
                {"role": "user", "content": problem},
            ]
        return [{"role": "user", "content": f"{style.instruction}\n\n{problem}"}]
    return [{"role": "user", "content": user_message(problem, style.instruction)}]


def render_prompt(
    tokenizer: Any,
    problem: str,
    instruction: str = DEFAULT_INSTRUCTION,
    enable_thinking: bool = False,
    placement: str = "user",
) -> str:
    """Prompt text ending where the assistant's answer starts.

    `enable_thinking` is read by Qwen3's template (off by default, as in the paper); templates
    that do not use it ignore it. A tokenizer with no chat template (a raw base model) gets the
    user message(s) in `PLAIN_FORMAT`; placement "raw" gives the problem verbatim. Both write
    the BOS that the tokenizer would add (`bos_text`): prompts are tokenized without special
    tokens, because a chat template writes its own.
    """
    style = PromptStyle(instruction, placement, enable_thinking)
    if placement == "raw":
        return bos_text(tokenizer) + problem
    messages = chat_messages(tokenizer, problem, style)
    if not getattr(tokenizer, "chat_template", None):
        message = "\n".join(m["content"] for m in messages)
        return PLAIN_FORMAT.format(bos=bos_text(tokenizer), message=message)
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=enable_thinking
    )


def bos_text(tokenizer: Any) -> str:
    """The BOS token's text if the tokenizer starts every text with it (Gemma, Llama 2 and 3),
    else "" (Qwen, SmolLM2): what a prompt rendered without a chat template begins with, so that
    such a model reads its BOS exactly once."""
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos_id is None:
        return ""
    return tokenizer.bos_token if tokenizer("x").input_ids[:1] == [bos_id] else ""


def render_style(tokenizer: Any, problem: str, style: PromptStyle) -> str:
    """`render_prompt` with the settings of a PromptStyle."""
    return render_prompt(
        tokenizer, problem, style.instruction, style.enable_thinking, style.placement
    )


def no_think_marker(tokenizer: Any) -> str:
    """The text a template adds after the generation prompt to switch thinking off, or "".

    Read from the template itself: the generation prompt rendered with thinking off minus the
    one rendered with thinking on (Qwen3: "<think>\\n\\n</think>\\n\\n"). The released code
    hands the teacher this marker after the student's prompt, so that a thinking model reads
    the student's response as a non-thinking answer.
    """
    if not getattr(tokenizer, "chat_template", None):
        return ""
    turn = [{"role": "user", "content": "x"}]
    off, on = (
        tokenizer.apply_chat_template(
            turn, tokenize=False, add_generation_prompt=True, enable_thinking=flag
        )
        for flag in (False, True)
    )
    return off[len(on) :] if off.startswith(on) else ""


def end_of_turn_id(tokenizer: Any) -> int | None:
    """The special token that closes an assistant turn in this template, or None.

    Found by rendering a one-turn exchange and reading the first token after the assistant's
    text: `<|im_end|>` for Qwen, `<|eot_id|>` for Llama 3, `<end_of_turn>` for Gemma. A base
    model used through a chat template (Qwen2.5-Math) ends its turn with this token while its
    EOS is another one, so a sampler that stops at EOS alone writes past the end of its turn.
    """
    if not getattr(tokenizer, "chat_template", None):
        return None
    answer = "ANSWER-END-PROBE"
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "x"}, {"role": "assistant", "content": answer}],
            tokenize=False,
        )
    except Exception:  # a template that refuses this exchange has no turn end to find
        return None
    if answer not in text:
        return None
    tail = tokenizer(text[text.rindex(answer) + len(answer) :], add_special_tokens=False)
    ids = tail.input_ids
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    return ids[0] if ids and ids[0] in special else None

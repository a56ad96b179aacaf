"""Turn a problem into the exact prompt text a model sees.

Each model renders prompts through its *own* chat template: the student and the teacher may use
different templates, and scoring a student's tokens under the wrong template biases every
teacher log-prob.
"""

from __future__ import annotations

from typing import Any

DEFAULT_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def user_message(problem: str, instruction: str = DEFAULT_INSTRUCTION) -> str:
    """The user turn: the problem, then the instruction on its own line (empty: no instruction)."""
    return f"{problem}\n{instruction}" if instruction else problem


def render_prompt(
    tokenizer: Any,
    problem: str,
    instruction: str = DEFAULT_INSTRUCTION,
    enable_thinking: bool = False,
) -> str:
    """Prompt text ending where the assistant's answer starts.

    `enable_thinking` is read by Qwen3's template (off by default, as in the paper); templates
    that do not use it ignore it. A tokenizer with no chat template (a raw base model) gets the
    plain user message followed by a newline.
    """
    content = user_message(problem, instruction)
    if not getattr(tokenizer, "chat_template", None):
        return content + "\n"
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": content}],
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=enable_thinking,
    )

"""The capable world: a student that executes the teacher's plan but opens with a worse one.

The toy world cannot show ESR beating full OPD because its student executes the teacher's plan
badly: only full rollouts teach the execution. The paper's students (Qwen2.5-Math-1.5B) execute
well; what they lack is the opening. This world is built so that the opening is all the student
lacks, and its build measures that before any OPD run (`weights/capable/facts.json`):

- `teacher_avg`: the teacher's avg@4 at T=0.7 on the held-out problems;
- `student_avg` <= 0.6 x `teacher_avg`: the student opens with the error-prone "direct" plan;
- `student_forced_avg` within 5 points of `teacher_avg`: with its response forced to open with
  the teacher's plan sentence, the student solves as many problems as the teacher;
- `window_share` = N / the student's mean response tokens <= 0.2 for the preset's N = 20: the
  ESR window is a small share of the answer (the paper: 100 of ~990 tokens);
- different ending conventions, as in the paper's pair. The teacher (like Qwen3) ends its
  answer with `<|im_end|>`, which is also its EOS. The student (like Qwen2.5-Math) has EOS
  `<|endoftext|>` in its tokenizer and generation config and was trained to write `<|im_end|>`
  then `<|endoftext|>`: sampled to its EOS (`--no-stop-at-end-of-turn`), it writes a token after
  the end of turn that the teacher never saw, so the teacher's view of the student's ending is
  off its own distribution.

How it gets there. Same task and tokenizer as the toy world (task.py), in the verbose style
only, whose answers run ~115-180 tokens. The teacher is the toy world's teacher adapted to the
verbose style (150 steps; it mostly splits products, and multiplies directly right about a third
of the time). The student starts as a copy of that teacher, so its skill at either plan is the
teacher's, and then acquires a habit in 100 steps on data that favours the direct plan (65%)
and ends the Qwen2.5-Math way. In that data the products written down at once carry no loss:
the student learns to open with the direct plan and to write it out, not the two-digit facts.
(Trained on them, it learnt them: avg@4 0.70, 0.77 x the teacher's. Trained on the plan line
and the ending alone, it learnt to stop after any full stop.) The
thresholds above are the world's design targets, measured by the build; they say nothing of
how OPD will do on it. The OPD learning rate and steps (experiments/capable.toml) were chosen
once on the world's validation split (`capable:val`), never on its test set.
"""

from __future__ import annotations

import re

from esr_lab.toy import task

TEACHER_MIX = {("verbose", "split"): 0.9, ("verbose", "direct"): 0.1}
STUDENT_MIX = {("verbose", "split"): 0.35, ("verbose", "direct"): 0.65}
FORCED_OPENER = task.PLAN_OPENERS["verbose", "split"] + "\n"  # the teacher's first line

_PRODUCT = re.compile(r"\d+ \* \d+ = (\d+)")


def product_results(direct_solution: str) -> list[tuple[int, int]]:
    """Character spans of the products a direct-plan solution writes down at once: the facts
    that the student's habit data shows but does not teach."""
    return [m.span(1) for m in _PRODUCT.finditer(direct_solution)]


MAX_STUDENT_RATIO = 0.6
MAX_FORCED_GAP = 0.05
MAX_WINDOW_SHARE = 0.2


def preconditions(facts: dict, window: int) -> dict:
    """The world's preconditions from the build's measurements: each value and whether it holds.

    Every value is a fraction in [0, 1]; `window` is the preset's ESR N.
    """
    teacher, student = facts["teacher"], facts["student"]
    values = {
        "teacher_avg": teacher["avg_at_k"],
        "student_avg": student["avg_at_k"],
        "student_forced_avg": student["forced_avg_at_k"],
        "window_share": min(1.0, window / student["mean_response_tokens"]),
    }
    holds = {
        "student_avg": values["student_avg"] <= MAX_STUDENT_RATIO * values["teacher_avg"],
        "student_forced_avg": abs(values["student_forced_avg"] - values["teacher_avg"])
        <= MAX_FORCED_GAP,
        "window_share": values["window_share"] <= MAX_WINDOW_SHARE,
    }
    return {**values, "window": window, "holds": holds}

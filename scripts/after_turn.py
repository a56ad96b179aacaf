"""What a trained toy-world student writes after its end of turn, sampled to its EOS.

Why: full OPD trained on rollouts sampled to the EOS (`--no-stop-at-end-of-turn`) with loss on
the student's stop token can leave answers that never end. This says what fills them: text
after the end of turn, end-of-turn ids written again and again, how often the student still
writes its EOS within the budget, and what the teacher predicts right after the student's end
of turn. Prints the same record `python -m esr_lab.preconditions` measures for the untrained
student (precondition (a) and the teacher past the turn); writes nothing.

    python scripts/after_turn.py capable results/runs/full-XXXX/checkpoints/step-000100/model
"""

import argparse

from esr_lab.preconditions import (
    MAX_NEW_TOKENS,
    after_turn_text,
    sample_to_eos,
    teacher_after_turn,
)

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("world", help="toy world of the student (toy, capable, runon)")
parser.add_argument("adapter", help="a checkpoint's model folder written by esr-lab train")
parser.add_argument("--samples", type=int, default=20, help="held-out problems, one sample each")
parser.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
args = parser.parse_args()
student, prompts, rollouts = sample_to_eos(
    args.world, args.samples, args.max_new_tokens, args.adapter
)
record = after_turn_text(student, rollouts)
record |= teacher_after_turn(args.world, student, prompts, rollouts)
for key, value in record.items():
    print(f"{key}: {value:.4f}")

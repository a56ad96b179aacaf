"""Re-grade saved arithmetic samples by the last integer each response writes.

Why: the relaxed extraction (math-verify over the whole response) evaluates expressions, so a
response that rewrites the question "10 minus 4" as "10 - 4" is graded correct without stating
an answer. The real-CPU world's student learns that rewriting from its teacher; this stricter
reading shows how much of an accuracy is such echoes.

    python scripts/regrade_last_integer.py results/real-cpu/runs/*/eval_samples.parquet
"""

import re
import sys

import pandas as pd

from esr_lab.data import load_problems


def last_integer(text: str) -> str | None:
    found = re.findall(r"-?\d+", text)
    return found[-1] if found else None


def main(paths: list[str]) -> None:
    gold = {p.id: p.answer for p in load_problems("arithmetic")}
    for path in paths:
        samples = pd.read_parquet(path)
        strict = [
            last_integer(text) == gold[str(pid)]
            for text, pid in zip(samples.completion, samples.problem_id, strict=True)
        ]
        samples = samples.assign(last_integer_correct=strict)
        for step, part in samples.groupby("step"):
            print(
                f"{path}  step {step}: relaxed {part.correct.mean() * 100:.2f}  "
                f"last integer {part.last_integer_correct.mean() * 100:.2f}  ({len(part)} samples)"
            )


if __name__ == "__main__":
    main(sys.argv[1:])

"""Finding 1, off-policy teacher decay: a teacher that continues a student's answer gets worse
the longer the student's prefix is.

Claim (PAPER.md, Qwen2.5-Math-1.5B -> Qwen3-1.7B, MATH-500 avg@4 at t=0.7): teacher alone 65.30,
from a 100-token student prefix 62.70, 200: 56.30, 300: 51.75; student alone 50.95. So the
teacher's scores on late positions of a student rollout describe a teacher that has already been
pulled off its own distribution, which is why ESR trains on early positions only.

Command: esr-lab decay --student Qwen/Qwen2.5-Math-1.5B --teacher Qwen/Qwen3-1.7B
         --dataset math500            (no options: the toy world)

The student's prefix is decoded to text and re-encoded with the teacher's tokenizer after the
teacher's own chat-template prompt, so the two models may use different tokenizers. A student
answer that ends within k tokens is its own whole response: the teacher has nothing to continue
(`prefix_complete`), and the row is graded as the student wrote it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Annotated

import pandas as pd

from esr_lab import grading
from esr_lab.config import ModelPair, Sampling, default_dataset
from esr_lab.console import print_table, progress_bar
from esr_lab.data import Problem, load_problems
from esr_lab.errors import UserError
from esr_lab.experiments.registry import Experiment, ExperimentResult, Figure, Paths
from esr_lab.figures import plot_decay
from esr_lab.options import SAMPLING_GROUPS, Given, ScanPreset, opt, parse_int_list
from esr_lab.records import declare, open_run, write_table
from esr_lab.seeding import row_seed

SCHEMAS = declare(
    {
        "decay_samples": (
            "run_id",
            "seed",
            "problem_id",
            "sample",
            "condition",
            "prefix_tokens",
            "prefix_complete",
            "completion",
            "completion_tokens",
            "correct",
        ),
        "decay_summary": (
            "run_id",
            "condition",
            "prefix_tokens",
            "avg_at_k",
            "ci_low",
            "ci_high",
            "n_problems",
            "n_samples",
        ),
    }
)


FIGURE = Figure("decay.png", ("summary.parquet",), plot_decay)


@dataclass(frozen=True)
class DecayConfig:
    pair: ModelPair = field(default_factory=ModelPair)
    dataset: str | None = None  # None: the student's toy world, or math500 for real models
    limit: int | None = None
    samples: int = 4
    prefix_lengths: tuple[int, ...] = (0, 25, 50, 100, 200, 300)
    sampling: Sampling = field(default_factory=Sampling)
    recipe: str = "esr-lab"  # the recipe the sampling came from (recipes.RECIPES)
    preset: str | None = None  # the preset named on the command line
    seed: int = 0
    batch_size: int = 64
    extraction: str = "last_boxed"

    def resolved(self) -> DecayConfig:
        """The config with defaults that depend on the models filled in, checked."""
        if self.samples < 1:
            raise UserError(f"--samples must be at least 1, got {self.samples}")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {self.batch_size}")
        bad = [k for k in self.prefix_lengths if k < 0]
        if bad or not self.prefix_lengths:
            raise UserError(
                f"--prefix-lengths must be non-negative integers, got {list(self.prefix_lengths)}"
            )
        if self.extraction not in grading.EXTRACTION_MODES:
            raise UserError(
                f"unknown extraction '{self.extraction}'; use {', '.join(grading.EXTRACTION_MODES)}"
            )
        dataset = self.dataset or default_dataset(self.pair.student)
        return replace(
            self, dataset=dataset, prefix_lengths=tuple(sorted(set(self.prefix_lengths)))
        )


@dataclass
class Options:
    dataset: Annotated[
        str | None, opt("math500, aime24, amc23, gsm8k, arithmetic, toy, a hub id or a file.")
    ] = None
    limit: Annotated[int | None, opt("Use the first N problems.", min=1)] = None
    samples: Annotated[int, opt("Student samples per problem (avg@k).")] = 4
    prefix_lengths: Annotated[str, opt("Student prefix lengths, tokens.")] = "0,25,50,100,200,300"
    batch_size: Annotated[int, opt("Rows per generation batch.")] = 64
    extraction: Annotated[str, opt("last_boxed, first_boxed or relaxed.")] = "last_boxed"
    preset: ScanPreset = None


def configure(options: Options, given: Given) -> DecayConfig:
    return DecayConfig(
        **given.sampled_as_training(options.preset),
        dataset=options.dataset,
        limit=options.limit,
        samples=options.samples,
        prefix_lengths=parse_int_list(options.prefix_lengths, "--prefix-lengths"),
        seed=given.run.seed,
        batch_size=options.batch_size,
        extraction=options.extraction,
    )


def run(cfg: DecayConfig, paths: Paths) -> ExperimentResult:
    """Sample, continue, grade and summarise; resumable per chunk of problems."""
    from esr_lab.models import check_models
    from esr_lab.policy import load_policy

    cfg = cfg.resolved()
    check_models(cfg.pair.student, cfg.pair.teacher)
    problems = load_problems(cfg.dataset, limit=cfg.limit)
    student, teacher = (
        load_policy(name, cfg.pair, cfg.batch_size) for name in (cfg.pair.student, cfg.pair.teacher)
    )
    run_dir = open_run(paths.results_dir, "decay", _config_dict(cfg), paths.run_id)
    chunks = _chunks(problems, max(1, cfg.batch_size // cfg.samples))
    prefixes = [k for k in cfg.prefix_lengths if k > 0]
    with progress_bar(paths.show_progress) as bar:
        task = bar.add_task("decay", total=len(chunks) * (2 + len(prefixes)))
        for index, chunk in enumerate(chunks):
            name = f"chunk-{index:05d}"
            if not run_dir.has_part(name):
                rows = _run_chunk(cfg, chunk, student, teacher, prefixes, bar, task)
                frame = pd.DataFrame(rows, columns=list(_SAMPLE_COLUMNS))
                frame.insert(0, "seed", cfg.seed)
                frame.insert(0, "run_id", run_dir.run_id)
                run_dir.write_part(name, _typed(frame), "decay_samples")
            else:
                bar.advance(task, 2 + len(prefixes))
    samples = run_dir.read_parts()
    write_table(run_dir.path / "samples.parquet", samples, "decay_samples")
    summary = accuracy_by_prefix(samples, cfg.prefix_lengths, run_dir.run_id)
    write_table(run_dir.path / "summary.parquet", summary, "decay_summary")
    figure = FIGURE.save(run_dir.path, paths)
    return ExperimentResult(run_dir, {"samples": samples, "summary": summary}, figure)


# The per-sample columns a chunk produces; run_id and seed are added in front when it is saved.
_SAMPLE_COLUMNS = SCHEMAS["decay_samples"][2:]


def _config_dict(cfg: DecayConfig) -> dict:
    config = asdict(cfg)
    config["prefix_lengths"] = list(cfg.prefix_lengths)
    return config


def _chunks(problems: list[Problem], size: int) -> list[list[Problem]]:
    return [problems[i : i + size] for i in range(0, len(problems), size)]


def _run_chunk(cfg, chunk, student, teacher, prefixes, bar, task) -> list[tuple]:
    """Every condition for one chunk of problems; returns sample rows."""
    pairs = [(p, j) for p in chunk for j in range(cfg.samples)]
    student_prompts = [student.prompt_ids(p.problem) for p, _ in pairs]
    seeds = [row_seed(cfg.seed, "student", p.id, j) for p, j in pairs]
    bar.update(task, description="student rollouts")
    rollouts = student.engine.generate(student_prompts, seeds, cfg.sampling)
    bar.advance(task)
    responses = [student.response_ids(rollouts, i) for i in range(len(pairs))]
    rows = [
        _row(cfg, p, j, "student_alone", None, False, student.decode(ids), len(ids))
        for (p, j), ids in zip(pairs, responses, strict=True)
    ]
    for k in [0, *prefixes]:
        bar.update(task, description=f"teacher from {k}-token prefix")
        rows += _teacher_from_prefix(cfg, pairs, responses, rollouts.finished, k, student, teacher)
        bar.advance(task)
    return rows


def _teacher_from_prefix(cfg, pairs, responses, finished, k, student, teacher) -> list[tuple]:
    """The teacher continues each student response from its first k tokens."""
    condition = "teacher_alone" if k == 0 else "teacher_from_prefix"
    complete = [fin and len(ids) <= k for ids, fin in zip(responses, finished, strict=True)]
    todo = [i for i, done in enumerate(complete) if not done]
    prefixes = {
        i: reencode_prefix(student.tokenizer, teacher.tokenizer, responses[i], k) for i in todo
    }
    prompts = [teacher.prompt_ids(pairs[i][0].problem) + prefixes[i][1] for i in todo]
    seeds = [row_seed(cfg.seed, "teacher", k, pairs[i][0].id, pairs[i][1]) for i in todo]
    budget = replace(cfg.sampling, max_new_tokens=max(cfg.sampling.max_new_tokens - k, 1))
    continued = teacher.engine.generate(prompts, seeds, budget) if todo else None
    texts = {i: student.decode(responses[i]) for i, done in enumerate(complete) if done}
    lengths = {i: len(responses[i]) for i in texts}
    for row, i in enumerate(todo):
        ids = teacher.response_ids(continued, row)
        texts[i] = prefixes[i][0] + teacher.decode(ids)
        lengths[i] = min(k, len(responses[i])) + len(ids)
    return [
        _row(cfg, p, j, condition, k, complete[i], texts[i], lengths[i])
        for i, (p, j) in enumerate(pairs)
    ]


def reencode_prefix(
    student_tokenizer, teacher_tokenizer, response_ids: Sequence[int], k: int
) -> tuple[str, list[int]]:
    """The student's first k response tokens as text, and that text in the teacher's tokens.

    Going through text is what lets models with different vocabularies share a prefix; a prefix
    cut inside a multi-byte character decodes with a replacement character, as any
    detokeniser would.
    """
    text = student_tokenizer.decode(response_ids[:k], skip_special_tokens=True)
    ids = teacher_tokenizer(text, add_special_tokens=False).input_ids if text else []
    return text, ids


def _row(cfg, problem, sample, condition, k, complete, text, length) -> tuple:
    correct = grading.grade_math(text, problem.answer, cfg.extraction)
    return (problem.id, sample, condition, k, complete, text, length, correct)


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype(
        {
            "prefix_tokens": "Int64",
            "sample": "int64",
            "completion_tokens": "int64",
            "correct": "bool",
            "prefix_complete": "bool",
            "problem_id": "str",
        }
    )


def accuracy_by_prefix(
    samples: pd.DataFrame, prefix_lengths: Sequence[int], run_id: str
) -> pd.DataFrame:
    """avg@k with a 95% CI per condition; the curve's k=0 point is the teacher alone."""
    rows = [
        _summary_row(samples[samples.condition == "teacher_alone"], "teacher_alone", 0),
        _summary_row(samples[samples.condition == "student_alone"], "student_alone", None),
    ]
    for k in prefix_lengths:
        source = "teacher_alone" if k == 0 else "teacher_from_prefix"
        part = samples[(samples.condition == source) & (samples.prefix_tokens == k)]
        rows.append(_summary_row(part, "teacher_from_prefix", k))
    summary = pd.DataFrame(rows, columns=list(SCHEMAS["decay_summary"][1:]))  # run_id next
    summary.insert(0, "run_id", run_id)
    return summary.astype({"prefix_tokens": "Int64"})


def _summary_row(part: pd.DataFrame, condition: str, k: int | None) -> tuple:
    per_problem = part.groupby("problem_id", sort=False).correct.mean().tolist()
    from esr_lab.metrics import mean_ci

    mean, low, high = mean_ci(per_problem)
    return (condition, k, mean, low, high, len(per_problem), len(part))


def print_summary(result: ExperimentResult) -> None:
    """The summary as a narrow table: accuracy and its 95% CI in percent."""
    summary, run_dir = result.tables["summary"], result.run_dir
    shown = pd.DataFrame(
        {
            "condition": summary.condition.str.replace("_", " "),
            "prefix": summary.prefix_tokens,
            "avg@k %": summary.avg_at_k * 100,
            "95% CI": [
                f"{lo * 100:.1f}-{hi * 100:.1f}"
                for lo, hi in zip(summary.ci_low, summary.ci_high, strict=True)
            ],
            "problems": summary.n_problems,
            "samples": summary.n_samples,
        }
    )
    print_table(shown, f"Teacher decay, run {run_dir.run_id}")


EXPERIMENT = Experiment(
    command="decay",
    folder="decay",
    help="Finding 1: teacher accuracy when it continues from student prefixes of growing length.",
    options=Options,
    groups=SAMPLING_GROUPS,
    configure=configure,
    run=run,
    print_summary=print_summary,
    figure=FIGURE,
    order=10,
    finding="1 teacher decay",
    step=1,
)

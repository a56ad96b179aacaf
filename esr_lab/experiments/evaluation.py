"""`esr-lab eval`: avg@k, pass@k and maj@k of one model (optionally with a trained adapter).

The paper's protocol is MATH-500 with n=4 samples at temperature 0.7 (avg@4 / pass@4 / maj@4),
and pass@1 at temperature 0 for HumanEval/HumanEval+ and full-match accuracy on BFCL. Math keeps
its own tables (eval_samples, train_evals); code and function calling are graded through
esr_lab.tasks and write the same tables as `esr-lab grade`. `--protocol` picks how code and
function calling are prompted and graded (chat: esr-lab's; paper: the released code's, greedy,
pass@1, one sample); `--recipe paper-code` sets the paper protocol and the released code's
MATH-500 prompt and sampling, each where the command line does not.
Command: esr-lab eval --model Qwen/Qwen2.5-Math-1.5B --adapter results/train/<run>/checkpoints/
         step-000100/model --dataset math500
         esr-lab eval --model Qwen/Qwen3-1.7B --task humaneval --samples 1 --temperature 0
         esr-lab eval --model Qwen/Qwen3-1.7B --task bfcl --recipe paper-code
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import pandas as pd

from esr_lab import grading, metrics, recipes, tasks
from esr_lab.adapters import check_adapter, load_adapter
from esr_lab.config import ModelPair, Sampling, default_dataset
from esr_lab.console import print_table
from esr_lab.data import load_problems
from esr_lab.errors import UserError
from esr_lab.experiments.registry import Experiment, ExperimentResult, Paths
from esr_lab.options import SAMPLING_GROUPS, Given, opt
from esr_lab.prompts import DEFAULT_INSTRUCTION
from esr_lab.records import SCHEMAS, open_run, write_table

if TYPE_CHECKING:
    from esr_lab.policy import Policy


@dataclass(frozen=True)
class EvalConfig:
    model: str = "toy-student"
    adapter: str | None = None
    pair: ModelPair = field(default_factory=ModelPair)  # device, dtype, prompt rendering
    dataset: str | None = None
    limit: int | None = None
    samples: int = 4
    sampling: Sampling = field(default_factory=Sampling)
    extraction: str = "last_boxed"
    seed: int = 0
    batch_size: int = 64
    task: str | None = None  # math, humaneval or bfcl; None: inferred from the dataset
    protocol: str = "chat"  # code and function calling: tasks.PROTOCOLS
    recipe: str = "esr-lab"  # whose evaluation settings filled what was not given

    def resolved(self) -> EvalConfig:
        if self.samples < 1:
            raise UserError(f"--samples must be at least 1, got {self.samples}")
        if self.extraction not in grading.EXTRACTION_MODES:
            raise UserError(
                f"unknown extraction '{self.extraction}'; use {', '.join(grading.EXTRACTION_MODES)}"
            )
        if self.adapter:
            check_adapter(self.adapter)
        return self


@dataclass
class Options:
    model: Annotated[str, opt("Model to evaluate: hub id, folder or toy name.")] = "toy-student"
    adapter: Annotated[str | None, opt("LoRA adapter folder from esr-lab train.")] = None
    dataset: Annotated[str | None, opt("Eval set [default: math500 / toy test].")] = None
    limit: Annotated[int | None, opt("Use the first N problems.", min=1)] = None
    samples: Annotated[int, opt("Samples per problem (k).")] = 4
    extraction: Annotated[str, opt("last_boxed, first_boxed or relaxed.")] = "last_boxed"
    task: Annotated[str | None, opt("math, humaneval or bfcl [default: from the dataset].")] = None
    protocol: Annotated[
        str | None, opt("Code/BFCL: chat (esr-lab's) or paper [esr-lab: chat; paper-code: paper].")
    ] = None
    recipe: Annotated[
        str | None, opt("esr-lab (default) or paper-code: the released code's eval settings.")
    ] = None


def configure(options: Options, given: Given) -> EvalConfig:
    """The options, with the recipe's evaluation settings where the command line gives none."""
    recipe_name = options.recipe or "esr-lab"
    recipe = recipes.eval_values(recipe_name, options.model)
    sampled = given.sampled_as_training(None, model=options.model)
    pair, sampling = sampled["pair"], sampled["sampling"]
    task = options.task or tasks.task_for_dataset(options.dataset or default_dataset(options.model))
    if task == "math":  # the recipe's MATH-500 prompt and sampling, where none is given
        if "instruction" in recipe and pair.instruction == DEFAULT_INSTRUCTION:
            pair = replace(pair, instruction=recipe["instruction"])
        if "placement" in recipe and given.models.placement is None:
            pair = replace(pair, placement=recipe["placement"])
        for name in ("top_p", "max_new_tokens"):
            if name in recipe and getattr(given.sampling, name) is None:
                sampling = replace(sampling, **{name: recipe[name]})
    return EvalConfig(
        model=options.model,
        adapter=options.adapter,
        pair=pair,
        dataset=options.dataset,
        limit=options.limit,
        samples=options.samples,
        sampling=sampling,
        extraction=options.extraction,
        seed=given.run.seed,
        task=options.task,
        protocol=options.protocol or str(recipe.get("protocol", "chat")),
        recipe=recipe_name,
    )


def run(cfg: EvalConfig, paths: Paths) -> ExperimentResult:
    """Sample, grade, summarise; returns the run folder and a one-row summary."""
    from esr_lab.models import check_models

    cfg = cfg.resolved()
    check_models(cfg.model)
    if cfg.task is not None:
        tasks.get_task(cfg.task)
    task = cfg.task or tasks.task_for_dataset(cfg.dataset or default_dataset(cfg.model))
    if task == "math":
        run_dir, summary = _run_math(cfg, paths)
    else:
        run_dir, summary = _run_task(cfg, task, paths)
    return ExperimentResult(run_dir, {"summary": summary})


def _policy(cfg: EvalConfig) -> Policy:
    """The model, with the trained adapter when there is one."""
    from esr_lab.policy import load_policy

    policy = load_policy(cfg.model, cfg.pair, cfg.batch_size)
    if cfg.adapter:
        load_adapter(policy, cfg.adapter)
    return policy


def _sample(cfg: EvalConfig, problems, task: str, dataset: str, paths: Paths):
    """Load the model, open the run folder, and sample `cfg.samples` answers per problem."""
    policy = _policy(cfg)
    config = dict(asdict(cfg), task=task, dataset=dataset)
    run_dir = open_run(paths.results_dir, "eval", config, paths.run_id)
    seeds = (cfg.seed, "eval", 0)
    samples = metrics.sample_answers(
        policy, problems, cfg.samples, cfg.sampling, seeds, show_progress=paths.show_progress
    )
    return run_dir, samples


def with_protocol(cfg: EvalConfig, task: str) -> EvalConfig:
    """The protocol's prompt and sampling: the task's instruction in place of the math default
    (chat), or the paper's prompt, greedy, its token budget and one sample (paper)."""
    prompting = tasks.prompting(task, cfg.protocol)
    pair = cfg.pair
    if cfg.protocol == "paper" or pair.instruction == DEFAULT_INSTRUCTION:
        pair = replace(pair, instruction=prompting.instruction)
    if prompting.placement is not None:
        pair = replace(pair, placement=prompting.placement)
    cfg = replace(cfg, pair=pair)
    if prompting.greedy:
        sampling = replace(cfg.sampling, temperature=0.0, top_p=1.0)
        if prompting.max_new_tokens is not None:
            sampling = replace(sampling, max_new_tokens=prompting.max_new_tokens)
        cfg = replace(cfg, sampling=sampling, samples=1)
    return cfg


def _run_task(cfg: EvalConfig, task: str, paths: Paths):
    """Code or function calling: sample, then grade as `esr-lab grade` does."""
    spec = tasks.get_task(task)
    dataset = cfg.dataset or spec.default_dataset
    cfg = with_protocol(cfg, task)
    problems = tasks.load_task_problems(task, dataset, cfg.limit, cfg.protocol)
    run_dir, samples = _sample(cfg, problems, task, dataset, paths)
    samples = samples[["problem_id", "sample", "completion"]]
    return run_dir, tasks.write_graded(run_dir, task, dataset, samples, problems, cfg.protocol)


def _run_math(cfg: EvalConfig, paths: Paths):
    dataset = cfg.dataset or default_dataset(cfg.model)
    problems = load_problems(dataset, limit=cfg.limit)
    run_dir, samples = _sample(cfg, problems, "math", dataset, paths)
    graded = tasks.grade_samples("math", samples, problems, extraction=cfg.extraction)
    graded.insert(0, "step", 0)
    graded.insert(0, "run_id", run_dir.run_id)
    write_table(run_dir.path / "samples.parquet", graded, "eval_samples")
    scores = metrics.accuracy_metrics(graded)
    label = cfg.model + (f"+{Path(cfg.adapter).name}" if cfg.adapter else "")
    summary = pd.DataFrame([{"run_id": run_dir.run_id, "label": label, "step": 0, **scores}])
    summary = summary[list(SCHEMAS["train_evals"])]
    write_table(run_dir.path / "summary.parquet", summary, "train_evals")
    return run_dir, summary


def print_summary(result: ExperimentResult) -> None:
    summary, run_dir = result.tables["summary"], result.run_dir
    if "task" in summary.columns:
        tasks.print_summary(summary, run_dir)
        return
    row = summary.iloc[0]
    shown = pd.DataFrame(
        [
            {
                "model": row.label,
                "avg@k %": row.avg_at_k * 100,
                "pass@k %": row.pass_at_k * 100,
                "maj@k %": row.maj_at_k * 100,
                "relaxed %": row.relaxed_avg_at_k * 100,
                "mean tokens": row.mean_tokens,
                "problems": int(row.n_problems),
            }
        ]
    )
    print_table(shown, f"Evaluation, run {run_dir.run_id}")


EXPERIMENT = Experiment(
    command="eval",
    folder="eval",
    help="avg@k, pass@k and maj@k of a model (and adapter) on a dataset.",
    options=Options,
    groups=SAMPLING_GROUPS,
    configure=configure,
    run=run,
    print_summary=print_summary,
    order=30,
)

"""Train the toy teacher/student pair from scratch, measure them, and save them.

The two models are real `Qwen3ForCausalLM`s with their own tokenizer, saved with
`save_pretrained`, so everything downstream loads them exactly like hub models.

The teacher trains in two phases: a cosine schedule, then a short low-learning-rate "polish"
on fresh problems, which is what takes its sampled (T=0.7) accuracy from ~0.56 to ~0.87: at
temperature 0.7 every digit is a chance to slip, so the last bit of confidence matters. The
student is smaller and is made weaker the way real students are: it starts from two of the
teacher's four layers after the first phase (layer-subset initialisation, as DistilBERT
initialises from alternate teacher layers), learns both plans on the teacher's data mix, and
then acquires the habit of the error-prone "direct" plan (see task.py) on data that favours
it. It can still split (about half its rare split answers are right) but seldom chooses to:
the early decision that ESR is about. Everything is fixed by the seed: data streams, the
tokenizer corpus, initial weights, batch order and the sampling used to measure accuracy.

World "capable" (capable.py) starts from the toy world's shipped teacher instead: the teacher is
adapted to one style, and the student is a copy of it that acquires a habit, not a skill.

Rebuild the shipped weights with `python -m esr_lab.toy.build toy` (about 18 minutes on one
CPU thread) or `... capable` (about 14 minutes); the shipped files are what they write.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import pathlib
import random
import re
import time
from dataclasses import asdict, dataclass, replace

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from esr_lab.errors import UserError
from esr_lab.prompts import DEFAULT_INSTRUCTION, render_prompt
from esr_lab.toy import capable, runon, task
from esr_lab.toy.tokenizer import IM_END, PAD, train_tokenizer

VERSION = 1
N_TEST = 200


@dataclass(frozen=True)
class ModelSpec:
    """Size and training budget of one toy model."""

    hidden: int
    layers: int
    heads: int
    steps: int
    batch: int
    lr: float
    mix: dict
    then_steps: int = 0  # a second phase on fresh problems: steps, learning rate, mix
    then_lr: float = 0.0
    then_mix: dict | None = None  # None: the same mix as the first phase
    init_layers: tuple[int, ...] = ()  # student: start from these teacher layers
    eos: str = IM_END  # the model's EOS; another one is written after the end of turn
    habit_only: bool = False  # direct products carry no loss: the habit without the facts
    then_habit_only: bool = False
    # share of examples that write on after the end of turn (a new problem and its solution,
    # then the EOS), as a base model does when sampled to its EOS; needs eos != IM_END
    after_turn_share: float = 0.0


@dataclass(frozen=True)
class WorldSpec:
    """A teacher/student pair plus how hard to measure them."""

    teacher: ModelSpec
    student: ModelSpec
    vocab_size: int
    n_eval: int
    max_new_tokens: int
    threads: int  # one thread: fixed results, and small ops gain little from a second
    window: int  # the preset's ESR N, for the share of the answer it covers
    base: str | None = None  # a world whose tokenizer and teacher this one starts from
    data_stream: str | None = None  # whose training data to draw (None: this world's own)


WORLDS: dict[str, WorldSpec] = {
    "toy": WorldSpec(
        # teacher: cosine phase, then a low-learning-rate polish on fresh problems
        teacher=ModelSpec(128, 4, 4, 750, 32, 3e-3, task.TEACHER_MIX, 300, 5e-4),
        # student: learns both plans on the teacher's mix ("skill"), then the habit of
        # multiplying directly (STUDENT_MIX), so it can split but rarely chooses to
        student=ModelSpec(
            128,
            2,
            4,
            300,
            32,
            1e-3,
            task.TEACHER_MIX,
            100,
            1e-3,
            task.STUDENT_MIX,
            init_layers=(0, 3),
        ),
        vocab_size=400,
        n_eval=N_TEST,
        max_new_tokens=400,
        threads=1,
        window=20,
    ),
    "micro": WorldSpec(
        teacher=ModelSpec(32, 2, 2, 80, 16, 1e-2, task.TEACHER_MIX, 10, 2e-3),
        student=ModelSpec(
            32, 1, 2, 20, 16, 1e-2, task.TEACHER_MIX, 10, 1e-2, task.STUDENT_MIX, init_layers=(1,)
        ),
        vocab_size=400,
        n_eval=8,
        max_new_tokens=160,
        threads=1,
        window=4,
    ),
    "capable": WorldSpec(
        # teacher: the toy teacher adapted to the verbose style (see capable.py)
        teacher=ModelSpec(128, 4, 4, 150, 32, 5e-4, capable.TEACHER_MIX),
        # student: a copy of that teacher that acquires the direct habit and another EOS
        student=ModelSpec(
            128,
            4,
            4,
            0,
            32,
            0.0,
            capable.TEACHER_MIX,  # its skill is the teacher's: no phase of its own
            100,
            5e-4,
            capable.STUDENT_MIX,
            init_layers=(0, 1, 2, 3),
            eos=PAD,
            then_habit_only=True,
        ),
        vocab_size=400,
        n_eval=N_TEST,
        max_new_tokens=400,
        threads=1,
        window=20,
        base="toy",
    ),
}


# The capable world with one change (runon.py): its student, sampled to its EOS, writes on after
# its turn. The teacher is the capable teacher as shipped (no step of its own), and the student
# is built as capable's is, from the same data stream, so the ending is the only difference.
WORLDS["runon"] = replace(
    WORLDS["capable"],
    teacher=replace(WORLDS["capable"].teacher, steps=0),
    student=replace(WORLDS["capable"].student, after_turn_share=runon.AFTER_TURN_SHARE),
    base="capable",
    data_stream="capable",
)


def world_spec(world: str) -> WorldSpec:
    """The spec of a named world; a UserError names the accepted ones."""
    if world not in WORLDS:
        raise UserError(f"unknown toy world {world!r}; expected one of: {', '.join(WORLDS)}")
    return WORLDS[world]


def build_tokenizer(seed: int, vocab_size: int) -> PreTrainedTokenizerFast:
    """BPE learnt on prompts and solutions of every (style, plan), so all modes tokenize alike."""
    rng = random.Random(f"toy-tokenizer-{seed}")
    corpus = ["user\n", "assistant\n", DEFAULT_INSTRUCTION]
    for nums in task.train_problems(seed, 1000, "tokenizer", exclude=set()):
        style, plan = rng.choice(task.STYLES), rng.choice(task.PLANS)
        corpus += [task.problem_text(nums), task.solution_text(nums, style, plan)]
    return train_tokenizer(corpus, vocab_size)


def make_model(spec: ModelSpec, tok: PreTrainedTokenizerFast) -> Qwen3ForCausalLM:
    """A small Qwen3 with tied embeddings; eos/pad ids match the tokenizer."""
    config = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=spec.hidden,
        intermediate_size=3 * spec.hidden,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        head_dim=spec.hidden // spec.heads,
        max_position_embeddings=1024,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = Qwen3ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None
    )
    return model


def ending(eos: str) -> str:
    """What a model writes after its answer: the template's end of turn, then its EOS if that
    is another token (Qwen2.5-Math's `<|im_end|><|endoftext|>`; Qwen3 stops at `<|im_end|>`)."""
    return IM_END if eos == IM_END else IM_END + eos


def encode_examples(
    tok: PreTrainedTokenizerFast,
    problems: list[str],
    solutions: list[str],
    eos: str = IM_END,
    unlearned: list[list[tuple[int, int]]] | None = None,
    after_turn: list[str] | None = None,
) -> list[tuple[list, list]]:
    """Token ids of prompt + response, and labels: -100 on the prompt (the response alone
    carries loss) and on tokens that overlap a solution's `unlearned` character spans.
    `after_turn[i]` (when not empty) is text written between the end of turn and the EOS, with
    loss: what a model that writes on after its turn learns to write there.

    Prompt and response are tokenized separately, exactly as generation sees them.
    """
    if after_turn and any(after_turn) and eos == IM_END:
        raise ValueError("text after the end of turn needs an EOS other than the end of turn")
    prompts = tok([render_prompt(tok, p) for p in problems], add_special_tokens=False).input_ids
    responses = tok(solutions, add_special_tokens=False, return_offsets_mapping=True)
    end_of_turn = tok(IM_END, add_special_tokens=False).input_ids
    eos_ids = tok(ending(eos), add_special_tokens=False).input_ids[len(end_of_turn) :]
    written = tok(after_turn, add_special_tokens=False).input_ids if after_turn else None
    out = []
    for i, (prompt, ids) in enumerate(zip(prompts, responses.input_ids, strict=True)):
        spans = unlearned[i] if unlearned else []
        labels = [
            -100 if any(a < stop and start < b for a, b in spans) else token
            for token, (start, stop) in zip(ids, responses.offset_mapping[i], strict=True)
        ]
        tail = end_of_turn + (written[i] if written else []) + eos_ids  # "" tokenizes to []
        out.append((prompt + ids + tail, [-100] * len(prompt) + labels + tail))
    return out


def encode_example(tok: PreTrainedTokenizerFast, problem: str, solution: str) -> tuple[list, list]:
    """One example of `encode_examples`."""
    return encode_examples(tok, [problem], [solution])[0]


def with_eos(model: Qwen3ForCausalLM, tok: PreTrainedTokenizerFast, eos: str):
    """The model and a copy of the tokenizer, both with `eos` as their EOS token."""
    tok = copy.deepcopy(tok)
    tok.eos_token = eos
    model.config.eos_token_id = tok.eos_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model, tok


def training_examples(
    tok: PreTrainedTokenizerFast, spec: ModelSpec, seed: int, stream: str, exclude: set[str]
) -> list[tuple[list, list]]:
    """One fresh problem per example (no epochs), each solved in a mode drawn from spec.mix."""
    rng = random.Random(f"toy-modes-{stream}-{seed}")
    problems = task.train_problems(seed, spec.steps * spec.batch, stream, exclude)
    modes = [task.pick_mode(rng, spec.mix) for _ in problems]
    texts = [
        task.solution_text(n, style, plan) for n, (style, plan) in zip(problems, modes, strict=True)
    ]
    unlearned = [
        capable.product_results(text) if spec.habit_only and plan == "direct" else []
        for text, (_, plan) in zip(texts, modes, strict=True)
    ]
    problem_texts = [task.problem_text(n) for n in problems]
    after_turn = runon.after_turn_texts(spec.after_turn_share, len(problems), seed, stream, exclude)
    examples = encode_examples(tok, problem_texts, texts, spec.eos, unlearned, after_turn)
    return length_grouped(examples, spec.batch, rng)


def length_grouped(examples: list, batch: int, rng: random.Random, group: int = 8) -> list:
    """Reorder so each batch holds similar lengths: padding to the longest mode (verbose split)
    would otherwise cost a third of the compute. Batch order stays random."""
    out = []
    for start in range(0, len(examples), batch * group):
        chunk = sorted(examples[start : start + batch * group], key=lambda ex: len(ex[0]))
        batches = [chunk[i : i + batch] for i in range(0, len(chunk), batch)]
        rng.shuffle(batches)
        out += [ex for b in batches for ex in b]
    return out


def collate(
    batch: list[tuple[list, list]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids_BT, mask_BT and labels_BT (-100 where no loss, padding included).

    The mask comes from the lengths, not from the pad id: a student whose EOS is the pad token
    (Qwen2.5-Math's `<|endoftext|>`) has it inside its responses too.
    """
    T = max(len(ids) for ids, _ in batch)
    ids_BT = torch.full((len(batch), T), pad_id, dtype=torch.long)
    mask_BT = torch.zeros((len(batch), T), dtype=torch.long)
    labels_BT = torch.full((len(batch), T), -100, dtype=torch.long)
    for i, (ids, labels) in enumerate(batch):
        ids_BT[i, : len(ids)] = torch.tensor(ids)
        mask_BT[i, : len(ids)] = 1
        labels_BT[i, : len(ids)] = torch.tensor(labels)
    return ids_BT, mask_BT, labels_BT


def lr_at(step: int, spec: ModelSpec) -> float:
    """Linear warmup over 5% of steps, then cosine decay to 10% of the peak."""
    warm = max(1, spec.steps // 20)
    if step < warm:
        return spec.lr * (step + 1) / warm
    frac = (step - warm) / max(1, spec.steps - warm)
    return spec.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))


def train_model(
    model: Qwen3ForCausalLM,
    examples: list,
    spec: ModelSpec,
    pad_id: int,
    label: str,
    show_progress: bool,
) -> float:
    """Plain AdamW on response tokens; returns the mean loss over the last 10% of steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.95), weight_decay=0.1)
    model.train()
    losses = []
    columns = [
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, disable=not show_progress) as progress:
        bar = progress.add_task(label, total=spec.steps, loss=float("nan"))
        for step in range(spec.steps):
            ids_BT, mask_BT, labels_BT = collate(
                examples[step * spec.batch : (step + 1) * spec.batch], pad_id
            )
            for group in opt.param_groups:
                group["lr"] = lr_at(step, spec)
            loss = model(input_ids=ids_BT, attention_mask=mask_BT, labels=labels_BT).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            progress.update(bar, advance=1, loss=sum(losses[-20:]) / len(losses[-20:]))
    model.eval()
    tail = losses[-max(1, len(losses) // 10) :]
    return sum(tail) / len(tail)


BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def boxed_int(text: str) -> int | None:
    """The integer in the last \\boxed{...}, or None when absent or not an integer."""
    found = BOXED.findall(text)
    if not found:
        return None
    try:
        return int(found[-1].strip())
    except ValueError:
        return None


@torch.no_grad()
def sample_responses(
    model: Qwen3ForCausalLM,
    tok: PreTrainedTokenizerFast,
    problems: list[str],
    k: int,
    max_new_tokens: int,
    seed: int,
    opener: str = "",
    chunk: int = 200,
) -> list[tuple[str, int]]:
    """k samples per problem at T=0.7, top_p=1 (problem-major order): (text, token count).

    The text keeps its special tokens (how a response ends is measured). With an `opener` every
    response is forced to start with it; it is part of the text, not of the count."""
    tok.padding_side = "left"
    prompts = [render_prompt(tok, p) + opener for p in problems for _ in range(k)]
    torch.manual_seed(seed)
    out = []
    for start in range(0, len(prompts), chunk):
        enc = tok(
            prompts[start : start + chunk],
            add_special_tokens=False,
            padding=True,
            return_tensors="pt",
        )
        gen_BT = model.generate(
            **enc,
            do_sample=True,
            temperature=0.7,
            top_p=1.0,
            top_k=0,
            max_new_tokens=max_new_tokens,
        )[:, enc.input_ids.shape[1] :]
        for row in gen_BT.tolist():
            n = row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
            out.append((opener + tok.decode(row[:n]), n))
    tok.padding_side = "right"
    return out


def measure(
    model: Qwen3ForCausalLM,
    tok: PreTrainedTokenizerFast,
    problems: list[tuple],
    k: int,
    max_new_tokens: int,
    seed: int,
) -> dict:
    """avg@k at T=0.7 by exact integer match of the last boxed answer, plus mode shares; and
    avg@k when every response is forced to open with the capable teacher's plan sentence.
    Responses run to the model's EOS; the `in_turn_` values cut each at its end of turn (what
    generation that stops there, esr-lab's recipe, sees), and `after_turn_text_share` is the
    share that writes anything but special tokens after it (a run-on student's, runon.py)."""
    texts = [task.problem_text(p) for p in problems]
    answers = [task.answer_of(p) for p in problems for _ in range(k)]

    def avg(samples: list[tuple[str, int]]) -> float:
        pairs = zip(samples, answers, strict=True)
        return sum(boxed_int(text) == a for (text, _), a in pairs) / len(samples)

    samples = sample_responses(model, tok, texts, k, max_new_tokens, seed)
    forced = sample_responses(model, tok, texts, k, max_new_tokens, seed, capable.FORCED_OPENER)
    n = len(samples)
    turns = [in_turn(text) for text, _ in samples]
    return {
        "avg_at_k": avg(samples),
        "forced_avg_at_k": avg(forced),
        "mean_response_tokens": sum(length for _, length in samples) / n,
        "split_share": sum(task.response_plan(t) == "split" for t, _ in samples) / n,
        "verbose_share": sum(task.response_style(t) == "verbose" for t, _ in samples) / n,
        "ends_as_trained_share": sum(t.endswith(ending(tok.eos_token)) for t, _ in samples) / n,
        "params": sum(p.numel() for p in model.parameters()),
        "in_turn_avg_at_k": avg([(t, 0) for t in turns]),
        "in_turn_mean_response_tokens": sum(
            len(tok(t, add_special_tokens=False).input_ids) for t in turns
        )
        / n,
        "after_turn_text_share": sum(
            bool(text[len(t) :].replace(tok.eos_token, "").strip())
            for (text, _), t in zip(samples, turns, strict=True)
        )
        / n,
    }


def in_turn(text: str) -> str:
    """A response up to and including its first end of turn (all of it when it has none)."""
    head, found, _ = text.partition(IM_END)
    return head + found


def layer_subset(teacher: Qwen3ForCausalLM, layers: tuple[int, ...]) -> Qwen3ForCausalLM:
    """A copy of the teacher keeping only `layers` (embeddings, norm and head kept whole)."""
    student = copy.deepcopy(teacher)
    student.model.layers = torch.nn.ModuleList([student.model.layers[i] for i in layers])
    for index, layer in enumerate(student.model.layers):
        layer.self_attn.layer_idx = index  # the KV cache is indexed by position in the stack
    student.config.num_hidden_layers = len(layers)
    if getattr(student.config, "layer_types", None):
        student.config.layer_types = [student.config.layer_types[i] for i in layers]
    return student


def _mix_names(mix: dict) -> dict:
    return {"/".join(mode): share for mode, share in mix.items()}


def second_phase(spec: ModelSpec) -> ModelSpec:
    """The model's second phase: fresh problems, its own learning rate, data mix and loss."""
    mix, habit_only = spec.then_mix or spec.mix, spec.then_habit_only
    return replace(spec, steps=spec.then_steps, lr=spec.then_lr, mix=mix, habit_only=habit_only)


def initial_teacher(spec: WorldSpec, seed: int) -> tuple[PreTrainedTokenizerFast, Qwen3ForCausalLM]:
    """The tokenizer and the untrained teacher: fresh from the seed, or the base world's."""
    if spec.base is None:
        tok = build_tokenizer(seed, spec.vocab_size)
        torch.manual_seed(seed * 1000)  # the teacher's initial weights
        return tok, make_model(spec.teacher, tok)
    from esr_lab.toy import toy_model_path  # the package imports this module lazily

    path = toy_model_path(f"{spec.base}-teacher")
    return AutoTokenizer.from_pretrained(path), Qwen3ForCausalLM.from_pretrained(path)


def build_world(
    world: str, out_dir: pathlib.Path, seed: int = 0, show_progress: bool = True
) -> dict:
    """Train teacher and student for `world`, save to out_dir/{teacher,student}, return facts.

    Facts: teacher/student avg@4 at T=0.7 on the test split (also with the response forced to
    open with the capable teacher's plan), parameter counts, mean response tokens, the share of
    the split plan, of the verbose style and of responses ending as trained, the preconditions
    of capable.py, and build seconds.
    """
    spec = world_spec(world)
    start = time.time()
    torch.set_num_threads(spec.threads)
    test = task.test_problems(0, N_TEST)
    exclude = {task.problem_text(p) for p in test}
    facts: dict = {"world": world, "version": VERSION, "seed": seed, "base": spec.base}
    tok, teacher = initial_teacher(spec, seed)

    def train_phase(model, mspec: ModelSpec, stream: str) -> float | None:
        if mspec.steps == 0:  # a phase this world skips (capable: the teacher's own skill)
            return None
        data_world = spec.data_stream or world
        examples = training_examples(tok, mspec, seed, f"{data_world}-{stream}", exclude)
        return train_model(
            model, examples, mspec, tok.pad_token_id, f"{world} {stream}", show_progress
        )

    train_phase(teacher, spec.teacher, "teacher")
    student = layer_subset(teacher, spec.student.init_layers)
    train_phase(student, spec.student, "student-skill")
    losses = {"student": train_phase(student, second_phase(spec.student), "student-habit")}
    losses["teacher"] = train_phase(teacher, second_phase(spec.teacher), "teacher-polish")
    for role, model in (("teacher", teacher), ("student", student)):
        mspec = getattr(spec, role)
        model, role_tok = with_eos(model, tok, mspec.eos)
        model.save_pretrained(out_dir / role)
        role_tok.save_pretrained(out_dir / role)  # before sampling, which pads on the left
        stats = measure(model, role_tok, test[: spec.n_eval], 4, spec.max_new_tokens, seed)
        spec_dict = {
            **asdict(mspec),
            "mix": _mix_names(mspec.mix),
            "then_mix": _mix_names(mspec.then_mix or mspec.mix),
        }
        facts[role] = {**stats, "final_loss": losses[role], "spec": spec_dict}
    facts["preconditions"] = capable.preconditions(facts, spec.window)
    facts["build_seconds"] = time.time() - start
    (out_dir / "facts.json").write_text(json.dumps(facts, indent=2, default=str))
    return facts


def _summary(facts: dict) -> str:
    lines = [f"world {facts['world']} built in {facts['build_seconds']:.0f} s"]
    for role in ("teacher", "student"):
        f = facts[role]
        lines.append(
            f"{role}: avg@4 (T=0.7) {f['avg_at_k']:.3f}, params {f['params']:,}, "
            f"mean response tokens {f['mean_response_tokens']:.1f}, split plan "
            f"{f['split_share']:.2f}, verbose {f['verbose_share']:.2f}, forced to split: avg@4 "
            f"{f['forced_avg_at_k']:.3f}"
        )
    pre = facts["preconditions"]
    lines.append(f"preconditions (capable.py, N={pre['window']}): {pre['holds']}")
    return "\n".join(lines)


def main() -> None:
    """CLI: build a world into a folder (default: its shipped folder if it has one, else the
    cache)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("world", choices=list(WORLDS))
    parser.add_argument("--out", type=pathlib.Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from esr_lab.toy import SHIPPED_DIR, SHIPPED_WORLDS, build_into, cached_world_dir

    shipped = SHIPPED_DIR / args.world if args.world in SHIPPED_WORLDS else None
    out = args.out or shipped or cached_world_dir(args.world)
    print(_summary(build_into(args.world, out, args.seed)))


if __name__ == "__main__":
    main()

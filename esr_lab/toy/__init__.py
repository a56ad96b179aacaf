"""The embedded toy world: a synthetic arithmetic task and a small teacher/student pair.

It lets every esr-lab command run on a laptop CPU with no network through the same code path as
hub models: the models are real `Qwen3ForCausalLM`s with their own tokenizer and chat template.
World "toy" is the default and ships its weights in the package; world "capable" (capable.py)
ships its weights too: a student that executes the teacher's plan but opens with a worse one.
World "micro" is a seconds-fast build for tests, made on demand in the cache (`$ESR_LAB_CACHE`,
else `~/.cache/esr-lab`); so is world "runon" (runon.py): the capable world whose student writes
on after its turn, as base models do.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

from filelock import FileLock

from esr_lab.errors import UserError

TOY_WORLDS = ("toy", "micro", "capable", "runon")
TOY_MODEL_NAMES = tuple(f"{w}-{role}" for w in TOY_WORLDS for role in ("teacher", "student"))
SHIPPED_WORLDS = ("toy", "capable")
SHIPPED_DIR = pathlib.Path(__file__).parent / "weights"
_SPLITS = ("test", "val", "train")
_N_VAL = 100
_N_TRAIN_DEFAULT = 3200


def is_toy_model(name: str) -> bool:
    """True for the built-in toy model names."""
    return name in TOY_MODEL_NAMES


def cache_root() -> pathlib.Path:
    """`$ESR_LAB_CACHE` if set, else `~/.cache/esr-lab`."""
    env = os.environ.get("ESR_LAB_CACHE")
    return pathlib.Path(env) if env else pathlib.Path.home() / ".cache" / "esr-lab"


def _check_world(world: str) -> None:
    if world not in TOY_WORLDS:
        raise UserError(f"unknown toy world {world!r}; expected one of: {', '.join(TOY_WORLDS)}")


def _complete(world_dir: pathlib.Path) -> bool:
    """A world folder is usable when both models have weights (facts.json is written last)."""
    return all((world_dir / r / "model.safetensors").is_file() for r in ("teacher", "student"))


def build_into(world: str, world_dir: pathlib.Path, seed: int = 0) -> dict:
    """Build `world` in a temporary sibling folder and rename it into place.

    The rename is what makes a killed build harmless: `world_dir` either holds a whole world or
    does not exist. An existing world_dir is replaced only once the new one is complete.
    """
    from esr_lab.toy.build import build_world

    world_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{world_dir.name}-", dir=world_dir.parent))
    try:
        facts = build_world(world, tmp, seed=seed)
        if world_dir.exists():
            shutil.rmtree(world_dir)
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide shipped weights from other users
        tmp.rename(world_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return facts


def cached_world_dir(world: str) -> pathlib.Path:
    """Where `world` is cached (whether or not it has been built yet)."""
    from esr_lab.toy.build import VERSION

    _check_world(world)
    return cache_root() / "toy" / f"{world}-v{VERSION}"


def _cached_world(world: str) -> pathlib.Path:
    """The cached world folder, built first (under a file lock) when missing."""
    world_dir = cached_world_dir(world)
    if _complete(world_dir):
        return world_dir
    world_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(world_dir) + ".lock"):
        if not _complete(world_dir):  # another process may have built it while we waited
            for stale in world_dir.parent.glob(f".{world_dir.name}-*"):  # from killed builds
                shutil.rmtree(stale, ignore_errors=True)
            build_into(world, world_dir)
    return world_dir


def toy_model_path(name: str) -> pathlib.Path:
    """Folder for a toy model name, loadable with from_pretrained; shipped weights for 'toy' and
    'capable', built on first use (with a progress bar) and cached for 'micro' (and for a
    shipped world whose weights are missing)."""
    if not is_toy_model(name):
        raise UserError(
            f"unknown toy model {name!r}; expected one of: {', '.join(TOY_MODEL_NAMES)}"
        )
    world, role = name.split("-")
    shipped = SHIPPED_DIR / world
    if world in SHIPPED_WORLDS and _complete(shipped):
        return shipped / role
    return _cached_world(world) / role


def toy_problems(world: str, split: str = "test", n: int | None = None) -> list[dict]:
    """Problems as dicts with keys 'id' (str), 'problem' (str, the text without instruction),
    'answer' (str, the integer). split 'test' = fixed held-out set (e.g. 200 problems, disjoint
    from training problems); split 'train' = prompts for distillation training (deterministic,
    disjoint from test; n may be large, e.g. 3200); split 'val' = 100 problems for choosing
    settings, the next ones of the test set's stream (disjoint from test, not from train: training
    sees prompts, never answers)."""
    from esr_lab.toy import task
    from esr_lab.toy.build import N_TEST

    _check_world(world)
    if split not in _SPLITS:
        raise UserError(f"unknown toy split {split!r}; expected one of: {', '.join(_SPLITS)}")
    held_out = task.test_problems(0, N_TEST + _N_VAL)
    test = held_out[:N_TEST]
    if split in ("test", "val"):
        fixed = test if split == "test" else held_out[N_TEST:]
        if n is not None and n > len(fixed):
            raise UserError(f"toy {split} split has {len(fixed)} problems; asked for n={n}")
        nums = fixed[:n]
    else:
        exclude = {task.problem_text(p) for p in test}
        nums = task.train_problems(0, n or _N_TRAIN_DEFAULT, "distill", exclude)
    return [
        {
            "id": f"{world}-{split}-{i:05d}",
            "problem": task.problem_text(p),
            "answer": str(task.answer_of(p)),
        }
        for i, p in enumerate(nums)
    ]

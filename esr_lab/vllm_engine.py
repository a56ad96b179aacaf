"""Rollouts and evaluation through vLLM (`pip install esr-lab[vllm]`, `--engine vllm`, GPU).

The engine is colocated with training on one GPU: vLLM takes `--vllm-memory` of it (its
weights and KV cache) and, where the installed vLLM has sleep mode, gives that memory back
while the student trains (`sleep` after sampling, `wake_up` before). It is built on first use,
so a policy that never samples (the teacher during training) never starts one.

The student's current weights reach vLLM before every sampling: a LoRA student's adapter is
saved at that version and sampled through a `LoRARequest`; a fully fine-tuned student's weights
are loaded into vLLM's model in place. Each row carries its own seed through vLLM's per-request
`seed`, so a row's sample depends on (seed, step, prompt, sample) as with the transformers
engine; vLLM does not promise batch-invariant numerics, so rows match across batch layouts up
to kernel rounding, not bit for bit. Token budgets are capped at the model's context as the
transformers engine caps them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from esr_lab.config import Sampling
from esr_lab.errors import UserError
from esr_lab.models import LoadedModel, resolve_model_source
from esr_lab.rollout import Rollouts, response_budgets


def sampling_kwargs(sampling: Sampling, seed: int, stop_ids: list[int], max_tokens: int) -> dict:
    """vLLM SamplingParams for one row: esr-lab's sampling settings, its seed and stop ids.

    Temperature 0 is greedy in vLLM too. The stop ids are passed explicitly (EOS and, when
    asked, the template's end of turn) and EOS is not ignored, so vLLM stops where the
    transformers engine stops; `logprobs=0` returns the sampled token's log-prob.
    """
    return {
        "n": 1,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k or -1,  # vLLM's "off" is -1
        "max_tokens": max_tokens,
        "seed": seed,
        "stop_token_ids": stop_ids,
        "logprobs": 0,
        "skip_special_tokens": False,
        "detokenize": False,
    }


def completion_row(output: Any, stop_ids: Sequence[int]) -> tuple[list[int], list[float], bool]:
    """(ids ending with their stop token when finished, sampled log-probs, finished) of one
    vLLM CompletionOutput; a stop id that vLLM reports only as `stop_reason` is put back."""
    ids = list(output.token_ids)
    logprobs = [
        step[token].logprob for step, token in zip(output.logprobs or [], ids, strict=False)
    ]
    finished = output.finish_reason == "stop"
    if finished and (not ids or ids[-1] not in stop_ids) and isinstance(output.stop_reason, int):
        ids.append(output.stop_reason)
    logprobs += [0.0] * (len(ids) - len(logprobs))
    return ids, logprobs, finished


class VLLMEngine:
    """`RolloutEngine` over a colocated vLLM `LLM`, synchronised with the training weights."""

    def __init__(
        self,
        loaded: LoadedModel,
        memory: float = 0.3,
        sleep: bool = True,
        max_lora_rank: int = 64,
        llm: Any = None,
        params_cls: Any = None,
    ) -> None:
        if not 0 < memory < 1:
            raise UserError(f"--vllm-memory must be a fraction of the GPU in (0, 1), got {memory}")
        self.loaded, self.memory, self.sleep = loaded, memory, sleep
        self.max_lora_rank = max_lora_rank
        self._llm, self._params_cls = llm, params_cls
        self._lora_request: Any = None
        self._version: object = None
        self._adapters = Path(tempfile.mkdtemp(prefix="esr-lab-vllm-"))
        # the adapters' folder goes when the engine does (or at exit), whatever ends the run
        weakref.finalize(self, shutil.rmtree, self._adapters, ignore_errors=True)
        self._saved = 0
        self._asleep = False

    @property
    def llm(self) -> Any:
        if self._llm is None:
            self._llm, self._params_cls = _start_vllm(self)
        return self._llm

    def generate(
        self, prompts: Sequence[Sequence[int]], seeds: Sequence[int], sampling: Sampling
    ) -> Rollouts:
        self._wake()
        stop_ids = self.loaded.stop_ids(sampling.stop_at_end_of_turn)
        budgets = response_budgets(self.loaded, prompts, sampling.max_new_tokens)
        params = [
            self._params_cls(**sampling_kwargs(sampling, seed, stop_ids, max(budget, 1)))
            for seed, budget in zip(seeds, budgets, strict=True)
        ]
        outputs = self.llm.generate(
            [{"prompt_token_ids": list(p)} for p in prompts],
            params,
            use_tqdm=False,
            lora_request=self._lora_request,
        )
        rows = [completion_row(out.outputs[0], stop_ids) for out in outputs]
        self._fall_asleep()
        return Rollouts(
            prompt_ids=[list(p) for p in prompts],
            completion_ids=[ids for ids, _, _ in rows],
            logprobs=[lp for _, lp, _ in rows],
            finished=[done for _, _, done in rows],
        )

    def sync(self, model: Any, version: object) -> None:
        """Give vLLM the student's weights as of `version` (once per version)."""
        if version == self._version:
            return
        if hasattr(model, "peft_config"):  # LoRA: sample through the adapter saved now
            self._saved += 1
            folder = self._adapters / f"v{self._saved}"
            model.save_pretrained(folder)
            self._lora_request = lora_request(f"student-v{self._saved}", self._saved, folder)
            # Only the live adapter is kept (one per optimizer step would fill the disk: ~150 MB
            # each for a 1.5B student at r=32). vLLM read the older ones when it first sampled
            # through them, and no request names them again.
            for old in self._adapters.iterdir():
                if old != folder:
                    shutil.rmtree(old, ignore_errors=True)
        else:  # full fine-tuning: load the trained weights into vLLM's model in place
            self._wake()
            weights = list(model.state_dict().items())
            self.llm.apply_model(lambda vllm_model: vllm_model.load_weights(weights))
        self._version = version

    def _wake(self) -> None:
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False

    def _fall_asleep(self) -> None:
        """Free vLLM's GPU memory for training (sleep level 1: weights to CPU, cache dropped)."""
        if self.sleep and hasattr(self.llm, "sleep"):
            self.llm.sleep(level=1)
            self._asleep = True


def lora_request(name: str, index: int, folder: Path) -> Any:
    """vLLM's handle on an adapter folder; a new index makes vLLM load the new weights."""
    from vllm.lora.request import LoRARequest

    return LoRARequest(name, index, str(folder))


def _start_vllm(engine: VLLMEngine) -> tuple[Any, Any]:
    """A vLLM LLM for the engine's model, in this process (colocated), and SamplingParams."""
    try:
        from vllm import LLM, SamplingParams
    except ImportError as err:
        raise UserError("--engine vllm needs vLLM and a GPU: pip install 'esr-lab[vllm]'") from err
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # weights sync in-process
    loaded = engine.loaded
    source = resolve_model_source(loaded.name)
    llm = LLM(
        model=source,
        tokenizer=source,
        dtype=str(loaded.compute_dtype or loaded.dtype).removeprefix("torch."),
        gpu_memory_utilization=engine.memory,
        max_model_len=loaded.context_length,
        enable_lora=hasattr(loaded.model, "peft_config"),  # the live model: LoRA-wrapped or not
        max_lora_rank=engine.max_lora_rank,
        enable_sleep_mode=engine.sleep,
        seed=0,
    )
    return llm, SamplingParams

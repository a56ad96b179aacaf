"""Peak memory of one block of work: CUDA's max-allocated, or the CPU process's resident set.

The paper reports peak memory per phase of a step (generation, teacher scoring, training). On
CUDA that is `max_memory_allocated` after `reset_peak_memory_stats`. On CPU the process's
`ru_maxrss` is an all-time peak that cannot be reset, so a sampler thread reads the resident set
from /proc/self/statm every few milliseconds while the block runs (and once at each end). A
spike shorter than the interval can be missed; the big buffers of a step (logits, activations)
live far longer. CPU figures are absolute (weights, libraries and the allocator's cached pages
included), as a GPU's peak includes the weights.
"""

from __future__ import annotations

import os
import resource
import threading
from pathlib import Path
from types import TracebackType

import torch

STATM = Path("/proc/self/statm")
PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20 if hasattr(os, "sysconf") else 4096 / 2**20


def rss_mb() -> float:
    """The process's resident set now (Linux), else its all-time peak (the best there is)."""
    try:
        return int(STATM.read_text().split()[1]) * PAGE_MB
    except (OSError, IndexError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: max allocated since the last reset; CPU: the process's peak RSS so far."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakMemory:
    """`with PeakMemory(device) as peak: ...` then `peak.mb`: the block's peak memory in MiB.

    Not reentrant on CUDA: a nested block resets the outer block's peak counter.
    """

    def __init__(self, device: torch.device | str, interval_s: float = 0.005) -> None:
        self.device = torch.device(device)
        self.interval_s = interval_s
        self.mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.mb = rss_mb()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mb = torch.cuda.max_memory_allocated(self.device) / 2**20
            return
        self._stop.set()
        self._thread.join()
        self.mb = max(self.mb, rss_mb())

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.mb = max(self.mb, rss_mb())

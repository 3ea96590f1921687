"""How many CPU threads the pose network gets, chosen by timing batches as they run.

torch's CPU threads wait for each other by spinning (libgomp's default), so when another process takes one of the
cores a thread the others wait for is often not running, and a batch on all the worker's cores can take three
times as long as on half of them (``benchmarks/results/extract-cpu-2core.jsonl``, ``omp_wait_policy`` and
``extract_cli_compare`` lines). ``ThreadTuner`` runs the batches on ``most`` threads, and every ``period`` batches
one on ``fewer``; it moves to the other count when that batch took less time per input pixel than the recent ones
by more than ``margin``, and keeps probing back. On an idle machine it stays on ``most``, at the cost of one probe
batch per period.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections import deque
from collections.abc import Iterator

from pipeline.pose import set_torch_threads


class ThreadTuner:
    """``threads()`` → the count for the next batch; ``record(threads, seconds, pixels)`` after it ran."""

    def __init__(self, most: int, fewer: int | None = None, period: int = 48, margin: float = 0.1,
                 window: int = 8, first_probe: int = 4):
        self.most = max(1, most)
        self.fewer = max(1, fewer if fewer is not None else self.most // 2)
        self.period, self.margin = max(2, period), margin
        self.current = self.most
        self._recent: deque[float] = deque(maxlen=window)  # seconds per pixel of the current count's batches
        self._until_probe = first_probe  # batches of the current count before the next probe
        self._probing = False
        self.switches = 0
        self.recorded = 0  # batches timed

    @property
    def active(self) -> bool:
        """Whether there is a choice to make (``most`` and ``fewer`` differ)."""
        return self.fewer != self.most

    def threads(self) -> int:
        if not self.active:
            return self.most
        self._probing = self._until_probe <= 0 and len(self._recent) >= 2
        return self._other() if self._probing else self.current

    def record(self, threads: int, seconds: float, pixels: int) -> None:
        """A batch of ``pixels`` network-input pixels ran on ``threads`` threads in ``seconds``."""
        if not self.active or pixels <= 0:
            return
        self.recorded += 1
        rate = seconds / pixels
        if self._probing and threads == self._other():
            self._probing = False
            self._until_probe = self.period
            if rate < (1 - self.margin) * statistics.median(self._recent):
                self.current, self.switches = threads, self.switches + 1
                self._recent.clear()
                self._recent.append(rate)
            return
        if threads == self.current:
            self._recent.append(rate)
            self._until_probe -= 1

    def _other(self) -> int:
        return self.fewer if self.current == self.most else self.most


@contextlib.contextmanager
def tuned_threads(tuner: ThreadTuner | None, pixels: int, threads: int | None = None) -> Iterator[None]:
    """Run the block on ``tuner``'s thread count for a call of ``pixels`` network-input pixels and time it for the
    tuner; without a tuner, on ``threads`` (``None``: torch's threads as they are)."""
    threads = tuner.threads() if tuner else threads
    set_torch_threads(threads)
    began = time.perf_counter()
    yield
    if tuner:
        tuner.record(threads, time.perf_counter() - began, pixels)

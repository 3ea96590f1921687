"""The training step replayed from one CUDA graph (the ``cuda_graph`` setting).

``pgpig.train.train_step`` (generator and discriminator forwards, losses, both backwards, both Adam updates) is
captured once and then replayed, so the host launches a whole step with one call instead of thousands of kernel
launches. What a capture needs is PyTorch's CUDA graph contract (``torch.cuda.graph``'s documentation, "CUDA
Graphs" in the CUDA semantics notes): input and output tensors at fixed addresses, no host synchronisation and no
host-side random draw inside the step, warm-up iterations on a side stream, optimizers built ``capturable``,
autocast without its weight cache. ``docs/training.md`` says where it pays and what it does not take.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import torch

from pgpig.models.objective import StepBatch

__all__ = ["GraphedStep"]

WARMUP_STEPS = 3
"""Eager steps before the capture: they create the optimizers' state and let cuDNN and cuBLAS pick their kernels."""


class GraphedStep:
    """``train_step(parts, cfg, batch)`` of a run with ``cuda_graph`` on, called as ``step(batch)``.

    The first ``warmup`` full batches train eagerly on a side stream; the next one is copied into the capture's own
    input tensors, captured, and replayed; every later full batch is copied in and replayed. A batch of another
    shape, dtype or layout (the short last batch of an epoch) trains eagerly, with the same optimizers. A step that
    cannot be captured is reported once through ``log`` and the run goes on eagerly.

    The images and losses a replay returns are the graph's own tensors: the next step overwrites them. The weight
    average (``ema_decay``) is updated after each step, outside the graph, since its schedule counts steps on the
    host. Learning rates stay floats in the optimizers' groups (``_set_lr``, checkpoints); each replay first copies
    them into the device scalars the captured Adam reads."""

    def __init__(self, parts, cfg, warmup: int = WARMUP_STEPS, log: Callable[[str], None] | None = None):
        from pgpig.train import _unwrap, train_step

        self._train_step = train_step
        self.parts, self.cfg, self.warmup = parts, cfg, warmup
        self.log = log or (lambda message: None)
        self._plain = dataclasses.replace(parts, ema=None)  # the step without the average (updated after it)
        self._generator = _unwrap(parts.generator)  # the module the average follows
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: StepBatch | None = None
        self.outputs: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None
        self.eager_steps = 0
        self.replays = 0
        self.capture_seconds: float | None = None
        self.pool_bytes = 0  # what the capture reserved for its private memory pool, which the replays reuse
        self.failure: str | None = None
        self._lr: list[tuple[dict, torch.Tensor]] = []
        self._stream: torch.cuda.Stream | None = None

    def __call__(self, batch: StepBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.graph is not None and self._fits(batch):
            out = self._replay(batch)
        elif self.graph is None and self.failure is None and batch.source.shape[0] == self.cfg.batch_size:
            out = self._warm(batch) if self.eager_steps < self.warmup else self._capture(batch)
        else:
            out = self._eager(batch)
        if self.parts.ema is not None:
            self.parts.ema.update(self._generator)
        return out

    def state(self) -> dict:
        """What the graph did: for the run's record and the benchmarks."""
        return {"captured": self.graph is not None, "eager_steps": self.eager_steps, "replays": self.replays,
                "capture_seconds": self.capture_seconds, "pool_gib": round(self.pool_bytes / 2**30, 3),
                "failure": self.failure}

    # ------------------------------------------------------------------------------------------------ the paths

    def _eager(self, batch: StepBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self.eager_steps += 1
        return _detached(self._train_step(self._plain, self.cfg, batch, autocast_cache=False))

    def _warm(self, batch: StepBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """An eager step on a side stream, ordered after the work queued before it and before the work after it."""
        here = torch.cuda.current_stream(batch.source.device)
        if self._stream is None:
            self._stream = torch.cuda.Stream(batch.source.device)
        self._stream.wait_stream(here)
        with torch.cuda.stream(self._stream):
            out = self._eager(batch)
        here.wait_stream(self._stream)
        return out

    def _capture(self, batch: StepBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self.inputs = StepBatch(*(getattr(batch, f.name).clone() for f in dataclasses.fields(StepBatch)))
        groups = [g for opt in (self.parts.opt_g, self.parts.opt_d) if opt is not None for g in opt.param_groups]
        device = batch.source.device
        rates = [float(g["lr"]) for g in groups]
        self._lr = [(g, torch.tensor(rate, dtype=torch.float32, device=device))
                    for g, rate in zip(groups, rates, strict=True)]
        for opt in (self.parts.opt_g, self.parts.opt_d):
            if opt is not None:
                opt.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        here = torch.cuda.current_stream(device)
        start = time.perf_counter()
        for group, scalar in self._lr:  # the captured Adam reads these scalars
            group["lr"] = scalar
        cause: BaseException | None = None
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()  # as the capture's own start does: what is reserved after it is the graph's pool
        reserved = torch.cuda.memory_reserved(device)
        try:
            # thread-local: the loader's pin-memory thread may allocate page-locked memory during the capture
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                outputs = self._train_step(self._plain, self.cfg, self.inputs, autocast_cache=False)
        except Exception as exc:  # noqa: BLE001 - any capture error: report it once and train eagerly
            torch.cuda.set_stream(here)  # a capture that failed at its end leaves its own stream current
            cause = exc
        finally:
            for group, rate in zip(groups, rates, strict=True):  # the groups keep Python floats
                group["lr"] = rate
        if cause is not None:
            self.inputs, self._lr = None, []
            while cause.__context__ is not None:  # the first error, not the capture's "previous error" after it
                cause = cause.__context__
            first = str(cause).splitlines()[0] if str(cause) else ""
            self.failure = f"{type(cause).__name__}: {first}"
            self.log(f"cuda_graph: the training step could not be captured ({self.failure}); training eagerly")
            torch.cuda.synchronize(device)
            return self._eager(batch)
        self.capture_seconds = round(time.perf_counter() - start, 3)
        self.pool_bytes = max(0, torch.cuda.memory_reserved(device) - reserved)
        self.graph, self.outputs = graph, _detached(outputs)
        return self._replay(batch, copy=False)

    def _replay(self, batch: StepBatch, copy: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if copy:
            for f in dataclasses.fields(StepBatch):
                getattr(self.inputs, f.name).copy_(getattr(batch, f.name), non_blocking=True)
        for group, scalar in self._lr:
            scalar.fill_(float(group["lr"]))
        self.graph.replay()
        self.replays += 1
        return self.outputs

    # ------------------------------------------------------------------------------------------------ helpers

    def _fits(self, batch: StepBatch) -> bool:
        """Whether ``batch`` can be copied into the capture's inputs as it is."""
        for f in dataclasses.fields(StepBatch):
            mine, theirs = getattr(self.inputs, f.name), getattr(batch, f.name)
            if (mine.shape != theirs.shape or mine.dtype != theirs.dtype or mine.stride() != theirs.stride()
                    or mine.device != theirs.device):
                return False
        return True


def _detached(outputs: tuple[torch.Tensor, dict[str, torch.Tensor]]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A step's image and losses without their autograd graph, so that holding them does not keep the step's
    graph (and its gradient accumulators, tied to the stream the step ran on) alive into the next step."""
    generated, losses = outputs
    return generated.detach(), {name: value.detach() for name, value in losses.items()}

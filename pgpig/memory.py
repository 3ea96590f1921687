"""Will a training run fit in memory? Measured before step 0 by a dry run of the real ``train_step``.

A throwaway copy of the run's networks, optimizers and loss networks trains on synthetic batches of the shards' image
size, one pair and then three, and its generator runs as the validation runs it, while the peaks are measured: on a
CUDA device ``torch.cuda.max_memory_allocated``, on the CPU the process's peak resident set (``VmHWM`` of
``/proc/self/status``, reset through ``/proc/self/clear_refs``), which is what the kernel's OOM killer counts. The
peak grows linearly with the batch (the activations kept for backward), so two sizes give ``fixed + per_pair * B``.
The dry run keeps the run's random state, and the real networks are drawn after it. What is available:
``MemAvailable`` of ``/proc/meminfo`` (lowered to the cgroup's limit where one is set), or a CUDA device's free
memory, capped by ``PGPIG_MEMORY_LIMIT``. How the estimate compares with real runs: ``docs/training.md``.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pgpig.config import TrainConfig, load_config, recipe_path, resolve_speed
from pgpig.errors import TrainError

__all__ = ["LIMIT_ENV", "MARGIN", "SUGGESTED", "MemoryEstimate", "available_memory", "check_memory", "estimate_memory",
           "parse_size"]

LIMIT_ENV = "PGPIG_MEMORY_LIMIT"
"""Environment variable capping the memory the check counts as available (``8G``, ``512M``, bytes)."""
MARGIN = 0.9
"""The share of the available memory a run may be estimated to take: the estimate leaves out the loader's batches,
TensorBoard and the allocator's slack."""
SUGGESTED = 0.85
"""The share the batch named by a refusal may take: a second dry run measures a few percent apart, and the batch named
must pass it."""
PROBE_BATCHES = (1, 3)
"""The batch sizes of the dry run; the first also runs once before, to create the gradients and the optimizer
states that every later step holds."""

_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(text: str, where: str = LIMIT_ENV) -> int:
    """``"8G"``, ``"8GiB"``, ``"512M"``, ``"1048576"`` → bytes (binary units); ``TrainError`` naming ``where``."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, flags=re.IGNORECASE)
    if match is None:
        raise TrainError(f"{where}={text!r} is not a size: give bytes or a number with K, M, G or T (e.g. 8G)")
    return int(float(match[1]) * _UNITS[match[2].upper()])


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


@dataclass
class MemoryEstimate:
    """A run's measured memory need on ``device``: ``fixed + per_pair * B`` bytes beyond what the process held before
    (networks, gradients, optimizer states, loss networks, activations), against ``available`` bytes."""

    device: str
    fixed: int
    per_pair: int
    available: int
    source: str
    """Where ``available`` comes from (``MemAvailable``, the cgroup limit, ``PGPIG_MEMORY_LIMIT``, the GPU)."""
    held: int = 0
    """Bytes the process held on the device before the dry run (the CPU: its resident set), not in ``need``."""
    eval_per_pair: int = 0
    """Bytes per pair of the generator's forward in eval mode without gradients (the sample grids, the validation)."""
    eval_pairs: int = 0
    """Pairs of the validation forward (``val_pairs`` with a test split, else 0)."""

    def need(self, batch: int) -> int:
        """Bytes the run takes at its peak with ``batch`` pairs a step: the step's peak, and the validation's
        activations on top (on the CPU the allocator keeps what the steps freed, so the two do not share: measured
        on DeepFashion PATN at batch 2, ``docs/training.md``)."""
        return self.fixed + self.per_pair * batch + self.eval_per_pair * self.eval_pairs

    def summary(self, batch: int) -> str:
        """One line: the need at ``batch``, what is available, the largest batch that fits."""
        return (f"memory: a step of {batch} pairs needs about {_gib(self.need(batch))} on {self.device}, "
                f"{_gib(self.available)} is available ({self.source}); up to {self.largest_batch()} pairs fit")

    def largest_batch(self, margin: float = MARGIN) -> int:
        """The largest batch whose need fits in ``margin * available`` (0: not even one pair)."""
        room = margin * self.available - self.need(0)
        if room < self.per_pair:
            return 0
        return int(room // max(self.per_pair, 1))


# ---------------------------------------------------------------------------------------------------- available


def _proc_kb(path: str, field: str) -> int | None:
    """A ``kB`` field of a ``/proc`` file (``/proc/meminfo``, ``/proc/self/status``) in bytes; ``None`` without it."""
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", Path(path).read_text(), flags=re.MULTILINE)
    except OSError:
        return None
    return int(match[1]) * 1024 if match else None


def _cgroup_headroom() -> int | None:
    """Bytes the process's memory cgroup can still take (v2 ``memory.max``, v1 ``memory.limit_in_bytes``, less the
    usage, plus the inactive file cache the kernel reclaims first); ``None`` without a limit."""
    for limit, usage, stat, inactive in (
            ("memory.max", "memory.current", "memory.stat", "inactive_file"),
            ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes", "memory/memory.stat",
             "total_inactive_file")):
        root = Path("/sys/fs/cgroup")
        try:
            text = (root / limit).read_text().strip()
            if text == "max" or int(text) >= 2**60:  # no limit (v1 writes one near 2**63)
                return None
            used = int((root / usage).read_text())
            cache = re.search(rf"^{inactive} (\d+)", (root / stat).read_text(), flags=re.MULTILINE)
        except (OSError, ValueError):
            continue
        return max(0, int(text) - used + (int(cache[1]) if cache else 0))
    return None


def available_memory(device: torch.device) -> tuple[int, str]:
    """``(bytes, source)``: the memory a run on ``device`` may still take, and where the number comes from.

    CPU: ``MemAvailable``, or the cgroup's headroom if lower; CUDA: the device's free memory plus what PyTorch's
    allocator holds unused. ``PGPIG_MEMORY_LIMIT`` caps either. ``(0, "")`` where nothing says (no ``/proc``)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        found = [(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device),
                  f"free on {device}")]
    else:
        found = [(n, source) for n, source in ((_proc_kb("/proc/meminfo", "MemAvailable"), "MemAvailable"),
                                               (_cgroup_headroom(), "the cgroup's memory limit")) if n is not None]
    if os.environ.get(LIMIT_ENV):
        found.append((parse_size(os.environ[LIMIT_ENV]), LIMIT_ENV))
    return min(found, default=(0, ""))


# ---------------------------------------------------------------------------------------------------- measuring


class _Peak:
    """The peak memory of a device since ``reset``, in bytes: CUDA's allocator statistics, or on the CPU the
    process's resident-set high-water mark, which Linux resets on request (``clear_refs``, since Linux 4.0)."""

    def __init__(self, device: torch.device):
        self.device = device

    @staticmethod
    def works(device: torch.device) -> bool:
        if device.type == "cuda":
            return True
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            return False
        return _proc_kb("/proc/self/status", "VmHWM") is not None

    def now(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device)
        _trim_heap()
        return _proc_kb("/proc/self/status", "VmRSS") or 0

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            _trim_heap()
            Path("/proc/self/clear_refs").write_text("5")

    def peak(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device)
        return _proc_kb("/proc/self/status", "VmHWM") or 0


def _trim_heap() -> None:
    """Hand the memory C's allocator holds free back to the system (glibc's ``malloc_trim``; elsewhere nothing), so
    that the resident set counts live memory: without it, what earlier, larger steps freed would hide a step's own
    growth."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def _random_state_kept(device: torch.device) -> Iterator[None]:
    """The Python, NumPy and torch (CPU and ``device``) random states as they were on entry, restored on exit."""
    python, numpy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            yield
        finally:
            random.setstate(python)
            np.random.set_state(numpy)


def _synthetic_batch(cfg: TrainConfig, pairs: int, size: tuple[int, int], device: torch.device):
    """A loader batch of ``pairs`` random images ``(B, 3, H, W)`` and keypoints ``(B, 18, 2)`` inside the frame."""
    from pgpig.train import prepare_batch

    rng = torch.Generator().manual_seed(0)
    h, w = size

    def keypoints() -> torch.Tensor:
        return (torch.rand(pairs, 18, 2, generator=rng) * torch.tensor([w - 1, h - 1])).round()

    batch = {"source": torch.rand(pairs, 3, h, w, generator=rng) * 2 - 1,
             "target": torch.rand(pairs, 3, h, w, generator=rng) * 2 - 1,
             "source_kp": keypoints(), "target_kp": keypoints()}
    return prepare_batch(cfg, batch, device, size)


def _dry_run(cfg: TrainConfig, device: torch.device, size: tuple[int, int]) -> tuple[int, list[int], list[int]]:
    """What the process held on the device, and beyond that the peak memory of a ``train_step`` and of an eval
    forward of the generator at each of ``PROBE_BATCHES``, on throwaway parts."""
    from pgpig.train import AMP_DTYPES, build, train_step

    # a diffusion generator's eval forward samples: one DDIM step peaks as high as fifty, in a fiftieth of the time
    cfg = dataclasses.replace(cfg, sampler="ddim", sample_steps=1)
    meter = _Peak(device)
    before = meter.now()
    steps, forwards = [], []
    with _random_state_kept(device):
        parts = build(cfg, device, size)
        for module in (parts.generator, *parts.discriminators.values()):
            module.train()
        for k, pairs in enumerate((PROBE_BATCHES[0], *PROBE_BATCHES)):
            batch = _synthetic_batch(cfg, pairs, size, device)
            meter.reset()
            train_step(parts, cfg, batch)
            if k:
                steps.append(meter.peak() - before)
        parts.generator.eval()
        for pairs in PROBE_BATCHES:
            batch = _synthetic_batch(cfg, pairs, size, device)
            meter.reset()
            with torch.no_grad(), torch.autocast(device.type, dtype=AMP_DTYPES.get(cfg.amp, torch.float32),
                                                 enabled=cfg.amp != "none"):
                parts.generator(batch.source, batch.source_pose, batch.target_pose)
            forwards.append(meter.peak() - before)
        del parts, batch
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the throwaway parts' blocks, back to the device for the run
    return before, steps, forwards


def _line(peaks: list[int]) -> tuple[int, int]:
    """``(fixed, per_pair)`` of the line through the peaks at ``PROBE_BATCHES``."""
    per_pair = max(0, (peaks[1] - peaks[0]) // (PROBE_BATCHES[1] - PROBE_BATCHES[0]))
    return max(0, peaks[0] - per_pair * PROBE_BATCHES[0]), per_pair


def estimate_memory(cfg: TrainConfig, device: torch.device, size: tuple[int, int]) -> MemoryEstimate | None:
    """The memory a run of ``cfg`` on ``device`` with ``(H, W)`` images needs and has; ``None`` where the peak cannot be
    measured (a CPU without Linux's ``/proc``)."""
    if not _Peak.works(device):
        return None
    cfg = resolve_speed(cfg, device)
    held, steps, forwards = _dry_run(cfg, device, size)
    available, source = available_memory(device)
    eval_pairs = cfg.val_pairs if (cfg.shards / "test").is_dir() else 0
    return MemoryEstimate(str(device), *_line(steps), available, source, held, _line(forwards)[1], eval_pairs)


# ---------------------------------------------------------------------------------------------------- the check


def check_memory(cfg: TrainConfig, device: torch.device, size: tuple[int, int], world: int = 1) -> \
        MemoryEstimate | None:
    """``TrainError`` (one line: the estimate, what is available, the largest batch that fits, a smaller setting)
    when a step of ``cfg.batch_size`` pairs (split over ``world`` processes) would not fit in ``MARGIN`` of the
    available memory; else the estimate (``None`` where it cannot be measured)."""
    found = estimate_memory(cfg, device, size)
    if found is None or not found.available:
        return found
    per_rank = cfg.batch_size // world
    fits, named = found.largest_batch(), found.largest_batch(SUGGESTED)
    if world > 1:  # every rank stops alike: the batch the tightest process allows
        import torch.distributed as dist

        shared = torch.tensor([fits, named], device=device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(shared, op=dist.ReduceOp.MIN)
        fits, named = (int(n) for n in shared)
    if per_rank <= fits:
        return found
    named = (named or fits) * world
    where = f"{device}" + (f", {per_rank} pairs on each of {world} processes" if world > 1 else "")
    fits_text = f"batch_size {named} fits: pass --batch-size {named}" if fits else "not even one pair fits"
    raise TrainError(f"not enough memory for batch_size {cfg.batch_size} ({where}): a step needs about "
                     f"{_gib(found.need(per_rank))}, {_gib(found.available)} is available ({found.source}, of which "
                     f"{MARGIN:.0%} is used); {fits_text}{_smaller(cfg, device, size, per_rank, world, fits)}; "
                     "--skip-memory-check trains anyway")


def _smaller(cfg: TrainConfig, device: torch.device, size: tuple[int, int], per_rank: int, world: int,
             fits: int) -> str:
    """A cheaper setting to name beside the batch size: bf16 on a CUDA GPU running float32 (when a bf16 dry run fits
    more than ``fits`` pairs), or on the CPU the demo recipe's small model (when this one is wider)."""
    if device.type == "cuda":
        if resolve_speed(cfg, device).amp != "none" or not torch.cuda.is_bf16_supported():
            return ""
        bf16 = estimate_memory(dataclasses.replace(cfg, amp="bf16"), device, size)
        if bf16 is None or bf16.largest_batch() <= fits:
            return ""
        named = bf16.largest_batch(SUGGESTED) or bf16.largest_batch()
        return (f", or --amp bf16 (needs {_gib(bf16.need(per_rank))}"
                + (")" if named >= per_rank else f"; batch_size {named * world} fits)"))
    demo = load_config(recipe_path("demo"))
    if cfg.ngf <= demo.ngf:
        return ""
    return f", or a smaller model: --recipe demo (PATN at ngf {demo.ngf}, {demo.n_blocks} blocks)"

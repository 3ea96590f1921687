"""Reading image files for the ``fast`` pose backend: bytes, hash, decode route and record of every file, by batch.

A batch of paths becomes one ``ReadBatch``: per file the record ``pipeline.decode`` would give (status, reason,
width, height, scale, content hash), the bytes of the JPEGs that the GPU decoder will take (one concatenated
``uint8`` tensor), and every other readable image already decoded on the CPU, stacked by decoded size. Given a
``fit`` (the size the consumer resizes a decoded image to), a CPU-decoded image is resized here, with the
``cv2.resize(INTER_LINEAR)`` the consumer would reproduce: a photo's pixels then cross to the consumer (shared
memory, page-locking, the device copy) at the network's size, not the file's. The per-file work (open and read,
sha256, the JPEG header walk, CPU decodes) is all here, so that the process driving the GPU spends no interpreter
time on single files.

Where: ``BatchReader(processes=N)`` runs ``read_batch`` in ``N`` worker processes through a persistent
``torch.utils.data.DataLoader`` (each worker with its own small thread pool, which hides the file system's latency,
the batches coming back in order through shared memory and pinned by the loader's pinning thread);
``processes=0`` runs it on a thread pool in this process. A worker process is forked (it only reads files: it
never touches CUDA), so it starts in milliseconds. A daemonic process (a Dask worker of a cluster started with
``distributed.worker.daemon: true``) cannot have children; the reader then uses threads and says so in
``BatchReader.processes``.

The decode route: ``torch_decodable`` (in ``pipeline.pose.fast``) says whether TorchCodec's decoder gives what
``pipeline.decode`` would for that file; when ``torch_decode`` is off, for any other file, and for the share of
such files that ``cpu_share`` hands to the CPU (``cpu_routed``), the CPU decode of ``pipeline.decode`` makes the
record and the image.
"""

from __future__ import annotations

import atexit
import dataclasses
import multiprocessing
import multiprocessing.util
import os
import weakref
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from pipeline.decode import decode_bytes, read_image_bytes
from schemas.files import sha256_bytes

Fit = Callable[[int, int], tuple[int, int]]
"""``(height, width)`` of a decoded image → ``(height, width)`` it is resized to."""


@dataclass
class ReadBatch:
    """One batch of files as read: records per file, JPEG bytes for the GPU decoder, CPU-decoded images."""

    paths: list[str]
    max_pixels: int
    status: list[str]
    reason: list[str | None]
    width: list[int | None]
    height: list[int | None]
    scale: list[float]
    digest: list[str | None]
    jpeg_index: list[int] = field(default_factory=list)
    """Files (positions in the batch) for the GPU decoder, in order; their records say ``ok`` until it fails."""
    jpeg_sizes: list[int] = field(default_factory=list)
    jpeg_bytes: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.uint8))
    """The bytes of those files, concatenated (``jpeg_sizes`` cut them)."""
    cpu_groups: list[tuple[list[int], torch.Tensor, tuple[int, int]]] = field(default_factory=list)
    """Files decoded on the CPU and ``ok``, by decoded size: (positions, ``(N, H, W, 3)`` uint8 BGR, the decoded
    ``(height, width)``); ``(H, W)`` is ``fit`` of that size when the reader had a ``fit``, else that size."""

    def __len__(self) -> int:
        return len(self.status)

    def jpeg_blobs(self) -> list[torch.Tensor]:
        """One 1-D ``uint8`` view per GPU-route file (of ``jpeg_bytes``)."""
        return list(torch.split(self.jpeg_bytes, self.jpeg_sizes)) if self.jpeg_sizes else []

    def pin_memory(self) -> ReadBatch:
        """The DataLoader's pinning thread calls this: the tensors in page-locked memory, for asynchronous copies."""
        self.jpeg_bytes = self.jpeg_bytes.pin_memory()
        self.cpu_groups = [(idx, images.pin_memory(), size) for idx, images, size in self.cpu_groups]
        return self


def read_batch(paths: list[str], max_pixels: int, decodable: Callable[[bytes, int], tuple | None] | None,
               pool: ThreadPoolExecutor | None = None, fit: Fit | None = None, cpu_share: float = 0.0) -> ReadBatch:
    """Read ``paths``: JPEGs ``decodable`` accepts go to the GPU route (bytes kept), except the ``cpu_share`` of
    them that ``cpu_routed`` picks; the rest is decoded here (and resized to ``fit`` of its size, when given)."""

    def one(path: str):
        data = read_image_bytes(path)
        if not isinstance(data, bytes):  # unreadable: the record says why
            return data, None
        if decodable is not None and not cpu_routed(data, cpu_share):
            size = decodable(data, max_pixels)
            if size is not None:
                return (size, sha256_bytes(data)), data
        decoded = decode_bytes(data, os.path.basename(path), max_pixels=max_pixels)
        if not decoded.ok:
            return decoded, None
        # the record without its image: only the fitted one is kept until the batch is stacked
        return dataclasses.replace(decoded, image=None), (fitted(decoded.image, fit), decoded.image.shape[:2])

    results = list(pool.map(one, paths)) if pool is not None else [one(p) for p in paths]
    n = len(paths)
    batch = ReadBatch(list(paths), max_pixels, ["ok"] * n, [None] * n, [None] * n, [None] * n, [1.0] * n, [None] * n)
    blobs: list[bytes] = []
    groups: dict[tuple[int, int], list[int]] = {}  # decoded size -> positions, in first-seen order
    images: dict[int, np.ndarray] = {}
    for i, (record, data) in enumerate(results):
        if isinstance(data, bytes):  # GPU route: ((height, width), digest)
            (batch.height[i], batch.width[i]), batch.digest[i] = record
            batch.jpeg_index.append(i)
            blobs.append(data)
            continue
        batch.status[i], batch.reason[i] = record.status, record.reason
        batch.width[i], batch.height[i], batch.scale[i], batch.digest[i] = (record.width, record.height,
                                                                            record.scale, record.content_hash)
        if record.ok:
            images[i], size = data
            groups.setdefault(size, []).append(i)
    if blobs:
        batch.jpeg_sizes = [len(b) for b in blobs]
        batch.jpeg_bytes = torch.frombuffer(bytearray().join(blobs), dtype=torch.uint8)  # one copy, writable
    batch.cpu_groups = [(idx, torch.from_numpy(np.stack([images[i] for i in idx])), size)
                        for size, idx in groups.items()]
    return batch


def cpu_routed(data: bytes, share: float) -> bool:
    """Whether a file the GPU decoder could take is decoded here instead: ``share`` of the files, picked by their
    content (CRC-32), so a file takes the same route whatever its batch, order or run."""
    return share > 0 and zlib.crc32(data) < share * 2**32


def fitted(image: np.ndarray, fit: Fit | None) -> np.ndarray:
    """``image`` resized to ``fit`` of its size by ``cv2.resize(INTER_LINEAR)``; itself when the size stays."""
    if fit is None:
        return image
    height, width = fit(*image.shape[:2])
    if (height, width) == image.shape[:2]:
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


class _Reads(torch.utils.data.Dataset):
    """The DataLoader's dataset: an index is ``(max_pixels, paths)``, an item is that batch read."""

    def __init__(self, decodable, threads: int, fit: Fit | None, cpu_share: float):
        self.decodable, self.threads, self.fit, self.cpu_share = decodable, threads, fit, cpu_share
        self._pool: ThreadPoolExecutor | None = None

    def __getitem__(self, index: tuple[int, tuple[str, ...]]) -> ReadBatch:
        if self._pool is None and self.threads > 1:  # made in the worker process, after the fork
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="read")
        max_pixels, paths = index
        return read_batch(list(paths), max_pixels, self.decodable, self._pool, self.fit, self.cpu_share)

    def __len__(self) -> int:  # the sampler decides; DataLoader only asks when no sampler is given
        raise TypeError("_Reads has no length")


class _Feed(torch.utils.data.Sampler):
    """Yields the batches of the current ``BatchReader.read`` call (set before each iteration)."""

    def __init__(self):
        self.items: list[tuple[int, tuple[str, ...]]] = []

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


class BatchReader:
    """``read(batches, max_pixels)`` → one ``ReadBatch`` per list of paths, in order (see the module docstring)."""

    def __init__(self, decodable, processes: int = 0, threads: int = 4, pin_memory: bool = False,
                 prefetch: int = 2, fit: Fit | None = None, cpu_share: float = 0.0):
        if processes > 0 and multiprocessing.current_process().daemon:
            processes = 0  # a daemonic process may not have children: read on threads instead
        self.processes, self.threads, self.pin_memory = processes, max(1, threads), pin_memory
        self.decodable, self.fit, self.cpu_share = decodable, fit, cpu_share
        self._loader = None
        self._feed = _Feed()
        if processes > 0:
            context = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
            # a worker that sends a tensor's file descriptor listens on a socket in multiprocessing's temporary
            # folder, which a process makes for itself unless it inherits one, and removes only at a clean exit:
            # made here, the forked workers share this process's, which goes when this process ends
            multiprocessing.util.get_temp_dir()
            self._loader = torch.utils.data.DataLoader(
                _Reads(decodable, self.threads, fit, cpu_share), batch_size=None, sampler=self._feed,
                num_workers=processes, pin_memory=pin_memory, prefetch_factor=prefetch, persistent_workers=True,
                multiprocessing_context=context)
            # stopped by close(), by garbage collection, or at exit (see read() and _stop_loader)
            self._finalizer = weakref.finalize(self, _stop_loader, self._loader)
            self._exit_hook = False

    def read(self, batches: Iterable[list], max_pixels: int) -> Iterator[ReadBatch]:
        """The batches read, in order; reading runs ahead of the consumer by ``prefetch`` batches per process."""
        items = [(max_pixels, tuple(os.fspath(p) for p in b)) for b in batches]
        if self._loader is None:
            with ThreadPoolExecutor(self.threads, thread_name_prefix="read") as pool:
                for _, paths in items:
                    batch = read_batch(list(paths), max_pixels, self.decodable, pool, self.fit, self.cpu_share)
                    yield batch.pin_memory() if self.pin_memory else batch
            return
        if not items:
            return
        self._feed.items = items
        iterator = iter(self._loader)  # persistent: the first call starts the workers, later ones reuse them
        if not self._exit_hook:
            # torch registered its own exit hooks as the workers started (with pinned memory, one that waits up to
            # 5 s for each worker to leave by itself); atexit runs last in, first out, so this one, registered
            # after them, ends the workers first
            atexit.register(self._finalizer)
            self._exit_hook = True
        yield from iterator

    def close(self) -> None:
        """Stop the worker processes (done at exit too)."""
        if self._loader is not None:
            self._finalizer()
            atexit.unregister(self._finalizer)
            self._loader = None


def _stop_loader(loader: torch.utils.data.DataLoader) -> None:
    """End the reader processes at once, then let the loader close its queues and pinning thread where it can.

    The loader's own shutdown asks each worker to stop through its index queue and waits up to 5 s for each
    before killing it; at interpreter exit torch's exit hook for pinned persistent workers (torch 2.11) joins each
    worker with that 5 s limit while they still wait for work: 42 s after an 8-process extraction (py-spy showed
    the main thread in ``_clean_up_worker``). A reader holds nothing that could be lost (it
    only reads files): it is terminated first."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is None:
        return
    workers = list(getattr(iterator, "_workers", []))
    for worker in workers:
        if worker.is_alive():
            worker.terminate()
    for worker in workers:
        worker.join(timeout=5)
    try:
        iterator._shutdown_workers()
    except RuntimeError:  # at exit: no new (queue feeder) threads; the workers are gone already
        iterator._shutdown = True

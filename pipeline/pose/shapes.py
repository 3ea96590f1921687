"""The network input shapes a list of files will meet, and each new shape's first network call made ahead of time.

A YOLO-pose call at a new input shape pays the set-up of every convolution once per process (cuDNN's, on a GPU:
0.2-0.25 s a shape at batch 256 on an H100, ``benchmarks/shape_cost.py``), and a crawl of many image sizes meets
up to 15 shapes at imgsz 256, so a task's first batches would stall on them one by one. That set-up is shared by
the process's threads and runs in parallel on several (15 shapes: 3.6 s on one thread, 1.4 s on four, after
which a shape's first call on any thread costs 0.02 s). ``ShapeWarmer`` reads the headers of a sample of a task's
files and makes each new shape's first call on threads of its own while the task's first batches are read.
"""

from __future__ import annotations

import contextlib
import copy
import os
import struct
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for

import torch

from pipeline.decode import JPEG_MAGIC, PNG_MAGIC, jpeg_header

HEADER_BYTES = 65536  # a JPEG's frame header follows its EXIF block, which is at most 64 KiB
SAMPLES = 64  # files whose headers are read per task: a shape taken by 5% of them is missed once in 27 tasks
CALL_BYTES = 12  # a call's memory against its input's bytes, with margin: YOLO11n-pose's layer outputs sum to 9.5x
FREE_SHARE = 0.25  # of the device's memory a call ahead leaves free for the extraction itself

Shape = tuple[int, int]


def image_size(path: str | os.PathLike) -> Shape | None:
    """``(height, width)`` of a JPEG (EXIF orientation applied, as ``pipeline.decode`` applies it) or a PNG, from
    its first bytes; None for other formats and for any file whose header cannot be read."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_BYTES)
    except OSError:
        return None
    if head.startswith(PNG_MAGIC):
        if len(head) < 24 or head[12:16] != b"IHDR":
            return None
        width, height = struct.unpack_from(">II", head, 16)
        return (height, width) if width and height else None
    if not head.startswith(JPEG_MAGIC):
        return None
    try:
        header = jpeg_header(head)
    except Exception:  # noqa: BLE001 - the decoder names a bad file; a sample only skips it
        return None
    if header.orientation(head) >= 5:
        return header.width, header.height
    return header.height, header.width


def sample_shapes(paths: Sequence[str | os.PathLike], imgsz: int, samples: int = SAMPLES) -> list[Shape]:
    """The network input shapes ``(height, width)`` at ``imgsz`` of up to ``samples`` files spread evenly over
    ``paths`` (``image_size``), the most frequent first."""
    from pipeline.pose.fast import letterbox_geometry

    if not paths or samples < 1:
        return []
    step = -(-len(paths) // samples)
    counts: Counter[Shape] = Counter()
    for path in paths[::step]:
        size = image_size(path)
        if size is not None:
            box = letterbox_geometry(*size, imgsz)
            counts[(box.out_h, box.out_w)] += 1
    return [shape for shape, _ in counts.most_common()]


class ShapeWarmer:
    """Each new input shape's first call of ``net`` (``batch_size`` empty images in ``dtype`` on ``device``), made on
    ``threads`` threads of its own.

    ``start(paths)`` returns at once: a pool thread samples the files' shapes (``sample_shapes``) and queues each
    shape not queued or claimed before, the most frequent first (``queue`` takes shapes as they are). Each thread
    calls its own copy of the network (the pose head keeps its last input shape's anchors as attributes) on a CUDA
    stream of its own. ``claim`` is for the caller's own first call at a shape: it waits for that shape's call when
    one is running and takes the shape over when it is still queued. A call that fails is dropped: the caller's own
    call at that shape names the error. On a GPU a call is made only while the device has room for it
    (``CALL_BYTES`` times its input) with ``FREE_SHARE`` of its memory still free besides, counting the calls
    running: a shape without room is left to the caller. ``paused()`` holds the calls off (it waits for those running
    and starts none until it ends): a CUDA graph's capture runs inside it, since a call's device-wide work (most
    likely a kernel's first load) can invalidate a capture on another thread, whatever the capture's mode."""

    def __init__(self, net: torch.nn.Module, device: torch.device, dtype: torch.dtype, batch_size: int, imgsz: int,
                 threads: int = 4, samples: int = SAMPLES):
        self.device, self.dtype, self.batch_size, self.imgsz = device, dtype, batch_size, imgsz
        self.threads, self.samples = max(1, threads), samples
        self._template = copy.deepcopy(net)  # copied before any call: no thread's shape attributes in it
        self._futures: dict[Shape, Future] = {}
        self._sampling: list[Future] = []
        self._last: list = []  # the files of the last ``start``: the same list again is not sampled again
        self._lock = threading.Lock()
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False
        self._in_flight = 0  # bytes the calls running may take
        self._gate = threading.Condition()  # calls and pauses (``paused``) exclude each other
        self._calls = 0  # calls inside the gate
        self._pauses = 0  # pauses waiting or holding the gate: no call enters meanwhile

    def start(self, paths: Sequence[str | os.PathLike]) -> None:
        """Queue the first calls of the new shapes of ``paths`` (without waiting for them); the files of the last
        call again (a task's files after ``look_ahead``) are not read again."""
        paths = list(paths)
        with self._lock:
            pool = self._running_pool()
            if pool is not None and paths != self._last:
                self._last = paths
                self._sampling = [f for f in self._sampling if not f.done()]
                self._sampling.append(pool.submit(self._sample, paths))

    def queue(self, shapes: Iterable[Shape]) -> None:
        """Queue the first calls at ``shapes`` not queued or claimed before, in this order."""
        with self._lock:
            pool = self._running_pool()
            for shape in shapes if pool is not None else ():
                if shape not in self._futures:
                    self._futures[shape] = pool.submit(self._first_call, shape)

    def _running_pool(self) -> ThreadPoolExecutor | None:
        """The pool (started on first use), None once closed; called under the lock."""
        if self._pool is None and not self._closed:
            self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="pgpig-shape-warm")
        return self._pool

    def claim(self, shape: Shape) -> None:
        """Mark ``shape`` as the caller's: wait for its first call if one is running, cancel it if still queued."""
        done: Future = Future()
        done.set_result(None)
        with self._lock:
            future = self._futures.get(shape)
            self._futures[shape] = done
        if future is not None and not future.cancel():
            wait_for([future])

    def wait(self) -> None:
        """Wait until the samples of every ``start`` so far are read and the first calls they queued have run."""
        with self._lock:
            sampling = list(self._sampling)
        wait_for(sampling)
        with self._lock:
            queued = list(self._futures.values())
        wait_for(queued)

    @property
    def warmed(self) -> list[Shape]:
        """The shapes whose first call here has run (claimed shapes excluded)."""
        with self._lock:
            return [s for s, f in self._futures.items()
                    if f.done() and not f.cancelled() and f.exception() is None and f.result() is not None]

    def close(self) -> None:
        """Cancel the queued calls and wait for the running ones."""
        with self._lock:
            self._closed, pool, self._pool = True, self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def _sample(self, paths: list) -> None:
        self.queue(sample_shapes(paths, self.imgsz, self.samples))

    def _free_memory(self) -> tuple[int, int] | None:
        """The device's ``(free, total)`` bytes; None on the CPU."""
        return torch.cuda.mem_get_info(self.device) if self.device.type == "cuda" else None

    def _admit(self, need: int) -> bool:
        memory = self._free_memory()
        with self._lock:
            if memory is not None and memory[0] - self._in_flight < need + int(memory[1] * FREE_SHARE):
                return False
            self._in_flight += need
            return True

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """No call runs inside: waits for the running calls to return, and starts none until the block ends."""
        with self._gate:
            self._pauses += 1
            self._gate.wait_for(lambda: self._calls == 0)
        try:
            yield
        finally:
            with self._gate:
                self._pauses -= 1
                self._gate.notify_all()

    @contextlib.contextmanager
    def _calling(self) -> Iterator[None]:
        with self._gate:
            self._gate.wait_for(lambda: self._pauses == 0)
            self._calls += 1
        try:
            yield
        finally:
            with self._gate:
                self._calls -= 1
                self._gate.notify_all()

    def _first_call(self, shape: Shape) -> Shape | None:
        """The call at ``shape``; ``shape`` once it ran, None when the device had no room for it."""
        need = CALL_BYTES * self.batch_size * 3 * shape[0] * shape[1] * self.dtype.itemsize
        with self._calling():
            if not self._admit(need):
                return None
            try:
                stream = self._call(shape)
            finally:
                with self._lock:
                    self._in_flight -= need
        if stream is not None:  # its kernels, outside the gate: a capture meanwhile does not wait for the device
            stream.synchronize()
        return shape

    @torch.inference_mode()
    def _call(self, shape: Shape) -> torch.cuda.Stream | None:
        """Launch the call at ``shape``; the thread's CUDA stream it runs on (None on the CPU, where it has run)."""
        local = self._local
        if not hasattr(local, "net"):
            local.net = copy.deepcopy(self._template)
            local.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        if local.stream is None:
            local.net(torch.zeros(self.batch_size, 3, *shape, dtype=self.dtype, device=self.device))
            return None
        with torch.cuda.device(self.device), torch.cuda.stream(local.stream):
            local.net(torch.zeros(self.batch_size, 3, *shape, dtype=self.dtype, device=self.device))
        return local.stream

"""``list_images`` in a child process: the listing runs under its own interpreter lock, beside whatever this process
does meanwhile (``pipeline.extract`` imports and warms up the pose model on a thread).

``start_listing(root, ...)`` starts ``python -m pipeline.datasets.background`` and returns at once; ``rows()`` gives
``list_images``'s rows as dicts (``RawImage.as_dict``), in its order, or raises its ``PipelineError``; ``seconds``
is then the time ``list_images`` took.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pipeline
from pipeline.datasets import list_images
from pipeline.datasets.listing import RawImage
from pipeline.errors import PipelineError

# the folder holding this process's ``pipeline`` package: the child imports the same code
_PACKAGE_ROOT = str(Path(pipeline.__file__).resolve().parents[1])


class Listing:
    """``list_images(root, dataset, **options)`` running in a child process; a context manager that stops it.

    The child writes the rows as JSON (one list of values per row, the field names once), or the
    ``PipelineError``'s message, to an unnamed temporary file, read once it has exited. When it cannot start or
    exits without a result (an unexpected error), ``rows`` lists in this process instead, so that such an error
    surfaces as it would without the child."""

    def __init__(self, root: str | os.PathLike, dataset: str | None = None, **options):
        self.args = {"root": root, "dataset": dataset, **options}
        self.seconds: float | None = None
        """How long ``list_images`` took (in the child, or here), once ``rows`` has returned."""
        self._out = tempfile.TemporaryFile()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
        try:
            self._child = subprocess.Popen(
                [sys.executable, "-m", __name__, str(self._out.fileno())], stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(self._out.fileno(),), env=env)
        except OSError:
            self._child = None
            return
        try:
            # stdin stays open: the child ends when it closes, so it never outlives this process (even a kill -9)
            self._child.stdin.write(json.dumps(_plain(self.args)).encode() + b"\n")
            self._child.stdin.flush()
        except OSError:  # the child has already exited: it gives no result
            pass

    def rows(self) -> list[dict]:
        """Every listed file's ``RawImage.as_dict()``, in ``list_images``'s order; waits for the child."""
        payload = None
        try:
            if self._child is not None and self._child.wait() == 0:
                self._out.seek(0)
                payload = json.loads(self._out.read())
        finally:
            self.close()
        if payload is None:
            start = time.perf_counter()
            rows = [row.as_dict() for row in list_images(**self.args)]
            self.seconds = time.perf_counter() - start
            return rows
        kind, value = payload
        if kind == "error":
            raise PipelineError(value)
        self.seconds = value["seconds"]
        return [dict(zip(value["fields"], row, strict=True)) for row in value["rows"]]

    def close(self) -> None:
        """Stop the child if it still runs (Ctrl-C, an error elsewhere) and wait for it to end."""
        if self._child is not None:
            if self._child.poll() is None:
                self._child.kill()
                self._child.wait()
            try:
                self._child.stdin.close()
            except OSError:
                pass
        self._out.close()

    def __enter__(self) -> Listing:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _plain(value):
    """The listing's arguments as JSON values: paths as strings."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def start_listing(root: str | os.PathLike, dataset: str | None = None, **options) -> Listing:
    """Start ``list_images(root, dataset, **options)`` in a child process; ``.rows()`` gives its rows."""
    return Listing(root, dataset, **options)


def _exit_when_the_parent_does() -> None:
    while os.read(0, 4096):  # empty at end of file: the parent closed the pipe or is gone
        pass
    os._exit(1)


def _main(fd: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C ends the child at once and quietly; the parent reports
    args = json.loads(sys.stdin.buffer.readline())
    threading.Thread(target=_exit_when_the_parent_does, daemon=True).start()
    try:
        start = time.perf_counter()
        rows = list_images(**args)
        seconds = time.perf_counter() - start
        fields = list(RawImage.__slots__)
        payload = ["rows", {"fields": fields, "rows": [[getattr(row, f) for f in fields] for row in rows],
                            "seconds": seconds}]
    except PipelineError as exc:
        payload = ["error", str(exc)]
    with os.fdopen(fd, "wb") as out:  # JSON escapes the lone surrogates of undecodable file names, and restores them
        out.write(json.dumps(payload).encode())
    os._exit(0)  # the result is out; freeing the rows one by one would only delay the parent


if __name__ == "__main__":
    _main(int(sys.argv[1]))

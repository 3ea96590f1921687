"""The trainer's one exception type."""

from __future__ import annotations


class TrainError(RuntimeError):
    """A problem the user can fix (a missing shard set, a bad recipe, a damaged checkpoint).

    The message names the file or option at fault and what to do; the CLI prints it in one line and exits
    non-zero (with the traceback only under ``--debug``).
    """

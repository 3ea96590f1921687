"""The one exception type of the pipeline package, and how both CLIs print such errors."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any


class PipelineError(RuntimeError):
    """A stage cannot go on; the message names the file or option and what to do about it."""


def report_errors(*errors: type[Exception]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A click command decorator: pipeline and contract errors, and ``errors``, become one line and exit 1.

    ``--debug`` on the root command shows the traceback instead."""
    import click

    from schemas.errors import SchemaError

    reported = (PipelineError, SchemaError, *errors)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except reported as exc:
                if click.get_current_context().find_root().params.get("debug"):
                    raise
                click.echo(f"error: {exc}", err=True)
                sys.exit(1)

        return wrapper

    return decorate

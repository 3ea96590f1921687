"""How both command lines (``pgpig-data``, ``pgpig``) fill their config dataclasses: an option left out is ``None``
and stays out of the config, whose field holds the one default, and ``--help`` shows that default from there."""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["default_of", "given", "with_default"]


def default_of(config: type, name: str) -> Any:
    """The default of field ``name`` of the dataclass ``config``."""
    (f,) = [f for f in dataclasses.fields(config) if f.name == name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def with_default(text: str, config: type, name: str) -> str:
    """An option's help: ``text`` and the default of ``config.name``, read from the dataclass so it cannot drift."""
    return f"{text} [default: {default_of(config, name)}]"


def given(**options: Any) -> dict[str, Any]:
    """The options that were given (not None): the config dataclass fills in the others."""
    return {name: value for name, value in options.items() if value is not None}

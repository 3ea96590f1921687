"""The model registry: ``create("patn", **cfg)`` builds a generator by name.

Every generator takes the same keyword arguments where they apply (``image_channels=3``, ``pose_channels=18``,
``ngf=64``, ``n_blocks``, ``norm="instance" | "batch"``, ``n_downsampling=2``); adding one is one file plus a
``@register("name")`` on its class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from pgpig.errors import TrainError

__all__ = ["available", "create", "register"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}

M = TypeVar("M", bound=Callable[..., nn.Module])


def register(name: str) -> Callable[[M], M]:
    """Class decorator: make ``create(name, ...)`` build this model."""

    def decorate(factory: M) -> M:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise TrainError(f"model name {name!r} is registered twice ({_REGISTRY[name]!r} and {factory!r})")
        _REGISTRY[name] = factory
        return factory

    return decorate


def available() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_REGISTRY)


def create(name: str, **cfg: Any) -> nn.Module:
    """Build the model registered as ``name`` with the keyword arguments ``cfg``."""
    if name not in _REGISTRY:
        raise TrainError(f"unknown model {name!r}; choose one of: {', '.join(available())}")
    return _REGISTRY[name](**cfg)


# Importing the model modules registers them; they come last because they import ``register`` from here.
from pgpig.models import discriminators, patn  # noqa: E402, F401

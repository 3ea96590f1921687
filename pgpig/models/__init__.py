"""The model registry: ``create("patn", **cfg)`` builds a generator by name; ``objective_class("patn")`` is how
it trains.

Every generator takes the same keyword arguments where they apply (``image_channels=3``, ``pose_channels=18``,
``ngf=64``, ``n_blocks``, ``norm="instance" | "batch"``, ``n_downsampling=2``); adding one is one file plus a
``@register("name")`` on its class, with ``objective=`` naming its ``pgpig.models.objective.Objective`` subclass
when it does not train like PATN.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from pgpig.errors import TrainError

__all__ = ["available", "create", "objective_class", "register"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_OBJECTIVES: dict[str, type] = {}

M = TypeVar("M", bound=Callable[..., nn.Module])


def register(name: str, objective: type | None = None) -> Callable[[M], M]:
    """Class decorator: make ``create(name, ...)`` build this model, trained by ``objective`` (default: PATN's
    ``PairGANObjective``)."""

    def decorate(factory: M) -> M:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise TrainError(f"model name {name!r} is registered twice ({_REGISTRY[name]!r} and {factory!r})")
        _REGISTRY[name] = factory
        if objective is not None:
            _OBJECTIVES[name] = objective
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


def objective_class(name: str) -> type:
    """The ``Objective`` class that trains the model registered as ``name``."""
    from pgpig.models.objective import PairGANObjective

    if name not in _REGISTRY:
        raise TrainError(f"unknown model {name!r}; choose one of: {', '.join(available())}")
    return _OBJECTIVES.get(name, PairGANObjective)


# Importing the model modules registers them; they come last because they import ``register`` from here.
from pgpig.models import discriminators, dptn, gfla, patn, pg2, xinggan  # noqa: E402, F401

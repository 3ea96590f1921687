"""The model registry: ``create(name, **kwargs)`` builds the generator registered as ``name``, and
``objective_class(name)`` is the ``pgpig.models.objective.Objective`` that trains it.

What every registered generator shares is its forward, ``forward(source_image (B, 3, H, W), source_pose
(B, 18, H, W), target_pose (B, 18, H, W))`` returning the generated target image (or a tuple whose first item is
it), and a base width ``ngf``. Its other constructor arguments are its own, with the paper's values as defaults:
PATN and XingGAN take ``image_channels``, ``pose_channels``, ``n_blocks``, ``norm``, ``n_downsampling`` and
``dropout``; PG2 the image ``size`` and the ``stage``; GFLA and DPTN the official constructors' argument names. The
one uniform way to build any generator from a ``TrainConfig`` is ``objective_class(name).build_generator(cfg,
size)``, which the trainer and ``pgpig generate`` call.

Adding a generator is one file plus ``@register("name")`` on its class, with ``objective=`` naming its
``Objective`` when it does not train like PATN (``pgpig.models.patn.PairGANObjective``, the default).
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
    ``PairGANObjective``). Also callable as ``register(name, objective)(cls)`` after both are defined."""

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


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build the model registered as ``name`` with its constructor's keyword arguments ``kwargs``."""
    if name not in _REGISTRY:
        raise TrainError(f"unknown model {name!r}; choose one of: {', '.join(available())}")
    return _REGISTRY[name](**kwargs)


def objective_class(name: str) -> type:
    """The ``Objective`` class that trains the model registered as ``name``."""
    from pgpig.models.patn import PairGANObjective

    if name not in _REGISTRY:
        raise TrainError(f"unknown model {name!r}; choose one of: {', '.join(available())}")
    return _OBJECTIVES.get(name, PairGANObjective)


# Importing the model modules registers them; they come last because they import ``register`` from here.
from pgpig.models import dptn, gfla, patn, pg2, pidm, xinggan  # noqa: E402, F401

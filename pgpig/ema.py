"""An exponential moving average of a generator's weights, the weights a diffusion model samples with.

PIDM (Bhunia et al., CVPR 2023, arXiv:2211.12500) keeps one, as its official ``train.py`` does: after every optimizer
step ``ema = decay * ema + (1 - decay) * weights``, with ``decay`` 0 (a plain copy) during the learning-rate warm-up
and 0.9999 after it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["WeightAverage"]


class WeightAverage:
    """The average ``model`` (a frozen copy in eval mode) of the generator it is updated from.

    ``update(generator)`` after each optimizer step: the parameters move towards the generator's by ``1 - decay``,
    ``decay`` being 0 for the first ``start`` updates; buffers (normalisation statistics) are copied. ``updates``
    counts the calls, so a resumed run continues the same schedule."""

    def __init__(self, generator: nn.Module, decay: float, start: int = 0):
        self.model = copy.deepcopy(generator).eval().requires_grad_(False)
        self.decay, self.start, self.updates = float(decay), int(start), 0

    @torch.no_grad()
    def update(self, generator: nn.Module) -> None:
        decay = 0.0 if self.updates < self.start else self.decay
        averaged = list(self.model.parameters())
        torch._foreach_lerp_(averaged, [p.detach().to(a.dtype) for p, a in zip(generator.parameters(), averaged,
                                                                               strict=True)], 1.0 - decay)
        for mine, theirs in zip(self.model.buffers(), generator.buffers(), strict=True):
            mine.copy_(theirs)
        self.updates += 1

    @torch.no_grad()
    def reset(self, generator: nn.Module) -> None:
        """Start over from ``generator``'s weights (after loading ``init_weights``)."""
        self.model.load_state_dict(generator.state_dict())

"""The generator's weight average (``ema_decay``): its update rule. Its checkpoint file, resume after kill -9 and
that generate and eval read it are checked on PIDM's run (``test_pidm.py``), the recipe that keeps one."""

from __future__ import annotations

import torch

from pgpig.ema import WeightAverage

TINY = ["--set", "ngf=8", "--set", "n_blocks=1", "--set", "d_blocks=1", "--set", "vgg_weights=null",
        "--set", "allow_random_vgg=true", "--workers", "0", "--quiet", "--skip-memory-check"]


def test_the_average_copies_during_the_start_then_moves_by_one_minus_decay():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    average = WeightAverage(net, decay=0.75, start=1)
    assert not any(p.requires_grad for p in average.model.parameters()) and not average.model.training
    with torch.no_grad():
        net[0].weight.add_(1.0)
    net(torch.randn(4, 3))  # moves the batch-norm statistics
    average.update(net)  # update 0 < start: a copy
    assert torch.equal(average.model[0].weight, net[0].weight)
    assert torch.equal(average.model[1].running_mean, net[1].running_mean)
    before = average.model[0].weight.clone()
    with torch.no_grad():
        net[0].weight.add_(2.0)
    average.update(net)
    torch.testing.assert_close(average.model[0].weight, 0.75 * before + 0.25 * net[0].weight)
    assert average.updates == 2

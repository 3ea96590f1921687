"""PATN learns: a few hundred CPU steps on mannequins beat the copy-the-source baseline on held-out identities.

The mannequin set (``pipeline.synthetic``) draws each identity with the same clothes in every pose and comes with
exact keypoints; the DeepFashion layout puts it on a light, nearly flat studio backdrop, as the real In-shop
photos are. The train and test splits hold different identities, so the generator must move the *source's*
appearance into the *target's* pose; copying the source image (the baseline) gets the appearance right and the
pose wrong. Both are scored against the target with SSIM (torchmetrics, Gaussian window, images in ``[-1, 1]``
so ``data_range=2``) and L1, on every test pair, with the generator loaded from the run folder as a user gets it.

Settings, and why (the architecture is PATN's; only its sizes are reduced):

- 16 DeepFashion-layout identities x 6 poses, stored at 64x64 by the pair step, trained on the 64x40 centre
  (``crop_margin`` 12, as PATN's 40 turns 256x256 into 256x176); pose-map sigma 3 (PATN's 6 at a quarter size).
- ``ngf 16``, 3 PAT blocks, instance norm, dropout 0 (the paper's 0.5 regularises 100k pairs; here it only slows
  the first few hundred steps); ``use_gan false``: the two discriminators cost more than the generator step on a
  CPU, and the adversarial loss only sharpens details after many thousand steps.
- ``vgg_weights null`` (ImageNet weights cannot be downloaded here): the perceptual loss runs on a *random*
  VGG-19 ``relu1_2`` (64 fixed random 3x3 filter responses), kept at PATN's Market weight so that the trainer's
  real loss path is the one tested.
- ``lr 1e-3`` (PATN: 2e-4) so that 80 steps suffice for the default run; the slow variant also runs PATN's lr.

Golden numbers, measured on the 2-core development machine (torch 2.14.1, CPU), 90 test pairs; the copy
baseline is SSIM 0.2854, L1 0.3398 for every run:

======  =====  ======  ===========  ==========  =====
steps   lr     seed    SSIM model   L1 model    time
======  =====  ======  ===========  ==========  =====
80      1e-3   0       0.3977       0.2530      178 s (load average 7)
80      1e-3   0       0.3960       0.2549      21 s (Xeon)
150     1e-3   0       0.4101       0.2499      35 s
300     1e-3   0       0.4601       0.2300      71 s
300     1e-3   1       0.4553       0.2395      71 s
300     1e-3   2       0.4599       0.2301      76 s
300     2e-4   0       0.4245       0.2287      62 s
======  =====  ======  ===========  ==========  =====

The row marked Xeon was measured on another CPU (Xeon, 2 threads, torch 2.11), where 150 steps gave 0.4063 / 0.2498
and 60 steps 0.3788 / 0.2584 (seed 1: 0.3458 / 0.2802, too close to the copy for a margin). The margins asserted are
about two thirds of the smallest measured gain over the copy (+0.111 / -0.085 at 80 steps on the Xeon, +0.112 /
-0.087 on the 2-core machine; +0.139 at 300). On the Market layout (random street backgrounds at 64x32) the same 300
steps gave SSIM 0.0747 vs 0.0669: the backgrounds, which neither the model nor the copy can predict, dominate SSIM
there.
"""

from __future__ import annotations

import pytest
from learning import learn


def test_80_steps_of_patn_beat_copying_the_source(learning_shards, tmp_path):
    r = learn(learning_shards, tmp_path / "run", steps=80, lr=1e-3, seed=0, model="patn", ngf=16, n_blocks=3)
    assert r["model_ssim"] > r["copy_ssim"] + 0.07  # measured +0.112 (Xeon: +0.111)
    assert r["model_l1"] < r["copy_l1"] - 0.055  # measured -0.087 (Xeon: -0.085)


@pytest.mark.slow
@pytest.mark.parametrize(("lr", "seed"), [(1e-3, 0), (1e-3, 1), (1e-3, 2), (2e-4, 0)])
def test_300_steps_beat_copying_the_source_across_seeds_and_at_patns_lr(learning_shards, tmp_path, lr, seed):
    r = learn(learning_shards, tmp_path / "run", steps=300, lr=lr, seed=seed, model="patn", ngf=16, n_blocks=3)
    assert r["model_ssim"] > r["copy_ssim"] + 0.09  # measured at least +0.139
    assert r["model_l1"] < r["copy_l1"] - 0.07  # measured at least -0.100

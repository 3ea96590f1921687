"""The learning check shared by every generator's tests: train a reduced model on mannequins for a few hundred CPU
steps, then score it and the copy-the-source baseline against the targets of held-out identities.

The data is the session's ``learning_shards`` fixture (``tests/conftest.py``); ``tests/pgpig/test_learning.py``
explains it and the settings (and holds PATN's golden numbers); each generator's test file calls ``learn`` with its
own model overrides and asserts its own measured margins.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import default_collate
from torchmetrics.functional.image import structural_similarity_index_measure as ssim

from pgpig.config import load_config
from pgpig.data import PairDataset
from pgpig.generate import load_generator
from pgpig.train import train

# the data and training settings every generator shares (test_learning.py says why); model overrides go on top
BASE = {"norm": "instance", "dropout": 0.0, "crop_margin": 12, "sigma": 3.0, "flip": True, "batch_size": 8,
        "lambda_l1": 10.0, "lambda_perceptual": 10.0, "use_gan": False, "vgg_weights": None, "allow_random_vgg": True,
        "num_workers": 0, "device": "cpu", "progress": False, "sample_every": 10**6, "checkpoint_every": 10**6}


def scores(generated: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """SSIM and mean L1 of a batch against its targets, images in ``[-1, 1]``."""
    return (ssim(generated, target, data_range=2.0).item(), (generated - target).abs().mean().item())


def learn(shards: Path, run_dir: Path, steps: int, lr: float, seed: int, **overrides: Any) -> dict[str, float]:
    """Train ``BASE`` + ``overrides`` for ``steps`` and score the model and the copy baseline on every test pair.

    The generator is loaded from the run folder and run as ``pgpig generate`` runs it (``GeneratorRun``)."""
    cfg = load_config(None, {**BASE, "shards": shards, "run_dir": run_dir, "lr": lr, "steps": steps, "seed": seed,
                             **overrides})
    start = time.perf_counter()
    assert train(cfg)["step"] == steps
    seconds = time.perf_counter() - start

    run = load_generator(run_dir, "cpu")
    test_set = PairDataset(shards / "test", crop_margin=cfg.crop_margin)
    batch = default_collate([test_set[k] for k in range(len(test_set))])
    generated = run(batch["source"], batch["source_kp"], batch["target_kp"])
    model_ssim, model_l1 = scores(generated, batch["target"])
    copy_ssim, copy_l1 = scores(batch["source"], batch["target"])
    print(f"\n{cfg.model}: {steps} steps, lr {lr}, seed {seed}, {len(test_set)} test pairs, {seconds:.0f} s: SSIM "
          f"model {model_ssim:.4f} vs copy {copy_ssim:.4f}; L1 model {model_l1:.4f} vs copy {copy_l1:.4f}")
    return {"model_ssim": model_ssim, "copy_ssim": copy_ssim, "model_l1": model_l1, "copy_l1": copy_l1,
            "seconds": seconds}

"""Shard-set speed: images/s written and randomly read back, per format, one JSON line each.

    python benchmarks/shards_bench.py [--images 2000] [--layout market|deepfashion] [--rounds 3]

A mannequin tree (``pipeline.synthetic.write_mannequins``) of about ``--images`` JPEG files at the layout's
native size is written to a temporary folder (so it sits in the page cache), then stored with
``write_shard_set`` at that size (Parquet keeps the raw bytes; HDF5 decodes them) and read back through
``ShardSet[i]`` in a random order, one process, as a DataLoader worker would. The baseline in the same run
is a bare ``cv2.imdecode`` of the same raw bytes already in memory: ``ratio`` = random read / baseline says
what the reader costs on top of decoding (below 1 for Parquet, which also decodes; HDF5 skips decoding).
Each figure is the best of ``--rounds``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from pipeline.shards import ShardImage, ShardSet, write_shard_set
from pipeline.synthetic import SynthConfig, write_mannequins
from schemas.files import sha256_bytes
from schemas.keypoints import visible_mask
from schemas.patn import deepfashion_margin, deepfashion_relpath, from_patn_frame, read_annotations


def shard_images(root: Path, layout: str) -> list[ShardImage]:
    """Every annotated image of the tree, as the keypoints table would describe it."""
    prefix = "market" if layout == "market" else "fashion"
    by_name = {p.name: p for p in root.rglob("*.jpg")} if layout == "market" else {}
    images = []
    for split in ("train", "test"):
        ann = read_annotations(root / f"{prefix}-annotation-{split}.csv")
        for name, xy in zip(ann.names, ann.keypoints, strict=True):
            if layout == "market":
                path, identity = by_name[name], name[:4]
            else:
                path = root / deepfashion_relpath(name)
                identity = path.parent.name
                xy = from_patn_frame(xy, deepfashion_margin(256))
            data = path.read_bytes()
            h, w = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape[:2]
            images.append(ShardImage(path.relative_to(root).as_posix(), name, identity, sha256_bytes(data), w, h,
                                     xy, visible_mask(xy).astype(np.float32)))
    return images


def best_of(rounds: int, fn) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--layout", choices=["market", "deepfashion"], default="market")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    per_identity = 8
    cfg = SynthConfig(identities=max(1, args.images // per_identity), poses_per_identity=per_identity,
                      layout=args.layout, seed=0)
    size = cfg.resolved_size()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "raw"
        write_mannequins(root, cfg)
        images = shard_images(root, args.layout)
        blobs = [(root / it.image).read_bytes() for it in images]
        n = len(images)
        pairs = np.zeros((0, 2), np.int64)

        def baseline() -> None:
            for data in blobs:
                cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)

        baseline_s = best_of(args.rounds, baseline)
        order = np.random.default_rng(0).permutation(n)
        for fmt in ("parquet", "hdf5"):
            folder = Path(tmp) / fmt

            def write(fmt=fmt, folder=folder) -> None:
                write_shard_set(folder, split="train", dataset=args.layout, raw_root=root, images=images,
                                pairs=pairs, pair_identities=[], format=fmt, size=size, overwrite=True)

            write_s = best_of(args.rounds, write)

            def read(folder=folder) -> None:
                shards = ShardSet(folder)  # fresh per round: opening files is part of the cost
                for i in order:
                    shards[i]

            read_s = best_of(args.rounds, read)
            set_bytes = sum(p.stat().st_size for p in folder.iterdir())
            print(json.dumps({
                "bench": "shards", "format": fmt, "layout": args.layout, "size": list(size), "images": n,
                "write_images_per_s": round(n / write_s, 1),
                "random_read_images_per_s": round(n / read_s, 1),
                "baseline_decode_images_per_s": round(n / baseline_s, 1),
                "ratio": round(baseline_s / read_s, 4),
                "set_mb": round(set_bytes / 2**20, 2), "raw_mb": round(sum(map(len, blobs)) / 2**20, 2),
                "machine": f"{platform.machine()} {os.cpu_count()} cpu", "python": platform.python_version(),
            }), flush=True)


if __name__ == "__main__":
    main()

"""Regenerate docs/mannequin_overlay.png: mannequin images beside the skeletons drawn from their CSVs.

    python docs/make_overlay.py

Each pair of tiles is a written JPEG and the same JPEG with the keypoints read back from the PATN
annotation CSV drawn on it (Market-1501 layout on top at 3x, DeepFashion layout below).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np

from pipeline.overlay import draw_skeleton
from pipeline.synthetic import SynthConfig, write_mannequins
from schemas.patn import deepfashion_margin, deepfashion_relpath, from_patn_frame, read_annotations


def tiles(root: Path, csv: str, n: int, scale: int) -> np.ndarray:
    ann = read_annotations(root / csv)
    row = []
    for name, xy in list(zip(ann.names, ann.keypoints, strict=True))[:n]:
        if name.startswith("fashion"):
            path = root / deepfashion_relpath(name)
            image = cv2.imread(str(path))
            xy = from_patn_frame(xy, deepfashion_margin(image.shape[1]))
        else:
            path = next(root.glob(f"*/{name}"))
            image = cv2.imread(str(path))
        big = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        # pixel centres move with the scale
        scaled = np.where(xy >= 0, xy * scale + (scale - 1) / 2, -1)
        row += [big, draw_skeleton(big, scaled), np.full((big.shape[0], 8, 3), 255, np.uint8)]
    return np.concatenate(row, axis=1)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        market = Path(tmp) / "market"
        write_mannequins(market, SynthConfig(identities=4, poses_per_identity=4, seed=1))
        fashion = Path(tmp) / "fashion"
        write_mannequins(fashion, SynthConfig(identities=2, poses_per_identity=5, layout="deepfashion", seed=1))
        top = tiles(market, "market-annotation-train.csv", 6, 2)
        bottom = tiles(fashion, "fashion-annotation-train.csv", 3, 1)
        width = max(top.shape[1], bottom.shape[1])
        pad = lambda a: np.pad(a, ((0, 8), (0, width - a.shape[1]), (0, 0)), constant_values=255)  # noqa: E731
        out = Path(__file__).with_name("mannequin_overlay.png")
        cv2.imwrite(str(out), np.concatenate([pad(top), pad(bottom)], axis=0))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()

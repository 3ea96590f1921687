"""Regenerate docs/demo_overlays.png and docs/demo_samples.png from a `pgpig-data demo` folder.

    pgpig-data demo /tmp/pgpig-demo && python docs/make_demo_pictures.py /tmp/pgpig-demo

demo_overlays.png: the first overlay of every photo identity (the plain cut), side by side; demo_samples.png: the
last training-sample grid of the demo's run.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import cv2
import numpy as np


def main(demo: Path) -> None:
    docs = Path(__file__).resolve().parent
    tiles = [cv2.imread(str(p)) for p in sorted((demo / "overlays").glob("*_c1s1_*.png"))]
    if not tiles:
        raise SystemExit(f"{demo / 'overlays'}: no overlays; run `pgpig-data demo {demo}` first")
    gap = np.full((tiles[0].shape[0], 12, 3), 255, np.uint8)
    strip = np.concatenate([part for tile in tiles for part in (tile, gap)][:-1], axis=1)
    cv2.imwrite(str(docs / "demo_overlays.png"), strip)
    samples = sorted((demo / "run" / "samples").glob("step-*.png"))
    shutil.copyfile(samples[-1], docs / "demo_samples.png")
    print(f"wrote {docs / 'demo_overlays.png'} ({len(tiles)} persons) and {docs / 'demo_samples.png'} "
          f"({samples[-1].name})")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "pgpig-demo"))

"""A mannequin shard set for the GPU session scripts, from the shell: ``pipeline.synthetic.mannequin_shards`` (synth,
extract from the annotations, pair train and test), the builder the tests use.

    python benchmarks/mannequin_shards.py WORK LAYOUT IDENTITIES POSES [HxW]     # -> WORK/raw, WORK/shards

HxW is the stored size of the shards (``pgpig-data pair --size``) [default: the data set's].
"""

from __future__ import annotations

import sys
from pathlib import Path

# the checkout's packages, as the other benchmarks run them
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.synthetic import mannequin_shards  # noqa: E402


def main() -> None:
    if len(sys.argv) not in (5, 6):
        raise SystemExit(__doc__)
    work, layout, identities, poses = sys.argv[1:5]
    size = tuple(int(v) for v in sys.argv[5].lower().split("x")) if len(sys.argv) == 6 else None
    print(mannequin_shards(Path(work), layout, int(identities), int(poses), splits=("train", "test"), seed=0,
                          size=size))


if __name__ == "__main__":
    main()

"""The keypoints table on disk: a folder of ``part-NNNNN.parquet`` files (schema ``keypoints``), one per extraction
task, which ``pgpig-data extract`` writes and pairing, the report, the demo and the trainer read."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pyarrow as pa

from pipeline.errors import PipelineError
from schemas.tables import read_table

PART_PATTERN = re.compile(r"^part-(\d{5,})\.parquet$")


def part_name(part: int) -> str:
    """The file name of part number ``part``."""
    return f"part-{part:05d}.parquet"


def read_keypoints(out: str | os.PathLike, columns: list[str] | None = None) -> pa.Table:
    """The keypoints table of a run folder (all parts, in part order; only ``columns`` when given)."""
    out = Path(out)
    paths = sorted(p for p in out.glob("part-*.parquet") if PART_PATTERN.match(p.name))
    if not paths:
        raise PipelineError(f"{out}: no keypoint parts; run `pgpig-data extract RAW` first")
    return pa.concat_tables([read_table(p, "keypoints", columns=columns) for p in paths])

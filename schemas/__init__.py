"""pgpig's data contract: keypoint order, table schemas, manifest and PATN formats.

Both ``pipeline`` (which writes the files) and ``pgpig`` (which trains on them) import this package;
it imports neither. ``docs/data-contract.md`` describes every file and column.
"""

from schemas.errors import SchemaError
from schemas.keypoints import (
    FLIP_PERMUTATION,
    KEYPOINT_NAMES,
    LIMBS,
    MISSING,
    NUM_KEYPOINTS,
    coco17_to_openpose18,
    flip_keypoints,
    visible_mask,
)
from schemas.manifest import FileEntry, Manifest
from schemas.tables import SCHEMA_VERSION, SCHEMAS, read_table, table_from_pydict, write_table

__all__ = [
    "FLIP_PERMUTATION",
    "KEYPOINT_NAMES",
    "LIMBS",
    "MISSING",
    "NUM_KEYPOINTS",
    "SCHEMA_VERSION",
    "SCHEMAS",
    "FileEntry",
    "Manifest",
    "SchemaError",
    "coco17_to_openpose18",
    "flip_keypoints",
    "read_table",
    "table_from_pydict",
    "visible_mask",
    "write_table",
]

"""Arrow schemas of every pgpig table, and the Parquet read/write that stamps and checks their version.

Three tables (see ``docs/data-contract.md`` for every column):

- ``keypoints``: one row per raw image, written by ``pgpig-data extract`` as ``keypoints/part-*.parquet``;
- ``shard_images``: one row per stored image of a split, ``shards/<split>/images-*.parquet``;
- ``pairs``: ordered (source, target) global image indices, ``shards/<split>/pairs.parquet``.

Every file carries ``pgpig.table`` and ``pgpig.schema_version`` in its Parquet key-value metadata;
reading a file of another table or of a version this code does not know fails with a ``SchemaError``
that names the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.errors import SchemaError
from schemas.files import atomic_write
from schemas.keypoints import MISSING, NUM_KEYPOINTS

SCHEMA_VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})
META_TABLE = b"pgpig.table"
META_VERSION = b"pgpig.schema_version"

STATUSES = ("ok", "no_person", "unreadable", "skipped")
"""Values of ``keypoints.status``. ``ok``: a person was found (or annotated); ``no_person``: the model
found nobody; ``unreadable``: the file could not be read or decoded; ``skipped``: deliberately not
processed (junk/distractor ids, non-image files). ``reason`` says why for every status but ``ok``."""
SOURCES = ("yolo", "annotations")

KEYPOINTS_TYPE = pa.list_(pa.list_(pa.float32(), 2), NUM_KEYPOINTS)
SCORES_TYPE = pa.list_(pa.float32(), NUM_KEYPOINTS)
BOX_TYPE = pa.list_(pa.float32(), 5)


def _f(name: str, type_: pa.DataType, nullable: bool, doc: str) -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={b"doc": doc.encode()})


KEYPOINTS_SCHEMA = pa.schema(
    [
        _f("image", pa.string(), False, "path relative to the raw root, POSIX separators; the key"),
        _f("patn_name", pa.string(), True, "flat file name used by the PATN lists (DeepFashion, Market)"),
        _f("dataset", pa.string(), False, "market1501, deepfashion or folder"),
        _f("split", pa.string(), True, "train or test, null when the layout gives none"),
        _f("identity", pa.string(), False, "person (Market) or item (DeepFashion) id"),
        _f("camera", pa.int16(), True, "Market-1501 camera number"),
        _f("view", pa.string(), True, "DeepFashion view (front, side, back, full, additional, flat)"),
        _f("width", pa.int32(), True, "width of the upright decoded image, null when unreadable"),
        _f("height", pa.int32(), True, "height of the upright decoded image, null when unreadable"),
        _f("content_hash", pa.string(), True, "sha256 of the file bytes, null only when they could not be read"),
        _f("status", pa.string(), False, "ok, no_person, unreadable or skipped"),
        _f("reason", pa.string(), True, "why the status is not ok, one line"),
        _f("n_persons", pa.int16(), False, "persons detected (or annotated)"),
        # not nullable: pyarrow < 26 cannot read null slots of a fixed-size list back from Parquet
        _f("box", BOX_TYPE, False, "chosen person's box x1, y1, x2, y2, score; all NaN without a person"),
        _f("keypoints", KEYPOINTS_TYPE, False, "18 x (x, y) float32 pixels, (-1, -1) invisible"),
        _f("scores", SCORES_TYPE, False, "18 keypoint scores, kept also when invisible"),
        _f("n_visible", pa.int8(), False, "visible keypoints"),
        _f("source", pa.string(), False, "yolo or annotations"),
    ]
)

SHARD_IMAGES_SCHEMA = pa.schema(
    [
        _f("index", pa.int64(), False, "global image index within the split, 0..N-1"),
        _f("image", pa.string(), False, "path relative to the raw root (key into the keypoints table)"),
        _f("patn_name", pa.string(), True, "flat PATN file name"),
        _f("identity", pa.string(), False, "person or item id"),
        _f("content_hash", pa.string(), False, "sha256 of the raw file bytes"),
        _f("width", pa.int32(), False, "stored width"),
        _f("height", pa.int32(), False, "stored height"),
        _f("data", pa.binary(), True, "encoded image bytes as stored (Parquet format); null in HDF5 sets"),
        _f("encoding", pa.string(), True, "jpeg or png (of data); null in HDF5 sets"),
        _f("keypoints", KEYPOINTS_TYPE, False, "18 x (x, y) in the stored image, (-1, -1) invisible"),
        _f("scores", SCORES_TYPE, False, "18 keypoint scores"),
    ]
)

PAIRS_SCHEMA = pa.schema(
    [
        _f("source", pa.int64(), False, "global image index of the source"),
        _f("target", pa.int64(), False, "global image index of the target"),
        _f("identity", pa.string(), False, "the identity both images share"),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    "keypoints": KEYPOINTS_SCHEMA,
    "shard_images": SHARD_IMAGES_SCHEMA,
    "pairs": PAIRS_SCHEMA,
}


def _stamped(kind: str) -> pa.Schema:
    schema = SCHEMAS[kind]
    return schema.with_metadata({META_TABLE: kind.encode(), META_VERSION: str(SCHEMA_VERSION).encode()})


def table_from_pydict(kind: str, columns: dict) -> pa.Table:
    """Build a table of ``kind`` from column lists or arrays, checked against its schema.

    ``keypoints`` may be given as an ``(N, 18, 2)`` array and ``scores``/``box`` as ``(N, 18)``/``(N, 5)``
    arrays.
    """
    if kind not in SCHEMAS:
        raise SchemaError(f"unknown table kind {kind!r}; one of {sorted(SCHEMAS)}")
    schema = SCHEMAS[kind]
    missing = [f.name for f in schema if f.name not in columns and not f.nullable]
    extra = sorted(set(columns) - set(schema.names))
    if missing or extra:
        raise SchemaError(f"{kind} table: missing columns {missing}, unknown columns {extra}")
    n = None
    arrays = []
    for field in schema:
        value = columns.get(field.name)
        if value is None:
            if n is None:
                n = len(next(iter(columns.values())))
            arrays.append(pa.nulls(n, field.type))
            continue
        arrays.append(_to_arrow(value, field))
        n = len(arrays[-1])
    return pa.Table.from_arrays(arrays, schema=_stamped(kind))


def _to_arrow(value, field: pa.Field) -> pa.Array:
    if isinstance(value, (pa.Array, pa.ChunkedArray)):
        return value.cast(field.type) if value.type != field.type else value
    if isinstance(value, np.ndarray) and pa.types.is_fixed_size_list(field.type):
        arr = np.ascontiguousarray(value, dtype=np.float32)
        if field.name == "keypoints":
            return keypoints_to_arrow(arr)
        size = field.type.list_size
        if arr.ndim != 2 or arr.shape[1] != size:
            raise SchemaError(f"column {field.name}: expected (N, {size}) array, got {arr.shape}")
        return pa.FixedSizeListArray.from_arrays(_float32_array(arr), size)
    direct = _from_buffers(value, field.type)
    if direct is not None:
        return direct
    try:
        return pa.array(value, type=field.type, from_pandas=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise SchemaError(f"column {field.name}: {exc}") from exc


# ``pa.array`` on a list or an array first checks whether it is a pandas object, and that check imports pandas
# when it is installed: once per process, ~0.2 s alone, ~1 s beside the threads of a GPU extraction, whose
# interpreter lock it takes turns with (the first part file's table). The common columns are built from their
# buffers instead, which no such check precedes; anything else (other types, unusual values) goes to ``pa.array``.
_INTEGERS = {pa.int8(): np.int8, pa.int16(): np.int16, pa.int32(): np.int32, pa.int64(): np.int64}
_OFFSETS_LIMIT = 2**31 - 1


def _float32_array(arr: np.ndarray) -> pa.Array:
    """A float32 array's values as a flat Arrow array, sharing its memory."""
    flat = np.ascontiguousarray(arr, dtype=np.float32).reshape(-1)
    return pa.Array.from_buffers(pa.float32(), len(flat), [None, pa.py_buffer(flat)])


def _validity(valid: np.ndarray) -> pa.Buffer | None:
    return None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))


def _from_buffers(value, arrow_type: pa.DataType) -> pa.Array | None:
    """``value`` as an Arrow array of ``arrow_type`` built from buffers: a 1-D integer array of that width, or a
    list of ``str``/``None`` (string) or of ``int``/``None`` within the type's range (integers); None for any other
    value, which ``pa.array`` converts (or refuses) as it always does."""
    dtype = _INTEGERS.get(arrow_type)
    if isinstance(value, np.ndarray):
        if dtype is None or value.dtype != dtype or value.ndim != 1:
            return None
        data = np.ascontiguousarray(value)
        return pa.Array.from_buffers(arrow_type, len(data), [None, pa.py_buffer(data)])
    if not isinstance(value, list):
        return None
    if arrow_type == pa.string():
        buffers = _string_buffers(value)
    elif dtype is not None:
        buffers = _integer_buffers(value, dtype)
    else:
        return None
    if buffers is None:
        return None
    valid = np.fromiter((v is not None for v in value), dtype=bool, count=len(value))
    return pa.Array.from_buffers(arrow_type, len(value), [_validity(valid), *buffers])


def _string_buffers(values: list) -> list[pa.Buffer] | None:
    """The offsets and data buffers of a list of ``str``/``None``; None for anything else, lone surrogates, or
    more bytes than 32-bit offsets hold."""
    if not all(v is None or type(v) is str for v in values):
        return None
    try:
        encoded = [b"" if v is None else v.encode() for v in values]
    except UnicodeEncodeError:  # lone surrogates: pa.array says what it makes of them
        return None
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    if lengths.sum() > _OFFSETS_LIMIT:
        return None
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return [pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))]


def _integer_buffers(values: list, dtype: type) -> list[pa.Buffer] | None:
    """The data buffer of a list of ``int``/``None`` within ``dtype``'s range (a null's slot 0); None otherwise."""
    if not all(v is None or type(v) is int for v in values):
        return None
    ints = [0 if v is None else v for v in values]
    bounds = np.iinfo(dtype)
    if ints and (min(ints) < bounds.min or max(ints) > bounds.max):
        return None
    return [pa.py_buffer(np.asarray(ints, dtype=dtype))]


def keypoints_to_arrow(xy: np.ndarray) -> pa.FixedSizeListArray:
    """``(N, 18, 2)`` float32 array → Arrow ``list<list<float32, 2>, 18>`` without copying per row."""
    xy = np.ascontiguousarray(xy, dtype=np.float32)
    if xy.ndim != 3 or xy.shape[1:] != (NUM_KEYPOINTS, 2):
        raise SchemaError(f"keypoints must be (N, {NUM_KEYPOINTS}, 2), got {xy.shape}")
    inner = pa.FixedSizeListArray.from_arrays(_float32_array(xy), 2)
    return pa.FixedSizeListArray.from_arrays(inner, NUM_KEYPOINTS)


def keypoints_to_numpy(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Arrow keypoints column → ``(N, 18, 2)`` float32 array."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    flat = column.flatten().flatten().to_numpy(zero_copy_only=False)
    return flat.astype(np.float32, copy=False).reshape(-1, NUM_KEYPOINTS, 2)


def fixed_list_to_numpy(column: pa.Array | pa.ChunkedArray, fill: float = np.nan) -> np.ndarray:
    """Arrow ``list<float32, K>`` column (``scores``, ``box``) → ``(N, K)`` float32, null rows as ``fill``."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    size = column.type.list_size
    out = np.full((len(column), size), fill, dtype=np.float32)
    valid = ~column.is_null().to_numpy(zero_copy_only=False)
    # flatten() skips null list slots, so it lines up with the valid rows
    out[valid] = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, size)
    return out


def empty_keypoints(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints and scores for ``n`` rows without a person: all ``(-1, -1)``, scores 0."""
    return np.full((n, NUM_KEYPOINTS, 2), MISSING, np.float32), np.zeros((n, NUM_KEYPOINTS), np.float32)


def write_table(table: pa.Table, path: str | os.PathLike, kind: str) -> None:
    """Write ``table`` (of schema ``kind``) to Parquet atomically, stamped with table kind and version."""
    expected = SCHEMAS[kind]
    if not table.schema.equals(expected, check_metadata=False):
        try:
            table = table.select(expected.names).cast(expected)
        except (KeyError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise SchemaError(f"{path}: table does not match the {kind} schema: {exc}") from exc
    table = table.replace_schema_metadata(_stamped(kind).metadata)
    with atomic_write(path) as f:
        pq.write_table(table, f, compression="zstd")


def check_file_metadata(metadata: dict | None, path: str | os.PathLike, kind: str) -> int:
    """Check the ``pgpig.*`` key-value metadata of a file; return its schema version."""
    metadata = metadata or {}
    found_kind = metadata.get(META_TABLE, b"").decode()
    raw_version = metadata.get(META_VERSION, b"").decode()
    if not found_kind or not raw_version:
        raise SchemaError(f"{path}: not a pgpig table (no {META_TABLE.decode()} metadata)")
    if found_kind != kind:
        raise SchemaError(f"{path}: holds a {found_kind!r} table, expected {kind!r}")
    try:
        version = int(raw_version)
    except ValueError:
        raise SchemaError(f"{path}: schema version {raw_version!r} is not an integer") from None
    if version not in SUPPORTED_VERSIONS:
        raise SchemaError(
            f"{path}: schema version {version} is not supported by this pgpig (knows "
            f"{sorted(SUPPORTED_VERSIONS)}); upgrade pgpig or re-run the stage that wrote it"
        )
    return version


def read_table(path: str | os.PathLike, kind: str, columns: list[str] | None = None) -> pa.Table:
    """Read one Parquet file of table ``kind``, checking its stamp and schema."""
    path = Path(path)
    try:
        pf = pq.ParquetFile(path)
    except FileNotFoundError:
        raise SchemaError(f"{path}: file not found") from None
    except (OSError, pa.ArrowInvalid) as exc:
        raise SchemaError(f"{path}: not a readable Parquet file ({exc})") from exc
    check_file_metadata(pf.schema_arrow.metadata, path, kind)
    expected = SCHEMAS[kind]
    absent = [n for n in expected.names if n not in pf.schema_arrow.names]
    if absent:
        raise SchemaError(f"{path}: {kind} table lacks columns {absent}")
    return pf.read(columns=columns)

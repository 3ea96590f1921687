"""``pgpig-data pair``: filter the keypoints table and make ordered (source, target) pairs, then write shards.

The protocol is PATN's (Zhu et al., "Progressive Pose Attention Transfer for Person Image Generation",
CVPR 2019, arXiv 1904.03349), whose pair lists come from the Deformable GAN script ``create_pairs_dataset.py``:
an image is kept when both shoulders and both hips are visible, and the pairs of a split are all ordered
permutations of two different images of one identity. ``docs/pairing.md`` gives the rules, the published
counts they reproduce, and what the manifest records.

``select_images`` (the filters, in ``FILTER_ORDER``), ``make_pairs`` (every ordered pair within an identity,
with optional seeded caps) and ``pairs_from_lists`` (a published PATN pair CSV) are pure and vectorised;
``run_pair`` chains them and writes ``out/<split>`` with ``pipeline.shards.write_shard_set``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import PipelineError
from schemas.files import sha256_file
from schemas.keypoints import KEYPOINT_NAMES, MISSING
from schemas.manifest import MANIFEST_NAME
from schemas.tables import fixed_list_to_numpy, keypoints_to_numpy

FILTER_ORDER = ("status", "exclude_ids", "split", "persons", "min_visible", "required_joints", "min_height",
                "duplicates")
"""The filters of ``select_images`` in the order they apply; removal counts are reported in this order."""

FILTER_OPTIONS = {"persons": "--max-persons", "min_visible": "--min-visible", "required_joints": "--required-joints",
                  "min_height": "--min-height"}
"""The ``pgpig-data pair`` option that loosens each filter that has one."""

PATN_JOINTS = ("r_shoulder", "l_shoulder", "r_hip", "l_hip")
"""PATN's (Deformable GAN's) validity rule: both shoulders and both hips visible."""

PATN_MARKET_TEST_PAIRS = 12_000
"""PATN samples this many Market-1501 test pairs (``images_for_test`` in ``create_pairs_dataset.py``)."""

DEFAULT_SIZES = {"market1501": (128, 64), "deepfashion": (256, 256), "folder": (256, 256)}
"""Stored ``(height, width)`` per data set: the native sizes, and 256×256 for any other folder (a fixed
size rather than the median of the images, so the train and test splits always agree)."""

MAX_CANDIDATES = 200_000_000
"""Above this many pairs in memory (16 bytes each) pairing refuses to materialise them all."""


@dataclass
class FilterConfig:
    """Which images of the keypoints table a split keeps. ``defaults_for`` gives the per-data-set values."""

    statuses: tuple[str, ...] = ("ok",)
    """Keep rows whose ``status`` is one of these."""
    max_persons: int | None = 1
    """The dominant-single-person rule: keep rows with ``n_persons`` ≤ this; None: no limit. Rows whose
    ``source`` is ``annotations`` always pass (they have exactly one annotated person)."""
    min_visible: int | None = None
    """Keep rows with at least this many visible keypoints; None: no minimum."""
    required_joints: tuple[str, ...] | None = PATN_JOINTS
    """Joints (``KEYPOINT_NAMES``) that must all be visible; None or empty: none required."""
    min_height: float = 0.0
    """Minimum height of the visible keypoints' extent (max y − min y) as a fraction of the image height."""
    exclude_ids: tuple[str, ...] = ()
    """Identities never kept (Market-1501 ``-1`` junk and ``0000`` distractors, already ``skipped`` by
    extract; kept here as a safety for tables made another way)."""

    def check(self) -> None:
        unknown = [j for j in (self.required_joints or ()) if j not in KEYPOINT_NAMES]
        if unknown:
            raise PipelineError(f"unknown joint(s) {unknown} in required joints; names are {list(KEYPOINT_NAMES)}")
        if self.min_visible is not None and not 0 <= self.min_visible <= len(KEYPOINT_NAMES):
            raise PipelineError(f"min_visible {self.min_visible} must be within 0..{len(KEYPOINT_NAMES)}")
        if not 0.0 <= self.min_height <= 1.0:
            raise PipelineError(f"min_height {self.min_height} must be a fraction of the image height (0..1)")
        if self.max_persons is not None and self.max_persons < 1:
            raise PipelineError(f"max_persons {self.max_persons} must be at least 1 (None: no limit)")


@dataclass
class PairConfig:
    """How pairs are drawn within the identities of a split."""

    max_pairs_per_identity: int | None = None
    """Cap per identity, sampled with ``seed``; None: all ``k(k-1)`` ordered pairs of ``k`` images."""
    max_pairs: int | None = None
    """Cap in total, sampled with ``seed`` after the per-identity cap; None: no cap."""
    seed: int = 0

    def check(self) -> None:
        for name in ("max_pairs_per_identity", "max_pairs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise PipelineError(f"{name} {value} must be at least 1 (None: no cap)")


def defaults_for(dataset: str, split: str) -> tuple[FilterConfig, PairConfig]:
    """The default filter and pairing of a data set's split, mirroring PATN where it has a protocol.

    - Market-1501 and DeepFashion: PATN's rule (shoulders and hips visible), no minimum count beyond
      it (so the published annotations give the published counts); Market excludes ids ``-1``/``0000``;
      Market test samples 12,000 pairs, everything else keeps all permutations.
    - one person, except Market-1501: its crops come from a pedestrian detector and often hold part of a
      neighbour, which a pose model counts and PATN's lists keep; the chosen person is the largest.
    - folder (any other data, usually detector output on varied photos): the same joints plus at
      least 8 visible keypoints, so a pair's target pose has enough of a body to learn from.
    """
    if split not in ("train", "test"):
        raise PipelineError(f"split {split!r} must be train or test")
    filt = FilterConfig()
    pairing = PairConfig()
    if dataset == "market1501":
        filt.exclude_ids = ("-1", "0000")
        filt.max_persons = None
        if split == "test":
            pairing.max_pairs = PATN_MARKET_TEST_PAIRS
    elif dataset == "folder":
        filt.min_visible = 8
    elif dataset != "deepfashion":
        raise PipelineError(f"unknown data set {dataset!r}; one of market1501, deepfashion, folder")
    return filt, pairing


def apply_overrides(config: Any, overrides: dict[str, Any], what: str) -> Any:
    """A copy of dataclass ``config`` with ``overrides`` set; an unknown key is an error."""
    known = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise PipelineError(f"unknown {what} setting(s) {unknown}; known: {sorted(known)}")
    out = dataclasses.replace(config, **overrides)
    out.check()
    return out


# ---------------------------------------------------------------- filter


def _column(table: pa.Table, name: str) -> np.ndarray:
    return table[name].to_numpy(zero_copy_only=False)


def _is_in(table: pa.Table, name: str, values: tuple[str, ...]) -> np.ndarray:
    col = table[name]
    if not values:
        return np.zeros(table.num_rows, bool)
    hit = pc.is_in(col, value_set=pa.array(list(values), type=col.type))
    return pc.fill_null(hit, False).to_numpy(zero_copy_only=False)


def select_images(table: pa.Table, split: str, cfg: FilterConfig) -> tuple[np.ndarray, dict[str, int]]:
    """Rows of ``table`` (keypoints schema) that ``split`` keeps, and how many rows each filter removed.

    Returns ``(indices, removed)``: ``indices`` int64 row numbers ordered by image path (so the global
    image index does not depend on the order of the parts), ``removed`` ``{filter: rows}`` in
    ``FILTER_ORDER``, each counting rows still present when that filter applied. ``duplicates`` keeps the
    first image path of every content hash within the split.
    """
    cfg.check()
    n = table.num_rows
    keep = np.ones(n, bool)
    removed: dict[str, int] = {}

    def apply(name: str, passes: np.ndarray) -> None:
        nonlocal keep
        removed[name] = int(np.count_nonzero(keep & ~passes))
        keep &= passes

    apply("status", _is_in(table, "status", tuple(cfg.statuses)))
    apply("exclude_ids", ~_is_in(table, "identity", tuple(cfg.exclude_ids)))
    apply("split", pc.fill_null(pc.equal(table["split"], split), False).to_numpy(zero_copy_only=False))

    if cfg.max_persons is None:
        apply("persons", np.ones(n, bool))
    else:
        annotated = _is_in(table, "source", ("annotations",))
        apply("persons", annotated | (_column(table, "n_persons") <= cfg.max_persons))

    xy = keypoints_to_numpy(table["keypoints"])  # (N, 18, 2)
    visible = ~np.all(xy == MISSING, axis=-1)  # (N, 18)
    # n_visible is stored, but counting here keeps the rule tied to the coordinates the pairs will use
    apply("min_visible", visible.sum(axis=1) >= (cfg.min_visible or 0))
    joints = [KEYPOINT_NAMES.index(j) for j in (cfg.required_joints or ())]
    apply("required_joints", visible[:, joints].all(axis=1) if joints else np.ones(n, bool))

    if cfg.min_height > 0:
        y = xy[..., 1]
        top = np.where(visible, y, np.inf).min(axis=1)
        bottom = np.where(visible, y, -np.inf).max(axis=1)
        extent = np.where(visible.any(axis=1), bottom - top, 0.0)
        height = pc.fill_null(table["height"], 0).to_numpy(zero_copy_only=False).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            tall = np.where(height > 0, extent / height, 0.0) >= cfg.min_height
        apply("min_height", tall)
    else:
        apply("min_height", np.ones(n, bool))

    # order the survivors by image path, then keep the first of each content hash
    rows = np.flatnonzero(keep)
    kept_images = table["image"].take(pa.array(rows))
    rows = rows[pc.sort_indices(kept_images).to_numpy()]
    hashes = pc.dictionary_encode(table["content_hash"].take(pa.array(rows)).combine_chunks())
    codes = hashes.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    nulls = hashes.is_null().to_numpy(zero_copy_only=False)
    codes[nulls] = -1 - np.arange(np.count_nonzero(nulls))  # an unknown hash is never a duplicate
    _, first = np.unique(codes, return_index=True)
    first.sort()
    removed["duplicates"] = len(rows) - len(first)
    return rows[first].astype(np.int64), removed


def filter_labels(cfg: FilterConfig) -> dict[str, str]:
    """What each filter of ``FILTER_ORDER`` removes, in words, with ``cfg``'s values."""
    return {
        "status": f"status not {'/'.join(cfg.statuses)}",
        "exclude_ids": f"excluded identity ({', '.join(cfg.exclude_ids) or 'none'})",
        "split": "in the other split",
        "persons": f"more than {cfg.max_persons} person(s)" if cfg.max_persons is not None else "persons (no limit)",
        "min_visible": f"fewer than {cfg.min_visible} visible keypoints" if cfg.min_visible
        else "visible keypoints (no minimum)",
        "required_joints": "a required joint not visible" if cfg.required_joints else "required joints (none)",
        "min_height": f"keypoints shorter than {cfg.min_height:g} of the image" if cfg.min_height > 0
        else "keypoint height (no minimum)",
        "duplicates": "duplicate file (same content hash)",
    }


def funnel_lines(total: int, removed: dict[str, int], cfg: FilterConfig) -> list[str]:
    """The filter funnel as terminal lines: rows in, then each filter's removal and the rows left after it."""
    labels = filter_labels(cfg)
    width = max(len(label) for label in labels.values())
    lines = [f"  {'filter':<{width}}  {'removed':>8}  {'left':>8}",
             f"  {'keypoints table rows':<{width}}  {'':>8}  {total:>8}"]
    left = total
    for name in FILTER_ORDER:
        left -= removed[name]
        lines.append(f"  {labels[name]:<{width}}  {removed[name]:>8}  {left:>8}")
    return lines


def empty_selection_message(where: Path | str, split: str, total: int, removed: dict[str, int],
                            cfg: FilterConfig) -> str:
    """One line saying which filters removed the rows of ``split`` and how to get some back."""
    labels = filter_labels(cfg)
    counts = ", ".join(f"{labels[name]} {removed[name]}" for name in FILTER_ORDER if removed[name])
    left = total
    emptied = None  # the filter that removed the last rows: the one to loosen
    for name in FILTER_ORDER:
        if left and left == removed[name]:
            emptied = name
        left -= removed[name]
    if emptied is None:
        advice = "the keypoints table is empty; run `pgpig-data extract RAW` again"
    elif emptied == "status":
        advice = "extract found no usable person in any; `pgpig-data report` shows the reasons per image"
    elif emptied == "split":
        advice = (f"the table has no {split} rows; check --split (a folder layout's split is drawn at extract "
                  "by its --seed)")
    elif emptied in FILTER_OPTIONS:
        advice = f"loosen {FILTER_OPTIONS[emptied]}"
    else:
        advice = "check the filter settings"
    return f"{where}: no {split} image passes the filters (of {total} rows: {counts}); {advice}"


# ---------------------------------------------------------------- pair


def count_pairs(group_sizes: np.ndarray) -> int:
    """PATN's count of ordered pairs: ``sum k(k-1)`` over identities of ``k`` images."""
    k = np.asarray(group_sizes, dtype=np.int64)
    return int((k * (k - 1)).sum())


def _sample_within(n: int, groups: int, cap: int, rng: np.random.Generator) -> np.ndarray:
    """``(groups, cap)``: for each of ``groups`` identities, ``cap`` distinct indices out of ``n``."""
    if n > 1_000_000:
        # rare, huge identities: per-identity sampling without building n keys each
        return np.stack([rng.choice(n, size=cap, replace=False) for _ in range(groups)])
    out = np.empty((groups, cap), np.int64)
    chunk = max(1, 16_000_000 // n)  # bound the random keys in memory
    for lo in range(0, groups, chunk):
        keys = rng.random((min(chunk, groups - lo), n))
        out[lo:lo + chunk] = np.argpartition(keys, cap - 1, axis=1)[:, :cap] if cap < n else np.argsort(keys, axis=1)
    return out


def _pair_numbers(sizes: np.ndarray, cfg: PairConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The chosen pairs as ``(group, p)``: identity group and pair number ``p`` in ``0..k(k-1)-1`` within it.

    ``sizes`` holds the image count ``k`` of each identity group (all at least 2); the caps of ``cfg`` are
    applied by sampling numbers with ``rng``, never by building the candidates they leave out.
    """
    n = sizes * (sizes - 1)  # candidates per identity
    cap = cfg.max_pairs_per_identity
    if cap is None or not (n > cap).any():
        take = n
    else:
        take = np.minimum(n, cap)
    total = int(take.sum())
    if total > MAX_CANDIDATES and (cfg.max_pairs is None or cfg.max_pairs > MAX_CANDIDATES):
        raise PipelineError(f"{total:,} pairs would not fit in memory; set --max-pairs or --max-pairs-per-identity")

    if take is n:
        if cfg.max_pairs is not None and total > cfg.max_pairs:
            # uniform over all candidates without building them: draw candidate numbers directly
            chosen = np.sort(rng.choice(total, size=cfg.max_pairs, replace=False))
            group = np.searchsorted(np.cumsum(n), chosen, side="right")
            p = chosen - (np.cumsum(n) - n)[group]
        else:
            group = np.repeat(np.arange(len(n)), n)
            p = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(n) - n, n)
    else:
        group_parts, p_parts = [], []
        full = n <= cap
        idx = np.flatnonzero(full)
        group_parts.append(np.repeat(idx, n[idx]))
        p_parts.append(np.arange(int(n[idx].sum()), dtype=np.int64) - np.repeat(np.cumsum(n[idx]) - n[idx], n[idx]))
        # identities over the cap, grouped by size so each size samples as one array
        capped = np.flatnonzero(~full)
        for k in np.unique(sizes[capped]):
            idx = capped[sizes[capped] == k]
            sample = _sample_within(int(k * (k - 1)), len(idx), cap, rng)
            group_parts.append(np.repeat(idx, cap))
            p_parts.append(sample.reshape(-1))
        group = np.concatenate(group_parts)
        p = np.concatenate(p_parts)
        if cfg.max_pairs is not None and len(p) > cfg.max_pairs:
            chosen = rng.choice(len(p), size=cfg.max_pairs, replace=False)
            group, p = group[chosen], p[chosen]
    return group, p


def make_pairs(identity_codes: np.ndarray, cfg: PairConfig) -> np.ndarray:
    """Ordered ``(source, target)`` pairs of positions in ``identity_codes`` that share an identity.

    Args:
        identity_codes: ``(N,)`` integer identity of each image (any integers; equal means same identity).
        cfg: caps and seed. Without caps the result is every ordered pair of two different images of one
            identity (``count_pairs``); a per-identity cap samples that many of an identity's pairs, the
            total cap then samples the rest, both with ``np.random.default_rng(cfg.seed)``.

    Returns:
        ``(P, 2)`` int64 pairs sorted by source then target; the same inputs and seed give the same pairs.

    A pair is addressed as (identity group, number ``p`` in ``0..k(k-1)-1``), so sampling draws numbers and
    only the chosen pairs are built: ``p`` decodes to source ``p // (k-1)`` and target ``p % (k-1)`` skipping
    the source. No loop runs over pairs or images.
    """
    cfg.check()
    codes = np.asarray(identity_codes)
    if codes.ndim != 1:
        raise PipelineError(f"identity codes must be one-dimensional, got shape {codes.shape}")
    rng = np.random.default_rng(cfg.seed)
    members = np.argsort(codes, kind="stable")  # images grouped by identity, in index order inside a group
    if len(codes) == 0:
        return np.zeros((0, 2), np.int64)
    sorted_codes = codes[members]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    sizes = np.diff(np.r_[starts, len(codes)]).astype(np.int64)
    paired = sizes >= 2
    starts, sizes = starts[paired], sizes[paired]
    group, p = _pair_numbers(sizes, cfg, rng)

    k1 = sizes[group] - 1
    a = p // k1
    r = p % k1
    b = r + (r >= a)  # skip the source itself
    base = starts[group]
    # one int64 key per pair sorts faster than a lexsort over two columns
    key = np.sort(members[base + a].astype(np.int64) * len(codes) + members[base + b])
    return np.stack(np.divmod(key, len(codes)), axis=1)


def identity_codes(table: pa.Table, rows: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Integer identity codes of ``rows`` of ``table`` and the identity of each code."""
    encoded = pc.dictionary_encode(table["identity"].take(pa.array(rows)).combine_chunks())
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64), encoded.dictionary.to_pylist()


def pairs_from_lists(table_names: list[str | None] | np.ndarray, pairs_csv: str | os.PathLike
                     ) -> tuple[np.ndarray, dict[str, Any]]:
    """Pairs of a PATN pair CSV as indices into ``table_names`` (the PATN names of the kept images).

    Returns ``(pairs, report)``: ``(P, 2)`` int64 pairs in the CSV's order, and a report with the CSV's
    ``rows``, the ``matched`` pairs, ``unmatched_pairs`` (a side names no kept image) and
    ``unmatched_names`` (distinct such names) with up to 10 ``examples``: never silently dropped.
    """
    from schemas.patn import read_pairs

    listed = read_pairs(pairs_csv)
    names = pa.array(list(table_names), type=pa.string())
    counts = pc.value_counts(names.drop_null())
    dup = counts.filter(pc.greater(counts.field("counts"), 1)).field("values").to_pylist()
    if dup:
        raise PipelineError(f"{pairs_csv}: {len(dup)} PATN names belong to several kept images, e.g. {dup[:3]}; "
                            "the list cannot be matched unambiguously")
    if listed:
        src_names, tgt_names = (pa.array(list(col), type=pa.string()) for col in zip(*listed, strict=True))
    else:
        src_names = tgt_names = pa.array([], type=pa.string())
    src = pc.index_in(src_names, value_set=names)
    tgt = pc.index_in(tgt_names, value_set=names)
    ok = pc.and_(pc.is_valid(src), pc.is_valid(tgt)).to_numpy(zero_copy_only=False)
    pairs = np.stack([pc.fill_null(src, -1).to_numpy(zero_copy_only=False),
                      pc.fill_null(tgt, -1).to_numpy(zero_copy_only=False)], axis=1).astype(np.int64)
    missing = pc.unique(pa.concat_arrays([src_names.filter(pc.is_null(src)), tgt_names.filter(pc.is_null(tgt))]))
    missing = sorted(missing.to_pylist())
    report = {
        "csv": str(pairs_csv),
        "rows": len(listed),
        "matched": int(ok.sum()),
        "unmatched_pairs": int((~ok).sum()),
        "unmatched_names": len(missing),
        "examples": missing[:10],
    }
    return pairs[ok], report


# ---------------------------------------------------------------- the run


@dataclass
class PairRunConfig:
    """Everything ``pgpig-data pair`` can be told; defaults are the CLI's."""

    split: str
    """``train`` or ``test``."""
    keypoints_dir: Path = Path("keypoints")
    """Folder of the keypoint parts written by extract."""
    run_file: Path = Path("extract.json")
    """The extract run record (raw root, model); its path, sha256 and model go into the manifest."""
    out: Path = Path("shards")
    """Shard root; the split is written to ``out/<split>``."""
    format: str = "parquet"
    """``parquet`` (encoded image bytes) or ``hdf5`` (decoded uint8 arrays)."""
    size: tuple[int, int] | None = None
    """Stored ``(height, width)``; None: ``DEFAULT_SIZES`` of the data set."""
    images_per_shard: int = 10_000
    seed: int = 0
    """Pairing seed (the shard writer gets it too)."""
    filter: dict[str, Any] = field(default_factory=dict)
    """``FilterConfig`` fields that replace the data set's defaults."""
    pairing: dict[str, Any] = field(default_factory=dict)
    """``PairConfig`` fields (but the seed) that replace the data set's defaults."""
    pairs_csv: Path | None = None
    """A PATN pair CSV used instead of drawing pairs (published lists)."""
    compression: str | None = None
    overwrite: bool = False
    dask_workers: int = 0
    """Local Dask worker processes writing shard files in parallel; 0 writes them here with threads."""
    scheduler: str | None = None
    """Address of an existing Dask cluster to write shard files on (shared storage assumed)."""


def _check_extracted(run_file: Path, keypoints_dir: Path) -> None:
    """Refuse, naming every missing input, when extract has not written ``run_file`` or ``keypoints_dir``."""
    missing = []
    if not run_file.is_file():
        missing.append(f"no extract run record {run_file}")
    if not keypoints_dir.is_dir():
        missing.append(f"no keypoints folder {keypoints_dir}/")
    if missing:
        raise PipelineError(f"{' and '.join(missing)}: run `pgpig-data extract RAW` here first (or pass --run-file "
                            "and --keypoints where it wrote them)")


def _extract_record(run_file: Path) -> dict[str, Any]:
    try:
        record = json.loads(run_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PipelineError(f"{run_file}: not valid JSON ({exc}); re-run `pgpig-data extract`") from None
    if not record.get("complete"):
        raise PipelineError(f"{run_file}: the extract run did not finish; run `pgpig-data extract` again to resume")
    return record


def _dataset_of(table: pa.Table, where: Path) -> str:
    datasets = pc.unique(table["dataset"]).to_pylist()
    if len(datasets) != 1:
        raise PipelineError(f"{where}: the keypoints table mixes data sets {sorted(datasets)}; extract each separately")
    return datasets[0]


def _settings(cfg: PairRunConfig, dataset: str) -> tuple[FilterConfig, PairConfig]:
    """The data set's default filter and pairing with ``cfg``'s overrides, the pairing seed from ``cfg.seed``."""
    filt, pairing = defaults_for(dataset, cfg.split)
    filt = apply_overrides(filt, cfg.filter, "filter")
    if "seed" in cfg.pairing:
        raise PipelineError("set the pairing seed with PairRunConfig.seed (--seed), not in pairing")
    pairing = apply_overrides(pairing, {**cfg.pairing, "seed": cfg.seed}, "pairing")
    return filt, pairing


def _listed_pairs(cfg: PairRunConfig, images: list[str], patn_names: list[str | None], codes: np.ndarray,
                  pairing_record: dict[str, Any], log) -> np.ndarray:
    """``(P, 2)`` pairs of the kept images listed in ``cfg.pairs_csv``; what was left out goes to the record."""
    # a published list names images by their PATN name; the file name stands in where there is none
    basenames = [Path(p).name for p in images]
    names = [n if n is not None else b for n, b in zip(patn_names, basenames, strict=True)]
    pairs, report = pairs_from_lists(names, cfg.pairs_csv)
    cross = codes[pairs[:, 0]] != codes[pairs[:, 1]]
    report["cross_identity"] = int(cross.sum())
    pairs = pairs[~cross]
    pairing_record.update(source="csv", pairs_csv=str(Path(cfg.pairs_csv).resolve()),
                          pairs_csv_sha256=sha256_file(cfg.pairs_csv), unmatched=report)
    if report["unmatched_pairs"] or report["cross_identity"]:
        log(f"warning: {report['unmatched_pairs']} of {report['rows']} listed pairs name "
            f"{report['unmatched_names']} images that are not among the kept {cfg.split} images, e.g. "
            f"{', '.join(report['examples'][:3])}; {report['cross_identity']} pairs cross identities; "
            "all left out and counted in the manifest's pairing.unmatched")
    return pairs


def _shard_images(table: pa.Table, rows: np.ndarray, codes: np.ndarray, identities: list[str],
                  images: list[str], patn_names: list[str | None]) -> list:
    """A ``ShardImage`` per kept row: its keys, identity, size and keypoints, in ``rows`` order."""
    from pipeline.shards import ShardImage

    take = pa.array(rows)
    xy = keypoints_to_numpy(table["keypoints"].take(take))
    scores = fixed_list_to_numpy(table["scores"].take(take), fill=0.0)
    hashes = table["content_hash"].take(take).to_pylist()
    widths = table["width"].take(take).to_pylist()
    heights = table["height"].take(take).to_pylist()
    return [
        ShardImage(image=images[i], patn_name=patn_names[i], identity=identities[codes[i]],
                   content_hash=hashes[i], width=int(widths[i]), height=int(heights[i]), keypoints=xy[i],
                   scores=scores[i])
        for i in range(len(rows))
    ]


def _extract_summary(run_file: Path, record: dict[str, Any]) -> dict[str, Any]:
    """What the manifest records of the extract run: its record file, raw root and model."""
    settings = record.get("settings", {})
    return {
        "path": str(run_file.resolve()),
        "sha256": sha256_file(run_file),
        "raw": record.get("raw"),
        "backend": settings.get("backend"),
        "model": settings.get("model"),
        "model_sha256": settings.get("model_sha256"),
        "kpt_threshold": settings.get("kpt_threshold"),
    }


def _filter_record(filt: FilterConfig, removed: dict[str, int], kept: int) -> dict[str, Any]:
    """The manifest's ``filter``: the settings as used (tuples as lists), the removal counts, the images kept."""
    record = {**dataclasses.asdict(filt), "removed": removed, "kept": kept}
    for key in ("statuses", "required_joints", "exclude_ids"):
        if record[key] is not None:
            record[key] = list(record[key])
    return record


def run_pair(cfg: PairRunConfig, progress: bool = False, log=print):
    """Filter, pair and write ``cfg.out/cfg.split``; returns the written ``Manifest``."""
    from pipeline.keypoints import read_keypoints
    from pipeline.shards import write_shard_set

    started = time.perf_counter()
    target = Path(cfg.out) / cfg.split
    if (target / MANIFEST_NAME).is_file() and not cfg.overwrite:
        # said before any work is done; write_shard_set would refuse too, but only after filtering and pairing
        raise PipelineError(f"{target} already holds a shard set ({MANIFEST_NAME}); pass --overwrite to replace it")
    run_file = Path(cfg.run_file)
    _check_extracted(run_file, Path(cfg.keypoints_dir))
    record = _extract_record(run_file)
    table = read_keypoints(cfg.keypoints_dir)
    dataset = _dataset_of(table, Path(cfg.keypoints_dir))
    filt, pairing = _settings(cfg, dataset)

    rows, removed = select_images(table, cfg.split, filt)
    log(f"{cfg.keypoints_dir}: {table.num_rows} rows ({dataset}); {cfg.split}: kept {len(rows)} images")
    for line in funnel_lines(table.num_rows, removed, filt):
        log(line)
    if len(rows) == 0:
        raise PipelineError(empty_selection_message(cfg.keypoints_dir, cfg.split, table.num_rows, removed, filt))

    codes, identities = identity_codes(table, rows)
    images = table["image"].take(pa.array(rows)).to_pylist()
    patn_names = table["patn_name"].take(pa.array(rows)).to_pylist()
    pairing_record: dict[str, Any] = {**dataclasses.asdict(pairing), "candidates": count_pairs(np.bincount(codes))}
    if cfg.pairs_csv is not None:
        pairs = _listed_pairs(cfg, images, patn_names, codes, pairing_record, log)
    else:
        pairs = make_pairs(codes, pairing)
        pairing_record.update(source="generated")
    log(f"  {len(pairs)} pairs over {len(identities)} identities (all ordered pairs: "
        f"{pairing_record['candidates']})")

    shard_images = _shard_images(table, rows, codes, identities, images, patn_names)
    pair_identities = [identities[c] for c in codes[pairs[:, 0]]] if len(pairs) else []
    size = tuple(cfg.size) if cfg.size is not None else DEFAULT_SIZES[dataset]
    manifest = write_shard_set(
        target, split=cfg.split, dataset=dataset, raw_root=record["raw"], images=shard_images,
        pairs=pairs, pair_identities=pair_identities, format=cfg.format, size=size,
        images_per_shard=cfg.images_per_shard, seed=cfg.seed, filter=_filter_record(filt, removed, len(rows)),
        pairing=pairing_record, extract=_extract_summary(run_file, record), compression=cfg.compression,
        progress=progress, overwrite=cfg.overwrite, dask_workers=cfg.dask_workers, scheduler=cfg.scheduler,
    )
    log(f"wrote {target}: {len(shard_images)} images, {len(pairs)} pairs, "
        f"{size[0]}x{size[1]} {cfg.format} in {time.perf_counter() - started:.1f} s")
    return manifest

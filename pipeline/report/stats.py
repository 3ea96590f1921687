"""The numbers of a report: counts and histograms over a whole keypoints table or shard set, vectorised.

Every function here is pure (tables and arrays in, plain JSON-ready dicts out) and runs over all rows with
numpy/pyarrow, with no Python loop over rows. Pictures and plots are made from these dicts elsewhere
(``pipeline.report.pictures``, ``pipeline.report.plots``), never from the tables, so the HTML shows exactly
the numbers of ``report.json``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.keypoints import KEYPOINT_NAMES, NUM_KEYPOINTS, visible_mask
from schemas.tables import fixed_list_to_numpy, keypoints_to_numpy

TOP_REASONS = 10
"""Reasons listed per data set and split (the rest are summed into ``other``)."""
EXAMPLES = 3
"""Example file names per reason."""
SCORE_BINS = 20
"""Bins of the keypoint confidence histograms over [0, 1]."""
SIZE_BINS = 20
"""Bins of the person height histogram over [0, 1] of the image height (taller boxes go to the last bin)."""
POSITION_BINS = 10
"""Bins per axis of the person centre histogram over the image."""
WORST = 8
"""Images per worst-case kind."""
DETECTED = ("ok", "no_person")
"""Statuses of images the pose backend (or annotation) looked at: the persons-per-image counts cover these."""


def codes(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, list]:
    """Integer code of every value of a string column (null is a value of its own) and the value of each code."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    encoded = pc.dictionary_encode(column, null_encoding="encode")
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64), encoded.dictionary.to_pylist()


def _first_k(keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Distinct ``keys`` with their counts, and up to ``k`` example rows each (the first rows in table order).

    Returns ``(unique, counts, example_rows, example_group)``: ``example_group[j]`` is the position in ``unique``
    of ``example_rows[j]``.
    """
    unique, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    rank = np.arange(len(order)) - np.repeat(starts, counts)
    take = order[rank < k]
    return unique, counts, take, inverse[take]


def status_stats(table: pa.Table) -> dict[str, Any]:
    """Counts by status, overall and per (data set, split), with the most common reasons and example files.

    Returns ``{"rows", "statuses", "reasons", "groups"}``; ``reasons`` is a list of ``{"status", "reason",
    "count", "examples"}`` (most common first); each entry of ``groups`` has ``dataset``, ``split``, ``rows``,
    ``statuses``, ``reasons`` (the ``TOP_REASONS`` most common) and ``other_reasons`` (rows of the others).
    """
    n = table.num_rows
    status, status_names = codes(table["status"])
    dataset, dataset_names = codes(table["dataset"])
    split, split_names = codes(table["split"])
    reason, reason_names = codes(table["reason"])
    images = table["image"]
    s, r = len(status_names), len(reason_names)
    group = dataset * max(1, len(split_names)) + split
    group_ids, group = np.unique(group, return_inverse=True)
    per_group = np.bincount(group * s + status, minlength=len(group_ids) * s).reshape(len(group_ids), s)

    has_reason = np.asarray(pc.is_valid(table["reason"]).to_numpy(zero_copy_only=False), bool)

    def reasons(keys: np.ndarray, rows: np.ndarray) -> list[tuple[int, dict]]:
        """``(group, entry)`` per distinct ``(group, status, reason)`` key of ``rows``, most common first."""
        if len(rows) == 0:
            return []
        unique, counts, examples, which = _first_k(keys[rows], EXAMPLES)
        example_names = images.take(pa.array(rows[examples])).to_pylist()
        by_key: list[list[str]] = [[] for _ in unique]
        for name, w in zip(example_names, which.tolist(), strict=True):
            by_key[w].append(name)
        out = []
        for key, count, names in zip(unique.tolist(), counts.tolist(), by_key, strict=True):
            g, rest = divmod(key, s * r)
            st, rs = divmod(rest, r)
            out.append((g, {"status": status_names[st], "reason": reason_names[rs], "count": count,
                            "examples": names}))
        out.sort(key=lambda item: (-item[1]["count"], item[1]["status"], item[1]["reason"]))
        return out

    rows = np.flatnonzero(has_reason)
    grouped = reasons((group * s + status) * r + reason, rows)
    overall = [entry for _, entry in reasons(status * r + reason, rows)]

    groups = []
    for g, gid in enumerate(group_ids.tolist()):
        ds, sp = divmod(gid, max(1, len(split_names)))
        mine = [entry for k, entry in grouped if k == g]
        groups.append({
            "dataset": dataset_names[ds],
            "split": split_names[sp] if split_names else None,
            "rows": int(per_group[g].sum()),
            "statuses": {status_names[k]: int(c) for k, c in enumerate(per_group[g]) if c},
            "reasons": mine[:TOP_REASONS],
            "other_reasons": int(sum(e["count"] for e in mine[TOP_REASONS:])),
        })
    groups.sort(key=lambda g: (str(g["dataset"]), str(g["split"])))
    totals = np.bincount(status, minlength=s)
    return {
        "rows": n,
        "statuses": {status_names[k]: int(c) for k, c in sorted(enumerate(totals), key=lambda kc: -kc[1]) if c},
        "reasons": overall[:TOP_REASONS],
        "other_reasons": int(sum(e["count"] for e in overall[TOP_REASONS:])),
        "groups": groups,
    }


def _histogram(values: np.ndarray, bins: int) -> dict[str, list]:
    """Counts of ``values`` in ``bins`` equal bins over [0, 1]; values above 1 fall in the last bin."""
    idx = np.clip((np.asarray(values, np.float64) * bins).astype(np.int64), 0, bins - 1)
    return {"edges": np.linspace(0, 1, bins + 1).round(6).tolist(),
            "counts": np.bincount(idx, minlength=bins).tolist()}


class KeypointArrays:
    """The numeric columns of a keypoints table as numpy arrays, decoded once for the numbers and the pictures."""

    def __init__(self, table: pa.Table):
        self.n = table.num_rows
        self.status = np.asarray(table["status"].to_numpy(zero_copy_only=False), dtype=object)
        self.ok = self.status == "ok"
        self.xy = keypoints_to_numpy(table["keypoints"])  # (N, 18, 2)
        self.visible = visible_mask(self.xy)  # (N, 18)
        self.scores = fixed_list_to_numpy(table["scores"], fill=0.0)  # (N, 18)
        self.box = fixed_list_to_numpy(table["box"])  # (N, 5), NaN without a person
        self.persons = table["n_persons"].to_numpy(zero_copy_only=False).astype(np.int64)
        self.width = pc.fill_null(table["width"], 0).to_numpy(zero_copy_only=False).astype(np.float64)
        self.height = pc.fill_null(table["height"], 0).to_numpy(zero_copy_only=False).astype(np.float64)
        self.mean_score = self.scores.mean(axis=1)
        # person size and place: the chosen box, else the extent of the visible keypoints
        box = self.box[:, :4].astype(np.float64)
        no_box = np.flatnonzero(~np.isfinite(box).all(axis=1))  # only these need the keypoint extent
        vis = self.visible[no_box, :, None]
        lo = np.where(vis, self.xy[no_box], np.inf).min(axis=1)
        hi = np.where(vis, self.xy[no_box], -np.inf).max(axis=1)
        box[no_box] = np.concatenate([lo, hi], axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            self.person_height = (box[:, 3] - box[:, 1]) / self.height
            self.centre_x = (box[:, 0] + box[:, 2]) / 2 / self.width
            self.centre_y = (box[:, 1] + box[:, 3]) / 2 / self.height
        self.has_person = self.ok & np.isfinite(self.person_height) & (self.height > 0)


def keypoint_stats(arrays: KeypointArrays) -> dict[str, Any]:
    """Per-joint visibility and confidence, person size and position, persons per image, over the ``ok`` rows."""
    a = arrays
    ok = np.flatnonzero(a.ok)
    visible = a.visible[ok]
    n_ok = len(ok)
    rates = visible.mean(axis=0) if n_ok else np.zeros(NUM_KEYPOINTS)
    scores = a.scores[ok]
    bins = np.clip((scores * SCORE_BINS).astype(np.int64), 0, SCORE_BINS - 1)
    joint = np.broadcast_to(np.arange(NUM_KEYPOINTS), bins.shape)
    per_joint = np.bincount((joint * SCORE_BINS + bins).ravel(), minlength=NUM_KEYPOINTS * SCORE_BINS)
    person = np.flatnonzero(a.has_person)
    cx = np.clip(a.centre_x[person], 0, 1 - 1e-9)
    cy = np.clip(a.centre_y[person], 0, 1 - 1e-9)
    centre = np.zeros((POSITION_BINS, POSITION_BINS), np.int64)
    np.add.at(centre, ((cy * POSITION_BINS).astype(int), (cx * POSITION_BINS).astype(int)), 1)
    looked = np.isin(a.status, DETECTED)
    persons, persons_count = np.unique(a.persons[looked], return_counts=True)
    n_visible, n_visible_count = np.unique(visible.sum(axis=1), return_counts=True)
    heights = a.person_height[person]
    return {
        "ok_rows": n_ok,
        "joints": {
            "names": list(KEYPOINT_NAMES),
            "visible": visible.sum(axis=0).tolist(),
            "rate": rates.round(6).tolist(),
        },
        "visible_per_image": dict(zip(map(str, n_visible.tolist()), n_visible_count.tolist(), strict=True)),
        "scores": {
            "edges": np.linspace(0, 1, SCORE_BINS + 1).round(6).tolist(),
            "per_joint": per_joint.reshape(NUM_KEYPOINTS, SCORE_BINS).tolist(),
            "visible": _histogram(scores[visible], SCORE_BINS)["counts"],
            "hidden": _histogram(scores[~visible], SCORE_BINS)["counts"],
            "mean_visible": round(float(scores[visible].mean()), 6) if visible.any() else None,
        },
        "persons_per_image": {str(k): int(c) for k, c in zip(persons.tolist(), persons_count.tolist(), strict=True)},
        "person_height": {
            **_histogram(heights, SIZE_BINS),
            "median": round(float(np.median(heights)), 6) if len(heights) else None,
        },
        "person_centre": {"bins": POSITION_BINS, "counts": centre.tolist()},
    }


def worst_rows(arrays: KeypointArrays, k: int = WORST) -> dict[str, list[int]]:
    """Row numbers of the worst ``ok`` images of each kind: lowest mean confidence, most persons, smallest person."""
    a = arrays
    ok = np.flatnonzero(a.ok)
    lowest = ok[np.argsort(a.mean_score[ok], kind="stable")[:k]]
    multi = ok[a.persons[ok] > 1]
    multi = multi[np.argsort(-a.persons[multi], kind="stable")[:k]]
    person = np.flatnonzero(a.has_person)
    smallest = person[np.argsort(a.person_height[person], kind="stable")[:k]]
    return {"lowest_confidence": lowest.tolist(), "multi_person": multi.tolist(), "smallest_person": smallest.tolist()}


def sample_rows(n: int, samples: int, seed: int) -> np.ndarray:
    """``samples`` distinct row numbers of ``n``, drawn with ``seed``, in table order."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(samples, n), replace=False)) if n else np.zeros(0, np.int64)


# ---------------------------------------------------------------- shards


def pairs_per_identity(identities: pa.ChunkedArray | pa.Array, images_identities: int) -> dict[str, Any]:
    """How pairs spread over identities: ``{pairs: identities with that many}``, quantiles and the top ones.

    ``images_identities`` is the set's identity count (``manifest.counts.identities``): identities with stored
    images but no pair (a single image) are counted as having 0 pairs.
    """
    counts = pc.value_counts(identities)
    names = counts.field("values").to_pylist()
    per = counts.field("counts").to_numpy().astype(np.int64)
    unpaired = max(0, images_identities - len(per))
    all_counts = np.r_[per, np.zeros(unpaired, np.int64)]
    values, how_many = np.unique(all_counts, return_counts=True)
    top = np.argsort(-per, kind="stable")[:10]
    return {
        "identities": int(len(all_counts)),
        "with_pairs": int(len(per)),
        "without_pairs": int(unpaired),
        "distribution": {str(v): int(c) for v, c in zip(values.tolist(), how_many.tolist(), strict=True)},
        "min": int(all_counts.min()) if len(all_counts) else None,
        "median": float(np.median(all_counts)) if len(all_counts) else None,
        "max": int(all_counts.max()) if len(all_counts) else None,
        "top": [{"identity": names[i], "pairs": int(per[i])} for i in top.tolist()],
    }


def filter_funnel(filter_record: dict[str, Any], order: tuple[str, ...]) -> list[dict[str, Any]] | None:
    """The pair step's filters as a funnel (rows in, removed by each filter in ``order``, left), from the
    manifest's ``filter.removed``/``filter.kept``; None when the manifest does not record them."""
    removed = filter_record.get("removed")
    kept = filter_record.get("kept")
    if not isinstance(removed, dict) or not isinstance(kept, int):
        return None
    names = [n for n in order if n in removed] + sorted(set(removed) - set(order))
    left = kept + sum(int(removed[n]) for n in names)
    steps = [{"filter": "table rows", "removed": 0, "left": left}]
    for name in names:
        left -= int(removed[name])
        steps.append({"filter": name, "removed": int(removed[name]), "left": left})
    return steps


def shard_folders(root: str | os.PathLike) -> list[Path]:
    """The shard sets under ``root``: ``root`` itself when it holds a manifest, else its sub-folders that hold a
    manifest or shard files (a folder without a manifest is an incomplete set, reported as such)."""
    from schemas.manifest import MANIFEST_NAME

    root = Path(root)
    if (root / MANIFEST_NAME).is_file():
        return [root]
    found = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        names = {p.name for p in sub.iterdir()}
        if MANIFEST_NAME in names or any(n.startswith("images-") or n == "pairs.parquet" for n in names):
            found.append(sub)
    return found

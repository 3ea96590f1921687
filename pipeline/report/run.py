"""Drive ``pgpig-data report``: check the inputs, compute the numbers, draw the pictures, write the page.

- numbers (``pipeline.report.stats``): vectorised numpy/pyarrow over the whole keypoints table and every
  shard set; they are ``report.json``;
- pictures (``pipeline.report.pictures``): the sampled and worst images only, read from the raw root recorded
  in ``extract.json`` (or the manifests) and drawn with ``pipeline.overlay``;
- plots (``pipeline.report.plots``) from the numbers, then the page (``pipeline.report.page``).

Every image is inlined as a base64 PNG; the page has no script and names no other file, so it can be mailed
or archived alone. Both files are written atomically. Either input may be absent; a missing raw root or image
gives a placeholder with the reason, never an error.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.errors import PipelineError
from pipeline.report import plots
from pipeline.report.page import render
from pipeline.report.pictures import joint_colour_hex, missing_names
from pipeline.report.stats import (
    DETECTED,
    KeypointArrays,
    keypoint_stats,
    sample_rows,
    shard_folders,
    status_stats,
    worst_rows,
)
from schemas.files import atomic_write
from schemas.keypoints import KEYPOINT_NAMES, NUM_KEYPOINTS

__all__ = ["REPORT_VERSION", "ReportConfig", "json_path", "run_report"]

REPORT_VERSION = 1
VERIFY_MODES = ("full", "files", "none")
"""``full``: ``pgpig-data verify`` (sizes, sha256, every image decoded); ``files``: sizes and sha256 of the listed
files only; ``none``: the manifest is read but not checked."""


@dataclass
class ReportConfig:
    """Everything ``pgpig-data report`` can be told; defaults are the CLI's."""

    keypoints: Path | None = Path("keypoints")
    """Folder of the keypoint parts; None: no keypoints section."""
    shards: Path | None = Path("shards")
    """Shard root (``shards/<split>/``) or one shard set; None: no shards section."""
    out: Path = Path("report.html")
    """The HTML page; the numbers go beside it with the suffix ``.json``."""
    samples: int = 48
    """Images in the sampled grid."""
    seed: int = 0
    """Seed of the sample."""
    raw: Path | None = None
    """Raw root the images are read from; None: the one ``extract.json`` (or a manifest) records."""
    run_file: Path | None = None
    """The extract run record; None: ``extract.json`` beside the keypoints folder, then in the current folder."""
    verify: str = "full"
    """One of ``VERIFY_MODES``."""
    worst: int = 8
    """Images per worst-case kind."""
    timings: dict[str, float] = field(default_factory=dict)


def json_path(out: str | os.PathLike) -> Path:
    """Where the numbers of the page ``out`` go: the same name with ``.json``."""
    return Path(out).with_suffix(".json")


def _extract_run(cfg: ReportConfig, keypoints: Path) -> tuple[Path | None, dict | None]:
    """The extract run record that belongs to ``keypoints`` (its ``out`` is that folder), if one is found."""
    if cfg.run_file is not None:
        candidates = [Path(cfg.run_file)]
    else:
        candidates = [keypoints.parent / "extract.json", Path("extract.json")]
    for path in candidates:
        if not path.is_file():
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        out = record.get("out") if isinstance(record, dict) else None
        if cfg.run_file is not None or out is None or Path(out).resolve() == keypoints.resolve():
            return path, record
    return None, None


def _run_summary(path: Path | None, record: dict | None) -> dict[str, Any] | None:
    if record is None:
        return None
    settings = record.get("settings", {})
    return {
        "path": str(path), "raw": record.get("raw"), "complete": record.get("complete"),
        "backend": settings.get("backend"), "model": settings.get("model"),
        "kpt_threshold": settings.get("kpt_threshold"), "conf": settings.get("conf"),
        "rows": record.get("rows"), "statuses": record.get("statuses"),
        "seconds": record.get("seconds"), "images_per_second": record.get("images_per_second"),
    }


def _shard_section(folder: Path, verify: str) -> dict[str, Any]:
    """Numbers of one shard set: manifest summary, verify result, filter funnel, pairs per identity."""
    from pipeline.pair import FILTER_ORDER
    from pipeline.report.stats import filter_funnel, pairs_per_identity
    from pipeline.shards import verify_shard_set
    from schemas.errors import SchemaError
    from schemas.files import safe_join
    from schemas.manifest import Manifest
    from schemas.tables import read_table

    section: dict[str, Any] = {"folder": str(folder), "name": folder.name}
    try:
        m = Manifest.read(folder)
    except SchemaError as exc:
        section["error"] = str(exc)
        section["verify"] = {"mode": verify, "ok": False, "problems": [str(exc)], "count": 1}
        return section
    section["manifest"] = {
        "split": m.split, "dataset": m.dataset, "format": m.format, "size": list(m.size), "counts": m.counts,
        "files": len(m.files), "bytes": sum(e.bytes for e in m.files), "seed": m.seed, "created": m.created,
        "pgpig_version": m.pgpig_version, "schema_version": m.schema_version,
        "filter": {k: v for k, v in m.filter.items() if k not in ("removed", "kept")},
        "pairing": {k: v for k, v in m.pairing.items() if k != "unmatched"},
        "unmatched": m.pairing.get("unmatched"),
        "extract": {k: m.extract.get(k) for k in ("path", "raw", "backend", "model", "kpt_threshold")},
    }
    if verify == "full":
        problems = verify_shard_set(folder)
    elif verify == "files":
        problems = m.file_problems(folder, check_hash=True)
    else:
        problems = None
    section["verify"] = {"mode": verify, "ok": None if problems is None else not problems,
                         "problems": (problems or [])[:20], "count": len(problems or [])}
    section["funnel"] = filter_funnel(m.filter, FILTER_ORDER)
    try:
        entry = next(e for e in m.files if e.kind == "pairs")
        pairs = read_table(safe_join(folder, entry.path, "manifest file"), "pairs", columns=["identity"])
        section["pairs_per_identity"] = pairs_per_identity(pairs["identity"], int(m.counts["identities"]))
    except (SchemaError, StopIteration) as exc:
        section["pairs_per_identity"] = None
        section["error"] = f"pairs not readable: {exc}"
    return section


def _keypoint_tiles(table, arrays, rows, raw: Path | None, caption_of) -> list:
    from pipeline.report.pictures import raw_tile

    images = table["image"].take(rows).to_pylist() if len(rows) else []
    widths = table["width"].take(rows).to_pylist() if len(rows) else []
    heights = table["height"].take(rows).to_pylist() if len(rows) else []
    return [raw_tile(raw, image, arrays.xy[r], w, h, caption_of(int(r)))
            for r, image, w, h in zip(rows, images, widths, heights, strict=True)]


def _shard_tiles(folder: Path, samples: int, seed: int) -> tuple[list, str | None]:
    """Sampled tiles from a shard set (used when there is no keypoints table)."""
    from pipeline.export import shard_names
    from pipeline.report.pictures import missing_names, shard_tile
    from pipeline.report.stats import sample_rows
    from pipeline.shards import ShardSet
    from schemas.keypoints import KEYPOINT_NAMES

    try:
        shard_set = ShardSet(folder)
        names = shard_names(folder)
    except PipelineError as exc:
        return [], str(exc)
    tiles = []
    try:
        for i in sample_rows(len(shard_set), samples, seed).tolist():
            s = shard_set[i]
            tiles.append(shard_tile(s.image, s.keypoints, names[i],
                                    [f"identity {s.identity} · #{i}", missing_names(s.keypoints, KEYPOINT_NAMES)]))
    except PipelineError as exc:
        return tiles, str(exc)
    finally:
        shard_set.close()
    return tiles, None


@contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    """Record the seconds the ``with`` block took as ``timings[name]``."""
    t = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - t


def _check_inputs(cfg: ReportConfig) -> None:
    """Refuse settings and named inputs that cannot work, before any reading."""
    if cfg.verify not in VERIFY_MODES:
        raise PipelineError(f"verify {cfg.verify!r}: choose one of {', '.join(VERIFY_MODES)}")
    if cfg.samples < 0 or cfg.worst < 0:
        raise PipelineError("samples and worst must be 0 or more")
    if cfg.keypoints is None and cfg.shards is None:
        raise PipelineError("nothing to report on: no keypoints folder and no shards folder; run `pgpig-data extract "
                            "RAW` and `pgpig-data pair` first, or pass --keypoints / --shards")
    for name, path in (("keypoints", cfg.keypoints), ("shards", cfg.shards)):
        if path is not None and not Path(path).is_dir():
            raise PipelineError(f"{path}: {name} folder not found (--{name})")
    if cfg.run_file is not None and not Path(cfg.run_file).is_file():
        raise PipelineError(f"{cfg.run_file}: extract run record not found (--run-file)")
    if cfg.raw is not None and not Path(cfg.raw).is_dir():
        raise PipelineError(f"{cfg.raw}: raw folder not found (--raw)")


def _empty_record(cfg: ReportConfig) -> dict[str, Any]:
    """The numbers of ``report.json`` before any section is filled in."""
    return {
        "version": REPORT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": {"keypoints": str(cfg.keypoints) if cfg.keypoints else None,
                   "shards": str(cfg.shards) if cfg.shards else None, "raw": None, "samples": cfg.samples,
                   "seed": cfg.seed, "verify": cfg.verify},
        "extract": None, "keypoints": None, "samples": None, "worst": None, "shards": None,
    }


def _shard_numbers(cfg: ReportConfig, record: dict[str, Any], log) -> list[dict[str, Any]]:
    """One section per shard set under ``cfg.shards`` (none without it), also stored in ``record["shards"]``."""
    if cfg.shards is None:
        return []
    sections = [_shard_section(f, cfg.verify) for f in shard_folders(cfg.shards)]
    record["shards"] = sections
    for s in sections:
        state = "not verified" if s["verify"]["ok"] is None else ("OK" if s["verify"]["ok"] else
                                                                  f"{s['verify']['count']} problem(s)")
        log(f"{s['folder']}: {state}")
    return sections


def _keypoint_numbers(cfg: ReportConfig, record: dict[str, Any], log
                      ) -> tuple[pa.Table | None, KeypointArrays | None, dict | None]:
    """The keypoints table, its arrays and the extract run record (each None without ``cfg.keypoints``)."""
    if cfg.keypoints is None:
        return None, None, None
    from pipeline.keypoints import read_keypoints

    table = read_keypoints(cfg.keypoints, ["image", "dataset", "split", "status", "reason", "width", "height",
                                           "n_persons", "box", "keypoints", "scores"])
    run_path, run = _extract_run(cfg, Path(cfg.keypoints))
    record["extract"] = _run_summary(run_path, run)
    arrays = KeypointArrays(table)
    record["keypoints"] = {"statuses": status_stats(table), **keypoint_stats(arrays)}
    log(f"{cfg.keypoints}: {table.num_rows} rows, {record['keypoints']['ok_rows']} ok")
    return table, arrays, run


def _raw_root(cfg: ReportConfig, run: dict | None, sections: list[dict[str, Any]], record: dict[str, Any], log
              ) -> Path | None:
    """Where the images are read from: ``cfg.raw``, else the extract run's, else the first manifest's.

    The choice is recorded in ``record["inputs"]["raw"]``; None when there is none or the folder is gone.
    """
    raw = Path(cfg.raw) if cfg.raw is not None else None
    if raw is None and run is not None and run.get("raw"):
        raw = Path(run["raw"])
    if raw is None:
        for s in sections:
            recorded = s.get("manifest", {}).get("extract", {}).get("raw")
            if recorded:
                raw = Path(recorded)
                break
    record["inputs"]["raw"] = str(raw) if raw is not None else None
    if raw is not None and not raw.is_dir():
        log(f"warning: raw root {raw} not found; images are shown as placeholders (pass --raw)")
        raw = None
    return raw


def _caption(arrays: KeypointArrays, reasons: pa.ChunkedArray, r: int, extra: str | None = None) -> list[str]:
    """The lines under the tile of keypoints row ``r``: status, persons, ``extra``, reason, missing joints."""
    lines = [str(arrays.status[r])]
    if arrays.status[r] in DETECTED:  # skipped and unreadable files were never looked at
        n = arrays.persons[r]
        lines[0] += f" · {n} person{'s' if n != 1 else ''}"
    if extra:
        lines.append(extra)
    reason = reasons[r].as_py()
    if reason:
        lines.append(reason)
    lines.append(missing_names(arrays.xy[r], KEYPOINT_NAMES))
    return lines


def _keypoint_pictures(cfg: ReportConfig, table: pa.Table, arrays: KeypointArrays, raw: Path | None,
                       record: dict[str, Any], pictures: dict[str, Any]) -> None:
    """The sampled grid and the worst cases, drawn from the raw images the keypoints table names."""
    def caption(r: int, extra: str | None = None) -> list[str]:
        return _caption(arrays, table["reason"], r, extra)

    # the sample is of the data set's images: skipped files (distractors, junk, non-images) were never part of
    # it and would only fill the grid with people nobody detected; the status table lists them
    candidates = np.flatnonzero(arrays.status != "skipped")
    rows = candidates[sample_rows(len(candidates), cfg.samples, cfg.seed)]
    pictures["samples"] = _keypoint_tiles(table, arrays, pa.array(rows), raw, caption)
    record["samples"] = {"source": "keypoints", "rows": rows.tolist(),
                         "images": table["image"].take(pa.array(rows)).to_pylist() if len(rows) else []}
    extras = {
        "lowest_confidence": lambda r: f"mean confidence {arrays.mean_score[r]:.3f}",
        "multi_person": lambda r: f"{arrays.persons[r]} persons detected",
        "smallest_person": lambda r: f"person {arrays.person_height[r]:.0%} of the image height",
    }
    record["worst"] = {}
    for kind, kind_rows in worst_rows(arrays, cfg.worst).items():
        pictures["worst"][kind] = _keypoint_tiles(
            table, arrays, pa.array(kind_rows, pa.int64()), raw, lambda r, kind=kind: caption(r, extras[kind](r)))
        record["worst"][kind] = [{"row": r, "image": tile.image, "caption": tile.lines}
                                 for r, tile in zip(kind_rows, pictures["worst"][kind], strict=True)]


def _shard_pictures(cfg: ReportConfig, sections: list[dict[str, Any]], record: dict[str, Any],
                    pictures: dict[str, Any]) -> None:
    """Without a keypoints table: the sampled grid from the train shard set (else the first readable one)."""
    good = [s for s in sections if "manifest" in s]
    first = next((s for s in good if s["manifest"]["split"] == "train"), good[0] if good else None)
    if first is None:
        return
    tiles, problem = _shard_tiles(Path(first["folder"]), cfg.samples, cfg.seed)
    pictures["samples"] = tiles
    record["samples"] = {"source": f"shards {first['folder']}", "images": [t.image for t in tiles],
                         "problem": problem}


def _plots(record: dict[str, Any], sections: list[dict[str, Any]], pictures: dict[str, Any]) -> None:
    """The keypoint plots into ``pictures["plots"]``, each shard set's into ``pictures["shards"]``."""
    k = record["keypoints"]
    if k is not None:
        pictures["plots"]["statuses"] = plots.status_bars(k["statuses"]["groups"])
        if k["ok_rows"]:
            colours = [joint_colour_hex(j) for j in range(NUM_KEYPOINTS)]
            pictures["plots"]["joints"] = plots.joint_visibility(k["joints"]["rate"], colours)
            pictures["plots"]["confidence"] = plots.confidence(k["scores"])
            pictures["plots"]["people"] = plots.people(k)
    for s in sections:
        mine = {}
        if s.get("funnel"):
            mine["funnel"] = plots.funnel(s["funnel"], f"{s['name']}: filter funnel")
        if s.get("pairs_per_identity"):
            mine["pairs"] = plots.pairs_histogram(s["pairs_per_identity"], f"{s['name']}: pairs per identity")
        pictures["shards"][s["folder"]] = mine


def _write(out: Path, record: dict[str, Any], pictures: dict[str, Any]) -> int:
    """Write the page ``out`` and the numbers beside it, both atomically; returns the page's length."""
    page = render(record, pictures)
    with atomic_write(out, "w") as f:
        f.write(page)
    with atomic_write(json_path(out), "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    return len(page)


def run_report(cfg: ReportConfig, log=print) -> dict[str, Any]:
    """Write ``cfg.out`` and its ``.json``; returns the numbers (what the ``.json`` holds)."""
    started = time.perf_counter()
    _check_inputs(cfg)
    record = _empty_record(cfg)
    pictures: dict[str, Any] = {"plots": {}, "samples": [], "worst": {}, "shards": {}}

    with _timed(cfg.timings, "shards"):
        sections = _shard_numbers(cfg, record, log)
    with _timed(cfg.timings, "numbers"):
        table, arrays, run = _keypoint_numbers(cfg, record, log)
        raw = _raw_root(cfg, run, sections, record, log)
    with _timed(cfg.timings, "pictures"):
        if table is not None:
            _keypoint_pictures(cfg, table, arrays, raw, record, pictures)
        elif sections:
            _shard_pictures(cfg, sections, record, pictures)
        if record["samples"] is not None:
            record["samples"]["placeholders"] = sum(t.problem for t in pictures["samples"])
            record["samples"]["tiles"] = [{"image": t.image, "caption": t.lines, "shown": not t.problem}
                                          for t in pictures["samples"]]
    with _timed(cfg.timings, "plots"):
        _plots(record, sections, pictures)
    out = Path(cfg.out)
    with _timed(cfg.timings, "write"):
        cfg.timings["total"] = time.perf_counter() - started
        record["seconds"] = {key: round(v, 3) for key, v in cfg.timings.items()}
        size = _write(out, record, pictures)
    log(f"wrote {out} ({size / 1e6:.1f} MB) and {json_path(out)} in {time.perf_counter() - started:.1f} s")
    return record

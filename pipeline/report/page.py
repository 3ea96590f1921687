"""The report page: one HTML document with inline CSS and base64 PNG images, no script, no other file."""

from __future__ import annotations

from html import escape
from typing import Any

from pipeline.report.pictures import Tile, data_uri, joint_colour_hex
from schemas.keypoints import KEYPOINT_NAMES

SECTIONS = {
    "extraction": "Extraction: status and reasons",
    "keypoints": "Keypoints: visibility, confidence, persons",
    "samples": "Sampled images",
    "worst": "Worst cases",
    "shards": "Shards",
}
"""Anchor → heading of every section (a section without data says so rather than disappearing)."""

WORST_TITLES = {
    "lowest_confidence": "Lowest mean keypoint confidence",
    "multi_person": "Most persons detected",
    "smallest_person": "Smallest person",
}

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #222;
       background: #fafafa; }
header { background: #263238; color: #eceff1; padding: 16px 28px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 2px 0; font-size: 13px; color: #b0bec5; }
header code { color: #263238; }
nav { padding: 8px 28px; background: #eceff1; border-bottom: 1px solid #cfd8dc; }
nav a { margin-right: 18px; color: #1565c0; text-decoration: none; }
main { padding: 8px 28px 40px; }
h2 { border-bottom: 2px solid #90a4ae; padding-bottom: 4px; margin-top: 32px; }
h3 { margin: 20px 0 8px; }
table { border-collapse: collapse; margin: 8px 0 16px; background: #fff; }
th, td { border: 1px solid #cfd8dc; padding: 3px 8px; text-align: left; vertical-align: top; font-size: 13px; }
th { background: #eceff1; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
code { font-size: 12px; background: #eceff1; padding: 0 3px; border-radius: 3px; }
img.plot { max-width: 100%; border: 1px solid #cfd8dc; background: #fff; margin: 4px 12px 12px 0; }
.row { display: flex; flex-wrap: wrap; align-items: flex-start; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, 190px); gap: 10px; }
figure { margin: 0; background: #fff; border: 1px solid #cfd8dc; padding: 6px; }
figure.problem { border-color: #e53935; background: #fff5f5; }
figure img { display: block; image-rendering: pixelated; }
figcaption { font-size: 11px; line-height: 1.3; word-break: break-all; margin-top: 4px; }
figcaption b { font-weight: 600; }
.ok { color: #2e7d32; font-weight: 600; }
.bad { color: #c62828; font-weight: 600; }
.muted { color: #78909c; }
.legend span { display: inline-block; margin: 2px 8px 2px 0; font-size: 12px; }
.legend i { display: inline-block; width: 12px; height: 12px; margin-right: 4px; vertical-align: -2px;
            border: 1px solid #555; }
"""


def _n(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else escape(str(value))


def _table(header: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    """A table of already-escaped cells; columns in ``numeric`` are right-aligned."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td class=\"n\">{c}</td>" if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(png: bytes | None, alt: str) -> str:
    return "" if png is None else f'<img class="plot" alt="{escape(alt)}" src="{data_uri(png)}">'


def _tiles(tiles: list[Tile]) -> str:
    if not tiles:
        return '<p class="muted">No image.</p>'
    out = []
    for tile in tiles:
        cls = ' class="problem"' if tile.problem else ""
        lines = "<br>".join(escape(line) for line in tile.lines)
        out.append(f'<figure{cls}><img alt="{escape(tile.image)}" src="{data_uri(tile.png)}">'
                   f"<figcaption><b>{escape(tile.image)}</b><br>{lines}</figcaption></figure>")
    return f'<div class="grid">{"".join(out)}</div>'


def _legend() -> str:
    spans = "".join(f'<span><i style="background:{joint_colour_hex(j)}"></i>{j} {escape(name)}</span>'
                    for j, name in enumerate(KEYPOINT_NAMES))
    return ('<p>Under each image, one cell per joint in this order: its colour when visible, a grey cross when '
            f'missing.</p><p class="legend">{spans}</p>')


def _reasons(reasons: list[dict[str, Any]], other: int) -> str:
    if not reasons:
        return '<p class="muted">No row has a reason (every image is ok).</p>'
    rows = [[escape(r["status"]), escape(r["reason"]), _n(r["count"]),
             ", ".join(f"<code>{escape(e)}</code>" for e in r["examples"])] for r in reasons]
    if other:
        rows.append(["", '<span class="muted">other reasons</span>', _n(other), ""])
    return _table(["status", "reason", "images", "examples"], rows, {2})


def _extraction(record: dict[str, Any], plots: dict[str, bytes]) -> str:
    k = record["keypoints"]
    if k is None:
        return '<p class="muted">No keypoints table given (--keypoints).</p>'
    st = k["statuses"]
    parts = []
    run = record.get("extract")
    if run:
        parts.append(_table(["extract run", "raw root", "backend", "keypoint threshold", "images/s"],
                            [[f"<code>{escape(str(run['path']))}</code>", f"<code>{escape(str(run['raw']))}</code>",
                              escape(str(run["backend"])), escape(str(run["kpt_threshold"])),
                              escape(str(run["images_per_second"]))]]))
    statuses = list(st["statuses"])
    counts = [_n(st["rows"]), *(_n(st["statuses"][s]) for s in statuses)]
    parts.append(_table(["rows", *map(escape, statuses)], [counts], set(range(len(statuses) + 1))))
    parts.append(_img(plots.get("statuses"), "images by status per data set and split"))
    parts.append("<h3>Most common reasons</h3>" + _reasons(st["reasons"], st["other_reasons"]))
    for g in st["groups"]:
        counts = ", ".join(f"{escape(s)} {_n(c)}" for s, c in g["statuses"].items())
        parts.append(f"<h3>{escape(str(g['dataset']))} / {escape(str(g['split'] or 'no split'))}: "
                     f"{_n(g['rows'])} images</h3><p>{counts}</p>" + _reasons(g["reasons"], g["other_reasons"]))
    return "".join(parts)


def _keypoints(record: dict[str, Any], plots: dict[str, bytes]) -> str:
    k = record["keypoints"]
    if k is None:
        return '<p class="muted">No keypoints table given (--keypoints).</p>'
    if not k["ok_rows"]:
        return '<p class="bad">No ok image: nothing to measure.</p>'
    j = k["joints"]
    rows = [[f"{i}", escape(name), _n(v), f"{r:.1%}"]
            for i, (name, v, r) in enumerate(zip(j["names"], j["visible"], j["rate"], strict=True))]
    mean = k["scores"]["mean_visible"]
    height = k["person_height"]["median"]
    summary = (f"<p>{_n(k['ok_rows'])} ok images; mean confidence of visible joints "
               f"{'–' if mean is None else f'{mean:.3f}'}; median person height "
               f"{'–' if height is None else f'{height:.0%}'} of the image.</p>")
    return (summary + '<div class="row">' + _img(plots.get("joints"), "per-joint visibility")
            + _table(["#", "joint", "visible", "rate"], rows, {0, 2, 3}) + "</div>"
            + "<h3>Keypoint confidence</h3>" + _img(plots.get("confidence"), "confidence histograms")
            + "<h3>Person size, position and count</h3>" + _img(plots.get("people"), "person size and position"))


def _samples(record: dict[str, Any], tiles: list[Tile]) -> str:
    s = record.get("samples")
    if s is None:
        return '<p class="muted">No images to sample.</p>'
    note = (f"<p>{len(tiles)} images drawn with seed {record['inputs']['seed']} from {escape(s['source'])}; "
            f"{s['placeholders']} could not be shown (red frame, reason in the caption).</p>")
    if s.get("problem"):
        note += f'<p class="bad">{escape(s["problem"])}</p>'
    return note + _legend() + _tiles(tiles)


def _worst(record: dict[str, Any], worst: dict[str, list[Tile]]) -> str:
    if record.get("worst") is None:
        return '<p class="muted">Needs the keypoints table (--keypoints).</p>'
    parts = []
    for kind, title in WORST_TITLES.items():
        tiles = worst.get(kind, [])
        parts.append(f"<h3>{title}</h3>" + (_tiles(tiles) if tiles else '<p class="muted">None.</p>'))
    return "".join(parts)


def _shards(record: dict[str, Any], plots: dict[str, dict[str, bytes]]) -> str:
    sections = record.get("shards")
    if sections is None:
        return '<p class="muted">No shard folder given (--shards).</p>'
    if not sections:
        return '<p class="bad">No shard set found in the shards folder.</p>'
    parts = []
    for s in sections:
        v = s["verify"]
        if v["ok"] is None:
            state = '<span class="muted">not verified (--verify none)</span>'
        elif v["ok"]:
            state = f'<span class="ok">verify OK</span> <span class="muted">({escape(v["mode"])})</span>'
        else:
            state = f'<span class="bad">{v["count"]} problem(s)</span> <span class="muted">({escape(v["mode"])})</span>'
        parts.append(f"<h3>{escape(s['name'])} <small>{state}</small></h3><p><code>{escape(s['folder'])}</code></p>")
        if v["problems"]:
            parts.append("<ul>" + "".join(f"<li><code>{escape(p)}</code></li>" for p in v["problems"]) + "</ul>")
        m = s.get("manifest")
        if m is None:
            continue
        c = m["counts"]
        parts.append(_table(
            ["split", "data set", "format", "size", "images", "pairs", "identities", "files", "MB", "seed", "created"],
            [[escape(m["split"]), escape(str(m["dataset"])), escape(m["format"]), f"{m['size'][0]}x{m['size'][1]}",
              _n(c["images"]), _n(c["pairs"]), _n(c["identities"]), _n(m["files"]), f"{m['bytes'] / 1e6:.1f}",
              _n(m["seed"]), escape(str(m["created"]))]], {4, 5, 6, 7, 8}))
        settings = {**{f"filter.{k}": v for k, v in m["filter"].items()},
                    **{f"pairing.{k}": v for k, v in m["pairing"].items()}}
        parts.append(_table(["setting", "value"], [[escape(k), f"<code>{escape(str(v))}</code>"]
                                                   for k, v in settings.items()]))
        mine = plots.get(s["folder"], {})
        parts.append('<div class="row">')
        if s.get("funnel"):
            rows = [[escape(f["filter"]), _n(f["removed"]), _n(f["left"])] for f in s["funnel"]]
            parts.append(_img(mine.get("funnel"), "filter funnel")
                         + _table(["filter", "removed", "left"], rows, {1, 2}))
        else:
            parts.append('<p class="muted">The manifest does not record the filter funnel.</p>')
        parts.append("</div>")
        p = s.get("pairs_per_identity")
        if p:
            parts.append('<div class="row">' + _img(mine.get("pairs"), "pairs per identity") + _table(
                ["identities", "with pairs", "without pairs", "min", "median", "max"],
                [[_n(p["identities"]), _n(p["with_pairs"]), _n(p["without_pairs"]), _n(p["min"]), _n(p["median"]),
                  _n(p["max"])]], {0, 1, 2, 3, 4, 5}) + "</div>")
    return "".join(parts)


def render(record: dict[str, Any], pictures: dict[str, Any]) -> str:
    """The whole page from the numbers (``record``, what ``report.json`` holds) and the drawn pictures."""
    inputs = record["inputs"]
    described = ", ".join(f"{k} <code>{escape(str(v))}</code>" for k, v in inputs.items()
                          if k in ("keypoints", "shards", "raw") and v)
    body = {
        "extraction": _extraction(record, pictures["plots"]),
        "keypoints": _keypoints(record, pictures["plots"]),
        "samples": _samples(record, pictures["samples"]),
        "worst": _worst(record, pictures["worst"]),
        "shards": _shards(record, pictures["shards"]),
    }
    nav = "".join(f'<a href="#{key}">{escape(title)}</a>' for key, title in SECTIONS.items())
    sections = "".join(f'<section id="{key}"><h2>{escape(title)}</h2>{body[key]}</section>'
                       for key, title in SECTIONS.items())
    seconds = record.get("seconds", {}).get("total")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>pgpig data report</title><style>{CSS}</style></head><body>"
            f"<header><h1>pgpig data report</h1><p>{described}</p>"
            f"<p>made {escape(record['created'])}"
            f"{'' if seconds is None else f' in {seconds:.1f} s'} by <code>pgpig-data report</code>; "
            "the numbers are also in the .json beside this file</p></header>"
            f"<nav>{nav}</nav><main>{sections}</main></body></html>\n")

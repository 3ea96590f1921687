"""Plots of a report, drawn with matplotlib's Agg canvas from the numbers of ``pipeline.report.stats``.

Figures are built as ``matplotlib.figure.Figure`` objects with their own Agg canvas, never through ``pyplot``:
no global backend is switched, no window can open, and nothing is left in pyplot's figure registry. Each
function returns PNG bytes.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from schemas.keypoints import KEYPOINT_NAMES

DPI = 100
STATUS_COLOURS = {"ok": "#4caf50", "no_person": "#ff9800", "unreadable": "#e53935", "skipped": "#9e9e9e"}


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def status_bars(groups: list[dict[str, Any]]) -> bytes:
    """Stacked horizontal bars: rows of each (data set, split) by status."""
    labels = [f"{g['dataset']} / {g['split'] or 'no split'}" for g in groups]
    statuses = sorted({s for g in groups for s in g["statuses"]}, key=lambda s: (s != "ok", s))
    fig = _figure(7.5, 0.5 + 0.45 * max(1, len(groups)))
    ax = fig.add_subplot()
    left = np.zeros(len(groups))
    for status in statuses:
        values = np.array([g["statuses"].get(status, 0) for g in groups], float)
        ax.barh(labels, values, left=left, label=status, color=STATUS_COLOURS.get(status))
        left += values
    ax.invert_yaxis()
    ax.set_xlabel("images")
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1), fontsize="small", ncols=len(statuses), frameon=False)
    return _png(fig)


def joint_visibility(rates: list[float], colours: list[str]) -> bytes:
    """Horizontal bars of the visible fraction of each of the 18 named joints."""
    fig = _figure(5.0, 4.6)
    ax = fig.add_subplot()
    y = np.arange(len(KEYPOINT_NAMES))
    ax.barh(y, rates, color=colours, edgecolor="#333", linewidth=0.5)
    ax.set_yticks(y, [f"{i} {n}" for i, n in enumerate(KEYPOINT_NAMES)], fontsize="small")
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("visible in ok images")
    return _png(fig)


def confidence(scores: dict[str, Any]) -> bytes:
    """Left: joints × confidence bins (log counts); right: confidences of visible and hidden joints."""
    from matplotlib.colors import LogNorm

    edges = np.asarray(scores["edges"])
    per_joint = np.asarray(scores["per_joint"], float)
    fig = _figure(8.5, 4.6)
    left, right = fig.subplots(1, 2, width_ratios=[1.3, 1])
    shown = np.where(per_joint > 0, per_joint, np.nan)
    vmax = max(1.0, np.nanmax(shown)) if np.isfinite(shown).any() else 1.0
    im = left.imshow(shown, aspect="auto", cmap="viridis", norm=LogNorm(vmin=1, vmax=max(vmax, 1.01)),
                     extent=(edges[0], edges[-1], len(KEYPOINT_NAMES) - 0.5, -0.5), interpolation="nearest")
    left.set_yticks(np.arange(len(KEYPOINT_NAMES)), KEYPOINT_NAMES, fontsize="x-small")
    left.set_xlabel("keypoint confidence")
    fig.colorbar(im, ax=left, label="ok images", shrink=0.8)
    centres = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    right.bar(centres, scores["visible"], width=width, color="#1e88e5", alpha=0.8, label="visible")
    right.bar(centres, scores["hidden"], width=width, color="#e53935", alpha=0.6, label="hidden")
    right.set_xlabel("keypoint confidence")
    right.set_ylabel("joints")
    right.legend(fontsize="small")
    return _png(fig)


def people(stats: dict[str, Any]) -> bytes:
    """Person height histogram, person centre heat map, persons per image, visible joints per image."""
    fig = _figure(11.0, 2.9)
    height, centre, persons, visible = fig.subplots(1, 4, width_ratios=[1.2, 0.8, 1, 1.2])
    h = stats["person_height"]
    edges = np.asarray(h["edges"])
    height.bar((edges[:-1] + edges[1:]) / 2, h["counts"], width=edges[1] - edges[0], color="#5e35b1")
    height.set_xlabel("person height / image height")
    height.set_ylabel("ok images")
    c = np.asarray(stats["person_centre"]["counts"], float)
    centre.imshow(c, cmap="magma", extent=(0, 1, 1, 0), interpolation="nearest", aspect="auto")
    centre.set_xlabel("centre x / width")
    centre.set_ylabel("centre y / height")
    p = stats["persons_per_image"]
    keys = sorted(p, key=int)
    persons.bar([str(k) for k in keys], [p[k] for k in keys], color="#00897b")
    persons.set_xlabel("persons detected per image")
    v = stats["visible_per_image"]
    visible.bar(list(range(19)), [v.get(str(k), 0) for k in range(19)], color="#fb8c00")
    visible.set_xlabel("visible joints per ok image")
    return _png(fig)


def pairs_histogram(per_identity: dict[str, Any], title: str) -> bytes:
    """Histogram of pairs per identity (identities without a pair in the 0 bar)."""
    dist = {int(k): v for k, v in per_identity["distribution"].items()}
    fig = _figure(5.2, 2.8)
    ax = fig.add_subplot()
    values = np.repeat(np.array(list(dist), float), list(dist.values()))
    if len(values):
        top = max(1.0, values.max())
        bins = np.arange(0, top + 2) - 0.5 if top <= 60 else np.linspace(0, top, 41)
        ax.hist(values, bins=bins, color="#3949ab")
    ax.set_xlabel("pairs per identity")
    ax.set_ylabel("identities")
    ax.set_title(title, fontsize="medium")
    return _png(fig)


def funnel(steps: list[dict[str, Any]], title: str) -> bytes:
    """Rows left after each filter of the pair step, with what each removed."""
    fig = _figure(5.8, 0.6 + 0.32 * len(steps))
    ax = fig.add_subplot()
    labels = [s["filter"] for s in steps]
    left = np.array([s["left"] for s in steps], float)
    removed = np.array([s["removed"] for s in steps], float)
    ax.barh(labels, left, color="#43a047", label="left")
    ax.barh(labels, removed, left=left, color="#e57373", label="removed here")
    ax.invert_yaxis()
    ax.set_xlabel("images")
    ax.set_title(title, fontsize="medium")
    ax.legend(fontsize="x-small", loc="lower right")
    return _png(fig)

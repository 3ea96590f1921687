"""The mannequin data set: procedural people with exact keypoints, written in a real raw layout.

Each identity gets a fixed appearance (skin, hair, clothing colours and patterns, body proportions);
each of its images draws that appearance in a new random pose, view and framing on a new background.
The keypoints are the skeleton the drawing was made from, so they are exact, and the same identity
looks the same in every pose: a pose-transfer generator can learn the set, and tests can measure it
without DeepFashion or Market-1501.

Layouts are the real ones (see ``docs/data-contract.md``): Market-1501's ``bounding_box_train/``,
``bounding_box_test/``, ``query/`` with ``PPPP_cCsS_FFFFFF_NN.jpg`` names, or DeepFashion In-shop's
``img/{MEN,WOMEN}/<Category>/id_XXXXXXXX/NN_V_view.jpg`` with ``list_eval_partition.txt``. Beside them
the PATN annotation CSVs (``market-annotation-{train,test}.csv`` or ``fashion-annotation-{train,test}.csv``;
DeepFashion in PATN's 256×176 crop frame) and ``mannequin.json`` describing the run.

Everything is a function of ``(seed, identity, image)``: the same seed gives the same bytes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from pipeline.errors import PipelineError
from schemas.files import atomic_write
from schemas.keypoints import MISSING, NUM_KEYPOINTS
from schemas.patn import deepfashion_flat_name, deepfashion_margin, to_patn_frame, write_annotations

LAYOUTS = ("market", "deepfashion")
DEFAULT_SIZES = {"market": (128, 64), "deepfashion": (256, 256)}
SUMMARY_NAME = "mannequin.json"

DEEPFASHION_CATEGORIES = {
    "MEN": ("Denim", "Jackets_Vests", "Pants", "Shirts_Polos", "Shorts", "Suiting", "Sweaters",
            "Sweatshirts_Hoodies", "Tees_Tanks"),
    "WOMEN": ("Blouses_Shirts", "Cardigans", "Denim", "Dresses", "Graphic_Tees", "Jackets_Coats", "Leggings",
              "Pants", "Rompers_Jumpsuits", "Shorts", "Skirts", "Sweaters", "Sweatshirts_Hoodies", "Tees_Tanks"),
}
# (view number, view name, orientation drawn, framing) of DeepFashion In-shop, in the order its ids use them
DEEPFASHION_VIEWS = (
    (1, "front", "front", "half"),
    (2, "side", "side", "half"),
    (3, "back", "back", "half"),
    (4, "full", "front", "full"),
    (7, "additional", "any", "half"),
)
_SEED_APPEARANCE, _SEED_IMAGE, _SEED_LAYOUT, _SEED_DISTRACTOR = 0, 1, 2, 3

# joint indices (OpenPose-18)
NOSE, NECK, RSHO, RELB, RWRI, LSHO, LELB, LWRI, RHIP, RKNE, RANK, LHIP, LKNE, LANK, REYE, LEYE, REAR, LEAR = range(18)
_FACE = (NOSE, REYE, LEYE, REAR, LEAR)


@dataclass
class SynthConfig:
    """What ``pgpig-data synth`` makes."""

    identities: int = 20
    """People (Market) or items (DeepFashion)."""
    poses_per_identity: int = 8
    """Images per identity, each in a new pose."""
    layout: str = "market"
    """``market`` (Market-1501 folders and names) or ``deepfashion`` (In-shop ``img/`` tree)."""
    size: tuple[int, int] | None = None
    """Image ``(height, width)``; None → 128×64 for Market, 256×256 for DeepFashion."""
    seed: int = 0
    distractors: int = 0
    """Extra images without a usable person: Market ``0000``/``-1`` ids, DeepFashion ``6_flat`` shots."""
    jpeg_quality: int = 95

    def resolved_size(self) -> tuple[int, int]:
        return tuple(self.size) if self.size else DEFAULT_SIZES[self.layout]

    def check(self) -> None:
        if self.layout not in LAYOUTS:
            raise PipelineError(f"--layout {self.layout!r}: choose one of {', '.join(LAYOUTS)}")
        if self.identities < 1 or self.poses_per_identity < 1:
            raise PipelineError("--identities and --poses-per-identity must be at least 1")
        if self.layout == "market" and self.identities > 9999:
            raise PipelineError("--identities: Market-1501 names hold 4-digit ids, at most 9999")
        h, w = self.resolved_size()
        if h < 32 or w < 16:
            raise PipelineError(f"--size {h}x{w}: images must be at least 32x16")
        if self.distractors < 0:
            raise PipelineError("--distractors must be non-negative")


@dataclass
class Material:
    """A clothing fabric: base colour and a pattern in a second colour, in body-relative units."""

    colour: tuple[int, int, int]
    pattern: str  # solid | stripes | checks | dots
    colour2: tuple[int, int, int]
    period: float  # fraction of body height
    angle: float  # radians


@dataclass
class Appearance:
    """Everything that stays the same across one identity's images."""

    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    top: Material
    bottom: Material
    shoes: tuple[int, int, int]
    long_sleeves: bool
    bottom_kind: str  # pants | shorts | skirt
    shoulders: float  # shoulder half-width / body height
    hips: float
    build: float  # limb thickness factor


@dataclass
class Pose:
    """One image's body configuration; angles in radians, 0 pointing straight down."""

    view: str  # front | back | left | right (the side the person faces)
    lean: float
    head_tilt: float
    arm: dict[str, tuple[float, float]] = field(default_factory=dict)  # side → (upper, bend)
    leg: dict[str, tuple[float, float]] = field(default_factory=dict)


def _colour(rng: np.random.Generator, lo: int = 20, hi: int = 235) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi, size=3))


def _material(rng: np.random.Generator) -> Material:
    base = _colour(rng)
    # the second colour is far from the first so the pattern is visible
    second = tuple(int((c + rng.integers(80, 176)) % 256) for c in base)
    return Material(
        colour=base,
        pattern=str(rng.choice(["solid", "stripes", "checks", "dots"], p=[0.3, 0.3, 0.2, 0.2])),
        colour2=second,
        period=float(rng.uniform(0.035, 0.08)),
        angle=float(rng.uniform(0, math.pi)),
    )


def sample_appearance(rng: np.random.Generator) -> Appearance:
    skin_tones = ((197, 222, 255), (160, 190, 230), (120, 160, 210), (80, 120, 170), (60, 85, 120))
    skin = skin_tones[rng.integers(len(skin_tones))]
    return Appearance(
        skin=tuple(int(np.clip(c + rng.integers(-12, 13), 0, 255)) for c in skin),
        hair=_colour(rng, 10, 120),
        top=_material(rng),
        bottom=_material(rng),
        shoes=_colour(rng, 10, 200),
        long_sleeves=bool(rng.random() < 0.5),
        bottom_kind=str(rng.choice(["pants", "shorts", "skirt"], p=[0.55, 0.25, 0.2])),
        shoulders=float(rng.uniform(0.10, 0.125)),
        hips=float(rng.uniform(0.065, 0.085)),
        build=float(rng.uniform(0.85, 1.2)),
    )


def sample_pose(rng: np.random.Generator, view: str) -> Pose:
    """A plausible pose seen from ``view``; joint angles stay within human limits."""
    deg = math.radians
    pose = Pose(view=view, lean=float(rng.normal(0, deg(4))), head_tilt=float(rng.normal(0, deg(6))))
    for side in ("r", "l"):
        if view in ("front", "back"):
            # arm raised sideways 0-100°, elbow bent up to 110°; legs apart up to 20°
            pose.arm[side] = (float(rng.uniform(deg(-5), deg(100))), float(rng.uniform(0, deg(110))))
            pose.leg[side] = (float(rng.uniform(deg(-3), deg(20))), float(rng.uniform(deg(-8), deg(8))))
        else:
            # swinging forward/back as in walking; knees bend backwards only
            pose.arm[side] = (float(rng.uniform(deg(-45), deg(80))), float(rng.uniform(0, deg(120))))
            pose.leg[side] = (float(rng.uniform(deg(-30), deg(35))), float(rng.uniform(0, deg(70))))
    return pose


def _direction(angle: float) -> np.ndarray:
    # 0 points down the image (+y), positive angles turn towards +x
    return np.array([math.sin(angle), math.cos(angle)])


def skeleton(pose: Pose, app: Appearance, height: float, neck: tuple[float, float]) -> dict:
    """Joint positions in pixels for a body of ``height`` px with its neck at ``neck``.

    Returns ``{"xy": (18, 2) all joints, "face_visible": (18,) bool, "head": centre, "radius": r,
    "lateral": sign of the person's right side in x, "forward": sign of the facing direction}``.
    """
    h = height
    lateral = {"front": -1.0, "back": 1.0, "left": 0.2, "right": -0.2}[pose.view]
    forward = {"front": 0.0, "back": 0.0, "left": -1.0, "right": 1.0}[pose.view]
    side_view = pose.view in ("left", "right")
    xy = np.zeros((NUM_KEYPOINTS, 2))
    neck_xy = np.asarray(neck, dtype=float)
    down = _direction(pose.lean)
    across = np.array([down[1], -down[0]])  # unit +x when upright
    xy[NECK] = neck_xy
    mid_hip = neck_xy + down * 0.30 * h
    for side, sho, elb, wri, hip, kne, ank in (("r", RSHO, RELB, RWRI, RHIP, RKNE, RANK),
                                               ("l", LSHO, LELB, LWRI, LHIP, LKNE, LANK)):
        sign = lateral if side == "r" else -lateral
        xy[sho] = neck_xy + across * sign * app.shoulders * h + down * 0.015 * h
        xy[hip] = mid_hip + across * sign * app.hips * h
        upper, bend = pose.arm[side]
        thigh, shin = pose.leg[side]
        if side_view:
            a_upper = pose.lean + forward * upper
            a_fore = a_upper + forward * bend
            a_thigh = pose.lean + forward * thigh
            a_shin = a_thigh - forward * shin
        else:
            out = math.copysign(1.0, sign)  # outward for this side
            a_upper = pose.lean + out * upper
            a_fore = a_upper - out * bend
            a_thigh = pose.lean + out * thigh
            a_shin = a_thigh + out * shin
        xy[elb] = xy[sho] + _direction(a_upper) * 0.165 * h
        xy[wri] = xy[elb] + _direction(a_fore) * 0.15 * h
        xy[kne] = xy[hip] + _direction(a_thigh) * 0.235 * h
        xy[ank] = xy[kne] + _direction(a_shin) * 0.235 * h

    r = 0.065 * h
    head = neck_xy - down * 0.105 * h
    tilt_c, tilt_s = math.cos(pose.head_tilt), math.sin(pose.head_tilt)

    def on_head(dx: float, dy: float) -> np.ndarray:
        # (dx, dy) in head radii, rotated by lean and tilt
        rx = dx * tilt_c - dy * tilt_s
        ry = dx * tilt_s + dy * tilt_c
        return head + (across * rx + down * ry) * r

    face_visible = np.ones(NUM_KEYPOINTS, bool)
    if side_view:
        # facing left, the person's left side is towards the camera
        near_eye, far_eye, near_ear, far_ear = (
            (LEYE, REYE, LEAR, REAR) if pose.view == "left" else (REYE, LEYE, REAR, LEAR)
        )
        xy[NOSE] = on_head(forward * 0.9, 0.15)
        xy[near_eye] = on_head(forward * 0.55, -0.15)
        xy[far_eye] = on_head(forward * 0.7, -0.15)
        xy[near_ear] = on_head(-forward * 0.15, 0.0)
        xy[far_ear] = on_head(-forward * 0.05, 0.0)
        face_visible[[far_eye, far_ear]] = False
    else:
        xy[NOSE] = on_head(0.0, 0.2)
        xy[REYE] = on_head(lateral * 0.38, -0.12)
        xy[LEYE] = on_head(-lateral * 0.38, -0.12)
        xy[REAR] = on_head(lateral * 0.9, 0.05)
        xy[LEAR] = on_head(-lateral * 0.9, 0.05)
        if pose.view == "back":
            face_visible[[NOSE, REYE, LEYE]] = False
    return {"xy": xy, "face_visible": face_visible, "head": head, "radius": r,
            "lateral": lateral, "forward": forward, "mid_hip": mid_hip, "across": across, "down": down}


def _grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    # pixel row and column coordinates as broadcastable (H, 1) and (1, W) arrays
    return (np.arange(shape[0], dtype=np.float32)[:, None], np.arange(shape[1], dtype=np.float32)[None, :])


def _texture(mat: Material, shape: tuple[int, int], origin: np.ndarray, height: float,
             grid: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """(H, W, 3) float32 image of a fabric, anchored at the body so it moves with the person."""
    ys, xs = grid
    x = xs - np.float32(origin[0])
    y = ys - np.float32(origin[1])
    p = np.float32(mat.period * height)
    c, s = np.float32(math.cos(mat.angle)), np.float32(math.sin(mat.angle))
    u = (x * c + y * s) / p
    v = (y * c - x * s) / p
    if mat.pattern == "stripes":
        second = (u % 1.0) < 0.45
    elif mat.pattern == "checks":
        second = ((u % 1.0) < 0.5) ^ ((v % 1.0) < 0.5)
    elif mat.pattern == "dots":
        second = ((u % 1.0 - 0.5) ** 2 + (v % 1.0 - 0.5) ** 2) < 0.2**2
    else:
        second = np.zeros(shape, bool)
    out = np.empty((*shape, 3), np.float32)
    out[:] = mat.colour
    out[second] = mat.colour2
    return out


def _background(rng: np.random.Generator, layout: str, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    if layout == "deepfashion":
        # studio: a light, nearly flat backdrop
        top = rng.uniform(200, 250, size=3)
        bottom = top - rng.uniform(0, 30, size=3)
        ramp = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
        return np.broadcast_to(top * (1 - ramp) + bottom * ramp, (h, w, 3)).astype(np.float32).copy()
    # street: sky/wall gradient, blocks of buildings and cars, a ground plane
    top, bottom = rng.uniform(60, 220, size=3), rng.uniform(40, 200, size=3)
    ramp = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    img = np.broadcast_to(top * (1 - ramp) + bottom * ramp, (h, w, 3)).astype(np.float32).copy()
    for _ in range(int(rng.integers(2, 7))):
        x0, y0 = int(rng.integers(-w // 2, w)), int(rng.integers(-h // 4, h))
        x1, y1 = x0 + int(rng.integers(w // 6, w)), y0 + int(rng.integers(h // 8, h // 2))
        cv2.rectangle(img, (x0, y0), (x1, y1), tuple(float(c) for c in rng.uniform(30, 220, size=3)), -1)
    ground = int(h * rng.uniform(0.7, 0.9))
    img[ground:] = img[ground:] * 0.6 + rng.uniform(40, 120, size=3) * 0.4
    return cv2.GaussianBlur(img, (0, 0), max(0.8, w / 96))


def _part_mask(shape: tuple[int, int], draw) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    draw(mask)
    return mask


def _pt(p: np.ndarray, scale: int) -> tuple[int, int]:
    # OpenCV sub-pixel drawing: coordinates scaled by 2**shift
    return int(round(p[0] * scale)), int(round(p[1] * scale))


_SHIFT = 4
_S = 1 << _SHIFT


Part = tuple[float, str, Callable[[np.ndarray], object]]
"""One piece of a drawn person: ``(depth, material, draw(mask))``; deeper parts are drawn later, over the others."""


def _segment(a: np.ndarray, b: np.ndarray, width: float) -> Callable[[np.ndarray], object]:
    """Draws a line from ``a`` to ``b`` about ``width`` pixels wide (at least 1)."""
    t = max(1, int(round(width)))
    return lambda m: cv2.line(m, _pt(a, _S), _pt(b, _S), 255, t, cv2.LINE_AA, _SHIFT)


def _circle(c: np.ndarray, radius: float) -> Callable[[np.ndarray], object]:
    """Draws a filled disc of ``radius`` pixels (at least 1) centred on ``c``."""
    return lambda m: cv2.circle(m, _pt(c, _S), max(_S, int(round(radius * _S))), 255, -1, cv2.LINE_AA, _SHIFT)


def _polygon(points: list[np.ndarray]) -> Callable[[np.ndarray], object]:
    """Draws the filled polygon through ``points``."""
    pts = np.array([_pt(p, _S) for p in points], np.int32)
    return lambda m: cv2.fillPoly(m, [pts], 255, cv2.LINE_AA, _SHIFT)


def _limb_parts(app: Appearance, pose: Pose, sk: dict, h: float) -> list[Part]:
    """Legs, shoes and arms of both sides; in a side view the far side's limbs go behind the body."""
    xy, across, down = sk["xy"], sk["across"], sk["down"]
    side_view = pose.view in ("left", "right")
    near = ("l" if pose.view == "left" else "r") if side_view else None
    parts: list[Part] = []
    for side, sho, elb, wri, hip, kne, ank in (("r", RSHO, RELB, RWRI, RHIP, RKNE, RANK),
                                               ("l", LSHO, LELB, LWRI, LHIP, LKNE, LANK)):
        behind = side_view and side != near
        leg_depth = 1.0 if behind else 1.5
        arm_depth = 0.0 if behind else 4.0
        parts.append((leg_depth, "bottom", _segment(xy[hip], xy[kne], 0.085 * h * app.build)))
        shin_mat = "bottom" if app.bottom_kind == "pants" else "skin"
        parts.append((leg_depth, shin_mat, _segment(xy[kne], xy[ank], 0.065 * h * app.build)))
        foot = xy[ank] + down * 0.02 * h + across * sk["forward"] * 0.035 * h
        parts.append((leg_depth + 0.1, "shoes", _segment(xy[ank], foot, 0.055 * h * app.build)))
        parts.append((arm_depth, "top", _segment(xy[sho], xy[elb], 0.062 * h * app.build)))
        parts.append((arm_depth, "top" if app.long_sleeves else "skin",
                      _segment(xy[elb], xy[wri], 0.05 * h * app.build)))
        parts.append((arm_depth + 0.1, "skin", _circle(xy[wri], 0.03 * h * app.build)))
    return parts


def _trunk_parts(app: Appearance, sk: dict, h: float) -> list[Part]:
    """Torso (top), hips (bottom) and, for a skirt, the skirt down towards the knees."""
    xy, across, down, mid_hip = sk["xy"], sk["across"], sk["down"], sk["mid_hip"]
    ws = max(abs(xy[RSHO][0] - xy[LSHO][0]) / 2, 0.085 * h) * 1.05
    wh = max(abs(xy[RHIP][0] - xy[LHIP][0]) / 2 + 0.035 * h, 0.08 * h)
    waist = xy[NECK] + down * 0.25 * h
    parts: list[Part] = [
        (3.0, "top", _polygon([xy[NECK] - across * ws, xy[NECK] + across * ws, waist + across * wh,
                               waist - across * wh])),
        (2.0, "bottom", _polygon([waist - across * wh, waist + across * wh, mid_hip + across * wh + down * 0.05 * h,
                                  mid_hip - across * wh + down * 0.05 * h])),
    ]
    if app.bottom_kind == "skirt":
        knee_y = (xy[RKNE] + xy[LKNE]) / 2
        hem = mid_hip + down * max(0.2 * h, float(np.dot(knee_y - mid_hip, down)) * 0.9)
        parts.append((2.5, "bottom", _polygon([mid_hip - across * wh, mid_hip + across * wh,
                                               hem + across * wh * 1.7, hem - across * wh * 1.7])))
    return parts


def _head_parts(app: Appearance, pose: Pose, sk: dict, h: float) -> list[Part]:
    """Neck, head, hair and the eyes the view shows."""
    xy, down, head, r = sk["xy"], sk["down"], sk["head"], sk["radius"]
    parts: list[Part] = [(5.0, "skin", _segment(xy[NECK], head, 0.05 * h * app.build)), (6.0, "skin", _circle(head, r))]
    hair_angle = math.degrees(math.atan2(down[1], down[0]))
    if pose.view == "back":
        parts.append((6.1, "hair", _circle(head, r * 1.02)))
    else:
        # a cap over the top of the head, towards the back in side views
        start = 180 + (sk["forward"] * 40)
        parts.append((6.1, "hair", lambda m: cv2.ellipse(
            m, _pt(head, _S), (int(r * 1.05 * _S), int(r * 1.05 * _S)), hair_angle - 90,
            start, start + 180, 255, -1, cv2.LINE_AA, _SHIFT)))
    for eye in (REYE, LEYE):
        if sk["face_visible"][eye]:
            parts.append((6.2, "eye", _circle(xy[eye], max(0.6, 0.012 * h))))
    return parts


def _composite(background: np.ndarray, parts: list[Part], colours: dict[str, np.ndarray],
               shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Blend ``parts`` onto a copy of ``background``, shallowest first; returns the image and the person's
    coverage, ``(H, W, 3)`` and ``(H, W)`` float32."""
    image = background.copy()
    person = np.zeros(shape, np.float32)
    for _, material, draw in sorted(parts, key=lambda p: p[0]):
        mask = _part_mask(shape, draw)
        x, y, bw, bh = cv2.boundingRect(mask)  # blend only where the part is
        if bw == 0:
            continue
        box = (slice(y, y + bh), slice(x, x + bw))
        alpha = mask[box].astype(np.float32) * (1 / 255.0)
        colour = colours[material]
        colour = colour[box] if colour.ndim == 3 else colour
        region = image[box]
        region += (colour - region) * alpha[..., None]
        np.maximum(person[box], alpha, out=person[box])
    return image, person


def render_person(app: Appearance, pose: Pose, shape: tuple[int, int], height: float,
                  neck: tuple[float, float], background: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one person on ``background``.

    Returns ``(image (H, W, 3) float32 BGR, keypoints (18, 2) float32 with face joints hidden by the
    view set to (-1, -1), person mask (H, W) bool)``. Out-of-frame joints are not hidden here.
    """
    sk = skeleton(pose, app, height, neck)
    xy = sk["xy"]
    grid = _grid(shape)
    colours = {
        "top": _texture(app.top, shape, xy[NECK], height, grid),
        "bottom": _texture(app.bottom, shape, sk["mid_hip"], height, grid),
        **{name: np.asarray(c, np.float32) for name, c in
           (("skin", app.skin), ("hair", app.hair), ("shoes", app.shoes), ("eye", (30, 25, 25)))},
    }
    parts = _limb_parts(app, pose, sk, height) + _trunk_parts(app, sk, height) + _head_parts(app, pose, sk, height)
    image, person = _composite(background, parts, colours, shape)
    keypoints = xy.astype(np.float32)
    keypoints[[i for i in _FACE if not sk["face_visible"][i]]] = MISSING
    return image, keypoints, person >= 0.5


def hide_outside(xy: np.ndarray, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    """Set keypoints outside the box ``[x0, x1] × [y0, y1]`` to ``(-1, -1)``."""
    out = xy.copy()
    outside = (out[:, 0] < x0) | (out[:, 0] > x1) | (out[:, 1] < y0) | (out[:, 1] > y1)
    out[outside] = MISSING
    return out


@dataclass
class MannequinImage:
    """One image to write: where it goes and how it is drawn."""

    relpath: str
    identity: int
    index: int
    split: str
    view: str
    framing: str
    annotation_name: str | None  # flat PATN name, None for distractors


def draw_image(
    cfg: SynthConfig, item: MannequinImage, app: Appearance | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one image of the plan. Returns ``(uint8 BGR image, keypoints (18, 2) raw frame, person mask)``."""
    shape = cfg.resolved_size()
    hgt, wid = shape
    rng = np.random.default_rng([cfg.seed, _SEED_IMAGE, item.identity, item.index])
    background = _background(rng, cfg.layout, shape)
    keypoints = np.full((NUM_KEYPOINTS, 2), MISSING, np.float32)
    mask = np.zeros(shape, bool)
    image = background
    if app is not None:
        view = item.view
        if view == "side":
            view = "left" if rng.random() < 0.5 else "right"
        elif view == "any":
            view = str(rng.choice(["front", "back", "left", "right"]))
        pose = sample_pose(rng, view)
        if item.framing == "full":
            body = hgt * rng.uniform(0.80, 0.94)
            top = hgt * rng.uniform(0.01, 0.05)
        elif item.framing == "junk":
            # a bad detection: the person far too big and off-centre
            body = hgt * rng.uniform(1.8, 2.5)
            top = -hgt * rng.uniform(0.3, 0.6)
        else:
            body = hgt * rng.uniform(1.05, 1.5)
            top = hgt * rng.uniform(0.03, 0.12)
        neck = (wid / 2 + wid * rng.uniform(-0.06, 0.06), top + 0.17 * body)
        image, keypoints, mask = render_person(app, pose, shape, body, neck, background)
        image *= rng.uniform(0.9, 1.1)  # exposure
    elif item.view == "flat":
        # a product shot of the garment alone (DeepFashion's 6_flat), no person
        garment = sample_appearance(np.random.default_rng([cfg.seed, _SEED_APPEARANCE, item.identity]))
        tex = _texture(garment.top, shape, np.array([wid / 2, hgt / 4]), hgt, _grid(shape))
        shirt = np.zeros(shape, np.uint8)
        cv2.rectangle(shirt, (int(wid * 0.3), int(hgt * 0.2)), (int(wid * 0.7), int(hgt * 0.8)), 255, -1)
        image = np.where(shirt[..., None] > 0, tex, image)
    image = image + rng.normal(0, 2.0, image.shape).astype(np.float32)  # sensor noise
    if cfg.layout == "deepfashion":
        pad = deepfashion_margin(wid)
        image[:, :pad] = 255
        image[:, wid - pad:] = 255
        mask[:, :pad] = False
        mask[:, wid - pad:] = False
        keypoints = hide_outside(keypoints, pad, wid - 1 - pad, 0, hgt - 1)
    else:
        keypoints = hide_outside(keypoints, 0, wid - 1, 0, hgt - 1)
    return np.clip(image, 0, 255).astype(np.uint8), keypoints, mask


def plan(cfg: SynthConfig) -> list[MannequinImage]:
    """Every image the run writes, with its path and split, in writing order."""
    cfg.check()
    return _plan_market(cfg) if cfg.layout == "market" else _plan_deepfashion(cfg)


def _plan_market(cfg: SynthConfig) -> list[MannequinImage]:
    items = []
    k = cfg.poses_per_identity
    for i in range(cfg.identities):
        pid = i + 1  # 0000 is Market's distractor id
        rng = np.random.default_rng([cfg.seed, _SEED_LAYOUT, i])
        test = i % 2 == 1
        frames = np.sort(rng.choice(np.arange(1, 1_000_000), size=k, replace=False))
        cams = rng.integers(1, 7, size=k)
        seen_cams: set[int] = set()
        n_query = 0
        for j in range(k):
            name = f"{pid:04d}_c{cams[j]}s{rng.integers(1, 7)}_{frames[j]:06d}_{rng.integers(1, 5):02d}.jpg"
            folder = "bounding_box_train"
            if test:
                folder = "bounding_box_test"
                # like Market's query: one image per camera, keeping most of the identity in the gallery
                if cams[j] not in seen_cams and n_query < max(1, k // 3) and k > 1:
                    folder = "query"
                    n_query += 1
                seen_cams.add(int(cams[j]))
            view = str(rng.choice(["front", "back", "side"], p=[0.35, 0.35, 0.3]))
            items.append(MannequinImage(f"{folder}/{name}", i, j, "test" if test else "train", view, "full", name))
    for d in range(cfg.distractors):
        rng = np.random.default_rng([cfg.seed, _SEED_DISTRACTOR, d])
        junk = d % 2 == 1
        pid = "-1" if junk else "0000"
        name = f"{pid}_c{rng.integers(1, 7)}s{rng.integers(1, 7)}_{rng.integers(1, 1_000_000):06d}_{d % 100:02d}.jpg"
        # identities past the real ones keep the per-identity seeds distinct
        items.append(MannequinImage(f"bounding_box_test/{name}", cfg.identities + d, 0, "test",
                                    "any" if junk else "none", "junk" if junk else "none", None))
    return items


def _plan_deepfashion(cfg: SynthConfig) -> list[MannequinImage]:
    items = []
    k = cfg.poses_per_identity
    for i in range(cfg.identities):
        rng = np.random.default_rng([cfg.seed, _SEED_LAYOUT, i])
        gender = "WOMEN" if rng.random() < 0.6 else "MEN"
        category = str(rng.choice(DEEPFASHION_CATEGORIES[gender]))
        test = i % 5 == 4
        folder = f"img/{gender}/{category}/id_{i + 1:08d}"
        for j in range(k):
            clothing = 1 + j // len(DEEPFASHION_VIEWS)
            view_no, view_name, view, framing = DEEPFASHION_VIEWS[j % len(DEEPFASHION_VIEWS)]
            relpath = f"{folder}/{clothing:02d}_{view_no}_{view_name}.jpg"
            split = ("query" if j % 2 == 0 else "gallery") if test else "train"
            items.append(MannequinImage(relpath, i, j, split, view, framing, deepfashion_flat_name(relpath)))
        if i < cfg.distractors:
            relpath = f"{folder}/{1 + (k - 1) // len(DEEPFASHION_VIEWS):02d}_6_flat.jpg"
            split = "query" if test else "train"
            items.append(MannequinImage(relpath, i, k, split, "flat", "flat", None))
    return items


def _write_bytes(path: Path, data: bytes) -> None:
    # a raw image, not a pipeline output: rename for atomicity, no fsync per file
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _clear_previous(out: Path, overwrite: bool) -> None:
    if not out.exists() or not any(out.iterdir()):
        return
    summary = out / SUMMARY_NAME
    if not overwrite:
        raise PipelineError(f"{out} is not empty; choose an empty folder or pass --overwrite")
    if not summary.is_file():
        raise PipelineError(f"{out} is not empty and was not written by `pgpig-data synth` "
                            f"(no {SUMMARY_NAME}); refusing to overwrite it")
    previous = json.loads(summary.read_text())
    for rel in previous.get("written", []):
        target = out / rel
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    summary.unlink()


def _write_chunk(out: Path, cfg: SynthConfig, items: list[MannequinImage]) -> list[np.ndarray]:
    """Draw and write ``items``; returns their raw-frame keypoints (a pure task for the process pool)."""
    appearances: dict[int, Appearance] = {}
    keypoints = []
    for item in items:
        app = None
        if item.annotation_name is not None or item.framing == "junk":
            if item.identity not in appearances:
                rng = np.random.default_rng([cfg.seed, _SEED_APPEARANCE, item.identity])
                appearances[item.identity] = sample_appearance(rng)
            app = appearances[item.identity]
        image, xy, _ = draw_image(cfg, item, app)
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
        if not ok:
            raise PipelineError(f"{item.relpath}: OpenCV could not encode the image")
        _write_bytes(out / item.relpath, encoded.tobytes())
        keypoints.append(xy)
    return keypoints


def _advance(bar, chunk: list) -> list:
    if bar is not None:
        bar.update(len(chunk))
    return chunk


def write_mannequins(out: str | os.PathLike, cfg: SynthConfig, overwrite: bool = False,
                     progress: bool = False, workers: int | None = None) -> dict:
    """Write the mannequin set of ``cfg`` under ``out``; returns the summary also saved as ``mannequin.json``.

    ``workers`` processes draw the images (default: the CPU count); every image depends only on the seed
    and its own indices, so the bytes are the same for any number of workers.
    """
    cfg.check()
    out = Path(out)
    _clear_previous(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    items = plan(cfg)
    hgt, wid = cfg.resolved_size()
    prefix = "market" if cfg.layout == "market" else "fashion"
    annotations: dict[str, tuple[list[str], list[np.ndarray]]] = {"train": ([], []), "test": ([], [])}
    folders: Counter = Counter(item.relpath.split("/")[0] for item in items)
    start = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(items), unit="img", desc="synth", dynamic_ncols=True)
    workers = workers or os.cpu_count() or 1
    step = 64
    chunks = [items[i:i + step] for i in range(0, len(items), step)]
    if workers > 1 and len(chunks) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(workers, len(chunks))) as pool:
            results = pool.map(_write_chunk, [out] * len(chunks), [cfg] * len(chunks), chunks)
            drawn = [_advance(bar, r) for r in results]
    else:
        drawn = [_advance(bar, _write_chunk(out, cfg, chunk)) for chunk in chunks]
    if bar is not None:
        bar.close()
    for item, keypoints in zip(items, (xy for chunk in drawn for xy in chunk), strict=True):
        if item.annotation_name is not None:
            split = "train" if item.split == "train" else "test"
            if cfg.layout == "deepfashion":
                pad = deepfashion_margin(wid)
                keypoints = to_patn_frame(keypoints, pad, width=wid - 2 * pad)
            annotations[split][0].append(item.annotation_name)
            annotations[split][1].append(keypoints)

    written = sorted(folders)
    for split, (names, kps) in annotations.items():
        name = f"{prefix}-annotation-{split}.csv"
        array = np.stack(kps) if kps else np.zeros((0, NUM_KEYPOINTS, 2), np.float32)
        write_annotations(out / name, names, array)
        written.append(name)
    if cfg.layout == "deepfashion":
        _write_partition(out / "list_eval_partition.txt", items)
        written.append("list_eval_partition.txt")
    seconds = time.perf_counter() - start
    summary = {
        "config": {**asdict(cfg), "size": [hgt, wid]},
        "images": len(items),
        "annotated": {s: len(v[0]) for s, v in annotations.items()},
        "folders": dict(sorted(folders.items())),
        "identities": cfg.identities,
        "written": written,
        "seconds": round(seconds, 3),
        "images_per_second": round(len(items) / seconds, 1) if seconds > 0 else None,
    }
    with atomic_write(out / SUMMARY_NAME, "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    return summary


def _write_partition(path: Path, items: list[MannequinImage]) -> None:
    # DeepFashion's list_eval_partition.txt: count, header, then padded columns
    lines = [str(len(items)), "image_name item_id evaluation_status"]
    for item in items:
        item_id = item.relpath.split("/")[3]
        lines.append(f"{item.relpath:<64} {item_id} {item.split}")
    with atomic_write(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def mannequin_shards(work: Path, layout: str, identities: int, poses: int, splits: tuple[str, ...] = ("train",),
                     seed: int = 7, size: tuple[int, int] | None = None) -> Path:
    """The whole pipeline on a mannequin set: synth → extract (annotations) → pair; returns ``work/shards``.

    Writes ``work/raw`` (the mannequins), ``work/keypoints`` and ``work/extract.json`` (extraction from the PATN
    annotation CSVs, no pose model), then ``work/shards/<split>`` for each of ``splits``. ``size`` is the stored
    ``(height, width)`` of the shards (``pgpig-data pair --size``: the mannequins are drawn at the layout's own size
    and resized by the pair step), the data set's default (Market 128x64) when None. Used by the tests and the
    benchmarks as a small real shard set made on the CPU in seconds.
    """
    # imported here: the mannequin writer alone (pgpig-data synth) needs neither the extraction nor the pair stage
    from pipeline.extract import ExtractConfig, run_extract
    from pipeline.pair import PairRunConfig, run_pair

    def quiet(*_args, **_kwargs) -> None:
        pass

    raw = work / "raw"
    write_mannequins(raw, SynthConfig(identities=identities, poses_per_identity=poses, layout=layout, seed=seed))
    prefix = "market" if layout == "market" else "fashion"
    csvs = (raw / f"{prefix}-annotation-train.csv", raw / f"{prefix}-annotation-test.csv")
    run_extract(ExtractConfig(raw=raw, out=work / "keypoints", run_file=work / "extract.json", workers=0,
                              annotations=csvs), log=quiet)
    for split in splits:
        run_pair(PairRunConfig(split=split, keypoints_dir=work / "keypoints", run_file=work / "extract.json",
                               out=work / "shards", size=size), log=quiet)
    return work / "shards"

"""``pgpig-data demo``: the whole product on what ships with the installed packages, in a few CPU minutes.

The real photos ``ultralytics`` ships become a small Market-1501-style tree (``photo_tree``) that goes through
extract; a DeepFashion-layout mannequin set goes through extract, pair, report, train (PATN, ``workflows/demo.yaml``),
generate and eval. Each step is the command a user would type, printed, then run as a subprocess of this Python
(``python -m pipeline.cli`` / ``python -m pgpig.cli``, as the console scripts may not be on ``PATH``) and timed.
Nothing is downloaded; everything is written under ``DIR``. ``docs/demo.md`` lists the steps and why they are so.
"""

from __future__ import annotations

import importlib.resources
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from pipeline.errors import PipelineError
from schemas.files import atomic_write

__all__ = ["DemoConfig", "photo_tree", "run_demo"]

PHOTOS = ("bus.jpg", "zidane.jpg")
"""The real photos of ``ultralytics/assets`` the demo builds its photo tree from."""

COMMANDS = {"pgpig-data": "pipeline.cli", "pgpig": "pgpig.cli"}
"""The console scripts the demo shows, and the modules it runs them as (module docstring)."""

_PROGRESS = re.compile(r"\d+%\|")
"""A tqdm progress-bar frame."""

MANNEQUIN_SIZE = "128x128"
"""Size of the mannequin images, written and stored: DeepFashion's 256x256 halved, so that a CPU trains PATN on
its 128x88 crop (``workflows/demo.yaml``) in a few minutes."""

OVERLAY_SCALE = 3
"""How many times the overlays enlarge the 128x64 photo cut-outs, so the skeleton can be seen."""

CUT_SIZE = (128, 64)
"""Market-1501's image size, ``(H, W)``, which every cut-out is stretched to."""


@dataclass
class DemoConfig:
    """Everything ``pgpig-data demo`` can be told; defaults are the CLI's."""

    out: Path
    """Folder the demo writes everything into."""
    steps: int = 200
    """Training steps of the PATN run."""
    identities: int = 40
    """Mannequin identities (every fifth a test identity, as ``synth`` lays out DeepFashion)."""
    device: str = "auto"
    """Device of extraction and training: ``auto``, ``cpu``, ``cuda``."""
    overwrite: bool = False
    """Replace the contents of an existing, non-empty ``out``."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per step, filled by ``run_demo``."""


def ultralytics_assets() -> Path:
    """The folder of photos the installed ``ultralytics`` ships."""
    try:
        folder = Path(str(importlib.resources.files("ultralytics") / "assets"))
    except ModuleNotFoundError:
        raise PipelineError("the ultralytics package is not installed; `python -m pip install .` installs it") \
            from None
    missing = [name for name in PHOTOS if not (folder / name).is_file()]
    if missing:
        raise PipelineError(f"{folder}: the photos {', '.join(missing)} are missing from the ultralytics install")
    return folder


def _cut(image: np.ndarray, box: np.ndarray, zoom: float) -> np.ndarray:
    """The person's box widened to Market's 1:2 aspect, scaled by ``1 / zoom`` about its centre (``zoom`` > 1 cuts
    closer), padded with grey where it leaves the photo, stretched to ``CUT_SIZE``."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    h = max(y2 - y1, 2 * (x2 - x1)) * 1.1 / zoom  # a 10% margin around the person
    w = h / 2
    left, top = round(cx - w / 2), round(cy - h / 2)
    right, bottom = left + max(2, round(w)), top + max(2, round(h))
    pad = max(0, -left, -top, right - image.shape[1], bottom - image.shape[0])
    padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(114, 114, 114)) if pad \
        else image
    crop = padded[top + pad:bottom + pad, left + pad:right + pad]
    return cv2.resize(crop, (CUT_SIZE[1], CUT_SIZE[0]), interpolation=cv2.INTER_AREA)


def photo_tree(out: Path, device: str = "auto", log: Callable[[str], None] = print) -> dict[str, int]:
    """Write the Market-1501-style tree of the shipped photos' persons into ``out``; returns counts.

    Persons are found with the embedded YOLO-pose model at 640 px (the photos are full frames); boxes under 64 px
    tall are left out (too small to become a 128x64 image)."""
    from pipeline.pose.reference import UltralyticsBackend

    assets = ultralytics_assets()
    backend = UltralyticsBackend(imgsz=640, device=device, batch_size=1)
    folder = out / "bounding_box_train"
    folder.mkdir(parents=True, exist_ok=True)
    variants = {1: lambda im, b: _cut(im, b, 1.0), 2: lambda im, b: _cut(im, b, 1.0)[:, ::-1],
                3: lambda im, b: _cut(im, b, 1.25), 4: lambda im, b: _cut(im, b, 0.8)}
    person = 0
    for name in PHOTOS:
        image = cv2.imread(str(assets / name))
        if image is None:
            raise PipelineError(f"{assets / name}: cannot decode the shipped photo")
        found = backend.predict([image])[0]
        for box in found.boxes:
            if box[3] - box[1] < 64:
                continue
            person += 1
            for camera, make in variants.items():
                cv2.imwrite(str(folder / f"{person:04d}_c{camera}s1_000001_00.jpg"), make(image, box),
                            [cv2.IMWRITE_JPEG_QUALITY, 95])
        log(f"  {name}: {len(found)} persons found")
    if person == 0:
        raise PipelineError(f"no person found in the shipped photos of {assets}")
    return {"persons": person, "images": 4 * person}


def overlays(raw: Path, keypoints_dir: Path, out: Path) -> list[Path]:
    """One PNG per ``ok`` row of a keypoints table: the image beside itself with the skeleton drawn, both
    enlarged ``OVERLAY_SCALE`` times."""
    from pipeline.keypoints import read_keypoints
    from pipeline.overlay import draw_skeleton
    from schemas.files import safe_join
    from schemas.tables import keypoints_to_numpy

    table = read_keypoints(keypoints_dir, ["image", "status", "keypoints"])
    xy_all = keypoints_to_numpy(table["keypoints"])
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for relpath, status, xy in zip(table["image"].to_pylist(), table["status"].to_pylist(), xy_all, strict=True):
        if status != "ok":
            continue
        image = cv2.imread(str(safe_join(raw, relpath, "image")))
        big = cv2.resize(image, None, fx=OVERLAY_SCALE, fy=OVERLAY_SCALE, interpolation=cv2.INTER_NEAREST)
        # pixel centres move with the scale
        scaled = np.where(xy >= 0, xy * OVERLAY_SCALE + (OVERLAY_SCALE - 1) / 2, -1)
        tile = np.concatenate([big, np.full((big.shape[0], 4, 3), 255, np.uint8), draw_skeleton(big, scaled)], 1)
        path = out / f"{Path(relpath).stem}.png"
        with atomic_write(path) as f:
            f.write(cv2.imencode(".png", tile)[1].tobytes())
        written.append(path)
    return written


def _clear(out: Path, overwrite: bool) -> None:
    """Make ``out`` an empty folder; a non-empty one is refused unless ``overwrite``."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise PipelineError(f"{out} is not empty; pass --overwrite to replace it, or another folder")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _command(out: Path, title: str, tool: str, args: list[str] | Callable[[], list[str]],
             log: Callable[[str], None]) -> Callable[[], None]:
    """The step that runs ``tool args`` in ``out`` (``args`` may be computed when the step runs, from earlier
    steps' files) and logs the command and the last lines it printed."""

    def run() -> None:
        argv = args() if callable(args) else args
        log(f"$ {tool} {shlex.join(argv)}")
        done = subprocess.run([sys.executable, "-m", COMMANDS[tool], *argv], cwd=out, text=True,
                              capture_output=True)
        # the command's summary, without progress-bar frames and blank lines
        lines = [line for line in (done.stdout + done.stderr).splitlines()
                 if line.strip() and not _PROGRESS.search(line)]
        for line in lines[-4:]:
            log(f"  {line}")
        if done.returncode:
            raise PipelineError(f"demo step '{title}' failed (exit {done.returncode}); the command above "
                                f"shows why; rerun it by hand in {out} to see all of its output")

    return run


def _test_pair(out: Path) -> list[str]:
    """Arguments of ``pgpig generate`` for two test images of one mannequin: the source with its exact keypoints
    (written to ``source-pose.json``: a half-body view need not be found by the pose model) and, as the target
    pose, the identity's image with the most visible joints, whose person the pose model finds."""
    from pipeline.keypoints import read_keypoints
    from schemas.tables import keypoints_to_numpy

    table = read_keypoints(out / "keypoints", ["image", "split", "identity", "width", "height", "keypoints",
                                                "n_visible"])
    rows = table.to_pylist()
    xy = keypoints_to_numpy(table["keypoints"])
    tests: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        if row["split"] == "test":
            tests.setdefault(row["identity"], []).append(i)
    same = next((tests[k] for k in sorted(tests) if len(tests[k]) > 1), None)
    if same is None:
        raise PipelineError(f"{out / 'keypoints'}: no test identity with two images")
    source = same[0]
    target = max(same[1:], key=lambda i: rows[i]["n_visible"])
    pose = {"keypoints": xy[source].tolist(), "image_size": [rows[source]["height"], rows[source]["width"]]}
    with atomic_write(out / "source-pose.json") as f:
        f.write(json.dumps(pose).encode())
    return ["--source", f"mannequins/{rows[source]['image']}", "--source-pose", "source-pose.json",
            "--target-pose", f"mannequins/{rows[target]['image']}"]


def _steps(cfg: DemoConfig, log: Callable[[str], None]) -> list[tuple[str, Callable[[], None]]]:
    """The demo's steps in order, each a title and the function that runs it."""
    out = cfg.out

    def command(title: str, args: list[str] | Callable[[], list[str]], tool: str) -> tuple[str, Callable[[], None]]:
        return title, _command(out, title, tool, args, log)

    def photos() -> None:
        counts = photo_tree(out / "photos", cfg.device, log)
        log(f"  photos/: {counts['images']} images of {counts['persons']} persons (as is, mirrored, zoomed in, "
            "zoomed out)")

    def draw() -> None:
        written = overlays(out / "photos", out / "photos-keypoints", out / "overlays")
        log(f"  overlays/: {len(written)} keypoint overlays of the photos")

    def table() -> None:
        for line in (out / "run" / "eval" / "test" / "eval.md").read_text().splitlines():
            if line.startswith("|"):
                log(f"  {line}")

    return [
        ("photos", photos),
        command("extract photos", ["extract", "photos", "--out", "photos-keypoints", "--run-file",
                                   "photos-extract.json", "--device", cfg.device, "--quiet"], "pgpig-data"),
        ("overlays", draw),
        command("synth mannequins", ["synth", "mannequins", "--layout", "deepfashion", "--size", MANNEQUIN_SIZE,
                                     "--identities", str(cfg.identities), "--poses-per-identity", "6", "--quiet"],
                "pgpig-data"),
        command("extract mannequins", ["extract", "mannequins", "--annotations",
                                       "mannequins/fashion-annotation-train.csv", "--annotations",
                                       "mannequins/fashion-annotation-test.csv", "--quiet"], "pgpig-data"),
        command("pair train", ["pair", "--split", "train", "--size", MANNEQUIN_SIZE], "pgpig-data"),
        command("pair test", ["pair", "--split", "test", "--size", MANNEQUIN_SIZE], "pgpig-data"),
        command("report", ["report"], "pgpig-data"),
        command("train PATN", ["train", "--shards", "shards", "--recipe", "demo", "--run", "run",
                               "--steps", str(cfg.steps), "--device", cfg.device, "--quiet"], "pgpig"),
        command("generate", lambda: ["generate", "--run", "run", *_test_pair(out), "--out", "generated.png",
                                     "--grid", "--device", cfg.device], "pgpig"),
        command("eval", ["eval", "--run", "run", "--shards", "shards", "--split", "test", "--device", cfg.device,
                         "--quiet"], "pgpig"),
        ("eval table", table),
    ]


def run_demo(cfg: DemoConfig, log: Callable[[str], None] = print) -> dict[str, Path]:
    """Run every step of the demo into ``cfg.out``; returns the paths worth looking at."""
    out = cfg.out
    _clear(out, cfg.overwrite)
    steps = _steps(cfg, log)
    start = time.perf_counter()
    for i, (title, run) in enumerate(steps, 1):
        log(f"[{i}/{len(steps)}] {title}")
        t0 = time.perf_counter()
        run()
        cfg.timings[title] = time.perf_counter() - t0
        log(f"  ({cfg.timings[title]:.1f} s)")
    cfg.timings["total"] = time.perf_counter() - start
    samples = sorted((out / "run" / "samples").glob("step-*.png"))
    return {"overlays": out / "overlays", "manifest": out / "shards" / "train" / "manifest.json",
            "samples": samples[-1] if samples else out / "run" / "samples", "generated": out / "generated.png",
            "grid": out / "generated-grid.png", "run": out / "run", "report": out / "report.html"}

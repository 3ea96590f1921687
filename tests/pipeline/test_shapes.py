"""``pipeline.pose.shapes``: the input shapes a file list will meet, and their first network calls made ahead.

``image_size`` must give the size ``pipeline.decode`` decodes to (EXIF rotation applied) for the formats it reads
from their headers, and None, never an error, for anything else. ``ShapeWarmer`` runs the real YOLO11n-pose on the
CPU here (batch 2); on a GPU (``-m gpu``) the fast backend with its warmer gives what one without it gives, with
the CUDA graphs captured while the warmer's threads run.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import ultralytics_assets
from corpus import pil_bytes, with_orientation, write
from PIL import Image

from pipeline.decode import decode_image
from pipeline.pose.fast import FastBackend, letterbox_geometry
from pipeline.pose.shapes import ShapeWarmer, image_size, sample_shapes

SIZES = [(128, 64), (256, 176), (480, 640), (720, 1280), (300, 300), (97, 311)]


def input_shape(path: Path, imgsz: int = 256) -> tuple[int, int]:
    box = letterbox_geometry(*decode_image(path).image.shape[:2], imgsz)
    return box.out_h, box.out_w


@pytest.fixture(scope="module")
def sized_tree(tmp_path_factory) -> list[Path]:
    """JPEGs of 6 sizes interleaved (the order a crawl lists them in), a third of them portrait 256x176, and the two
    photos shipped with ultralytics (persons to find)."""
    root = tmp_path_factory.mktemp("sized")
    paths = [Path(shutil.copy(ultralytics_assets() / name, root / name)) for name in ("bus.jpg", "zidane.jpg")]
    for k in range(18):
        h, w = SIZES[k % len(SIZES)] if k % 3 else (256, 176)
        path = root / f"{k:02d}.jpg"
        cv2.imwrite(str(path), np.full((h, w, 3), 40 + 10 * k, np.uint8))
        paths.insert(len(paths) - 2, path)
    return paths


def choices(backend: FastBackend, paths: list[Path]) -> tuple[np.ndarray, ...]:
    """Every file's person count, box and keypoints as ``choose_files`` gives them."""
    out = list(backend.choose_files(paths))
    return tuple(np.concatenate([getattr(c, name) for c in out]) for name in ("persons", "boxes", "keypoints"))


def test_image_size_is_the_decoded_size_and_none_for_what_it_cannot_read(tmp_path):
    photo = cv2.imread(str(ultralytics_assets() / "zidane.jpg"))[:300, :500]
    readable = [shutil.copy(ultralytics_assets() / "bus.jpg", tmp_path / "bus.jpg"),
                write(tmp_path / "rotated.jpg", with_orientation(photo, 6)),
                write(tmp_path / "mirrored.jpg", with_orientation(photo, 2)),
                write(tmp_path / "photo.png", pil_bytes(Image.fromarray(photo), "PNG")),
                write(tmp_path / "progressive.jpg", pil_bytes(Image.fromarray(photo), "JPEG", progressive=True))]
    for path in map(Path, readable):
        assert image_size(path) == decode_image(path).image.shape[:2], path.name
    assert image_size(tmp_path / "rotated.jpg") == (500, 300)
    jpeg = (tmp_path / "mirrored.jpg").read_bytes()
    unreadable = [write(tmp_path / "truncated.jpg", jpeg[:40]), write(tmp_path / "notes.jpg", b"not an image\n"),
                  write(tmp_path / "photo.webp", pil_bytes(Image.fromarray(photo), "WEBP")),
                  write(tmp_path / "empty.png", b""), tmp_path / "missing.jpg", tmp_path]
    assert [image_size(p) for p in unreadable] == [None] * len(unreadable)


def test_sample_shapes_gives_the_files_input_shapes_most_frequent_first(sized_tree):
    shapes = sample_shapes(sized_tree, 256)
    assert set(shapes) == {input_shape(p) for p in sized_tree}
    assert shapes[0] == input_shape(sized_tree[0])  # 256x176, a third of the files
    spread = sample_shapes(sized_tree[:18], 256, samples=6)  # every third file: all portrait 256x176
    assert spread == [input_shape(sized_tree[0])]
    assert sample_shapes([], 256) == [] and sample_shapes(sized_tree, 256, samples=0) == []


@pytest.fixture(scope="module")
def cpu_backend():
    backend = FastBackend(device="cpu", batch_size=2, read_threads=2, warm_threads=2)
    yield backend
    backend.close()


def test_the_warmer_calls_the_network_once_at_each_new_shape_and_never_at_a_claimed_one(sized_tree, cpu_backend):
    warmer = ShapeWarmer(cpu_backend.net, cpu_backend.device, cpu_backend.dtype, 2, 256, threads=2)
    claimed = input_shape(sized_tree[1])
    warmer.claim(claimed)
    warmer.start(sized_tree[:9])
    warmer.start(sized_tree)  # overlapping lists: a shape is queued once
    warmer.wait()
    assert sorted(warmer.warmed) == sorted({input_shape(p) for p in sized_tree} - {claimed})
    warmer.claim(input_shape(sized_tree[0]))  # already warmed: returns at once
    warmer.queue([(32, 256), claimed])  # shapes as given, those claimed or run left out
    warmer.wait()
    assert sorted(warmer.warmed) == sorted({input_shape(p) for p in sized_tree} - {claimed} | {(32, 256)})
    warmer.close()
    warmer.start(sized_tree)  # closed: nothing runs
    warmer.wait()


def test_the_warmer_leaves_a_shape_to_the_caller_when_the_device_has_no_room_for_its_call(sized_tree, cpu_backend):
    """On a GPU the warmer reads the device's free memory; here that reading is set, the calls are real."""
    need = {shape: 12 * 2 * 3 * shape[0] * shape[1] * 4 for shape in map(input_shape, sized_tree)}  # CALL_BYTES x
    largest = max(need.values())  # each input of 2 images, float32 on the CPU
    assert len(need) == 5 and sum(n == largest for n in need.values()) == 1
    for free, want in ((largest + 25, set(need)), (largest + 24, {s for s, n in need.items() if n < largest})):
        warmer = ShapeWarmer(cpu_backend.net, cpu_backend.device, cpu_backend.dtype, 2, 256, threads=1)
        warmer._free_memory = lambda free=free: (free, 100)  # FREE_SHARE of 100 bytes: 25 kept free
        warmer.start(sized_tree)
        warmer.wait()
        assert set(warmer.warmed) == want
        warmer.close()


def test_a_backend_with_a_warmer_chooses_what_one_without_chooses(sized_tree, cpu_backend):
    plain = FastBackend(device="cpu", batch_size=2, read_threads=2)
    assert plain.warmer is None and cpu_backend.warmer is not None
    want, got = choices(plain, sized_tree), choices(cpu_backend, sized_tree)
    cpu_backend.warmer.wait()
    assert want[0].sum() >= 5  # bus.jpg and zidane.jpg
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    assert set(cpu_backend.warmer.warmed) == {input_shape(p) for p in sized_tree}


def test_look_ahead_warms_the_files_shapes_before_any_task(sized_tree):
    """``look_ahead`` (the first task's files, from ``pgpig-data extract`` during the warm-up) queues their shapes'
    first calls at once; a warm-up alone meets only its own image's shape."""
    backend = FastBackend(device="cpu", batch_size=2, read_threads=2, warm_threads=2)
    try:
        backend.warm_up()
        backend.warmer.wait()
        assert set(backend.warmer.warmed) == {input_shape(sized_tree[0])}  # 256x176, the warm-up's own image
        backend.look_ahead(sized_tree)
        backend.warmer.wait()
        assert set(backend.warmer.warmed) == {input_shape(p) for p in sized_tree}
    finally:
        backend.close()
    FastBackend(device="cpu", batch_size=2, read_threads=2).look_ahead(sized_tree)  # no warmer: nothing to do


def test_the_same_files_again_are_not_sampled_again(sized_tree, cpu_backend, monkeypatch):
    """A task's files come twice, from ``look_ahead`` and from the task's own ``choose_files``: their headers are
    read once; another list is read."""
    from pipeline.pose import shapes

    sampled = []
    sample = shapes.sample_shapes
    monkeypatch.setattr(shapes, "sample_shapes", lambda paths, *a: sampled.append(len(paths)) or sample(paths, *a))
    warmer = ShapeWarmer(cpu_backend.net, cpu_backend.device, cpu_backend.dtype, 2, 256, threads=1)
    warmer.start([str(p) for p in sized_tree])
    warmer.start([str(p) for p in sized_tree])  # equal, not the same object
    warmer.wait()
    assert sampled == [len(sized_tree)]
    warmer.start(sized_tree[:4])
    warmer.start([str(p) for p in sized_tree])
    warmer.wait()
    assert sampled == [len(sized_tree), 4, len(sized_tree)]
    assert sorted(warmer.warmed) == sorted({input_shape(p) for p in sized_tree})
    warmer.close()


def test_a_pause_waits_for_the_running_call_and_holds_the_next_one_off(cpu_backend):
    """``paused`` (a graph capture's) returns once the call running has ended, and no call starts inside it, also on
    a free warmer thread; the held call runs after it. The first call is held (an event) to make the order."""
    warmer = ShapeWarmer(cpu_backend.net, cpu_backend.device, cpu_backend.dtype, 2, 256, threads=2)
    call, log, entered, release = warmer._call, [], threading.Event(), threading.Event()

    def logged(shape):
        log.append(("start", shape))
        if shape == (64, 64):
            entered.set()
            release.wait(10)
        out = call(shape)
        log.append(("end", shape))
        return out

    warmer._call = logged
    warmer.queue([(64, 64)])
    assert entered.wait(10)
    inside, leave = threading.Event(), threading.Event()

    def pause():
        with warmer.paused():
            log.append("pause")
            inside.set()
            leave.wait(10)
            log.append("resume")

    pausing = threading.Thread(target=pause)
    pausing.start()
    assert not inside.wait(0.3)  # the running call holds it
    warmer.queue([(32, 96)])  # a free thread takes it, and waits for the pause
    release.set()
    assert inside.wait(10)
    time.sleep(0.3)
    assert log == [("start", (64, 64)), ("end", (64, 64)), "pause"]
    leave.set()
    pausing.join(10)
    warmer.wait()
    assert log[3:] == ["resume", ("start", (32, 96)), ("end", (32, 96))]
    assert sorted(warmer.warmed) == [(32, 96), (64, 64)]
    warmer.close()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_a_gpu_the_warmer_runs_beside_the_graph_captures_and_changes_no_result(sized_tree):
    """Each shape's graph is captured on the main thread while the warmer's threads call the network at others."""
    paths = sized_tree * 12
    plain = FastBackend(batch_size=16, read_threads=2, warm_threads=0)
    warmed = FastBackend(batch_size=16, read_threads=2)
    try:
        want, got = choices(plain, paths), choices(warmed, paths)
        assert warmed.warmer is not None and warmed.warmer.threads == 4
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)
        assert {s[1:] for s in warmed.graphs.shapes} == {input_shape(p) for p in sized_tree}
    finally:
        plain.close()
        warmed.close()

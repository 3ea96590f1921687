"""The person ``pgpig-data extract`` keeps of each image (``choose_person``, ``select_persons``, ``--person``).

Real data: crops of ultralytics' zidane.jpg made for Zidane (his box's centre is the crop's centre, at Market's
128x64, some mirrored), with Ancelotti, taller in them and found with a higher score, at a side. Measured on the
2-core development machine (yolo11n-pose, 256-px input, CPU): in 18 such crops (3 centres, 3 heights, mirrored or
not) the largest person was Ancelotti in 13 and the centre rule gave Zidane in all 18; the 4 crops used here are
of the 13. GPU tests (``-m gpu``) check the CUDA graphs' choice against the numpy rule on the same crops.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from conftest import ultralytics_assets

from pipeline.datasets import default_person
from pipeline.errors import PipelineError
from pipeline.extract import ExtractConfig, person_rule, run_extract
from pipeline.keypoints import read_keypoints
from pipeline.pose import PERSON_RULES, choose_person, full_width
from pipeline.pose.fast import (
    FastBackend,
    bgr_to_tensor,
    inverse_letterbox,
    letterbox,
    letterbox_geometry,
    postprocess,
    select_persons,
    split_detections,
    to_image_pixels,
)
from schemas.tables import keypoints_to_numpy

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# zidane.jpg (1280x720) by yolo11n-pose at 640 px: Zidane's box (139.6, 204.2, 1041.8, 714.2), his pointing arm
# included, centred at (591, 459); the noses of Zidane and Ancelotti
ZIDANE_CENTRE = (590, 459)
NOSES = np.array([[651.8, 358.5], [999.7, 202.4]])
CROPS = [(2250, False), (2250, True), (2500, False), (2500, True)]
"""(height in photo pixels, mirrored) of each crop: 1:2 boxes centred on Zidane's, the far side padded grey."""
HEAD = [0, 14, 15, 16, 17]  # OpenPose-18 nose, eyes, ears (COCO-17: 0 to 4)


def zidane_crop(photo: np.ndarray, height: int, mirrored: bool) -> tuple[np.ndarray, np.ndarray]:
    """A 128x64 crop of ``photo`` made for Zidane, and the two noses' x in it ``(2,)`` (Zidane's first)."""
    width = height // 2
    x0, y0 = ZIDANE_CENTRE[0] - width // 2, ZIDANE_CENTRE[1] - height // 2
    canvas = np.full((height, width, 3), 114, np.uint8)
    top, left = max(0, -y0), max(0, -x0)
    part = photo[max(0, y0):y0 + height, max(0, x0):x0 + width]
    canvas[top:top + part.shape[0], left:left + part.shape[1]] = part
    crop = cv2.resize(canvas, (64, 128), interpolation=cv2.INTER_AREA)
    noses_x = (NOSES[:, 0] - x0) * 64 / width
    return (np.ascontiguousarray(crop[:, ::-1]), 64 - noses_x) if mirrored else (crop, noses_x)


@pytest.fixture(scope="module")
def zidane_tree(tmp_path_factory) -> tuple:
    """The crops as a Market-1501 tree: (root, {path: the noses' x in it})."""
    photo = cv2.imread(str(ultralytics_assets() / "zidane.jpg"))
    root = tmp_path_factory.mktemp("crops") / "market"
    (root / "bounding_box_train").mkdir(parents=True)
    noses = {}
    for camera, (height, mirrored) in enumerate(CROPS, 1):
        crop, noses_x = zidane_crop(photo, height, mirrored)
        path = root / f"bounding_box_train/0001_c{camera}s1_000001_00.jpg"
        cv2.imwrite(str(path), crop, [cv2.IMWRITE_JPEG_QUALITY, 95])
        noses[path] = noses_x
    return root, noses


def whose(head_x: np.ndarray, noses_x: np.ndarray) -> str:
    """``Zidane`` or ``Ancelotti``: whose nose the x of a skeleton's visible head joints are nearest."""
    assert len(head_x), "no head joint visible"
    return ("Zidane", "Ancelotti")[int(np.argmin(np.abs(noses_x - np.mean(head_x))))]


# ---------------------------------------------------------------- the rule


def test_centre_rule_keeps_the_centred_person_and_largest_the_biggest():
    # a 128x64 crop: a person centred (closeness 1, score 0.5, merit 128 x 0.5 = 64) and a neighbour of the
    # same size at the right half (centre 48: closeness 1 - 16/32 = 0.5, merit 128 x 1.0 x 0.25 = 32)
    boxes = np.array([[32, 0, 64, 128, 1.0], [16, 0, 48, 128, 0.5]], np.float32)
    assert choose_person(boxes, "largest") == 0  # area x score: 4096 against 2048
    assert choose_person(boxes, "centre", 64) == 1
    # a short person in the middle loses to a tall one a little off it: height counts, not area
    boxes = np.array([[24, 80, 40, 120, 0.9], [8, 4, 44, 124, 0.8]], np.float32)
    assert choose_person(boxes, "centre", 64) == 1
    # a box whose centre is at a side has merit 0; equal merits give the first (the highest score)
    boxes = np.array([[40, 0, 64, 128, 0.9], [0, 0, 0, 128, 0.8], [16, 0, 48, 128, 0.5], [16, 0, 48, 128, 0.5]],
                     np.float32)
    assert choose_person(boxes[:2], "centre", 64) == 0
    assert choose_person(boxes[2:], "centre", 64) == 0 and choose_person(boxes[2:], "largest") == 0
    assert choose_person(np.zeros((0, 5), np.float32), "centre", 64) == -1
    with pytest.raises(PipelineError, match="--person"):
        choose_person(boxes, "middle", 64)
    with pytest.raises(PipelineError, match="width"):
        choose_person(boxes, "centre")


def test_layouts_default_to_their_rule(tmp_path):
    for layout, folder, rule in (("market1501", "bounding_box_train", "centre"), ("deepfashion", "img", "centre"),
                                 ("folder", "0001", "largest")):
        (tmp_path / layout / folder).mkdir(parents=True)
        assert default_person(tmp_path / layout) == rule == person_rule(ExtractConfig(raw=tmp_path / layout),
                                                                       tmp_path / layout)
        assert person_rule(ExtractConfig(raw=tmp_path / layout, person="largest"), tmp_path / layout) == "largest"
        assert person_rule(ExtractConfig(raw=tmp_path / layout, annotations=(tmp_path / "a.csv",)),
                           tmp_path / layout) is None
    assert person_rule(ExtractConfig(raw=tmp_path / "folder", dataset="market1501"), tmp_path / "folder") == "centre"


# ---------------------------------------------------------------- through extract, with the real model


def test_extract_keeps_the_person_the_crop_was_made_for(zidane_tree, tmp_path):
    """The reference backend on the CPU: ``--person largest`` puts the skeletons on Ancelotti, the Market layout's
    default (centre) on Zidane; a resume with the other rule is refused."""
    root, noses = zidane_tree
    kept = {}
    for rule in ("largest", None):
        cfg = ExtractConfig(raw=root, out=tmp_path / f"{rule}" / "keypoints", run_file=tmp_path / f"{rule}.json",
                            pose_backend="ultralytics", device="cpu", workers=0, person=rule)
        record = run_extract(cfg, log=lambda *_: None)
        assert record["settings"]["person"] == (rule or "centre") and record["statuses"] == {"ok": len(CROPS)}
        table = read_keypoints(cfg.out, ["image", "n_persons", "keypoints"])
        xy = keypoints_to_numpy(table["keypoints"])
        assert min(table["n_persons"].to_pylist()) >= 2
        kept[rule] = [whose(head[(head >= 0).all(1), 0], noses[root / rel])
                      for rel, head in zip(table["image"].to_pylist(), xy[:, HEAD], strict=True)]
    assert kept == {"largest": ["Ancelotti"] * len(CROPS), None: ["Zidane"] * len(CROPS)}
    resume = ExtractConfig(raw=root, out=tmp_path / "largest" / "keypoints", run_file=tmp_path / "largest.json",
                           pose_backend="ultralytics", device="cpu", workers=0)
    with pytest.raises(PipelineError, match="other settings \\(person\\) \\(it was made with --person largest\\)"):
        run_extract(resume, log=lambda *_: None)
    # a run recorded before the rule was recorded chose the largest person: the same refusal
    record = json.loads(resume.run_file.read_text())
    del record["settings"]["person"]
    resume.run_file.write_text(json.dumps(record))
    with pytest.raises(PipelineError, match="it was made with --person largest"):
        run_extract(resume, log=lambda *_: None)


# ---------------------------------------------------------------- the fast backend's choice is the numpy rule's


@pytest.fixture(scope="module")
def fast() -> FastBackend:
    return FastBackend(device="cpu", batch_size=4, read_threads=2, torch_decode=True)


@pytest.mark.parametrize("rule", PERSON_RULES)
@torch.inference_mode()
def test_select_persons_is_the_numpy_rule_bit_for_bit(zidane_tree, fast, rule):
    """``select_persons`` (fixed shapes) against ``postprocess`` + ``choose_person`` on the crops, at decode scales 1
    and 0.5: the same person, the same float32 row."""
    chosen = set()
    for path in zidane_tree[1]:
        image = cv2.imread(str(path))
        box = letterbox_geometry(*image.shape[:2], fast.imgsz)
        pred = fast.net(letterbox(bgr_to_tensor(image[None], fast.device), box))[0]
        for scale in (1.0, 0.5):
            frames = torch.tensor([[*inverse_letterbox((box.out_h, box.out_w), image.shape[:2]), image.shape[1],
                                    image.shape[0], scale]])
            det, index = postprocess(pred, fast.conf, fast.iou, fast.max_det)
            d = split_detections(to_image_pixels(det, index, frames[:, :6]).numpy(), index.numpy(), 1)[0]
            d = d.scaled(scale)
            i = choose_person(d.boxes, rule, full_width(image.shape[1], scale))
            got = select_persons(pred, frames, fast.conf, fast.iou, 64, 8, rule)[0].numpy()
            assert got[0] == 1 and got[1] == len(d) >= 2
            want = np.concatenate([d.boxes[i], np.concatenate([d.keypoints[i], d.scores[i][:, None]], 1).ravel()])
            np.testing.assert_array_equal(got[2:], want)
            chosen.add(i)
    assert rule == "largest" or chosen != {0}  # the centre rule chose someone other than the first person


def chosen_rows(backend: FastBackend, paths: list) -> list[np.ndarray]:
    """The chosen person's row (x1, y1, x2, y2, score, 17 x (x, y, v)) of every path by ``choose_files``."""
    rows = []
    for batch in backend.choose_files(paths):
        for j in range(len(batch.read)):
            kp = np.concatenate([batch.keypoints[j], batch.scores[j][:, None]], 1).ravel()
            rows.append(np.concatenate([batch.boxes[j], kp]))
    return rows


def numpy_rows(backend: FastBackend, paths: list, rule: str) -> list[np.ndarray]:
    """The same by ``predict_files`` (every person, exact post-processing) and the numpy rule."""
    rows = []
    for decoded, det in backend.predict_files(paths):
        det = det.scaled(decoded.scale)
        i = choose_person(det.boxes, rule, decoded.width)
        rows.append(np.concatenate([det.boxes[i], np.concatenate([det.keypoints[i], det.scores[i][:, None]],
                                                                 1).ravel()]))
    return rows


def test_fast_backend_files_keep_the_centred_person(zidane_tree):
    """``choose_files`` with the centre rule, by the fixed-shape choice and by its exact fallback (``select_k=1``),
    gives the numpy rule's person, and that is Zidane."""
    noses = zidane_tree[1]
    paths = list(noses)
    for select_k in (64, 1):
        backend = FastBackend(device="cpu", batch_size=4, read_threads=2, torch_decode=True, select_k=select_k,
                              person="centre")
        got, want = chosen_rows(backend, paths), numpy_rows(backend, paths, "centre")
        for path, g, w in zip(paths, got, want, strict=True):
            np.testing.assert_allclose(g, w, atol=1e-4, err_msg=str(path))
            head = g[5:].reshape(17, 3)[:5]
            assert whose(head[head[:, 2] >= 0.5, 0], noses[path]) == "Zidane", path
        backend.close()


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("rule", PERSON_RULES)
def test_gpu_graphs_choose_the_numpy_rules_person(zidane_tree, rule):
    """On the GPU (fp16, nvJPEG, the choice inside CUDA graphs, full batches and a padded tail): each crop's person
    is the one the numpy rule picks among the same backend's exact detections (eager, every person)."""
    paths = list(zidane_tree[1]) * 5  # 20 files: full batches of 8 and a tail of 4
    graphs = FastBackend(device="cuda:0", batch_size=8, person=rule)
    assert graphs.graphs.enabled
    got, want = chosen_rows(graphs, paths), numpy_rows(graphs, paths, rule)
    assert graphs.graphs.shapes
    for path, g, w in zip(paths, got, want, strict=True):
        # the same person: the same box, but for fp16 noise (graph and eager calls may run other kernels)
        np.testing.assert_allclose(g[:5], w[:5], atol=1.0, err_msg=str(path))
    graphs.close()

"""PCKh protocols: ``patn`` equals a plain re-implementation of PATN's ``tool/calPCKH_*.py`` fed PATN-style CSV lines
of the same mannequin keypoints; ``strict`` and ``patn`` agree where the official script agrees with us and differ
where rounding or the DeepFashion crop decide; ``pgpig eval --pckh-protocol`` writes both numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pgpig.cli import main
from pgpig.evaluate import PCKhScorer, StoredFrame, pair_file_name, patn_crop, read_names
from pgpig.metrics import patn_keypoints
from pipeline.synthetic import SynthConfig, draw_image, plan, sample_appearance
from schemas.keypoints import MISSING, NUM_KEYPOINTS
from schemas.patn import format_annotation_line, to_patn_frame

# ---------------------------------------------------------------------------------------------------- official

OFFICIAL_HEAD = [0, 1, 14, 15, 16, 17]


def parse_csv_lines(lines: list[str]) -> dict[str, tuple[list[int], list[int]]]:
    """``name: [y0, ...]: [x0, ...]`` lines → ``{name: (ys, xs)}``, read the way the official script reads them."""
    rows = {}
    for line in lines:
        name, ys, xs = line.split(":")
        rows[name.strip()] = (json.loads(ys), json.loads(xs))
    return rows


def official_pckh(target_lines: list[str], predicted_lines: list[str], alpha: float = 0.5) -> tuple[int, int]:
    """``(correct, all)`` as PATN's ``calPCKH_*.py`` computes them: for every predicted row, the target's head box
    from its visible head joints (at least two, else the row is skipped), then every target joint with y != -1
    counts, and a joint is right when no coordinate is -1 and both per-axis distances are below alpha × the box."""
    targets = parse_csv_lines(target_lines)
    n_all = n_correct = 0
    for name, (py, px) in parse_csv_lines(predicted_lines).items():
        ty, tx = targets[name]
        head = [(tx[j], ty[j]) for j in OFFICIAL_HEAD if tx[j] != -1 and ty[j] != -1]
        if len(head) < 2:
            continue
        width = max(x for x, _ in head) - min(x for x, _ in head)
        height = max(y for _, y in head) - min(y for _, y in head)
        n_all += sum(1 for y in ty if y != -1)
        for j in range(len(px)):
            if -1 in (px[j], py[j], tx[j], ty[j]):
                continue
            if abs(px[j] - tx[j]) < width * alpha and abs(py[j] - ty[j]) < height * alpha:
                n_correct += 1
    return n_correct, n_all


# ---------------------------------------------------------------------------------------------------- fixtures


class ByValueDetector:
    """A pose detector for images filled with one value ``k``: it reports person ``k``'s keypoints (given in the
    stored frame, ``stored_w`` wide) in the frame of the image shown, which is the stored image less the same number
    of columns on each side; joints outside that image are not found. Records the widths it was shown."""

    def __init__(self, people: np.ndarray, stored_w: int):
        self.people, self.stored_w, self.widths = people, stored_w, []

    def batch(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        out = np.full((len(images), NUM_KEYPOINTS, 2), MISSING, np.float32)
        found = np.zeros(len(images), bool)
        for i, image in enumerate(images):
            w = image.shape[1]
            self.widths.append(w)
            kp = in_crop(self.people[int(image[0, 0, 0])], (self.stored_w - w) // 2, w)
            out[i], found[i] = kp, (kp != MISSING).any()
        return out, found


def in_crop(kp: np.ndarray, crop: int, width: int) -> np.ndarray:
    """Stored-frame keypoints as a detector on the middle ``width`` columns finds them."""
    kp = np.array(kp, np.float32)
    visible = ~(kp == MISSING).all(axis=-1)
    kp[visible, 0] -= crop
    kp[visible & ((kp[:, 0] < 0) | (kp[:, 0] > width - 1))] = MISSING
    return kp


GEOMETRY = {"market": StoredFrame((128, 64), "market1501", "other"),
            "deepfashion": StoredFrame((256, 256), "deepfashion", "img")}
N = 16


def mannequin_case(layout: str) -> tuple[np.ndarray, np.ndarray]:
    """``(targets, generated people)`` ``(N, 18, 2)`` float in the stored frame: mannequin keypoints as drawn, and
    the same people moved by a few pixels as a generator would draw them, with undetected images, missing joints,
    a target without a person, one with a single head joint, and (DeepFashion) a wrist in the white margin, where
    only a detector on the whole padded image finds it, and one just inside the crop."""
    cfg = SynthConfig(identities=N, poses_per_identity=1, layout=layout, seed=3)
    items = plan(cfg)[:N]
    targets = np.stack([draw_image(cfg, item, sample_appearance(np.random.default_rng(k)))[1]
                        for k, item in enumerate(items)])
    rng = np.random.default_rng(7)
    visible = ~(targets == MISSING).all(axis=-1)
    scale = 2.0 if layout == "market" else 5.0
    people = np.where(visible[..., None], targets + rng.normal(0, scale, targets.shape), MISSING).astype(np.float32)
    people[rng.random(people.shape[:2]) < 0.15] = MISSING  # joints the detector misses
    people[[1, 6]] = MISSING  # no person detected
    targets[4] = MISSING  # a target without a person
    targets[9, [0, 1, 14, 15, 16]] = MISSING  # one head joint left: no head size
    h, w = GEOMETRY[layout].size
    if layout == "deepfashion":
        crop = patn_crop(GEOMETRY[layout])
        targets[2, 4] = people[2, 4] = (crop - 6.3, 120.2)  # right wrist in the margin, where the generator put it
        people[3, 4] = (crop + 0.4, 130.7)  # 0.4 px inside the crop: rounds to column 0 of PATN's frame
        people[5, 4] = (w - crop + 2.2, 125.5)
    people[7, 7] = [0.45, h - 1.4]  # left wrist at the image edge: rounds to 0, stays visible
    return targets, people


def constant_images(n: int, size: tuple[int, int]) -> list[np.ndarray]:
    return [np.full((*size, 3), k, np.uint8) for k in range(n)]


# ---------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("layout", ["market", "deepfashion"])
def test_patn_protocol_equals_the_official_script(layout):
    frame = GEOMETRY[layout]
    (h, w), crop = frame.size, patn_crop(frame)
    targets, people = mannequin_case(layout)
    detector = ByValueDetector(people, w)
    result = PCKhScorer(detector, 0.5, crop).score(constant_images(N, (h, w)), targets)["patn"]

    # the official inputs: the target annotation CSV in PATN's frame, and compute_coordinates' CSV of the images
    # PATN's crop_*.py cut (DeepFashion: the 176 middle columns)
    names = [f"image{k}.jpg" for k in range(N)]
    target_lines = [format_annotation_line(n, to_patn_frame(t, crop, width=w - 2 * crop))
                    for n, t in zip(names, targets, strict=True)]
    predicted_lines = [format_annotation_line(n, in_crop(p, crop, w - 2 * crop))
                       for n, p in zip(names, people, strict=True)]
    correct, total = official_pckh(target_lines, predicted_lines)

    assert (int(result.counts.correct.sum()), int(result.counts.valid.sum())) == (correct, total)
    assert result.counts.overall == pytest.approx(correct / total, abs=1e-6)
    assert result.counts.no_head >= 2 and result.counts.pairs + result.counts.no_head == N
    assert not result.found[[1, 6]].any() and result.found.sum() == N - 2
    assert 0.2 < correct / total < 1.0  # neither everything nor nothing: the threshold decides


def test_patn_detects_deepfashion_on_the_176_wide_crop_and_market_as_stored():
    targets, people = mannequin_case("deepfashion")
    detector = ByValueDetector(people, 256)
    scored = PCKhScorer(detector, 0.5, patn_crop(GEOMETRY["deepfashion"])).score(
        constant_images(N, (256, 256)), targets)
    assert sorted(set(detector.widths)) == [176, 256] and len(detector.widths) == 2 * N
    # the wrist in the white margin counts under strict only; PATN's frame has no such column
    assert scored["strict"].correct[2, 4] and not scored["patn"].correct[2, 4]
    assert scored["strict"].valid[2] == scored["patn"].valid[2] + 1
    assert patn_crop(StoredFrame((256, 256), "deepfashion", "img_highres")) == 0

    targets, people = mannequin_case("market")
    detector = ByValueDetector(people, 64)
    PCKhScorer(detector, 0.5, patn_crop(GEOMETRY["market"])).score(constant_images(N, (128, 64)), targets)
    assert detector.widths == [64] * N  # one detection pass, reused by both protocols


def test_undetected_images_count_the_same_in_both_protocols():
    """PATN's script keeps a pair whose generated image has no person (every joint wrong) and leaves out one whose
    target has no head; on integer keypoints without a crop the two protocols are the same number."""
    targets, people = mannequin_case("market")
    targets, people = np.rint(targets).astype(np.float32), np.rint(people).astype(np.float32)
    images = constant_images(N, (128, 64))
    both = PCKhScorer(ByValueDetector(people, 64), 0.5, 0).score(images, targets)
    strict, patn = both["strict"].counts, both["patn"].counts
    np.testing.assert_array_equal(strict.correct, patn.correct)
    np.testing.assert_array_equal(strict.valid, patn.valid)

    detected = people.copy()
    detected[[1, 6]] = targets[[1, 6]]  # now found, exactly on the target
    found = PCKhScorer(ByValueDetector(detected, 64), 0.5, 0).score(images, targets)
    for protocol in ("strict", "patn"):
        before, after = both[protocol].counts, found[protocol].counts
        assert after.valid.sum() == before.valid.sum()  # the undetected pairs were in the denominator
        assert after.correct.sum() > before.correct.sum() and after.overall > before.overall
    gains = {p: int(found[p].counts.correct.sum() - both[p].counts.correct.sum()) for p in ("strict", "patn")}
    assert gains["strict"] == gains["patn"]


def test_rounding_moves_joints_across_the_threshold_both_ways():
    """Head box 3 × 10 px → thresholds 1.5 and 5; a wrist 1.4 px off in float is 2 px off once rounded, another
    1.8 px off is 1 px off."""
    target = np.full((1, NUM_KEYPOINTS, 2), MISSING, np.float32)
    target[0, 0], target[0, 1] = (10.0, 5.0), (13.0, 15.0)
    target[0, 4], target[0, 7] = (20.4, 30.0), (40.4, 30.0)
    predicted = target.copy()
    predicted[0, 4], predicted[0, 7] = (21.8, 30.0), (38.6, 30.0)
    scored = PCKhScorer(ByValueDetector(predicted, 64), 0.5, 0).score(constant_images(1, (64, 64)), target)
    assert scored["strict"].correct[0, [0, 1, 4, 7]].tolist() == [True, True, True, False]
    assert scored["patn"].correct[0, [0, 1, 4, 7]].tolist() == [True, True, False, True]


def test_patn_keypoints_are_what_the_csv_writer_stores():
    rng = np.random.default_rng(0)
    kp = rng.uniform(-3, 70, (40, NUM_KEYPOINTS, 2)).astype(np.float32)
    kp[rng.random(kp.shape[:2]) < 0.2] = MISSING
    kp[0, :4] = [[0.5, 3.0], [-0.5, 3.0], [-0.6, 3.0], [1.5, 2.5]]
    names = [f"n{k}.jpg" for k in range(len(kp))]
    rows = parse_csv_lines([format_annotation_line(n, xy) for n, xy in zip(names, kp, strict=True)])
    stored = np.stack([np.stack([rows[n][1], rows[n][0]], axis=-1) for n in names]).astype(np.float64)
    np.testing.assert_array_equal(patn_keypoints(kp), stored)
    assert patn_keypoints(kp)[0, :4].tolist() == [[0, 3], [0, 3], [-1, -1], [2, 2]]


def test_eval_reports_both_protocols_and_names_the_one_in_the_table(market_shards, tmp_path):
    from pipeline.shards import ShardSet

    stored = ShardSet(market_shards / "test")
    names = read_names(stored)
    folder = tmp_path / "generated"
    folder.mkdir()
    for s, t in list(stored.pairs)[:4]:
        Image.fromarray(stored[int(t)].image).save(folder / pair_file_name(names[int(s)], names[int(t)]))
    outputs = {}
    for protocol in ("strict", "patn"):
        out = tmp_path / protocol
        result = CliRunner().invoke(main, ["eval", "--generated", str(folder), "--shards", str(market_shards),
                                           "--metrics", "pckh", "--max-pairs", "4", "--device", "cpu", "--quiet",
                                           "--out", str(out), "--pckh-protocol", protocol])
        assert result.exit_code == 0, result.output
        outputs[protocol] = (json.loads((out / "eval.json").read_text()), (out / "eval.md").read_text())
    for protocol, (written, table) in outputs.items():
        row = written["rows"]["model"]
        assert row["pckh_protocol"] == protocol == written["settings"]["pckh_protocol"]
        assert row["pckh"] == row[f"pckh_{protocol}"] and row["detection_rate"] == row[f"detection_rate_{protocol}"]
        assert isinstance(row["pckh_strict"], float) and isinstance(row["pckh_patn"], float)
        assert f"PCKh@0.5, `{protocol}` protocol" in table
    assert outputs["strict"][0]["rows"]["model"]["pckh_patn"] == outputs["patn"][0]["rows"]["model"]["pckh"]
    bad = CliRunner().invoke(main, ["eval", "--generated", str(folder), "--shards", str(market_shards),
                                    "--pckh-protocol", "official"])
    assert bad.exit_code != 0 and "official" in bad.output

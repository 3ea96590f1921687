"""``pgpig.metrics``: SSIM against scikit-image on real photos, PATN's mask, LPIPS and FID maths against direct
NumPy/SciPy computations, PCKh on the shipped photos with the real pose model, and the weight loading."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from skimage.draw import disk, polygon
from skimage.metrics import structural_similarity
from skimage.morphology import dilation, erosion
from torch import nn

from pgpig.errors import TrainError
from pgpig.metrics import (
    LPIPS,
    MASK_LIMBS,
    SSIM_SETTINGS,
    FeatureStats,
    WeightsUnavailable,
    _limb_fill,
    frechet_distance,
    head_size,
    inception_extractor,
    l1_distance,
    lpips_network,
    pckh_counts,
    pose_mask,
    ssim,
)


def photo(name: str, size: tuple[int, int] = (128, 64)) -> np.ndarray:
    """A shipped photo, RGB uint8, resized to ``(H, W)``."""
    import cv2
    from conftest import ultralytics_assets

    bgr = cv2.imread(str(ultralytics_assets() / name))
    return np.ascontiguousarray(cv2.resize(bgr, (size[1], size[0]), interpolation=cv2.INTER_AREA)[..., ::-1])


def batch(*images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def skimage_ssim(generated: np.ndarray, target: np.ndarray, name: str) -> float:
    s = SSIM_SETTINGS[name]
    data_range = float(generated.max()) - float(generated.min()) if s.data_range is None else s.data_range
    return structural_similarity(target, generated, channel_axis=-1, win_size=s.win_size, gaussian_weights=s.gaussian,
                                 sigma=s.sigma, use_sample_covariance=s.sample_covariance, data_range=data_range)


# ---------------------------------------------------------------------------------------------------- SSIM


@pytest.mark.parametrize("name", sorted(SSIM_SETTINGS))
@pytest.mark.parametrize("size", [(128, 64), (256, 176)])
def test_ssim_matches_skimage_on_real_photos(name, size):
    bus, zidane = photo("bus.jpg", size), photo("zidane.jpg", size)
    rng = np.random.default_rng(0)
    noisy = np.clip(bus.astype(int) + rng.integers(-40, 41, bus.shape), 0, 255).astype(np.uint8)
    dark = (bus // 3).astype(np.uint8)  # a small data range: PATN's range comes from the generated image
    generated, targets = [zidane, noisy, dark], [bus, bus, bus]
    ours = ssim(batch(*generated), batch(*targets), name).numpy()
    expected = [skimage_ssim(g, t, name) for g, t in zip(generated, targets, strict=True)]
    np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)
    assert len(set(np.round(expected, 3))) == 3  # three different values, not one case three times


def test_identical_images_give_ssim_1_and_l1_0():
    bus = photo("bus.jpg")
    for name in SSIM_SETTINGS:
        assert ssim(batch(bus), batch(bus), name).item() == pytest.approx(1.0, abs=1e-12)
    assert l1_distance(batch(bus), batch(bus)).item() == 0.0


def test_l1_is_patns():
    bus, zidane = photo("bus.jpg"), photo("zidane.jpg")
    expected = np.abs(2 * (bus / 255.0 - 0.5) - 2 * (zidane / 255.0 - 0.5)).mean()
    assert l1_distance(batch(zidane), batch(bus)).item() == pytest.approx(expected, rel=1e-12)


def test_ssim_refuses_images_smaller_than_the_window():
    with pytest.raises(ValueError, match="smaller than the 51x51"):
        ssim(torch.zeros(1, 3, 40, 40), torch.zeros(1, 3, 40, 40), "gfla")


# ---------------------------------------------------------------------------------------------------- mask


OFFICIAL_LIMBS = np.array([[2, 3], [2, 6], [3, 4], [4, 5], [6, 7], [7, 8], [2, 9], [9, 10], [10, 11], [2, 12],
                           [12, 13], [13, 14], [2, 1], [1, 15], [15, 17], [1, 16], [16, 18], [2, 17], [2, 18], [9, 12],
                           [12, 6], [9, 3], [17, 18]]) - 1


def patn_quad(yx_from: np.ndarray, yx_to: np.ndarray, size: tuple[int, int], radius: int = 4) -> np.ndarray:
    """One limb of PATN's produce_ma_mask: the quadrilateral around the segment, filled by skimage.draw.polygon."""
    normal = yx_from - yx_to
    normal = np.array([-normal[1], normal[0]])
    with np.errstate(invalid="ignore", divide="ignore"):  # a zero-length limb: NaN corners, as in the official run
        normal = radius * normal / np.linalg.norm(normal)
    corners = np.array([yx_from + normal, yx_from - normal, yx_to - normal, yx_to + normal])
    mask = np.zeros(size, bool)
    rr, cc = polygon(corners[:, 0], corners[:, 1], shape=size)
    mask[rr, cc] = True
    return mask


def patn_mask(yx: np.ndarray, size: tuple[int, int], radius: int = 4) -> np.ndarray:
    """PATN's produce_ma_mask written out with scikit-image, keypoints ``(y, x)`` as its CSVs give them."""
    mask = np.zeros(size, bool)
    for f, t in OFFICIAL_LIMBS:
        if (yx[f] == -1).any() or (yx[t] == -1).any():
            continue
        mask |= patn_quad(yx[f], yx[t], size, radius)
    for joint in yx:
        if (joint == -1).any():
            continue
        rr, cc = disk((joint[0], joint[1]), radius, shape=size)
        mask[rr, cc] = True
    square = np.ones((5, 5), bool)
    return erosion(dilation(mask, square), square)


def test_mask_limbs_are_patns():
    assert MASK_LIMBS == tuple(map(tuple, OFFICIAL_LIMBS.tolist()))


def random_limbs(kind: str, n: int, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """``(n, 2, 2)`` limb endpoints ``(x, y)``, some reaching past the image's border."""
    h, w = size
    lo, hi = np.array([-6, -6]), np.array([w + 6, h + 6])
    if kind == "centres":  # integer keypoints, as PATN's annotations hold
        return rng.integers(lo, hi, (n, 2, 2)).astype(np.float64)
    if kind == "pixel edges":  # on the half-pixel grid: endpoints on pixel centres, edges and corners
        return rng.integers(2 * lo, 2 * hi, (n, 2, 2)) / 2
    if kind == "anywhere":
        return rng.uniform(lo, hi, (n, 2, 2))
    start = rng.integers(lo, hi, (n, 1, 2)).astype(np.float64)
    step = rng.integers(-40, 41, (n, 1)) / rng.choice([1, 2], (n, 1))
    if kind == "axis-aligned":
        along_x = rng.random((n, 1)) < 0.5
        delta = np.concatenate([np.where(along_x, step, 0), np.where(along_x, 0, step)], axis=-1)
    else:  # 45 degrees, either diagonal
        delta = np.concatenate([step, step * rng.choice([-1, 1], (n, 1))], axis=-1)
    return np.concatenate([start, start + delta[:, None]], axis=1)


@pytest.mark.parametrize("size", [(128, 64), (256, 176)])
@pytest.mark.parametrize("kind", ["centres", "pixel edges", "anywhere", "axis-aligned", "45 degrees"])
def test_limb_fill_is_skimage_polygon_of_patns_quad(kind, size):
    rng = np.random.default_rng([len(kind), size[1]])
    limbs = random_limbs(kind, 400, size, rng)
    limbs[:20, 1] = limbs[:20, 0]  # zero length: NaN corners, nothing drawn
    keypoints = np.full((len(limbs), 18, 2), -1.0)
    keypoints[:, 1], keypoints[:, 2] = limbs[:, 0], limbs[:, 1]  # only MASK_LIMBS[0] = (1, 2) is drawn
    ours = _limb_fill(torch.from_numpy(keypoints), size).numpy()
    # PATN skips a limb with a coordinate of -1 (missing)
    expected = np.stack([patn_quad(a[::-1], b[::-1], size) if -1 not in (*a, *b) else np.zeros(size, bool)
                         for a, b in limbs])
    assert not expected[:20].any()
    assert expected.any(axis=(1, 2)).sum() > len(limbs) * 0.8
    diff = (ours != expected).any(axis=(1, 2))
    assert not diff.any(), f"{diff.sum()} limbs differ, first {limbs[diff][0].tolist()}"
    if kind in ("centres", "pixel edges", "45 degrees"):
        # these put pixel centres exactly on slanted edges, where rounding of the corners decides and a closed
        # rectangle draws pixels skimage does not (an axis-aligned limb's corners are exact: both draw its edges)
        drawn = [i for i in range(20, len(limbs)) if expected[i].any() and (limbs[i, 0] != limbs[i, 1]).any()]
        closed = np.stack([closed_rectangle(limbs[i, 0], limbs[i, 1], size) for i in drawn])
        assert (closed != expected[drawn]).any()


def closed_rectangle(a: np.ndarray, b: np.ndarray, size: tuple[int, int], radius: float = 4.0) -> np.ndarray:
    """Pixel centres within ``radius`` of the segment ``a -> b`` across it and between its ends along it."""
    ys, xs = np.mgrid[: size[0], : size[1]].astype(np.float64)
    unit = (b - a) / np.linalg.norm(b - a)
    along = (xs - a[0]) * unit[0] + (ys - a[1]) * unit[1]
    across = -(xs - a[0]) * unit[1] + (ys - a[1]) * unit[0]
    return (along >= 0) & (along <= np.linalg.norm(b - a)) & (np.abs(across) <= radius)


@pytest.mark.parametrize("size", [(128, 64), (256, 176), (256, 256)])
def test_pose_mask_is_patns_produce_ma_mask_on_random_skeletons(size):
    rng = np.random.default_rng(size[1])
    h, w = size
    grids = [np.round(rng.uniform(-4, [w + 4, h + 4], (12, 18, 2))),
             np.round(rng.uniform(-4, [w + 4, h + 4], (12, 18, 2)) * 2) / 2,
             rng.uniform(-4, [w + 4, h + 4], (12, 18, 2))]
    for keypoints in grids:
        keypoints[rng.random(keypoints.shape[:2]) < 0.2] = -1
        ours = pose_mask(torch.from_numpy(keypoints), size)[:, 0].numpy()
        expected = np.stack([patn_mask(k[:, ::-1], size) for k in keypoints])
        assert (ours == expected).all(), (ours != expected).sum()


def test_pose_mask_is_patns_produce_ma_mask(market_shards):
    from pipeline.shards import ShardSet

    stored = ShardSet(market_shards / "train")
    keypoints = np.stack([stored[i].keypoints for i in range(len(stored))]).astype(np.float64)
    rng = np.random.default_rng(3)
    hidden = np.round(keypoints)
    hidden[rng.random(hidden.shape[:2]) < 0.25] = -1  # missing joints drop their limbs
    for kp in (np.round(keypoints), keypoints, hidden):  # integer keypoints as PATN's CSVs hold them, and ours
        ours = pose_mask(torch.from_numpy(kp), (128, 64))[:, 0].numpy()
        expected = np.stack([patn_mask(k[:, ::-1], (128, 64)) for k in kp])
        assert ours.any(axis=(1, 2)).all()
        assert (ours == expected).all(), (ours != expected).sum()


# ---------------------------------------------------------------------------------------------------- LPIPS


class TinyBackbone(nn.Module):
    """Two conv + ReLU stages; returns both outputs (LPIPS's list of feature maps)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.b = nn.Conv2d(4, 5, 3, stride=2, padding=1)

    def forward(self, x):
        f1 = torch.relu(self.a(x))
        return [f1, torch.relu(self.b(f1))]


def tiny_lpips() -> LPIPS:
    return LPIPS(TinyBackbone(), [torch.linspace(0.1, 1.0, 4), torch.linspace(0.5, 2.0, 5)])


def test_lpips_maths_against_numpy():
    net = tiny_lpips()
    bus, zidane = photo("bus.jpg"), photo("zidane.jpg")
    x, y = batch(bus, zidane).float() / 127.5 - 1, batch(zidane, zidane).float() / 127.5 - 1
    shift = np.array([-0.030, -0.088, -0.188]).reshape(1, 3, 1, 1)
    scale = np.array([0.458, 0.448, 0.450]).reshape(1, 3, 1, 1)
    with torch.no_grad():
        fx = [f.double().numpy() for f in net.backbone(torch.from_numpy((x.numpy() - shift) / scale).float())]
        fy = [f.double().numpy() for f in net.backbone(torch.from_numpy((y.numpy() - shift) / scale).float())]
    expected = np.zeros(2)
    for a, b, w in zip(fx, fy, [np.linspace(0.1, 1.0, 4), np.linspace(0.5, 2.0, 5)], strict=True):
        a = a / (np.sqrt((a**2).sum(1, keepdims=True)) + 1e-10)
        b = b / (np.sqrt((b**2).sum(1, keepdims=True)) + 1e-10)
        expected += (((a - b) ** 2) * w.reshape(1, -1, 1, 1)).sum(1).mean(axis=(1, 2))
    ours = net(x, y).numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-5)
    assert ours[0] > 0 and ours[1] == 0.0  # identical images: LPIPS 0


def test_lpips_loads_alexnet_from_weights_dir_and_the_shipped_linear_layers(tmp_path):
    from torchvision.models import alexnet

    torch.manual_seed(0)
    features = {f"features.{k}": v for k, v in alexnet().features.state_dict().items()}  # the part LPIPS reads
    torch.save(features, tmp_path / "alexnet-owt-7be5be79.pth")
    net = lpips_network("alex", tmp_path)
    assert [w.numel() for w in net.lins] == [64, 192, 384, 256, 256]
    assert (torch.cat(list(net.lins)) >= 0).all()  # v0.1 linear weights are non-negative
    bus, zidane = photo("bus.jpg"), photo("zidane.jpg")
    x, y = batch(bus).float() / 127.5 - 1, batch(zidane).float() / 127.5 - 1
    assert net(x, x).item() == 0.0 and net(x, y).item() > 0


def offline(monkeypatch, tmp_path):
    """No network and an empty torch hub cache."""
    def refuse(*_args, **_kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))


def test_missing_weights_are_one_line_errors_naming_the_file_and_where_to_put_it(monkeypatch, tmp_path):
    offline(monkeypatch, tmp_path)
    with pytest.raises(WeightsUnavailable) as info:
        lpips_network("alex", tmp_path / "weights")
    message = str(info.value)
    assert "\n" not in message and "alexnet-owt-7be5be79.pth" in message and "--weights-dir" in message
    assert str(tmp_path / "hub" / "checkpoints") in message
    with pytest.raises(WeightsUnavailable, match="weights-inception-2015-12-05-6726825d.pth.*--weights-dir"):
        inception_extractor(None)


def test_weights_that_are_not_plain_tensors_are_refused(tmp_path):
    import pickle

    (tmp_path / "alexnet-owt-7be5be79.pth").write_bytes(pickle.dumps({"features.0.weight": Path("x")}))
    with pytest.raises(TrainError, match="cannot read LPIPS alex backbone weights .*alexnet-owt-7be5be79.pth"):
        lpips_network("alex", tmp_path)


# ---------------------------------------------------------------------------------------------------- FID


def test_feature_stats_and_frechet_distance_match_numpy_and_scipy_sqrtm():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 16)) @ rng.normal(size=(16, 16))
    b = rng.normal(0.3, 1.5, size=(250, 16)) @ rng.normal(size=(16, 16))
    stats_a, stats_b = FeatureStats(), FeatureStats()
    for chunk in np.array_split(a, 7):
        stats_a.update(torch.from_numpy(chunk).float())
    stats_b.update(torch.from_numpy(b).float())
    mu_a, cov_a = stats_a.mean_cov()
    np.testing.assert_allclose(mu_a, a.astype(np.float32).mean(0), atol=1e-5)
    np.testing.assert_allclose(cov_a, np.cov(a.astype(np.float32), rowvar=False), rtol=1e-5, atol=1e-5)
    mu_b, cov_b = stats_b.mean_cov()
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b).real
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean)
    assert frechet_distance(mu_a, cov_a, mu_b, cov_b) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(mu_a, cov_a, mu_a, cov_a) == pytest.approx(0.0, abs=1e-8)
    # fewer samples than dimensions: singular covariances still give a finite, non-negative distance
    few = FeatureStats()
    few.update(torch.from_numpy(a[:5]).float())
    mu_f, cov_f = few.mean_cov()
    assert 0 <= frechet_distance(mu_f, cov_f, mu_b, cov_b) < np.inf


def test_inception_extractor_loads_the_weights_file_and_gives_2048_features(tmp_path):
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    net = inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008)
    torch.save(net.state_dict(), tmp_path / "weights-inception-2015-12-05-6726825d.pth")
    extractor = inception_extractor(tmp_path)
    features = extractor(batch(photo("bus.jpg"), photo("bus.jpg"), photo("zidane.jpg")))
    assert features.shape == (3, 2048)
    assert torch.equal(features[0], features[1]) and not torch.equal(features[0], features[2])


# ---------------------------------------------------------------------------------------------------- PCKh


@pytest.fixture(scope="module")
def photo_keypoints() -> np.ndarray:
    """OpenPose-18 keypoints of the dominant person of the two shipped photos, from the real pose model."""
    from pgpig.generate import PoseDetector

    detect = PoseDetector(torch.device("cpu"), None, batch_size=2)
    images = [np.ascontiguousarray(photo(name, size)[..., ::-1])  # RGB → the BGR the pose model reads
              for name, size in (("bus.jpg", (540, 405)), ("zidane.jpg", (360, 640)))]
    keypoints, found = detect.batch(images)
    assert found.all()
    again, _ = detect.batch(images)
    assert np.array_equal(keypoints, again)
    return keypoints


def test_pckh_of_a_photo_against_its_own_keypoints_is_1(photo_keypoints):
    counts, correct = pckh_counts(photo_keypoints, photo_keypoints)
    assert counts.overall == 1.0 and counts.no_head == 0
    assert counts.valid.sum() == (photo_keypoints != -1).all(axis=-1).sum()


def test_pckh_counts_known_offsets(photo_keypoints):
    target = photo_keypoints
    head = head_size(target)
    assert (head > 0).all()
    predicted = target.copy()
    visible = (target != -1).all(axis=-1)
    joints = [np.flatnonzero(v) for v in visible]
    expected_wrong = 0
    for n, js in enumerate(joints):
        inside, outside_x, outside_y, lost = js[0], js[1], js[2], js[3]
        predicted[n, inside] += 0.45 * head[n]  # within half a head in both axes: correct
        predicted[n, outside_x, 0] += 0.55 * head[n, 0]  # too far in x alone: wrong
        predicted[n, outside_y, 1] -= 0.55 * head[n, 1]  # too far in y alone: wrong
        predicted[n, lost] = -1  # not found: wrong
        expected_wrong += 3
    counts, correct = pckh_counts(predicted, target)
    assert counts.valid.sum() == visible.sum()
    assert counts.correct.sum() == visible.sum() - expected_wrong
    assert counts.overall == pytest.approx(1 - expected_wrong / visible.sum())
    # a joint invisible in the target counts nowhere, whatever is predicted
    hidden_target = target.copy()
    hidden_target[:, 9] = -1
    again, _ = pckh_counts(predicted, hidden_target)
    assert again.valid[9] == 0 and again.valid.sum() == (hidden_target != -1).all(axis=-1).sum()
    # a target with fewer than two head joints visible leaves the pair out (PATN)
    headless = target.copy()
    headless[0, [0, 1, 14, 15, 16, 17]] = -1
    dropped, _ = pckh_counts(predicted, headless)
    assert dropped.no_head == 1 and dropped.pairs == len(target) - 1
    assert dropped.valid.sum() == visible[1:].sum()
    per_joint = counts.per_joint()
    assert set(per_joint) >= {"nose", "neck", "r_ankle"}


def test_torch_hubs_downloading_line_never_reaches_stdout(monkeypatch, capsys):
    """torch hub prints "Downloading: ..." on stdout before it tries: dropped when it fails, on stderr when it works."""
    import urllib.error

    from pgpig.weights import download_state_dict

    def hub(url, **_kwargs):
        print(f'Downloading: "{url}" to cache')
        if "fail" in url:
            raise urllib.error.URLError("offline")
        return {"w": torch.zeros(1)}

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", hub)
    with pytest.raises(urllib.error.URLError):
        download_state_dict("https://example.invalid/fail.pth")
    assert capsys.readouterr() == ("", "")
    assert set(download_state_dict("https://example.invalid/ok.pth")) == {"w"}
    out, err = capsys.readouterr()
    assert out == "" and "Downloading" in err


# ---------------------------------------------------------------------------------------------------- docs


def test_eval_help_names_the_metric_definitions_installed_with_the_package():
    import importlib.resources
    import re
    from fnmatch import fnmatch

    from click.testing import CliRunner

    from pgpig.cli import main

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    result = CliRunner().invoke(main, ["eval", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    named = re.search(r"^\s*(/\S*eval\.md)\s*$", result.output.split("Options:")[0], re.MULTILINE)
    assert named is not None, result.output
    installed = importlib.resources.files("pgpig") / "docs" / "eval.md"
    assert Path(named.group(1)) == Path(str(installed)) and Path(named.group(1)).is_file()
    text = installed.read_text(encoding="utf-8")
    assert text.startswith("# Evaluation: `pgpig eval`") and "produce_ma_mask" in text
    # a wheel carries it only when package-data names it
    root = Path(__file__).resolve().parents[2]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["pgpig"]
    assert any(fnmatch("docs/eval.md", glob) for glob in globs)
    # the repository's docs/eval.md is a link to the package's file, not a second copy
    assert (root / "docs" / "eval.md").resolve() == (root / "pgpig" / "docs" / "eval.md").resolve()

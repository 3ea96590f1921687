"""The metrics of the pose-guided generation papers as batched tensor functions: SSIM (three settings),
mask-SSIM, L1, LPIPS, FID statistics and distance, PCKh.

- SSIM: Wang et al., "Image Quality Assessment: From Error Visibility to Structural Similarity", IEEE TIP 2004.
- LPIPS: Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric", CVPR 2018.
- FID: Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium",
  NeurIPS 2017.
- PCKh and mask-SSIM as PATN (Zhu et al., CVPR 2019, arXiv:1904.03349) computes them.

The settings follow the official scripts: PATN's ``tool/getMetrics_*.py``, ``tool/pose_utils.py`` and
``tool/calPCKH_*.py``, GFLA's ``script/metrics.py``, PG2's ``score.py``. Which facts come from which script, and how
this code computes each metric: ``docs/eval.md``. Missing weights raise ``WeightsUnavailable`` (a ``TrainError``).
"""

from __future__ import annotations

import importlib.resources
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

import numpy as np
import torch
from torch import nn

from pgpig.data import PG2_MASK_LIMBS, close_square
from pgpig.errors import TrainError
from pgpig.weights import download_state_dict, read_state_dict
from schemas.keypoints import KEYPOINT_NAMES, MISSING, NUM_KEYPOINTS
from schemas.patn import integer_keypoints

__all__ = [
    "FID_NETWORKS",
    "FeatureExtractor",
    "FeatureStats",
    "HEAD_JOINTS",
    "LPIPS",
    "MASK_LIMBS",
    "PCKH_PROTOCOLS",
    "PCKhCounts",
    "SSIM_SETTINGS",
    "SSIMSettings",
    "WeightsUnavailable",
    "frechet_distance",
    "head_size",
    "fid_extractor",
    "inception_extractor",
    "l1_distance",
    "lpips_network",
    "patn_keypoints",
    "pckh_counts",
    "pose_mask",
    "ssim",
    "torchvision_inception_extractor",
]


class WeightsUnavailable(TrainError):
    """The weights a metric needs are not on this machine and cannot be downloaded."""


# ---------------------------------------------------------------------------------------------------- SSIM


@dataclass(frozen=True)
class SSIMSettings:
    """One way of calling ``skimage.metrics.structural_similarity`` on ``(H, W, 3)`` images, channel-averaged."""

    win_size: int
    """Window side; for a Gaussian window, ``2 * int(3.5 * sigma + 0.5) + 1``."""
    gaussian: bool
    sigma: float = 1.5
    sample_covariance: bool = True
    data_range: float | None = None
    """Fixed data range ``R`` (255 for uint8), or ``None`` for ``generated.max() - generated.min()`` (PATN)."""


SSIM_SETTINGS: dict[str, SSIMSettings] = {
    "patn": SSIMSettings(win_size=11, gaussian=True, sigma=1.5, sample_covariance=False, data_range=None),
    "gfla": SSIMSettings(win_size=51, gaussian=False, sample_covariance=True, data_range=255.0),
    "pg2": SSIMSettings(win_size=7, gaussian=False, sample_covariance=True, data_range=255.0),
}


def _window(settings: SSIMSettings, device: torch.device) -> torch.Tensor:
    """The 1-D filter, float64: scipy's ``gaussian_filter`` taps (truncate 3.5) or ``uniform_filter``'s."""
    if settings.gaussian:
        radius = int(3.5 * settings.sigma + 0.5)
        x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
        w = torch.exp(-0.5 * (x / settings.sigma) ** 2)
        if 2 * radius + 1 != settings.win_size:
            raise ValueError(f"a Gaussian window of sigma {settings.sigma} has {2 * radius + 1} taps, not "
                             f"{settings.win_size}")
    else:
        w = torch.ones(settings.win_size, dtype=torch.float64, device=device)
    return w / w.sum()


def _band(k: torch.Tensor, n: int) -> torch.Tensor:
    """``(n, n - len(k) + 1)`` matrix whose column ``j`` holds ``k`` in rows ``j .. j + len(k) - 1``: ``v @ band``
    is the unpadded correlation of ``v`` (length ``n``) with ``k``."""
    lag = torch.arange(n, device=k.device)[:, None] - torch.arange(n - len(k) + 1, device=k.device)[None, :]
    inside = (lag >= 0) & (lag < len(k))
    return torch.where(inside, k[lag.clamp(0, len(k) - 1)], torch.zeros((), dtype=k.dtype, device=k.device))


def ssim(generated: torch.Tensor, target: torch.Tensor, settings: str | SSIMSettings = "patn") -> torch.Tensor:
    """SSIM of each image pair, as ``structural_similarity(target, generated, channel_axis=-1, ...)`` computes it.

    Args:
        generated: ``(B, C, H, W)`` in 0..255 (uint8 or float).
        target: same shape and scale.
        settings: a name in ``SSIM_SETTINGS`` or an ``SSIMSettings``.

    Returns:
        ``(B,)`` float64 on the inputs' device. ``H`` and ``W`` must be at least the window size.
    """
    s = SSIM_SETTINGS[settings] if isinstance(settings, str) else settings
    if generated.shape != target.shape or generated.ndim != 4:
        raise ValueError(f"expected two (B, C, H, W) batches of one shape, got {tuple(generated.shape)} and "
                         f"{tuple(target.shape)}")
    b, c, h, w = generated.shape
    if min(h, w) < s.win_size:
        raise ValueError(f"images of {h}x{w} are smaller than the {s.win_size}x{s.win_size} SSIM window")
    x = generated.to(torch.float64)
    y = target.to(torch.float64)
    if s.data_range is None:
        data_range = (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3))).view(b, 1, 1, 1)
    else:
        data_range = torch.full((b, 1, 1, 1), float(s.data_range), dtype=torch.float64, device=x.device)
    k = _window(s, x.device)
    # the separable, unpadded window filter of five maps per channel as two matrix products with banded matrices:
    # float64 GEMM runs 5-20x faster on a CPU than float64 convolution (which has no fast kernel there)
    maps = torch.stack([x, y, x * x, y * y, x * y], dim=2)
    maps = _band(k, h).T @ maps @ _band(k, w)
    mx, my, mxx, myy, mxy = maps.unbind(dim=2)
    n = s.win_size ** 2
    cov_norm = n / (n - 1) if s.sample_covariance else 1.0
    vx, vy, vxy = cov_norm * (mxx - mx * mx), cov_norm * (myy - my * my), cov_norm * (mxy - mx * my)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s_map = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s_map.mean(dim=(1, 2, 3))


def l1_distance(generated: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PATN's L1: mean ``|g - t|`` of images in 0..255 mapped to [-1, 1]; ``(B,)`` float64."""
    return ((generated.to(torch.float64) - target.to(torch.float64)).abs() / 127.5).mean(dim=(1, 2, 3))


# ---------------------------------------------------------------------------------------------------- mask


MASK_LIMBS: tuple[tuple[int, int], ...] = PG2_MASK_LIMBS
"""PATN ``produce_ma_mask``'s 23 joint pairs (its 1-based list minus one), OpenPose-18 indices: PG2's
``_getPoseMask`` pairs, which PATN's ``pose_utils.py`` took over."""

_MASK_RADIUS = 4.0
_MASK_CLOSING = 5
_VERTEX_EPS = 1e-12


def _limb_corners(keypoints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The quadrilateral of each limb of ``MASK_LIMBS`` whose two joints are present, as ``produce_ma_mask`` builds
    it: ``f + n, f - n, t - n, t + n`` with ``n`` the segment's normal scaled to ``_MASK_RADIUS``.

    Args:
        keypoints: ``(B, 18, 2)`` float64 pixel ``(x, y)``; a joint with a coordinate of -1 is missing.

    Returns:
        ``(index (K,) of the keypoint set, corners (K, 4, 2) as (x, y))`` for the ``K`` drawable limbs. Computed in
        NumPy on the host: torch's float64 ``sqrt`` on the CPU is not correctly rounded, and the last bit of the
        length decides on which side of an edge a pixel centre on it falls.
    """
    present = ~(keypoints == MISSING).any(axis=-1)
    ia, ib = [a for a, _ in MASK_LIMBS], [b for _, b in MASK_LIMBS]
    which, limb = np.nonzero(present[:, ia] & present[:, ib])
    f = keypoints[which, np.asarray(ia)[limb]]
    t = keypoints[which, np.asarray(ib)[limb]]
    vx, vy = f[:, 0] - t[:, 0], f[:, 1] - t[:, 1]
    # PATN works in (y, x): the normal of (vy, vx) is (-vx, vy), divided by its norm; a zero-length limb gives NaN
    # corners, which no crossing test passes, so it draws nothing (as in skimage)
    with np.errstate(invalid="ignore", divide="ignore"):
        length = np.sqrt(vx * vx + vy * vy)
        nx, ny = _MASK_RADIUS * vy / length, _MASK_RADIUS * -vx / length
    n = np.stack([nx, ny], axis=-1)
    return which, np.stack([f + n, f - n, t - n, t + n], axis=1)


def _windows(x_lo: torch.Tensor, y_lo: torch.Tensor, x_hi: torch.Tensor, y_hi: torch.Tensor,
             size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One window of pixels per item, shared in shape: ``(K,)`` float64 pixel ranges ``[lo, hi]`` clipped to the
    image → the window's pixel centres ``xs (K, 1, ww)``, ``ys (K, wh, 1)`` (float64, image coordinates) and their
    flat index in an ``(H, W)`` image ``(K, wh, ww)``. The window is the largest item's box, moved inside the image
    where it would reach past its edge, so every item's box lies inside its window."""
    h, w = int(size[0]), int(size[1])
    x_lo, y_lo = x_lo.clamp(0, w - 1).long(), y_lo.clamp(0, h - 1).long()
    x_hi, y_hi = x_hi.clamp(0, w - 1).long(), y_hi.clamp(0, h - 1).long()
    ww = int((x_hi - x_lo).max()) + 1 if len(x_lo) else 1
    wh = int((y_hi - y_lo).max()) + 1 if len(y_lo) else 1
    x0, y0 = x_lo.clamp(max=w - ww), y_lo.clamp(max=h - wh)
    ix = x0[:, None, None] + torch.arange(ww, device=x0.device).view(1, 1, ww)
    iy = y0[:, None, None] + torch.arange(wh, device=y0.device).view(1, wh, 1)
    return ix.to(torch.float64), iy.to(torch.float64), iy * w + ix


def _fill_quads(corners: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels of each quadrilateral as ``skimage.draw.polygon`` draws them, tested within the quadrilateral's
    bounding box only: ``(K, 4, 2)`` float64 ``(x, y)`` corners → ``(drawn (K, wh, ww) bool, flat index of each
    window pixel in an (H, W) image (K, wh, ww))`` (``_windows``). Corners must be finite.

    scikit-image's crossing-number test (O'Rourke's) on each pixel centre: a ray to the right counts the edges that
    straddle the centre's row (by ``> 0``) and cross strictly right of it, a ray to the left those that straddle it
    by ``< 0`` and cross strictly left; the pixel is drawn when either count is odd (inside, or on an edge) or a
    corner lies within 1e-12 of it. The same float64 operations in the same order round the same way, so a centre
    exactly on an edge falls on the side scikit-image puts it. A pixel centre outside the box of the corners
    (widened by 1e-12) passes none of these tests, so the window loses nothing.
    """
    low, high = corners.amin(dim=1), corners.amax(dim=1)  # (K, 2)
    xs, ys, index = _windows(torch.ceil(low[:, 0] - _VERTEX_EPS), torch.ceil(low[:, 1] - _VERTEX_EPS),
                             torch.floor(high[:, 0] + _VERTEX_EPS), torch.floor(high[:, 1] + _VERTEX_EPS), size)
    cx, cy = corners[..., 0, None, None], corners[..., 1, None, None]  # (K, 4, 1, 1)
    vertex = torch.zeros(index.shape, dtype=torch.bool, device=corners.device)
    right_odd, left_odd = vertex.clone(), vertex.clone()
    for i in range(4):
        x0, y0 = cx[:, i] - xs, cy[:, i] - ys
        x1, y1 = cx[:, i - 1] - xs, cy[:, i - 1] - ys
        vertex |= (x0.abs() < _VERTEX_EPS) & (y0.abs() < _VERTEX_EPS)
        cross = (x0 * y1 - x1 * y0) / (y1 - y0)  # where the edge meets the centre's row, relative to the centre
        right_odd ^= ((y0 > 0) != (y1 > 0)) & (cross > 0)
        left_odd ^= ((y0 < 0) != (y1 < 0)) & (cross < 0)
    return vertex | right_odd | left_odd, index


def _limb_fill(keypoints: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The union of the limb quadrilaterals of each keypoint set (``_limb_corners``, ``_fill_quads``):
    ``(B, 18, 2)`` → ``(B, H, W)`` bool on the keypoints' device."""
    h, w = int(size[0]), int(size[1])
    which, corners = _limb_corners(keypoints.detach().to("cpu", torch.float64).numpy())
    # a zero-length limb has NaN corners and draws nothing; a quad wholly outside the image draws nothing in it
    low, high = corners.min(axis=1), corners.max(axis=1)
    keep = np.isfinite(corners).all(axis=(1, 2)) & (high[:, 0] >= -1) & (high[:, 1] >= -1) \
        & (low[:, 0] <= w) & (low[:, 1] <= h)
    mask = torch.zeros((keypoints.shape[0], h, w), dtype=torch.bool, device=keypoints.device)
    if keep.any():
        drawn, index = _fill_quads(torch.from_numpy(corners[keep]).to(keypoints.device), (h, w))
        image = torch.from_numpy(which[keep]).to(keypoints.device)
        mask.view(-1)[(image[:, None, None] * (h * w) + index)[drawn]] = True
    return mask


def _joint_disks(keypoints: torch.Tensor, present: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pixel centres strictly within ``_MASK_RADIUS`` of each present joint (``skimage.draw.disk``), tested in a
    window around each joint: ``(B, 18, 2)`` float64, ``(B, 18)`` bool → ``(B, H, W)`` bool."""
    h, w = int(size[0]), int(size[1])
    image, joint = present.nonzero(as_tuple=True)
    kp = keypoints[image, joint]  # (J, 2)
    inside = (kp[:, 0] > -_MASK_RADIUS) & (kp[:, 0] < w - 1 + _MASK_RADIUS) \
        & (kp[:, 1] > -_MASK_RADIUS) & (kp[:, 1] < h - 1 + _MASK_RADIUS)
    image, kp = image[inside], kp[inside]
    mask = torch.zeros((keypoints.shape[0], h, w), dtype=torch.bool, device=keypoints.device)
    if len(kp):
        reach = math.ceil(_MASK_RADIUS)
        xs, ys, index = _windows(torch.floor(kp[:, 0]) - reach, torch.floor(kp[:, 1]) - reach,
                                 torch.floor(kp[:, 0]) + reach + 1, torch.floor(kp[:, 1]) + reach + 1, size)
        dist2 = (xs - kp[:, 0, None, None]) ** 2 + (ys - kp[:, 1, None, None]) ** 2
        mask.view(-1)[(image[:, None, None] * (h * w) + index)[dist2 < _MASK_RADIUS ** 2]] = True
    return mask


def pose_mask(keypoints: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """PATN's body mask of each keypoint set (``produce_ma_mask``), on the keypoints' device.

    Args:
        keypoints: ``(B, 18, 2)`` pixel ``(x, y)`` at pixel centres; a joint with a coordinate of -1 is missing
            (``(-1, -1)`` in our data).
        size: ``(H, W)``.

    Returns:
        ``(B, 1, H, W)`` bool: the 8-px-wide quadrilateral along each of ``MASK_LIMBS`` whose two joints are
        present, filled as ``skimage.draw.polygon`` fills it, and the pixel centres strictly within 4 px of a
        present joint (``skimage.draw.disk``), then closed with a 5x5 square (dilation, then erosion; pixels outside
        the image are ignored, which equals scikit-image's reflected border for a max or min over a symmetric
        window). Equal to the official mask pixel for pixel. For keypoints off the half-pixel grid the official
        limb length is ``np.linalg.norm``'s, whose last bit depends on whether NumPy's BLAS fuses multiply-adds; we
        take the unfused ``sqrt(dx * dx + dy * dy)``, which can differ only for a pixel centre exactly on an edge.
        Copies the keypoints to the host once (the limb corners are computed there).
    """
    h, w = int(size[0]), int(size[1])
    kp = keypoints.to(torch.float64)
    present = ~(kp == MISSING).any(dim=-1)  # (B, 18)
    mask = _limb_fill(kp, (h, w)) | _joint_disks(kp, present, (h, w))
    return close_square(mask[:, None].to(torch.float32), _MASK_CLOSING) > 0.5


# ---------------------------------------------------------------------------------------------------- weights


def _find_weights(url: str, weights_dir: str | Path | None, what: str) -> dict[str, torch.Tensor]:
    """The state dict named by ``url``'s file: ``weights_dir/<file>`` (or ``.safetensors``), torch hub's cache, or
    downloaded into the cache (hash-checked); ``WeightsUnavailable`` naming the file and where to put it."""
    name = os.path.basename(urlparse(url).path)
    cache = Path(torch.hub.get_dir()) / "checkpoints" / name
    help_text = f"put {name} ({url}) in --weights-dir DIR or at {cache}"
    if weights_dir is not None:
        for candidate in (Path(weights_dir) / name, (Path(weights_dir) / name).with_suffix(".safetensors")):
            if candidate.is_file():
                return read_state_dict(candidate, what, help_text)
    if cache.is_file():
        return read_state_dict(cache, what, help_text)
    try:
        return download_state_dict(url)
    except Exception as error:  # offline (URLError), proxy, hash mismatch: all mean "no weights"
        where = f"not in {weights_dir}, " if weights_dir is not None else ""
        raise WeightsUnavailable(f"{what} weights {name} unavailable ({where}no download: "
                                 f"{type(error).__name__}): {help_text}") from None


# ---------------------------------------------------------------------------------------------------- LPIPS


_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)
_LPIPS_NETS = {
    # torchvision features indices after which the five compared ReLU outputs come, and their channels
    "alex": ((2, 5, 8, 10, 12), (64, 192, 384, 256, 256)),
    "vgg": ((4, 9, 16, 23, 30), (64, 128, 256, 512, 512)),
}


class _Slices(nn.Module):
    """A torchvision ``features`` stack cut into consecutive slices; ``forward`` returns each slice's output."""

    def __init__(self, features: nn.Sequential, ends: tuple[int, ...]):
        super().__init__()
        starts = (0, *ends[:-1])
        self.slices = nn.ModuleList(nn.Sequential(*features[s:e]) for s, e in zip(starts, ends, strict=True))
        for module in self.modules():
            if isinstance(module, nn.ReLU):
                module.inplace = False

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for part in self.slices:
            x = part(x)
            out.append(x)
        return out


class LPIPS(nn.Module):
    """LPIPS distance (Zhang et al. 2018) with any backbone that returns a list of feature maps.

    Args:
        backbone: ``(B, 3, H, W)`` scaled input → list of ``L`` maps ``(B, C_l, H_l, W_l)``.
        lin_weights: ``L`` tensors of ``C_l`` non-negative weights (the "lin" layers, 1x1 convolutions without
            bias).

    ``forward(x, y)``: images ``(B, 3, H, W)`` in [-1, 1] → ``(B,)`` float32 distances. Frozen, eval mode.
    """

    def __init__(self, backbone: nn.Module, lin_weights: list[torch.Tensor]):
        super().__init__()
        self.backbone = backbone
        self.lins = nn.ParameterList(nn.Parameter(w.detach().reshape(-1).float().clone(), requires_grad=False)
                                     for w in lin_weights)
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx = self.backbone((x.float() - self.shift) / self.scale)
        fy = self.backbone((y.float() - self.shift) / self.scale)
        if len(fx) != len(self.lins):
            raise ValueError(f"the backbone returned {len(fx)} feature maps for {len(self.lins)} lin layers")
        total = torch.zeros(x.shape[0], device=x.device)
        for a, b, lin in zip(fx, fy, self.lins, strict=True):
            a = a / (a.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            total = total + ((a - b) ** 2 * lin.view(1, -1, 1, 1)).sum(dim=1).mean(dim=(1, 2))
        return total


def _lpips_lin_weights(net: str) -> list[torch.Tensor]:
    """LPIPS v0.1 linear layers as shipped in torchmetrics (``lin{k}.model.1.weight``, shape ``(1, C, 1, 1)``)."""
    resource = importlib.resources.files("torchmetrics.functional.image") / "lpips_models" / f"{net}.pth"
    with importlib.resources.as_file(resource) as path:
        state = read_state_dict(Path(path), f"LPIPS {net} linear-layer",
                              "reinstall torchmetrics, which ships them (torchmetrics/functional/image/lpips_models)")
    return [state[f"lin{k}.model.1.weight"] for k in range(len(_LPIPS_NETS[net][1]))]


def lpips_network(net: str = "alex", weights_dir: str | Path | None = None) -> LPIPS:
    """LPIPS with torchvision's ImageNet ``alexnet`` (default, the papers' choice) or ``vgg16`` backbone.

    ``WeightsUnavailable`` when the backbone's weights are neither in ``weights_dir``, nor in torch hub's cache, nor
    downloadable.
    """
    from torchvision.models import AlexNet_Weights, VGG16_Weights, alexnet, vgg16

    if net not in _LPIPS_NETS:
        raise ValueError(f"unknown LPIPS network {net!r}; use one of {', '.join(_LPIPS_NETS)}")
    ends, _ = _LPIPS_NETS[net]
    model, url = (alexnet(), AlexNet_Weights.IMAGENET1K_V1.url) if net == "alex" else \
        (vgg16(), VGG16_Weights.IMAGENET1K_V1.url)
    state = _find_weights(url, weights_dir, f"LPIPS {net} backbone")
    features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    try:
        model.features.load_state_dict(features)
    except RuntimeError as exc:
        raise TrainError(f"LPIPS {net} backbone weights do not fit torchvision's {net} "
                         f"({str(exc).splitlines()[-1].strip()})") from None
    return LPIPS(_Slices(model.features, ends), _lpips_lin_weights(net))


# ---------------------------------------------------------------------------------------------------- FID


class FeatureExtractor(Protocol):
    """Images → features for FID: ``(B, 3, H, W)`` uint8 RGB on the extractor's device → ``(B, D)`` float."""

    name: str

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")


class _Inception(nn.Module):
    name = "inception-v3-compat pool3 (TF FID graph 2015-12-05, torch-fidelity)"

    def __init__(self, state: dict[str, torch.Tensor]):
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        # torch-fidelity unpickles a path with weights_only=False; it gets a buffer we serialised from plain tensors
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        try:
            self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                   feature_extractor_weights_path=buffer)
        except RuntimeError as exc:
            raise TrainError(f"FID Inception weights do not fit torch-fidelity's InceptionV3 "
                             f"({str(exc).splitlines()[-1].strip()})") from None

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)[0]


def inception_extractor(weights_dir: str | Path | None = None) -> FeatureExtractor:
    """The standard FID feature extractor (2048-D pool3 of the TensorFlow FID Inception), on the CPU.

    ``WeightsUnavailable`` when ``weights-inception-2015-12-05-6726825d.pth`` is not in ``weights_dir`` or torch
    hub's cache and cannot be downloaded; also when torch-fidelity is not installed."""
    try:
        import torch_fidelity  # noqa: F401
    except ModuleNotFoundError:
        raise WeightsUnavailable("FID needs the torch-fidelity package (its InceptionV3 port): "
                                 "pip install torch-fidelity") from None
    return _Inception(_find_weights(INCEPTION_URL, weights_dir, "FID Inception"))


class _TorchvisionInception(nn.Module):
    """torchvision's ImageNet Inception-v3 up to the 2048-D average pool, fed as GFLA's ``script/inception.py``
    feeds it: RGB in [0, 1], bilinear resize to 299x299 (``align_corners=False``), then per channel
    ``x * std / 0.5 + (mean - 0.5) / 0.5`` with ImageNet's mean and std (torchvision's ``transform_input``
    applied to [0, 1] input, not to ImageNet-normalised input: GFLA's choice, kept)."""

    name = "torchvision inception_v3 IMAGENET1K_V1 pool3 (GFLA script/inception.py: bilinear 299, [0, 1] input)"

    def __init__(self, state: dict[str, torch.Tensor]):
        super().__init__()
        from torchvision.models import inception_v3

        net = inception_v3(weights=None, aux_logits=True, init_weights=False)
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise TrainError(f"FID torchvision Inception weights do not fit torchvision's inception_v3 "
                             f"({str(exc).splitlines()[-1].strip()})") from None
        self.blocks = nn.Sequential(
            net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, net.maxpool1, net.Conv2d_3b_1x1,
            net.Conv2d_4a_3x3, net.maxpool2, net.Mixed_5b, net.Mixed_5c, net.Mixed_5d, net.Mixed_6a, net.Mixed_6b,
            net.Mixed_6c, net.Mixed_6d, net.Mixed_6e, net.Mixed_7a, net.Mixed_7b, net.Mixed_7c)
        mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
        self.register_buffer("scale", (std / 0.5).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((mean - 0.5) / 0.5).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> _TorchvisionInception:
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` uint8 RGB → ``(B, 2048)`` float32."""
        x = nn.functional.interpolate(images.float() / 255, size=(299, 299), mode="bilinear", align_corners=False)
        x = self.blocks(x * self.scale + self.shift)
        return nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)


def torchvision_inception_extractor(weights_dir: str | Path | None = None) -> FeatureExtractor:
    """GFLA's FID features (``script/inception.py``): 2048-D pool3 of torchvision's ImageNet ``inception_v3``.

    ``WeightsUnavailable`` when ``inception_v3_google-0cc3c7bd.pth`` is not in ``weights_dir`` or torch hub's cache
    and cannot be downloaded."""
    from torchvision.models import Inception_V3_Weights

    return _TorchvisionInception(_find_weights(Inception_V3_Weights.IMAGENET1K_V1.url, weights_dir,
                                               "FID torchvision Inception"))


FID_NETWORKS: tuple[str, ...] = ("tf", "torchvision")
"""``tf``: the TensorFlow FID Inception (``inception_extractor``, most papers' FID). ``torchvision``: torchvision's
ImageNet Inception-v3 as GFLA's and DPTN's ``metrics.py`` feed it (``torchvision_inception_extractor``)."""


def fid_extractor(network: str = "tf", weights_dir: str | Path | None = None) -> FeatureExtractor:
    """The FID feature extractor named by ``network`` (one of ``FID_NETWORKS``), on the CPU."""
    if network == "tf":
        return inception_extractor(weights_dir)
    if network == "torchvision":
        return torchvision_inception_extractor(weights_dir)
    raise ValueError(f"unknown FID network {network!r}; use one of {', '.join(FID_NETWORKS)}")


class FeatureStats:
    """Running mean and sample covariance of feature vectors, in float64 (``update`` batch by batch)."""

    def __init__(self) -> None:
        self.n = 0
        self.total: torch.Tensor | None = None
        self.outer: torch.Tensor | None = None

    def update(self, features: torch.Tensor) -> None:
        """Add ``(B, D)`` features (any device; accumulated in float64 on it)."""
        f = features.detach().to(torch.float64).reshape(features.shape[0], -1)
        if self.total is None:
            self.total = torch.zeros(f.shape[1], dtype=torch.float64, device=f.device)
            self.outer = torch.zeros(f.shape[1], f.shape[1], dtype=torch.float64, device=f.device)
        self.n += f.shape[0]
        self.total += f.sum(0)
        self.outer += f.T @ f

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mu (D,), sigma (D, D))`` as ``np.mean(f, 0)`` and ``np.cov(f, rowvar=False)`` would give."""
        if self.n < 2:
            raise ValueError(f"FID needs at least 2 images, got {self.n}")
        mu = self.total / self.n
        cov = (self.outer - self.n * torch.outer(mu, mu)) / (self.n - 1)
        return mu.cpu().numpy(), cov.cpu().numpy()


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((matrix + matrix.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))`` in float64 (Heusel et al. 2017)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"statistics of different sizes: {mu1.shape} {s1.shape} vs {mu2.shape} {s2.shape}")
    a = _psd_sqrt(s1)
    eig = np.linalg.eigvalsh((a @ s2 @ a + (a @ s2 @ a).T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


# ---------------------------------------------------------------------------------------------------- PCKh


PCKH_PROTOCOLS: tuple[str, ...] = ("strict", "patn")
"""``strict``: our float keypoints, generated images detected in the stored frame. ``patn``: PATN's protocol,
integer keypoints in PATN's frame (the 176-wide crop of DeepFashion ``img/``); ``docs/eval.md`` "PCKh protocols"."""

HEAD_JOINTS: tuple[int, ...] = (0, 1, 14, 15, 16, 17)
"""Nose, neck, both eyes, both ears: the joints whose bounding box is the head (PATN's ``PARTS_SEL``)."""


def head_size(keypoints: np.ndarray) -> np.ndarray:
    """``(N, 18, 2)`` → ``(N, 2)`` head width and height: the extent in x and in y of the visible ``HEAD_JOINTS``;
    ``(-1, -1)`` where fewer than two are visible."""
    kp = np.asarray(keypoints, np.float64)[:, list(HEAD_JOINTS)]
    visible = ~(kp == MISSING).all(axis=-1)
    lo = np.where(visible[..., None], kp, np.inf).min(axis=1)
    hi = np.where(visible[..., None], kp, -np.inf).max(axis=1)
    size = hi - lo
    size[visible.sum(axis=1) < 2] = -1.0
    return size


@dataclass
class PCKhCounts:
    """PCKh tallies over pairs: ``correct[j]`` / ``valid[j]`` per joint; ``pairs`` counted, ``no_head`` left out."""

    correct: np.ndarray
    valid: np.ndarray
    pairs: int
    no_head: int

    @classmethod
    def zero(cls) -> PCKhCounts:
        return cls(np.zeros(NUM_KEYPOINTS, np.int64), np.zeros(NUM_KEYPOINTS, np.int64), 0, 0)

    def __add__(self, other: PCKhCounts) -> PCKhCounts:
        return PCKhCounts(self.correct + other.correct, self.valid + other.valid, self.pairs + other.pairs,
                          self.no_head + other.no_head)

    @property
    def overall(self) -> float:
        """Correct joints over visible target joints (``nan`` when there are none)."""
        total = int(self.valid.sum())
        return float(self.correct.sum()) / total if total else math.nan

    def per_joint(self) -> dict[str, float | None]:
        return {name: (float(c) / v if v else None)
                for name, c, v in zip(KEYPOINT_NAMES, self.correct, self.valid, strict=True)}


def pckh_counts(predicted: np.ndarray, target: np.ndarray, alpha: float = 0.5) -> tuple[PCKhCounts, np.ndarray]:
    """PATN's PCKh tallies of predicted against target keypoints.

    Args:
        predicted: ``(N, 18, 2)`` keypoints found in the generated images; ``(-1, -1)`` not found.
        target: ``(N, 18, 2)`` keypoints of the target images, same frame.
        alpha: threshold as a fraction of the head size.

    Returns:
        ``(counts, correct (N, 18) bool)``. A pair whose target has fewer than two visible head joints is left
        out (``no_head``); a joint counts when visible in the target and correct when also predicted with
        ``|dx| < alpha * head_width`` and ``|dy| < alpha * head_height``.
    """
    pred = np.asarray(predicted, np.float64)
    tgt = np.asarray(target, np.float64)
    if pred.shape != tgt.shape or pred.shape[1:] != (NUM_KEYPOINTS, 2):
        raise ValueError(f"expected two (N, 18, 2) arrays, got {pred.shape} and {tgt.shape}")
    head = head_size(tgt)
    kept = (head >= 0).all(axis=1)
    t_vis = ~(tgt == MISSING).any(axis=-1) & kept[:, None]
    p_vis = ~(pred == MISSING).any(axis=-1)
    close = (np.abs(pred - tgt) < alpha * head[:, None, :]).all(axis=-1)
    correct = t_vis & p_vis & close
    counts = PCKhCounts(correct.sum(0).astype(np.int64), t_vis.sum(0).astype(np.int64), int(kept.sum()),
                        int((~kept).sum()))
    return counts, correct


def patn_keypoints(keypoints: np.ndarray) -> np.ndarray:
    """``(N, 18, 2)`` → the integer keypoints a PATN annotation CSV holds for them (``schemas.patn.integer_keypoints``
    of the float64 keypoints), as float64 for ``pckh_counts``."""
    return integer_keypoints(np.asarray(keypoints, np.float64)).astype(np.float64)

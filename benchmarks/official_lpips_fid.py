"""GFLA's LPIPS, mask-LPIPS and FID (``script/metrics.py``) and DPTN's DeepFashion evaluation (``metrics/metrics.py``:
GFLA's classes, SSIM after ``pad_256``) beside ``pgpig eval`` on the same folders, with the same seeded random
network weights on both sides.

    python benchmarks/official_lpips_fid.py --official official --lpips-code PS --python VENV/bin/python \
        --work /tmp/official-lpips-fid --out benchmarks/results/official-eval-cpu-2core.jsonl

The pretrained weights (torchvision's ImageNet AlexNet and Inception-v3) are not needed to check the protocol
(reading, scaling, resizing, layers, normalisation, averaging, covariance, square root): seeded random state dicts
are written under the file names ``pgpig eval --weights-dir`` looks for, and the official side's
``torchvision.models.alexnet`` / ``inception_v3`` (what ``pretrained=True`` loads) are replaced, in the
subprocess only, by builders that load the same tensors. LPIPS's linear layers are the real v0.1 ones on both sides.

``--official DIR``: ``DIR/gfla/script/{metrics,inception}.py`` (github:RenYurui/Global-Flow-Local-Attention) and,
for ``--layouts dptn-fashion``, ``DIR/dptn/metrics/{metrics,inception}.py``
(github:PangzeCheung/Dual-task-Pose-Transformer-Network).
``--lpips-code DIR``: ``DIR/models/`` of github:richzhang/PerceptualSimilarity at 8658f6b (2019-07-20), the last
version whose ``DistModel.forward`` returns NumPy arrays, which GFLA's ``np.average(result)`` needs; GFLA's README
says to clone that repository into ``script/PerceptualSimilarity`` (DPTN's: into ``metrics/``). Both are copied to
``WORK/ported/`` (``WORK/ported-dptn/``) with ``official_eval.PORTS`` plus ``PORTS`` here (``DPTN_PORTS`` for DPTN;
each must match once), never committed.

The folders are ``official_eval.gfla_folders`` (GFLA's output naming, mannequin shards) and ``dptn_folders``
(DPTN's: 176-wide JPEGs of an ``img/`` shard set's crop). One JSON line per comparison: LPIPS and mask-LPIPS per
pair and mean, FID, the Fréchet distance of both implementations on the same feature arrays and, for DPTN, the
SSIM of its ``Reconstruction_Metrics``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

import official_eval  # noqa: E402
from official_eval import ROOT, cli, gfla_folders, port, run  # noqa: E402
from official_panels import official_tensor, tensor2im  # noqa: E402

from pgpig.evaluate import read_names  # noqa: E402
from pgpig.metrics import FeatureStats, frechet_distance  # noqa: E402
from pipeline.shards import ShardSet  # noqa: E402
from pipeline.synthetic import mannequin_shards  # noqa: E402
from schemas.patn import deepfashion_margin  # noqa: E402

DISK = ("circle(joint[0], joint[1], radius=point_radius, shape=img_size)",
        "disk((joint[0], joint[1]), radius=point_radius, shape=img_size)",
        "skimage.draw.circle no longer exists; disk (the same fill) takes the centre as one tuple")
PORTS: dict[str, list[tuple[str, str, str]]] = {
    "metrics.py": [DISK],  # after official_eval.PORTS["metrics.py"]: produce_ma_mask runs for mask-LPIPS
    "models/__init__.py": [("from skimage.measure import compare_ssim",
                            "from skimage.metrics import structural_similarity as compare_ssim",
                            "skimage.measure.compare_ssim no longer exists (renamed; not called by LPIPS)")],
}
# DPTN's metrics/metrics.py: its Reconstruction_Metrics (pad_256), LPIPS and FID run; the Market class and
# produce_ma_mask do not (the Market SSIM calls are left as they are, hence the indentation in the patterns)
DPTN_PORTS: list[tuple[str, str, str]] = [
    official_eval.SSIM_IMPORT,
    ("from skimage.measure import compare_psnr", "from skimage.metrics import peak_signal_noise_ratio as compare_psnr",
     "skimage.measure.compare_psnr no longer exists; the same function under its new name"),
    ("from skimage.draw import circle, line_aa, polygon", "from skimage.draw import disk, line_aa, polygon",
     "skimage.draw.circle no longer exists (renamed disk); produce_ma_mask is not run here"),
    ("win_size=self.win_size,multichannel=self.multichannel",
     "win_size=self.win_size, channel_axis=-1 if self.multichannel else None", official_eval.MULTICHANNEL[2]),
    ("sigma=1.5,\n                                use_sample_covariance=False, multichannel=True,",
     "sigma=1.5,\n                                use_sample_covariance=False, channel_axis=-1,",
     official_eval.MULTICHANNEL[2] + " (Reconstruction_Metrics' SSIM_256 call)"),
]

# the official side, run with --python in WORK (mask-LPIPS reads ./dataset/market_data/market-annotation-test.csv);
# cfg['package']: GFLA's script/ or DPTN's metrics/, each with PerceptualSimilarity inside
OFFICIAL = """
import importlib, json, sys
import numpy as np, torch, torchvision
cfg = json.loads(sys.argv[1])
sys.path[:0] = [cfg['ported'], cfg['ported'] + '/' + cfg['package'] + '/PerceptualSimilarity']
alexnet, inception_v3 = torchvision.models.alexnet, torchvision.models.inception_v3

def loaded(net, file):
    net.load_state_dict(torch.load(file, weights_only=True))
    return net

# what pretrained=True would load: the seeded random weights pgpig reads from --weights-dir
torchvision.models.alexnet = lambda pretrained=False, **kw: loaded(alexnet(), cfg['alexnet'])
torchvision.models.inception_v3 = lambda pretrained=False, **kw: loaded(
    inception_v3(weights=None, aux_logits=True, init_weights=False), cfg['inception'])
torch.nn.Module.cuda = lambda self, device=None: self  # FID() calls model.cuda(); the run is on the CPU
m = importlib.import_module(cfg['package'] + '.metrics')
out = {}
gt, generated = m.preprocess_path_for_deform_task(cfg['gt'], cfg['generated'])
if cfg.get('reconstruction'):  # DPTN: pad_256, then GFLA's SSIM calls; per image in save_path/metrics.npz
    m.Reconstruction_Metrics().calculate_from_disk(generated, gt, save_path=cfg['work'], sort=False)
lpips = m.LPIPS(use_gpu=False)
calls = []
forward = lpips.model.forward
lpips.model.forward = lambda a, b: calls.append(forward(a, b)) or calls[-1]
out['lpips'] = float(lpips.calculate_from_disk(generated, gt, sort=False))
out['lpips_pairs'] = [float(v) for v in np.concatenate(calls)]
if cfg['mask']:
    calls.clear()
    out['mask_lpips'] = float(lpips.calculate_mask_lpips(generated, gt, sort=False))
    out['mask_lpips_pairs'] = [float(v) for v in np.concatenate(calls)]
out['names'] = [p.split('/')[-1] for p in generated]
fid = m.FID()
fid.cuda = False
acts = []
activations = fid.get_activations
fid.get_activations = lambda images, verbose=False: acts.append(activations(images, verbose)) or acts[-1]
out['fid'] = float(fid.calculate_from_disk(cfg['generated'], cfg['fid_real']))
np.savez(cfg['activations'], real=acts[0], generated=acts[1])
out['fid_batch_size'] = fid.batch_size
print('RESULT ' + json.dumps(out))
"""


def random_weights(folder: Path, seed: int) -> dict[str, Path]:
    """Seeded random torchvision AlexNet and Inception-v3 state dicts under their ImageNet file names.

    Inception's BatchNorm running statistics are set from one seeded batch of random images (a cumulative average in
    training mode): with the default (0, 1) statistics the activations grow layer by layer."""
    from torchvision.models import AlexNet_Weights, Inception_V3_Weights, alexnet, inception_v3

    folder.mkdir(parents=True)
    files = {"alexnet": folder / os.path.basename(AlexNet_Weights.IMAGENET1K_V1.url),
             "inception": folder / os.path.basename(Inception_V3_Weights.IMAGENET1K_V1.url)}
    torch.manual_seed(seed)
    torch.save(alexnet().state_dict(), files["alexnet"])
    torch.manual_seed(seed)
    net = inception_v3(weights=None, aux_logits=True, init_weights=True)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
            module.reset_running_stats()
    with torch.no_grad():
        net.train()(torch.rand(8, 3, 299, 299, generator=torch.Generator().manual_seed(seed)))
    torch.save(net.state_dict(), files["inception"])
    return files


def ported_tree(args) -> tuple[Path, list[str]]:
    """GFLA's ``script/`` with PerceptualSimilarity's ``models/`` inside, ported, in ``WORK/ported``."""
    ported = args.work / "ported"
    script = ported / "script"
    done = port(args.official / "gfla" / "script", "metrics.py", script)
    (script / "metrics.py").write_text(apply(script / "metrics.py", PORTS["metrics.py"], done))
    shutil.copy(args.official / "gfla" / "script" / "inception.py", script / "inception.py")
    models = script / "PerceptualSimilarity" / "models"
    shutil.copytree(args.lpips_code / "models", models)
    (models / "__init__.py").write_text(apply(models / "__init__.py", PORTS["models/__init__.py"], done))
    return ported, done


def ported_dptn_tree(args) -> tuple[Path, list[str]]:
    """DPTN's ``metrics/`` with PerceptualSimilarity's ``models/`` inside (its README's layout), ported, in
    ``WORK/ported-dptn``."""
    ported = args.work / "ported-dptn"
    package = ported / "metrics"
    package.mkdir(parents=True)
    done: list[str] = []
    official = args.official / "dptn" / "metrics"
    (package / "metrics.py").write_text(apply(official / "metrics.py", DPTN_PORTS, done))
    shutil.copy(official / "inception.py", package / "inception.py")
    models = package / "PerceptualSimilarity" / "models"
    shutil.copytree(args.lpips_code / "models", models)
    (models / "__init__.py").write_text(apply(models / "__init__.py", PORTS["models/__init__.py"], done))
    return ported, done


def apply(path: Path, ports: list[tuple[str, str, str]], done: list[str]) -> str:
    text = path.read_text()
    for old, new, why in ports:
        if text.count(old) != 1:
            raise SystemExit(f"{path}: expected {old!r} once, found {text.count(old)}; review PORTS")
        text = text.replace(old, new)
        done.append(f"{path.name}: `{old}` -> `{new}` ({why})")
    return text


def lin_weights_equal(lpips_code: Path) -> bool:
    """PerceptualSimilarity's ``weights/v0.1/alex.pth`` equals the torchmetrics copy pgpig reads."""
    import importlib.resources

    theirs = torch.load(lpips_code / "models" / "weights" / "v0.1" / "alex.pth", map_location="cpu",
                        weights_only=True)
    resource = importlib.resources.files("torchmetrics.functional.image") / "lpips_models" / "alex.pth"
    with importlib.resources.as_file(resource) as path:
        ours = torch.load(path, map_location="cpu", weights_only=True)
    return set(theirs) == set(ours) and all(torch.equal(theirs[k], ours[k]) for k in theirs)


def compare_layout(args, ported: Path, files: dict[str, Path], layout: str) -> list[dict]:
    market = layout == "market"
    work, shards, folder = gfla_folders(args, layout)
    metrics = "lpips,mask_lpips,fid" if market else "lpips,fid"
    cli("pgpig.cli", "eval", "--generated", folder, "--shards", shards, "--target-from", "shards", "--out",
        work / "eval", "--metrics", metrics, "--fid-network", "torchvision", "--fid-reference", "test",
        "--weights-dir", files["alexnet"].parent, "--device", "cpu", "--quiet", "--no-baseline",
        "--batch-size", "16")
    result = json.loads((work / "eval" / "eval.json").read_text())["rows"]["model"]
    with open(work / "eval" / "pairs.csv") as f:
        pairs = {f"{Path(r['source']).stem}_2_{Path(r['target']).stem}_vis.png": r for r in csv.DictReader(f)}
    if market:
        dataset = work / "dataset" / "market_data"
        dataset.mkdir(parents=True)
        cli("pipeline.cli", "export-annotations", "--keypoints", work / "keypoints", "--split", "test",
            dataset / "market-annotation-test.csv")
    real = work / "data" / "test"
    cfg = {"ported": str(ported), "package": "script", "gt": str(real), "generated": str(folder), "fid_real": str(real),
           "mask": market, "activations": str(work / "official-activations.npz"),
           "alexnet": str(files["alexnet"]), "inception": str(files["inception"])}
    out = run([args.python, "-c", OFFICIAL, json.dumps(cfg)], cwd=work)
    official = json.loads(out.split("RESULT ", 1)[1])
    for cache in (folder / "statistics.npz", real / "statistics.npz"):  # GFLA's FID cache, written per folder
        cache.unlink()
    fmt = f"gfla-{'market' if market else 'deepfashion'}-single"
    common = {"format": fmt, "frame": "128x64" if market else "256x256", "pairs": len(official["names"]),
              "scored": result.get("scored")}
    lines = []
    for metric in ("lpips", "mask_lpips") if market else ("lpips",):
        mine = [float(pairs[n][metric]) for n in official["names"]]
        theirs = official[f"{metric}_pairs"]
        lines.append({**common, "metric": metric, "official": official[metric], "ours": result[metric],
                      "diff": result[metric] - official[metric],
                      "max_abs_diff_per_pair": float(np.max(np.abs(np.subtract(mine, theirs)))),
                      "official_code": "script/metrics.py LPIPS." + ("calculate_from_disk" if metric == "lpips"
                                                                     else "calculate_mask_lpips")
                      + " (PerceptualSimilarity 8658f6b dist_model, net-lin alex v0.1)"})
    acts = np.load(work / "official-activations.npz")
    real_n, gen_n = len(acts["real"]), len(acts["generated"])
    lines.append({**common, "metric": "fid", "official": official["fid"], "ours": result["fid"],
                  "diff": result["fid"] - official["fid"],
                  "relative_diff": (result["fid"] - official["fid"]) / official["fid"],
                  "images": {"real": real_n, "generated": gen_n},
                  "gfla_batch_size": official["fid_batch_size"],
                  "official_code": "script/metrics.py FID.calculate_from_disk (script/inception.py)",
                  "ours_flags": "--fid-network torchvision --fid-reference test"})
    for dims in (None, 8):
        lines.append({**common, **frechet_on_same_arrays(acts["real"], acts["generated"], ported, args.python, work,
                                                        dims)})
    return lines


def dptn_folders(args) -> tuple[Path, Path, Path, Path]:
    """``(work, shards, test, images)`` in DPTN's DeepFashion layout, from mannequin ``img/`` shards at 256x256:
    ``test/<name>.jpg``, every stored test image cut to PATN's 176-wide crop (DPTN's ``--gt_path`` and, here, its
    ``--fid_real_path``), and ``args.pairs`` "generated" images (the cropped target plus seeded noise) saved as DPTN's
    ``save_results`` saves its outputs: ``<source stem>_2_<target stem>_vis.jpg``, 176 wide, ``imageio.imwrite``'s
    JPEG (Pillow's defaults, quality 75).

    The crops are written losslessly (PNG bytes under the ``.jpg`` name the official matching looks for; Pillow reads
    them by content) so that both sides score the very pixels the shard set stores: PATN's
    ``generate_fashion_datasets.py`` saves them as JPEG, which would make the targets differ, not the protocol."""
    work = args.work / "dptn-fashion"
    shards = mannequin_shards(work, "deepfashion", args.fashion_identities, args.poses, splits=("test",),
                              seed=args.seed, size=(256, 256))
    stored = ShardSet(shards / "test")
    names = read_names(stored)
    m = deepfashion_margin(256)
    test, folder = work / "fashion" / "test", work / "images"
    test.mkdir(parents=True)
    folder.mkdir()
    for i, name in enumerate(names):
        Image.fromarray(np.ascontiguousarray(stored[i].image[:, m:-m])).save(test / f"{Path(name).stem}.jpg",
                                                                              format="PNG")
    generator = torch.Generator().manual_seed(args.seed)
    for s, t in stored.pairs[:args.pairs]:
        target = official_tensor(stored[int(t)].image[:, m:-m])
        fake = (target + args.noise * torch.randn(target.shape, generator=generator)).clamp(-1, 1)
        name = f"{Path(names[int(s)]).stem}_2_{Path(names[int(t)]).stem}_vis.jpg"
        Image.fromarray(tensor2im(fake)).save(folder / name)
    return work, shards, test, folder


def compare_dptn(args, files: dict[str, Path]) -> list[dict]:
    """DPTN's ``Reconstruction_Metrics`` (SSIM after ``pad_256``), ``LPIPS`` and ``FID`` on ``dptn_folders``
    beside ``pgpig eval --perceptual-frame crop`` (and ``padded``, for the size of the difference)."""
    ported, ports = ported_dptn_tree(args)
    work, shards, test, folder = dptn_folders(args)
    ours = {}
    for frame in ("crop", "padded"):
        cli("pgpig.cli", "eval", "--generated", folder, "--shards", shards, "--target-from", "shards", "--out",
            work / f"eval-{frame}", "--metrics", "ssim,lpips,fid", "--fid-network", "torchvision", "--fid-reference",
            "test", "--perceptual-frame", frame, "--weights-dir", files["alexnet"].parent, "--device", "cpu",
            "--quiet", "--no-baseline", "--batch-size", "16")
        ours[frame] = json.loads((work / f"eval-{frame}" / "eval.json").read_text())["rows"]["model"]
        with open(work / f"eval-{frame}" / "pairs.csv") as f:
            ours[f"{frame}_pairs"] = {f"{Path(r['source']).stem}_2_{Path(r['target']).stem}_vis.jpg": r
                                      for r in csv.DictReader(f)}
    cfg = {"ported": str(ported), "package": "metrics", "gt": str(test), "generated": str(folder),
           "fid_real": str(test), "mask": False, "reconstruction": True, "work": str(work),
           "activations": str(work / "official-activations.npz"), "alexnet": str(files["alexnet"]),
           "inception": str(files["inception"])}
    official = json.loads(run([args.python, "-c", OFFICIAL, json.dumps(cfg)], cwd=work).split("RESULT ", 1)[1])
    for cache in (folder / "statistics.npz", test / "statistics.npz"):  # its FID cache, written per folder
        cache.unlink()
    npz = np.load(work / "metrics.npz")
    crop, pairs = ours["crop"], ours["crop_pairs"]
    common = {"format": "dptn-deepfashion-single", "frame": "256x176 JPEGs of a 256x256 img/ shard set",
              "pairs": len(official["names"]), "scored": crop.get("scored"), "ports": ports}
    rec = {"ssim_gfla": float(np.mean(npz["ssim"])), "ssim_patn": float(np.mean(npz["ssim_256"]))}
    lines = [{**common, "metric": "ssim", "official": rec, "ours": {k: crop[k] for k in rec},
              "diff": {k: crop[k] - rec[k] for k in rec},
              "official_code": "metrics/metrics.py Reconstruction_Metrics.calculate_from_disk (pad_256; SSIM, "
              "SSIM_256)", "ours_flags": "--target-from shards (--ssim gfla / patn)"}]
    mine = [float(pairs[n]["lpips"]) for n in official["names"]]
    lines.append({**common, "metric": "lpips", "official": official["lpips"], "ours": crop["lpips"],
                  "diff": crop["lpips"] - official["lpips"],
                  "max_abs_diff_per_pair": float(np.max(np.abs(np.subtract(mine, official["lpips_pairs"])))),
                  "ours_padded": ours["padded"]["lpips"],
                  "official_code": "metrics/metrics.py LPIPS.calculate_from_disk (PerceptualSimilarity 8658f6b "
                  "dist_model, net-lin alex v0.1), on the 176-wide images", "ours_flags": "--perceptual-frame crop"})
    acts = np.load(work / "official-activations.npz")
    lines.append({**common, "metric": "fid", "official": official["fid"], "ours": crop["fid"],
                  "diff": crop["fid"] - official["fid"],
                  "relative_diff": (crop["fid"] - official["fid"]) / official["fid"],
                  "ours_padded": ours["padded"]["fid"],
                  "images": {"real": len(acts["real"]), "generated": len(acts["generated"])},
                  "gfla_batch_size": official["fid_batch_size"],
                  "official_code": "metrics/metrics.py FID.calculate_from_disk (metrics/inception.py), on the "
                  "176-wide images", "ours_flags": "--perceptual-frame crop --fid-network torchvision "
                  "--fid-reference test"})
    for dims in (None, 8):
        lines.append({**common, **frechet_on_same_arrays(acts["real"], acts["generated"], ported, args.python, work,
                                                        dims, "metrics")})
    return lines


def frechet_on_same_arrays(real: np.ndarray, generated: np.ndarray, ported: Path, python: str, work: Path,
                           dims: int | None, package: str = "script") -> dict:
    """GFLA's ``calculate_frechet_distance`` (on ``np.mean``/``np.cov``) and ours (``FeatureStats``,
    ``frechet_distance``) on the official side's activation arrays, or on their first ``dims`` features: with
    fewer images than features both covariances are singular, where ``sqrtm`` and our ``eigh`` route round
    differently; with fewer features than images they are not."""
    keep = slice(None) if dims is None else slice(0, dims)
    arrays = work / "same-arrays.npz"
    np.savez(arrays, real=real[:, keep], generated=generated[:, keep])
    code = ("import sys, json, numpy as np\n"
            f"sys.path[:0] = [{str(ported)!r}, {str(ported / package / 'PerceptualSimilarity')!r}]\n"
            f"from {package} import metrics as m\n"
            f"a = np.load({str(arrays)!r})\n"
            "r, g = a['real'], a['generated']\n"
            "d = m.FID.__new__(m.FID).calculate_frechet_distance(np.mean(r, 0), np.cov(r, rowvar=False), "
            "np.mean(g, 0), np.cov(g, rowvar=False))\n"
            "print('RESULT', json.dumps(float(d)))\n")
    official = json.loads(run([python, "-c", code], cwd=work).split("RESULT ", 1)[1])
    stats = []
    for features in (real[:, keep], generated[:, keep]):
        s = FeatureStats()
        s.update(torch.from_numpy(features))
        stats.append(s.mean_cov())
    ours = frechet_distance(*stats[0], *stats[1])
    return {"metric": "frechet_distance_same_arrays", "features": real.shape[1] if dims is None else dims,
            "images": {"real": len(real), "generated": len(generated)}, "official": official, "ours": ours,
            "diff": ours - official, "relative_diff": (ours - official) / official,
            "official_code": f"{package}/metrics.py FID.calculate_frechet_distance (scipy.linalg.sqrtm)",
            "ours_code": "pgpig.metrics.FeatureStats + frechet_distance (eigh)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="folder with gfla/script/")
    parser.add_argument("--lpips-code", type=Path, required=True, help="PerceptualSimilarity checkout (models/)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/official-lpips-fid"))
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter with pandas, scikit-image, imageio for the official script")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--identities", type=int, default=8)
    parser.add_argument("--fashion-identities", type=int, default=24)
    parser.add_argument("--poses", type=int, default=4)
    parser.add_argument("--noise", type=float, default=0.1, help="std of the noise added to the target in [-1, 1]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layouts", default="market,deepfashion,dptn-fashion",
                        help="market and deepfashion: GFLA's script; dptn-fashion: DPTN's")
    parser.add_argument("--out", type=Path, help="append the JSON lines to this file")
    args = parser.parse_args()
    if args.work.exists():
        shutil.rmtree(args.work)
    files = random_weights(args.work / "weights", args.seed)
    layouts = args.layouts.split(",")
    ported, ports = ported_tree(args) if {"market", "deepfashion"} & set(layouts) else (None, [])
    common = {"bench": "official-eval", "machine": f"cpu-{os.cpu_count()}core", "python": platform.python_version(),
              "noise": args.noise, "weights": "seeded random torchvision AlexNet and Inception-v3 (seed "
              f"{args.seed}), the same tensors on both sides; LPIPS linear layers: the real v0.1 ones",
              "lpips_lin_weights_equal_torchmetrics": lin_weights_equal(args.lpips_code), "ports": ports}
    for layout in layouts:
        lines = compare_dptn(args, files) if layout == "dptn-fashion" else compare_layout(args, ported, files, layout)
        for line in lines:
            text = json.dumps({**common, **line})
            print(text, flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(text + "\n")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    main()

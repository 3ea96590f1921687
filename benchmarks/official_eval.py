"""The official evaluation scripts and ``pgpig eval`` on the same folders, side by side.

    python benchmarks/official_eval.py --official official --work /tmp/official-eval --pairs 32 \
        --out benchmarks/results/official-eval-cpu-2core.jsonl

``--official DIR`` holds files fetched from the official repositories, never committed: ``DIR/patn/`` PATN's
``tool/getMetrics_market.py``, ``getMetrics_fashion.py``, ``calPCKH_market.py``, ``calPCKH_fashion.py`` and
``pose_utils.py`` (github:tengteng95/Pose-Transfer). They are copied to ``WORK/ported/`` with the few textual
changes Python 3 and current scikit-image force (``PORTS``; each must match exactly once, so a changed upstream file
stops the run) and run in a subprocess with ``--python`` (pandas, which pgpig does not need, must be importable
there). Inception score needs TensorFlow and is stubbed to NaN; FID and LPIPS are not in these scripts.

Per format one JSON line: the official numbers, ours (``pgpig eval --target-from panel`` and ``shards``), the
differences, and the ports. The folders are mannequin shards (test split) written as PATN's ``test.py`` writes its
five-image JPEG panels; the "generated" slice is the target plus seeded noise, as in
``tests/pgpig/test_panel_targets.py``, whose panel writer this copies.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from official_panels import official_tensor, pose_picture, tensor2im  # noqa: E402

from pgpig.evaluate import pair_file_name, read_names  # noqa: E402
from pipeline.shards import ShardSet  # noqa: E402
from pipeline.synthetic import mannequin_shards  # noqa: E402
from schemas.patn import deepfashion_margin, write_annotations  # noqa: E402

IS_STUB = "get_inception_score = lambda images: (float('nan'), float('nan'))  # port: IS needs TensorFlow"
SSIM_IMPORT = ("from skimage.measure import compare_ssim",
               "from skimage.metrics import structural_similarity as compare_ssim",
               "skimage.measure.compare_ssim no longer exists; skimage.metrics.structural_similarity is the same "
               "function under its new name, same arguments")
MULTICHANNEL = ("multichannel=True", "channel_axis=-1",
                "scikit-image 0.26 no longer reads multichannel: it treats (H, W, 3) as a volume and stops with "
                "'win_size exceeds image extent'; channel_axis=-1 is the documented replacement (per-channel SSIM, "
                "averaged)")
NO_IS = ("from inception_score import get_inception_score", IS_STUB,
         "inception_score.py needs TensorFlow 1: Inception score stubbed to NaN (not compared)")

# (old text, new text, why) per file: the only changes made to run the official scripts
PORTS: dict[str, list[tuple[str, str, str]]] = {
    "getMetrics_market.py": [NO_IS, SSIM_IMPORT, MULTICHANNEL],
    "getMetrics_fashion.py": [NO_IS, SSIM_IMPORT, MULTICHANNEL],
    "pose_utils.py": [
        ("from skimage.draw import circle, line_aa, polygon", "from skimage.draw import disk, line_aa, polygon",
         "skimage.draw.circle no longer exists (renamed disk, the same ellipse fill)"),
        ("circle(joint[0], joint[1], radius=point_radius, shape=img_size)",
         "disk((joint[0], joint[1]), radius=point_radius, shape=img_size)",
         "disk takes the centre as one tuple"),
    ],
    "metrics.py": [  # GFLA's script/metrics.py; only Reconstruction_Metrics is run
        SSIM_IMPORT,
        ("from skimage.measure import compare_psnr",
         "from skimage.metrics import peak_signal_noise_ratio as compare_psnr",
         "skimage.measure.compare_psnr no longer exists; the same function under its new name"),
        ("from skimage.draw import circle, line_aa, polygon", "from skimage.draw import disk, line_aa, polygon",
         "skimage.draw.circle no longer exists (renamed disk); produce_ma_mask is not run here"),
        ("win_size=self.win_size,multichannel=self.multichannel",
         "win_size=self.win_size, channel_axis=-1 if self.multichannel else None", MULTICHANNEL[2]),
        ("use_sample_covariance=False, multichannel=True,", "use_sample_covariance=False, channel_axis=-1,",
         MULTICHANNEL[2]),
    ],
    "calPCKH_market.py": [
        ("target_annotation = './market_data/market-annotation-test.csv'",
         "import sys; target_annotation = sys.argv[1]", "the script's fixed input paths, given as arguments"),
        ("pred_annotation = '/results/market_PATN/pckh.csv'", "pred_annotation = sys.argv[2]",
         "the script's fixed input paths, given as arguments"),
    ],
    "calPCKH_fashion.py": [
        ("target_annotation = './fashion_data/fasion-resize-annotation-test.csv'",
         "import sys; target_annotation = sys.argv[1]", "the script's fixed input paths, given as arguments"),
        ("pred_annotation = './results/fashion_PATN/pckh.csv'", "pred_annotation = sys.argv[2]",
         "the script's fixed input paths, given as arguments"),
    ],
}


def port(official: Path, name: str, dest: Path) -> list[str]:
    """Copy ``official/name`` to ``dest/name`` with ``PORTS[name]``; returns the ports as ``file: old -> new (why)``."""
    text = (official / name).read_text()
    done = []
    for old, new, why in PORTS.get(name, []):
        if text.count(old) != 1:
            raise SystemExit(f"{official / name}: expected {old!r} once, found {text.count(old)}: the official file "
                             "changed; review PORTS")
        text = text.replace(old, new)
        done.append(f"{name}: `{old}` -> `{new}` ({why})")
    dest.mkdir(parents=True, exist_ok=True)
    (dest / name).write_text(text)
    return done


# ------------------------------------------------------------------------- test.py's panels (our own re-implementation)


def write_panels(shards: Path, folder: Path, margin: int, pairs: int, noise: float, seed: int = 0,
                 ext: str = "jpg") -> None:
    """One ``<source>___<target>_vis.<ext>`` per pair, as ``test.py`` saves it (Pillow's defaults; ``jpg`` as PATN
    writes, ``png`` lossless): source | source pose | target | target pose | generated, the images cut to their
    middle columns with ``margin``."""
    stored = ShardSet(shards / "test")
    names = read_names(stored)
    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(seed)
    for s, t in stored.pairs[:pairs]:
        source, target = stored[int(s)], stored[int(t)]
        crop = slice(margin, source.image.shape[1] - margin)
        p1, p2 = official_tensor(source.image[:, crop]), official_tensor(target.image[:, crop])
        fake = (p2 + noise * torch.randn(p2.shape, generator=generator)).clamp(-1, 1)
        size = tuple(p1.shape[1:])
        shift = np.array([margin, 0], np.float32)
        vis = np.concatenate([tensor2im(p1), pose_picture(source.keypoints - shift, size), tensor2im(p2),
                              pose_picture(target.keypoints - shift, size), tensor2im(fake)], axis=1)
        name = pair_file_name(names[int(s)], names[int(t)])[: -len(".png")] + f".{ext}"
        Image.fromarray(vis).save(folder / name)


# --------------------------------------------------------------------------------------------------------- the runs


def run(cmd: list[str], **kw) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if done.returncode:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def cli(module: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return run([sys.executable, "-m", module, *map(str, args)], env=env, cwd=ROOT)


def official_metrics(python: str, ported: Path, script: str, folder: Path, annotations: Path) -> dict:
    """Call the script's ``test(folder, annotations)`` (its ``__main__`` block only fixes these two paths) and read
    the numbers it prints."""
    code = (f"import sys; sys.path.insert(0, {str(ported)!r}); import {script} as m; "
            f"m.test({str(folder)!r}, {str(annotations)!r})")
    out = run([python, "-c", code], cwd=ported)
    found = dict(re.findall(r"^(SSIM score masked|SSIM score|L1 score) ([-0-9.e]+)$", out, re.M))
    keys = {"SSIM score": "ssim", "SSIM score masked": "mask_ssim", "L1 score": "l1"}
    return {keys[k]: float(v) for k, v in found.items()}


def ours(shards: Path, folder: Path, out: Path, target_from: str, metrics: str, *extra: str) -> dict:
    cli("pgpig.cli", "eval", "--generated", folder, "--shards", shards, "--target-from", target_from, "--out", out,
        "--metrics", metrics, "--device", "cpu", "--quiet", "--no-baseline", "--batch-size", "16", *extra)
    return json.loads((out / "eval.json").read_text())


def model_row(result: dict, keys: tuple[str, ...]) -> dict:
    row = result["rows"]["model"]
    return {k: row[k] for k in keys if k in row}


def differences(official: dict, mine: dict) -> dict:
    return {k: mine[k] - official[k] for k in official if k in mine}


def detections_csv(folder: Path, out_csv: Path) -> None:
    """Our detector's keypoints of each panel's generated slice, written as PATN's ``compute_coordinates.py`` writes
    them (the image's file name, integer ``[y]: [x]``, 18 x -1 for an image with no person)."""
    from pgpig.generate import PoseDetector
    from pipeline.decode import decode_image

    files = sorted(folder.iterdir())
    slices = []
    for path in files:
        bgr = decode_image(path).image
        w = bgr.shape[1] // 5
        slices.append(np.ascontiguousarray(bgr[:, 4 * w:5 * w]))
    predicted, _ = PoseDetector(torch.device("cpu"), None, 16).batch(slices)
    write_annotations(out_csv, [p.name for p in files], predicted)


def official_pckh(args, ported: Path, script: str, annotations: Path, folder: Path, work: Path,
                  panel: dict) -> dict:
    """PATN's ``tool/<script>`` on our detector's keypoints of the panels' generated slices against ``annotations``
    (the targets in the panels' frame), beside the PCKh ``pgpig eval --target-from panel --pckh-protocol patn``
    computed (``panel``): the counts must be equal."""
    preds = work / "pckh.csv"
    detections_csv(folder, preds)
    out = run([args.python, str(ported / script), str(annotations), str(preds)], cwd=ported)
    correct, total, value = re.findall(r"^(\d+)/(\d+) ([0-9.]+)$", out, re.M)[-1]
    row = panel["rows"]["model"]
    line = {"official_script": f"tool/{script}",
            "official": {"correct": int(correct), "all": int(total), "pckh": float(value)},
            "ours_patn": {"pckh": row.get("pckh_patn"), "counts": row.get("pckh_counts"),
                          "detection_rate": row.get("detection_rate_patn")},
            "ours_strict": row.get("pckh_strict")}
    counts = row.get("pckh_counts") or {}
    line["counts_equal"] = (counts.get("correct"), counts.get("valid")) == (int(correct), int(total))
    if row.get("pckh_patn") is not None:  # the script prints 6 decimals: compare the counts
        line["diff"] = row["pckh_patn"] - float(value)
    return line


def gfla_folders(args, layout: str = "market") -> tuple[Path, Path, Path]:
    """``(work, shards, images)``: mannequin test shards of ``layout``, their raw test images exported as GFLA's
    loaders read them (``work/data/test/<name>.jpg``, ``export-pairs --images``) and ``args.pairs`` single PNG
    "generated" images named ``<source stem>_2_<target stem>_vis.png`` (the target plus seeded noise).
    ``layout``: ``market`` (128x64) or ``deepfashion`` (256x256, GFLA's frame of ``img_highres``: no crop)."""
    market = layout == "market"
    work = args.work / ("gfla-market" if market else "gfla-fashion")
    if market:
        shards = mannequin_shards(work, "market", args.identities, args.poses, splits=("test",), seed=args.seed)
    else:
        shards = mannequin_shards(work, "deepfashion", args.fashion_identities, args.poses, splits=("test",),
                                  seed=args.seed, size=(256, 256))
    cli("pipeline.cli", "export-pairs", shards / "test", work / "pairs-test.csv", "--images", work / "data")
    stored = ShardSet(shards / "test")
    names = read_names(stored)
    folder = work / "images"
    folder.mkdir()
    generator = torch.Generator().manual_seed(args.seed)
    for s, t in stored.pairs[:args.pairs]:
        target = official_tensor(stored[int(t)].image)
        fake = (target + args.noise * torch.randn(target.shape, generator=generator)).clamp(-1, 1)
        name = f"{Path(names[int(s)]).stem}_2_{Path(names[int(t)]).stem}_vis.png"
        Image.fromarray(tensor2im(fake)).save(folder / name)
    return work, shards, folder


def gfla_single(args, ported: Path, ports: list[str], layout: str = "market") -> dict:
    """GFLA's ``Reconstruction_Metrics.calculate_from_disk`` (the ``SSIM`` and ``SSIM_256`` lines of its
    ``script/metrics.py``) on ``gfla_folders`` against the raw test images; ours with ``--target-from shards``."""
    market = layout == "market"
    work, shards, folder = gfla_folders(args, layout)
    # the module's top imports GFLA's InceptionV3 and LPIPS model (FID, LPIPS: not run): empty modules stand in
    code = (f"import sys, types; sys.path.insert(0, {str(ported)!r})\n"
            "for n in ('script', 'script.inception', 'script.PerceptualSimilarity', "
            "'script.PerceptualSimilarity.models'):\n"
            "    sys.modules[n] = types.ModuleType(n)\n"
            "sys.modules['script.inception'].InceptionV3 = None\n"
            "sys.modules['script.PerceptualSimilarity.models'].dist_model = None\n"
            "import metrics as m\n"
            f"gt, out = m.preprocess_path_for_deform_task({str(work / 'data' / 'test')!r}, {str(folder)!r})\n"
            f"m.Reconstruction_Metrics().calculate_from_disk(out, gt, save_path={str(work)!r}, sort=False)\n")
    run([args.python, "-c", code], cwd=ported)
    npz = np.load(work / "metrics.npz")  # per image, full precision (the printed means are rounded to 4 places)
    official = {"ssim_gfla": float(np.mean(npz["ssim"])), "ssim_patn": float(np.mean(npz["ssim_256"])),
                "l1_0_1": float(np.mean(npz["l1"])), "images": int(len(npz["ssim"]))}
    result = ours(shards, folder, work / "eval-shards", "shards", "ssim,l1")
    row = result["rows"]["model"]
    mine = {"ssim_gfla": row.get("ssim_gfla"), "ssim_patn": row.get("ssim_patn"),
            "l1_0_1": row["l1"] / 2 if row.get("l1") is not None else None}
    line = {"format": f"gfla-{'market' if market else 'deepfashion'}-single", "frame": "128x64" if market else
            "256x256", "pairs": args.pairs, "scored": row.get("scored"),
            "official_script": "script/metrics.py Reconstruction_Metrics (GFLA)", "official": official,
            "ours_shards": mine, "diff_shards": differences(official, {k: v for k, v in mine.items() if v is not None}),
            "note": "GFLA's L1 is on [0, 1]: ours (on [-1, 1]) halved; ground truth: the raw test JPEGs"}
    line["ports"] = [p for p in ports if p.startswith("metrics.py")]
    return line


def market(args, ported: Path, ports: list[str]) -> dict:
    work = args.work / "market"
    shards = mannequin_shards(work, "market", args.identities, args.poses, splits=("test",), seed=args.seed)
    folder = work / "images"
    write_panels(shards, folder, 0, args.pairs, args.noise, ext=args.panel_ext)
    annotations = work / "market-annotation-test.csv"
    cli("pipeline.cli", "export-annotations", "--keypoints", work / "keypoints", "--split", "test", annotations)
    cli("pipeline.cli", "export-pairs", shards / "test", work / "market-pairs-test.csv")  # for the record only
    keys = ("ssim", "mask_ssim", "l1")
    t = time.perf_counter()
    official = official_metrics(args.python, ported, "getMetrics_market", folder, annotations)
    official_s = time.perf_counter() - t
    metrics = "ssim,mask_ssim,l1" + (",pckh" if args.pckh else "")
    t = time.perf_counter()
    panel = ours(shards, folder, work / "eval-panel", "panel", metrics, "--pckh-protocol", "patn")
    ours_s = time.perf_counter() - t
    stored = ours(shards, folder, work / "eval-shards", "shards", "ssim,mask_ssim,l1")
    line = {"format": "patn-market-panels", "frame": "128x64", "pairs": len(list(folder.iterdir())),
            "scored": panel["rows"]["model"].get("scored"), "official_script": "tool/getMetrics_market.py",
            "official": official, "ours_panel": model_row(panel, keys), "ours_shards": model_row(stored, keys)}
    line["diff_panel"] = differences(official, line["ours_panel"])
    line["diff_shards"] = differences(official, line["ours_shards"])
    line["seconds"] = {"official": round(official_s, 2), "ours_panel": round(ours_s, 2)}
    if args.pckh:
        line["pckh"] = official_pckh(args, ported, "calPCKH_market.py", annotations, folder, work, panel)
    line["ports"] = [p for p in ports if p.split(":")[0] in ("getMetrics_market.py", "pose_utils.py",
                                                             "calPCKH_market.py")]
    return line


def fashion(args, ported: Path, ports: list[str]) -> dict:
    work = args.work / "fashion"
    shards = mannequin_shards(work, "deepfashion", args.fashion_identities, args.poses, splits=("test",),
                              seed=args.seed, size=(256, 256))
    margin = deepfashion_margin(256)
    folder = work / "images"
    write_panels(shards, folder, margin, args.pairs, args.noise, ext=args.panel_ext)
    # the targets in PATN's 256x176 frame: read by calPCKH_fashion (getMetrics_fashion has no mask)
    annotations = work / "fasion-resize-annotation-test.csv"
    cli("pipeline.cli", "export-annotations", "--keypoints", work / "keypoints", "--split", "test", "--patn-crop",
        annotations)
    official = official_metrics(args.python, ported, "getMetrics_fashion", folder, annotations)
    keys = ("ssim", "l1")
    panel = ours(shards, folder, work / "eval-panel", "panel", "ssim,l1" + (",pckh" if args.pckh else ""),
                 *(("--pckh-protocol", "patn") if args.pckh else ()))
    stored = ours(shards, folder, work / "eval-shards", "shards", "ssim,l1")
    line = {"format": "patn-deepfashion-panels", "frame": "256x176 panels, scored at 256x256 with 40 white columns "
            "each side", "pairs": len(list(folder.iterdir())), "scored": panel["rows"]["model"].get("scored"),
            "official_script": "tool/getMetrics_fashion.py", "official": official,
            "ours_panel": model_row(panel, keys), "ours_shards": model_row(stored, keys)}
    line["diff_panel"] = differences(official, line["ours_panel"])
    line["diff_shards"] = differences(official, line["ours_shards"])
    line["official_prints"] = "SSIM only: getMetrics_fashion.py computes neither L1 nor mask-SSIM"
    if args.pckh:
        line["pckh"] = official_pckh(args, ported, "calPCKH_fashion.py", annotations, folder, work, panel)
    line["ports"] = [p for p in ports if p.split(":")[0] in ("getMetrics_fashion.py", "calPCKH_fashion.py")]
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="folder with patn/ (the fetched scripts)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/official-eval"))
    parser.add_argument("--python", default=sys.executable, help="interpreter with pandas for the official scripts")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--identities", type=int, default=8)
    parser.add_argument("--fashion-identities", type=int, default=24, help="DeepFashion's test split takes fewer")
    parser.add_argument("--poses", type=int, default=4)
    parser.add_argument("--noise", type=float, default=0.1, help="std of the noise added to the target in [-1, 1]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--formats", default="market,fashion,gfla-market,gfla-fashion")
    parser.add_argument("--no-pckh", dest="pckh", action="store_false")
    parser.add_argument("--panel-ext", choices=["jpg", "png"], default="jpg",
                        help="the panels' format: JPEG as PATN's test.py writes, or PNG")
    parser.add_argument("--out", type=Path, help="append the JSON lines to this file")
    args = parser.parse_args()
    if args.work.exists():
        shutil.rmtree(args.work)
    ported = args.work / "ported"
    ports = [p for name in ("getMetrics_market.py", "getMetrics_fashion.py", "pose_utils.py", "calPCKH_market.py",
                            "calPCKH_fashion.py") for p in port(args.official / "patn", name, ported)]
    if {"gfla-market", "gfla-fashion"} & set(args.formats.split(",")):
        ports += port(args.official / "gfla", "metrics.py", ported)
    common = {"bench": "official-eval", "machine": f"cpu-{os.cpu_count()}core", "python": platform.python_version(),
              "noise": args.noise, "panel_ext": args.panel_ext,
              "skipped": "Inception score and FID (TensorFlow); LPIPS is not in these scripts"}
    for fmt in args.formats.split(","):
        line = {**common, **{"market": market, "fashion": fashion, "gfla-market": gfla_single,
                            "gfla-fashion": functools.partial(gfla_single, layout="deepfashion")}[fmt](args, ported,
                                                                                                   ports)}
        text = json.dumps(line)
        print(text, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(text + "\n")


if __name__ == "__main__":
    main()

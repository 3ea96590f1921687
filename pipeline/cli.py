"""``pgpig-data``: the data pipeline's command line. Each command parses options and calls one function.

An option left out is left out of the command's config dataclass too (``ExtractConfig``, ``PairRunConfig``,
``SynthConfig``, ``ReportConfig``, ``DemoConfig``), which holds every default; ``--help`` shows them from there.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pipeline.datasets import PERSON_DEFAULTS
from pipeline.demo import DemoConfig
from pipeline.errors import report_errors, run_console
from pipeline.extract import FAST_CPU_BATCH, FAST_CPU_PARTITION, SOURCE_SIZES, ExtractConfig
from pipeline.options import default_of, given, with_default
from pipeline.pair import PairRunConfig
from pipeline.pose import PERSON_RULES
from pipeline.report import ReportConfig
from pipeline.synthetic import SynthConfig
from pipeline.versions import package_version


def parse_size(value: str | None) -> tuple[int, int] | None:
    """``"128x64"`` → ``(128, 64)`` (height × width)."""
    if value is None:
        return None
    try:
        h, w = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not HEIGHTxWIDTH, e.g. 128x64") from None
    if h <= 0 or w <= 0:
        raise click.BadParameter(f"{value!r}: height and width must be positive")
    return h, w


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_version() or "0+unknown", "--version", prog_name="pgpig-data")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
def main(debug: bool) -> None:
    """pgpig's data pipeline: raw person images → keypoints → training pairs in shards.

    \b
    Typical use, from one working directory:
      pgpig-data extract ./raw          # pose keypoints for every image
      pgpig-data pair --split train     # filter and pair → ./shards/train
    Try it without a data set: pgpig-data synth ./raw
    """


@main.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--identities", type=click.IntRange(1),
              help=with_default("People (Market) or items (DeepFashion).", SynthConfig, "identities"))
@click.option("--poses-per-identity", type=click.IntRange(1),
              help=with_default("Images per identity.", SynthConfig, "poses_per_identity"))
@click.option("--layout", type=click.Choice(["market", "deepfashion"]),
              help=with_default("Raw layout to write: Market-1501 folders or DeepFashion In-shop img/ tree.",
                                SynthConfig, "layout"))
@click.option("--size", metavar="HxW", help="Image height x width [default: 128x64 market, 256x256 deepfashion].")
@click.option("--seed", type=int, help=with_default("Same seed, same bytes.", SynthConfig, "seed"))
@click.option("--distractors", type=click.IntRange(0),
              help=with_default("Extra images with no usable person (Market 0000/-1 ids, DeepFashion 6_flat).",
                                SynthConfig, "distractors"))
@click.option("--overwrite", is_flag=True, help="Replace an earlier synth run in OUT.")
@click.option("--workers", type=click.IntRange(1), default=None, help="Drawing processes [default: CPU count].")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@report_errors()
def synth(out: Path, identities: int | None, poses_per_identity: int | None, layout: str | None, size: str | None,
          seed: int | None, distractors: int | None, overwrite: bool, workers: int | None, quiet: bool) -> None:
    """Write the mannequin data set: procedural people with exact keypoints, in a real raw layout.

    OUT gets Market-1501 or DeepFashion In-shop folders and file names, the PATN annotation CSVs with
    the exact keypoints, and mannequin.json describing the run.
    """
    from pipeline.synthetic import write_mannequins

    cfg = SynthConfig(**given(identities=identities, poses_per_identity=poses_per_identity, layout=layout,
                              size=parse_size(size), seed=seed, distractors=distractors))
    summary = write_mannequins(out, cfg, overwrite=overwrite, progress=not quiet, workers=workers)
    h, w = summary["config"]["size"]
    click.echo(f"wrote {summary['images']} {h}x{w} mannequin images of {cfg.identities} identities to {out} "
               f"in {summary['seconds']:.1f} s ({summary['images_per_second']} img/s)")
    for folder, n in summary["folders"].items():
        click.echo(f"  {out / folder}/  {n} images")
    for name in summary["written"]:
        if name.endswith(".csv") or name.endswith(".txt"):
            click.echo(f"  {out / name}")
    click.echo(f"  {out / 'mannequin.json'}")


@main.command()
@click.argument("raw", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help=with_default("Folder of the keypoint parts.", ExtractConfig, "out"))
@click.option("--run-file", type=click.Path(dir_okay=False, path_type=Path),
              help=with_default("Where the run record goes.", ExtractConfig, "run_file"))
@click.option("--dataset", type=click.Choice(["market1501", "deepfashion", "folder"]),
              help="Raw layout [default: detected].")
@click.option("--split-lists", nargs=2, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              metavar="TRAIN.lst TEST.lst", help="PATN name lists that decide the DeepFashion split.")
@click.option("--highres", is_flag=True, help="DeepFashion: use img_highres/ instead of img/.")
@click.option("--seed", type=int,
              help=with_default("Seed of the identity split when the layout gives none.", ExtractConfig, "seed"))
@click.option("--model", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YOLO-pose weights [default: the embedded yolo11n-pose.pt].")
@click.option("--annotations", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="PATN annotation CSV (repeatable): take keypoints from it instead of running a model.")
@click.option("--backend", "pose_backend", type=click.Choice(["auto", "fast", "ultralytics"]),
              help=with_default("Pose backend: fast (batched decode, letterbox and post-processing, on the GPU "
                                "or the CPU), ultralytics (YOLO.predict, the reference); auto = fast.",
                                ExtractConfig, "pose_backend"))
@click.option("--imgsz", type=click.IntRange(32), help=with_default("Model input size.", ExtractConfig, "imgsz"))
@click.option("--conf", type=click.FloatRange(0, 1),
              help=with_default("Person detection threshold.", ExtractConfig, "conf"))
@click.option("--kpt-threshold", type=click.FloatRange(0, 1),
              help=with_default("Keypoint visibility threshold.", ExtractConfig, "kpt_threshold"))
@click.option("--person", type=click.Choice(PERSON_RULES),
              help="Which person of an image is kept: the largest (box area x score) or the one a crop was made for "
              "(centre: tall and near the centre line; docs/extraction.md) [default: the layout's: "
              f"{', '.join(f'{rule} for {name}' for name, rule in PERSON_DEFAULTS.items())}].")
@click.option("--device", help=with_default("auto, cpu, cuda, cuda:N (auto pins one worker per GPU).",
                                            ExtractConfig, "device"))
@click.option("--batch-size", type=click.IntRange(1),
              help=f"Images per model call [default: {SOURCE_SIZES['fast'][0]} with the fast backend on a GPU, "
              f"{FAST_CPU_BATCH} on the CPU; {SOURCE_SIZES['ultralytics'][0]} with ultralytics].")
@click.option("--partition-size", type=click.IntRange(1),
              help=f"Images per task and part file [default: {SOURCE_SIZES['fast'][1]} with the fast backend on a "
              f"GPU, {FAST_CPU_PARTITION} on the CPU; {SOURCE_SIZES['ultralytics'][1]} with ultralytics].")
@click.option("--workers", type=click.IntRange(0),
              help="Local worker processes [default: one per GPU, else CPU workers]; 0 runs in this process.")
@click.option("--threads", type=click.IntRange(1), help=with_default("Threads per worker.", ExtractConfig, "threads"))
@click.option("--read-processes", type=click.IntRange(0),
              help="Fast backend: file-reading processes per worker [default: with a GPU, the worker's cores "
              "less 2, at most 8; else 0, reading on threads].")
@click.option("--cpu-decode-share", type=click.FloatRange(0, 1),
              help="Fast backend: share of the GPU-decodable JPEGs decoded by the reader processes instead, picked "
              "by content [default: 0].")
@click.option("--prepare-threads", type=click.IntRange(1),
              help="Fast backend: threads per worker decoding and letterboxing batches ahead of the network "
              "[default: 2 with a GPU, else 1].")
@click.option("--scheduler", metavar="ADDRESS", help="Use an existing Dask cluster (tcp://host:8786).")
@click.option("--overwrite", is_flag=True, help="Discard earlier parts and start over.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@report_errors()
def extract(raw: Path, out, run_file, dataset, split_lists, highres: bool, seed, model, annotations, pose_backend,
            imgsz, conf, kpt_threshold, person, device, batch_size, partition_size, workers, threads, read_processes,
            cpu_decode_share, prepare_threads, scheduler, overwrite: bool, quiet: bool) -> None:
    """Pose keypoints (OpenPose-18) for every image under RAW → OUT/part-*.parquet and extract.json.

    Every file gets one row with a status (ok, no_person, unreadable, skipped) and a reason. A second
    run continues where the first stopped; --overwrite starts over.
    """
    from pipeline.extract import run_extract

    cfg = ExtractConfig(raw=raw, highres=highres, annotations=tuple(annotations), overwrite=overwrite, **given(
        out=out, run_file=run_file, dataset=dataset, split_lists=tuple(split_lists) if split_lists else None,
        seed=seed, model=model, pose_backend=pose_backend, imgsz=imgsz, conf=conf, kpt_threshold=kpt_threshold,
        person=person, device=device, batch_size=batch_size, partition_size=partition_size, workers=workers,
        threads=threads, read_processes=read_processes, cpu_decode_share=cpu_decode_share,
        prepare_threads=prepare_threads, scheduler=scheduler))
    record = run_extract(cfg, progress=not quiet, log=click.echo)
    counts = ", ".join(f"{k} {v}" for k, v in record["statuses"].items()) or "nothing"
    click.echo(f"{record['rows']} rows in {cfg.out}/ ({counts}); {record['processed']} processed this run in "
               f"{record['seconds']:.1f} s ({record['images_per_second']} img/s); run record {cfg.run_file}")
    unmatched = record.get("unmatched_annotations")
    if unmatched and unmatched["count"]:
        click.echo(f"warning: {unmatched['count']} annotated names match no image, e.g. "
                   f"{', '.join(unmatched['examples'][:3])} (all counted in {cfg.run_file})", err=True)
    for line in record["warnings"]:
        click.echo(line, err=True)


@main.command("export-annotations")
@click.argument("out_csv", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--keypoints", "keypoints_dir", default=Path("keypoints"),
              type=click.Path(exists=True, file_okay=False, path_type=Path), help="Folder of keypoint parts.")
@click.option("--split", type=click.Choice(["train", "test"]), default=None, help="Only this split.")
@click.option("--patn-crop", is_flag=True, help="DeepFashion: write in PATN's 256x176 crop frame.")
@click.option("--images", "images_to", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also put every written row's raw image at IMAGES/<split>/<PATN name>, the layout of the official "
                   "loaders (dataroot).")
@click.option("--raw", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Raw data folder the images are read from [default: the one the run file records].")
@click.option("--run-file", type=click.Path(dir_okay=False, path_type=Path), default=Path("extract.json"),
              show_default=True, help="Extract run record naming the raw data folder (with --images).")
@click.option("--link", is_flag=True, help="With --images: hard-link the raw files instead of copying them.")
@report_errors()
def export_annotations_cmd(out_csv: Path, keypoints_dir: Path, split, patn_crop: bool, images_to, raw, run_file,
                           link: bool) -> None:
    """Write the ok rows of a keypoints table as a PATN annotation CSV (name:keypoints_y:keypoints_x)."""
    from pipeline.export import export_annotations

    n = export_annotations(keypoints_dir, out_csv, split=split, patn_crop=patn_crop, images_to=images_to, raw=raw,
                           run_file=run_file, link=link)
    click.echo(f"wrote {n} annotations to {out_csv}" + (f" and their images under {images_to}" if images_to else ""))


def filter_default(name: str) -> str:
    """The ``[default: ...]`` of a pair filter option: its value per data set, from ``pipeline.pair.defaults_for``."""
    from pipeline.pair import defaults_for

    def shown(value) -> str:
        if value is None:
            return "no limit" if name == "max_persons" else "none"
        return ",".join(value) if isinstance(value, tuple) else f"{value:g}"

    by_value: dict[str, list[str]] = {}
    for dataset in ("market1501", "deepfashion", "folder"):
        by_value.setdefault(shown(getattr(defaults_for(dataset, "train")[0], name)), []).append(dataset)
    if len(by_value) == 1:
        return f"[default: {next(iter(by_value))}]"
    return "[default: " + "; ".join(f"{value} for {', '.join(sets)}" for value, sets in by_value.items()) + "]"


def _no_cap(value: int | None) -> int | None:
    """CLI caps: 0 means no cap (the data set's default cap is then lifted too)."""
    return None if value == 0 else value


@main.command()
@click.option("--split", required=True, type=click.Choice(["train", "test"]), help="Which split to pair.")
@click.option("--keypoints", "keypoints_dir", type=click.Path(file_okay=False, path_type=Path),
              help=with_default("Folder of keypoint parts.", PairRunConfig, "keypoints_dir"))
@click.option("--run-file", type=click.Path(dir_okay=False, path_type=Path),
              help=with_default("The extract run record.", PairRunConfig, "run_file"))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help=with_default("Shard root; the split goes to OUT/SPLIT.", PairRunConfig, "out"))
@click.option("--format", "fmt", type=click.Choice(["parquet", "hdf5"]),
              help=with_default("parquet: encoded image bytes; hdf5: decoded uint8 arrays.", PairRunConfig, "format"))
@click.option("--size", metavar="HxW",
              help="Stored height x width [default: 128x64 market, 256x256 deepfashion and folder].")
@click.option("--images-per-shard", type=click.IntRange(1),
              help=with_default("Images per shard file.", PairRunConfig, "images_per_shard"))
@click.option("--seed", type=int, help=with_default("Seed of the pair sampling.", PairRunConfig, "seed"))
@click.option("--min-visible", default=None, type=click.IntRange(0, 18),
              help=f"Minimum visible keypoints {filter_default('min_visible')}.")
@click.option("--required-joints", default=None, metavar="a,b,c",
              help=f"Joints that must be visible ('none' for none) {filter_default('required_joints')}.")
@click.option("--max-persons", default=None, type=click.IntRange(0),
              help="Keep images with at most this many detected persons (0: no limit) "
                   f"{filter_default('max_persons')}.")
@click.option("--min-height", default=None, type=click.FloatRange(0, 1),
              help=f"Minimum keypoint extent height as a fraction of the image height {filter_default('min_height')}.")
@click.option("--max-pairs", default=None, type=click.IntRange(0),
              help="Total pair cap, seeded sample (0: none) [default: 12000 for Market test, else none].")
@click.option("--max-pairs-per-identity", default=None, type=click.IntRange(0),
              help="Pair cap per identity, seeded sample (0: none) [default: none].")
@click.option("--pairs", "pairs_csv", default=None, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Use this PATN pair CSV (from,to) instead of drawing pairs.")
@click.option("--compression", type=click.Choice(["gzip", "lzf"]), help="HDF5 compression.")
@click.option("--workers", "dask_workers", type=click.IntRange(0),
              help=with_default("Local Dask worker processes writing shard files in parallel (0: threads in this "
                                "process).", PairRunConfig, "dask_workers"))
@click.option("--scheduler", metavar="ADDRESS", help="Write shard files on an existing Dask cluster.")
@click.option("--overwrite", is_flag=True, help="Replace an existing shard set of this split.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@report_errors()
def pair(split: str, keypoints_dir, run_file, out, fmt, size: str | None, images_per_shard, seed, min_visible,
         required_joints, max_persons, min_height, max_pairs, max_pairs_per_identity, pairs_csv, compression,
         dask_workers, scheduler, overwrite: bool, quiet: bool) -> None:
    """Filter the keypoints of one split, pair images of the same identity, write OUT/SPLIT shards.

    Defaults follow PATN (Zhu et al., CVPR 2019): both shoulders and hips visible, one person, all ordered
    pairs within an identity, 12,000 sampled pairs for the Market-1501 test split. Run where extract ran,
    only --split is needed.
    """
    from pipeline.pair import run_pair

    filt: dict = {}
    if min_visible is not None:
        filt["min_visible"] = min_visible
    if required_joints is not None:
        joints = tuple(j.strip() for j in required_joints.split(",") if j.strip())
        filt["required_joints"] = None if joints in ((), ("none",)) else joints
    if max_persons is not None:
        filt["max_persons"] = None if max_persons == 0 else max_persons
    if min_height is not None:
        filt["min_height"] = min_height
    pairing: dict = {}
    if max_pairs is not None:
        pairing["max_pairs"] = _no_cap(max_pairs)
    if max_pairs_per_identity is not None:
        pairing["max_pairs_per_identity"] = _no_cap(max_pairs_per_identity)
    cfg = PairRunConfig(split=split, filter=filt, pairing=pairing, overwrite=overwrite, **given(
        keypoints_dir=keypoints_dir, run_file=run_file, out=out, format=fmt, size=parse_size(size),
        images_per_shard=images_per_shard, seed=seed, pairs_csv=pairs_csv, compression=compression,
        dask_workers=dask_workers, scheduler=scheduler))

    def log(line: str) -> None:
        click.echo(line, err=line.startswith("warning:"))

    run_pair(cfg, progress=not quiet, log=log)


@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@report_errors()
def verify(folder: Path) -> None:
    """Check a shard set: every file listed, unchanged, readable, with the listed rows; exit 1 on problems."""
    from pipeline.shards import verify_shard_set
    from schemas.manifest import Manifest

    problems = verify_shard_set(folder)
    if problems:
        for line in problems:
            click.echo(line, err=True)
        click.echo(f"{folder}: {len(problems)} problem(s)", err=True)
        sys.exit(1)
    m = Manifest.read(folder)
    click.echo(f"{folder}: OK, {m.split} {m.format} {m.size[0]}x{m.size[1]}: {m.counts['images']} images, "
               f"{m.counts['pairs']} pairs, {m.counts['identities']} identities, {len(m.files)} files")


@main.command("export-pairs")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out_csv", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--images", "images_to", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also put every image a pair names at IMAGES/<split>/<PATN name>, the layout of the official "
                   "loaders (dataroot).")
@click.option("--raw", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Raw data folder the images are read from [default: the one the manifest records].")
@click.option("--link", is_flag=True, help="With --images: hard-link the raw files instead of copying them.")
@report_errors()
def export_pairs_cmd(folder: Path, out_csv: Path, images_to, raw, link: bool) -> None:
    """Write a shard set's pairs as a PATN pair CSV (from,to) of PATN names (file names where none).

    \b
    With --images, every image the list names is copied to IMAGES/<split>/
    (Market-1501's test split: bounding_box_test/ and query/), so PATN's and
    GFLA's loaders find them all; their READMEs build test/ from
    bounding_box_test/ alone.
    """
    from pipeline.export import export_pairs

    n = export_pairs(folder, out_csv, images_to=images_to, raw=raw, link=link)
    click.echo(f"wrote {n} pairs to {out_csv}" + (f" and their images under {images_to}" if images_to else ""))


@main.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path), default="pgpig-demo")
@click.option("--steps", type=click.IntRange(1),
              help=with_default("Training steps of the PATN run.", DemoConfig, "steps"))
@click.option("--identities", type=click.IntRange(5),
              help=with_default("Mannequin identities (every fifth a test identity).", DemoConfig, "identities"))
@click.option("--device", help=with_default("auto, cpu or cuda for extraction and training.", DemoConfig, "device"))
@click.option("--overwrite", is_flag=True, help="Replace the contents of a non-empty OUT.")
@report_errors()
def demo(out: Path, steps: int | None, identities: int | None, device: str | None, overwrite: bool) -> None:
    """Run the whole product on what ships with the installed packages, into OUT (a few CPU minutes).

    \b
    The real photos of ultralytics (bus.jpg, zidane.jpg) cut into a Market-style tree → extract with the
    embedded YOLO-pose model → keypoint overlays; a mannequin set → extract (exact keypoints) → pair train and
    test → pgpig train (PATN, demo recipe) → pgpig generate (→ pgpig eval). Each command is printed as it runs.
    """
    from pipeline.demo import run_demo

    cfg = DemoConfig(out=out, overwrite=overwrite, **given(steps=steps, identities=identities, device=device))
    paths = run_demo(cfg, log=click.echo)
    click.echo(f"\ndemo done in {cfg.timings['total']:.0f} s; look at:")
    click.echo(f"  keypoint overlays of the real photos  {paths['overlays']}/")
    click.echo(f"  shard manifest                        {paths['manifest']}")
    click.echo(f"  the data at a glance (a browser)      {paths['report']}")
    click.echo(f"  training samples                      {paths['samples']}")
    click.echo(f"  generated image and its grid          {paths['grid']}")
    click.echo(f"  run folder (tensorboard --logdir)     {paths['run']}")


@main.command()
@click.option("--keypoints", "keypoints_dir", type=click.Path(file_okay=False, path_type=Path),
              help=with_default("Folder of keypoint parts (left out when the default is absent).", ReportConfig,
                                "keypoints"))
@click.option("--shards", "shards_dir", type=click.Path(file_okay=False, path_type=Path),
              help=with_default("Shard root (SHARDS/<split>/) or one shard set (left out when the default is "
                                "absent).", ReportConfig, "shards"))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help=with_default("The HTML page; the same numbers go beside it as OUT with .json.", ReportConfig,
                                "out"))
@click.option("--samples", type=click.IntRange(0),
              help=with_default("Images in the sampled grid.", ReportConfig, "samples"))
@click.option("--seed", type=int, help=with_default("Seed of the sample.", ReportConfig, "seed"))
@click.option("--raw", type=click.Path(file_okay=False, path_type=Path),
              help="Raw root to read images from [default: the one extract.json or the manifest records].")
@click.option("--run-file", type=click.Path(dir_okay=False, path_type=Path),
              help="The extract run record [default: extract.json beside the keypoints folder, or here].")
@click.option("--verify", "verify_mode", type=click.Choice(["full", "files", "none"]),
              help=with_default("Shard check: full = `pgpig-data verify` (decodes every image); files = sizes and "
                                "sha256; none.", ReportConfig, "verify"))
@report_errors()
def report(keypoints_dir, shards_dir, out, samples, seed, raw, run_file, verify_mode) -> None:
    """Write one self-contained HTML page of the keypoints and shards made so far, and its numbers as JSON.

    Counts by status with the commonest reasons and example files, per data set and split; per-joint
    visibility and confidence; person size, position and count; skeletons drawn on a seeded sample of the
    raw images and on the worst cases; per shard set the manifest, verify result, filter funnel and pairs
    per identity. Images are inlined: the page needs no other file, no network and no script.
    """
    from pipeline.report import json_path, run_report

    def present(path: Path | None, name: str) -> Path | None:
        # a default folder that is not there means "no such input"; one passed by name must exist
        if path is not None:
            return path
        default = default_of(ReportConfig, name)
        return default if default is not None and default.exists() else None

    cfg = ReportConfig(keypoints=present(keypoints_dir, "keypoints"), shards=present(shards_dir, "shards"),
                       **given(out=out, samples=samples, seed=seed, raw=raw, run_file=run_file, verify=verify_mode))
    out = cfg.out
    record = run_report(cfg, log=lambda line: click.echo(line, err=line.startswith("warning:")))
    problems = [s["folder"] for s in record["shards"] or [] if s["verify"]["ok"] is False]
    if problems:
        click.echo(f"warning: shard set(s) {', '.join(problems)} failed verify; see {out}", err=True)
    click.echo(f"open {out} in a browser; numbers in {json_path(out)}")


def console() -> None:
    """``pgpig-data``'s console entry (``run_console``)."""
    run_console(main)


if __name__ == "__main__":
    console()

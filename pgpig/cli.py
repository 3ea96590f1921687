"""``pgpig``: the trainer's command line: ``train``, ``generate``, ``eval``, ``import-official``."""

from __future__ import annotations

import importlib.resources
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click
import yaml

from pgpig.config import DEFAULT_DEVICE, EvalConfig
from pgpig.errors import TrainError
from pipeline.errors import report_errors, run_console
from pipeline.options import given, with_default
from pipeline.versions import package_version


def parse_set(items: tuple[str, ...], option: str = "--set") -> dict[str, Any]:
    """``("steps=10", "betas=[0.5, 0.9]")`` → ``{"steps": 10, "betas": [0.5, 0.9]}``; values are read as YAML."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not key=value", param_hint=option)
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise click.BadParameter(f"{item!r}: the value is not valid YAML", param_hint=option) from None
    return out


SAMPLING_OPTION = click.option(
    "--sampling", "sampling", multiple=True, metavar="KEY=VALUE",
    help="A diffusion run's (PIDM's) sampler setting over its config's: sampler=ddim|ddpm, sample_steps, sample_eta, "
    "guidance_appearance, guidance_pose, guidance_null_pose, sample_seed; repeatable.")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_version() or "0+unknown", "--version", prog_name="pgpig")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
def main(debug: bool) -> None:
    """pgpig: train and evaluate pose-guided person image generators on pgpig shards.

    \b
    Typical use, after `pgpig-data extract` and `pgpig-data pair`:
      pgpig train --shards ./shards --recipe workflows/market1501/patn.yaml --run runs/patn
      pgpig generate --run runs/patn --source person.jpg --target-pose pose.jpg
      pgpig eval --run runs/patn --shards ./shards --split test
    """


@main.command()
def recipes() -> None:
    """List the recipes shipped with pgpig (pass a name to `pgpig train --recipe`)."""
    from pgpig.config import shipped_recipes

    for name, path in shipped_recipes().items():
        first = next((line.lstrip("# ").strip() for line in path.read_text().splitlines() if line.startswith("#")),
                     "")
        click.echo(f"{name:24s} {first}")


@main.command()
@click.option("--shards", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Shard-set root holding train/ (and test/) [default: the recipe's, else ./shards].")
@click.option("--recipe", default=None, metavar="PATH|NAME",
              help="Recipe YAML of config fields: a path, or a recipe shipped with pgpig by name "
                   "(market1501/patn, deepfashion/patn, demo, ...; `pgpig recipes` lists them).")
@click.option("--model", default=None, help="Generator name in the registry [default: the recipe's, else patn].")
@click.option("--run", "run_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder [default: runs/<model>-<timestamp>].")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Continue the run in this folder with its saved config (other options override it).")
@click.option("--stage", type=click.IntRange(1), default=None,
              help="Stage of a multi-stage generator (PG2: 1 = G1, 2 = G2 + discriminator with G1 fixed).")
@click.option("--init-weights", type=click.Path(exists=True, path_type=Path), default=None, metavar="RUN|FILE",
              help="Start from another run's generator: its folder or a generator.safetensors (PG2's stage 2 "
                   "starts from its stage-1 run).")
@click.option("--steps", type=click.IntRange(1), default=None, help="Total steps of the run.")
@click.option("--batch-size", type=click.IntRange(1), default=None, help="Pairs per step.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N.")
@click.option("--gpus", type=click.IntRange(1), default=None,
              help="Data-parallel over N GPUs of this machine: launches torchrun, one DDP process per GPU.")
@click.option("--amp", type=click.Choice(["auto", "none", "bf16", "fp16"]), default=None,
              help="Mixed precision [default: the recipe's; auto: bf16 on a CUDA GPU that has it, else float32].")
@click.option("--workers", type=click.IntRange(0), default=None, help="DataLoader worker processes.")
@click.option("--vgg-weights", default=None, metavar="PATH|imagenet",
              help="VGG-19 weights of the perceptual loss: a torchvision vgg19 state dict, or imagenet.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Set any config field (YAML value), e.g. --set lambda_gan=0; repeatable.")
@click.option("--skip-verify", is_flag=True,
              help="Start without checking the shard files against their manifest (sizes and sha256).")
@click.option("--skip-memory-check", is_flag=True,
              help="Start without the memory check (a dry run of the step that refuses a batch that would not fit "
                   "in 90% of the free memory, naming one that fits; PGPIG_MEMORY_LIMIT=8G caps what counts as "
                   "free).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@report_errors(TrainError)
def train(shards, recipe, model, run_dir, resume_dir, stage, init_weights, steps, batch_size, device, gpus, amp,
          workers, vgg_weights, settings, skip_verify, skip_memory_check, quiet) -> None:
    """Train a generator on a shard set; checkpoints, samples and TensorBoard logs go to the run folder.

    \b
    Several GPUs: `pgpig train --gpus 4 ...`, or launch it yourself:
      torchrun --nproc-per-node 4 -m pgpig.cli train ...
    --batch-size is the global batch, split over the processes.
    """
    from pgpig.config import load_config, recipe_path
    from pgpig.train import TrainInterrupted
    from pgpig.train import train as run_train

    if init_weights is not None and init_weights.is_dir():  # a run folder: its newest generator
        init_weights = init_weights / "generator.safetensors"
        if not init_weights.is_file():
            raise TrainError(f"--init-weights {init_weights.parent}: no generator.safetensors; not a run folder "
                             "with a checkpoint")
    options = {"shards": shards, "model": model, "run_dir": run_dir, "stage": stage, "init_weights": init_weights,
               "steps": steps, "batch_size": batch_size, "device": device, "amp": amp, "num_workers": workers,
               "vgg_weights": vgg_weights}
    overrides = {k: v for k, v in options.items() if v is not None}
    overrides["progress"] = not quiet  # a display choice of this invocation, not inherited by --resume
    overrides["skip_verify"] = skip_verify  # so is skipping the check: a resumed run verifies unless told again
    overrides["skip_memory_check"] = skip_memory_check  # and the memory check: a resume may run elsewhere
    set_values = parse_set(settings)
    overrides.update(set_values)
    if resume_dir is not None:
        if recipe is not None:
            raise TrainError(f"--resume uses {resume_dir / 'config.yaml'}; leave out --recipe")
        if not (resume_dir / "config.yaml").is_file():
            raise TrainError(f"{resume_dir}: no config.yaml, not a run folder to resume")
        overrides.update({"run_dir": resume_dir, "resume": True})
        recipe = resume_dir / "config.yaml"
    elif recipe is not None:
        recipe = recipe_path(recipe)
    cfg = load_config(recipe, overrides, set_keys=set_values)
    if gpus is not None and gpus > 1 and "WORLD_SIZE" not in os.environ:
        sys.exit(launch_torchrun(cfg, recipe, overrides, gpus))
    try:
        result = run_train(cfg)
    except TrainInterrupted as stopped:
        # the checkpoint is written: more Ctrl-Cs would only turn the exit (DataLoader workers joined) into tracebacks
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if int(os.environ.get("RANK", "0")) == 0:
            click.echo(str(stopped), err=True)
        sys.exit(128 + stopped.signum)  # the shell's status of a process killed by that signal: 130 for Ctrl-C
    losses = ", ".join(f"{k} {v:.4f}" for k, v in result["losses"].items())
    speed = result["speed"]
    on = [speed["amp"] if speed["amp"] != "none" else "float32"] + [
        name for name in ("channels_last", "compile", "compile_losses", "compile_channels_last", "tf32")
        if speed[name]]
    graph = speed.get("cuda_graph")
    if graph:  # what the CUDA graph did: replayed steps, or why it could not capture
        on.append(f"cuda_graph: {graph['replays']} replayed steps" if graph["captured"] else
                  f"cuda_graph: not captured ({graph['failure'] or 'too few full batches'})")
    click.echo(f"{result['run_dir']}: step {result['step']}, epoch {result['epoch']}" + (f"; {losses}" if losses
                                                                                          else "")
               + f" ({speed['device']}: {', '.join(on)})")


@main.command()
@click.option("--run", "run_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run folder of `pgpig train` (config.yaml, generator.safetensors).")
@click.option("--source", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Source image: the person to draw.")
@click.option("--target-pose", type=click.Path(dir_okay=False, path_type=Path), required=True,
              metavar="IMAGE|JSON", help="The pose to draw them in: an image (its person's keypoints are "
              "detected) or a keypoints .json file.")
@click.option("--source-pose", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="JSON",
              help="Keypoints of the source, in its pixels unless image_size says otherwise [default: detected].")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output PNG [default: RUN/generated/<source>_to_<target>.png].")
@click.option("--grid", is_flag=True, help="Also write <out>-grid.png: source | target pose | generated "
              "(| target image).")
@click.option("--device", default=None, help=f"auto, cpu, cuda or cuda:N [default: {DEFAULT_DEVICE}].")
@click.option("--pose-model", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="YOLO-pose weights for detection [default: the embedded yolo11n-pose.pt].")
@SAMPLING_OPTION
@report_errors(TrainError)
def generate(run_dir, source, target_pose, source_pose, out, grid, device, pose_model, sampling) -> None:
    """Draw the person of --source in the pose of --target-pose with a trained generator; prints the PNG's path.

    \b
    Images are read and framed as in training: stretched to the shard set's
    stored size, then crop_margin columns cut from each side. Keypoints of an
    image come from the pipeline's extractor (embedded YOLO11n-pose).
    \b
    Keypoints JSON (OpenPose-18 order, x/y pixels, null or [-1, -1] = invisible):
      {"keypoints": [[x, y], ... 18 entries], "image_size": [H, W]}
    or a bare list of the 18 entries. image_size is the frame of the
    coordinates; without it a target pose is in the run's stored size (before
    the crop) and a source pose in the source image's pixels.
    """
    from pgpig.generate import generate as run_generate

    result = run_generate(run_dir, source, target_pose, source_pose=source_pose, out=out, grid=grid,
                          device=device or DEFAULT_DEVICE, pose_model=pose_model,
                          sampling=parse_set(sampling, "--sampling") or None)
    click.echo(str(result["out"]))
    if result["grid"] is not None:
        click.echo(str(result["grid"]))


# the metrics' definitions ship inside the package, so the help can name a file that exists after `pip install`
EVAL_DOCS = importlib.resources.files("pgpig") / "docs" / "eval.md"


@main.command("eval", help=f"""Score a generator on a split with the papers' metrics; writes eval.json, eval.md and
    pairs.csv.

    \b
    Metrics: SSIM, mask-SSIM, L1, LPIPS, mask-LPIPS, FID, PCKh (+ detection
    rate), for the model and for a copy-the-source baseline. Definitions,
    sources and how to get the weights offline (docs/eval.md in the
    repository), installed with pgpig at:
    {EVAL_DOCS}
    \b
      pgpig eval --run runs/patn --shards ./shards --split test
      pgpig eval --generated results/market_PATN/test_latest/images --shards ./shards
      pgpig eval --compare runs/patn runs/pg2 runs/gfla
    """)
@click.option("--run", "run_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder of `pgpig train`: generate every pair into RUN/eval/<split>/images/, then score.")
@click.option("--generated", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Score images made elsewhere: a folder named by the pairs (PATN <src>___<tgt>_vis.png|jpg, "
              "panels too, or GFLA <src>_2_<tgt>_vis).")
@click.option("--target-from", type=click.Choice(["shards", "panel"]), default=None,
              help=with_default("Target of each --generated image: 'shards' scores against the stored target (the "
                                "true one, hence the default); 'panel' against the target slice of each PATN/XingGAN "
                                "panel as read from the JPEG, which reproduces the papers' numbers.", EvalConfig,
                                "target_from"))
@click.option("--compare", "compare_runs", is_flag=True,
              help="Put the eval.json of the given run folders (arguments) side by side in one table.")
@click.argument("runs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--shards", type=click.Path(file_okay=False, path_type=Path), default=None,
              help=with_default("Shard-set root; the pairs are SHARDS/<split>.", EvalConfig, "shards"))
@click.option("--split", default=None, help=with_default("Split to evaluate.", EvalConfig, "split"))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output folder [default: RUN/eval/<split>, or <generated>-eval]; with --compare, a .md file.")
@click.option("--metrics", default=None, metavar="LIST",
              help="Comma-separated subset of ssim,mask_ssim,l1,lpips,mask_lpips,fid,pckh; naming one whose "
              "weights are missing is an error [default: all, skipping those without weights].")
@click.option("--ssim", "ssim_setting", type=click.Choice(["patn", "gfla", "pg2"]), default=None,
              help=with_default("SSIM setting reported as SSIM (all three are in eval.json): PATN's Gaussian window, "
                                "GFLA's 51x51 window, PG2's 7x7 window.", EvalConfig, "ssim"))
@click.option("--fid-reference", type=click.Choice(["train", "test"]), default=None,
              help=with_default("Real images of FID: the train split's stored images (GFLA's protocol) or the test "
                                "split's.", EvalConfig, "fid_reference"))
@click.option("--fid-network", type=click.Choice(["tf", "torchvision"]), default=None,
              help=with_default("FID features: tf (the TensorFlow FID Inception, most papers) or torchvision "
                                "(torchvision's ImageNet Inception-v3 as GFLA's and DPTN's metrics.py feed it).",
                                EvalConfig, "fid_network"))
@click.option("--perceptual-frame", type=click.Choice(["padded", "crop"]), default=None,
              help=with_default("Frame of LPIPS, mask-LPIPS and FID: padded (the stored frame, as the SSIM) or crop "
                                "(the unpadded 176-wide middle of a DeepFashion img/ shard set, DPTN's "
                                "metrics.py).", EvalConfig, "perceptual_frame"))
@click.option("--no-baseline", is_flag=True, help="Leave out the copy-source row.")
@click.option("--max-pairs", type=click.IntRange(1), default=None, help="Only the first N pairs (a quick look).")
@click.option("--batch-size", type=click.IntRange(1), default=None,
              help=with_default("Pairs per batch.", EvalConfig, "batch_size"))
@click.option("--workers", type=click.IntRange(0), default=None,
              help=with_default("DataLoader worker processes.", EvalConfig, "num_workers"))
@click.option("--device", default=None, help=with_default("auto, cpu, cuda or cuda:N.", EvalConfig, "device"))
@click.option("--weights-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder with weights-inception-2015-12-05-6726825d.pth (FID), inception_v3_google-0cc3c7bd.pth "
              "(FID with --fid-network torchvision) and alexnet-owt-7be5be79.pth (LPIPS) [default: torch hub's cache, "
              "downloaded when online].")
@click.option("--pose-model", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="YOLO-pose weights for PCKh [default: the embedded yolo11n-pose.pt].")
@click.option("--pckh-protocol", type=click.Choice(["strict", "patn"]), default=None,
              help=with_default("PCKh reported as PCKh (both are in eval.json): strict (float keypoints, generated "
                                "images detected in the stored frame) or patn (PATN's calPCKH protocol: integer "
                                "keypoints, DeepFashion detected on the 176-wide crop).", EvalConfig,
                                "pckh_protocol"))
@SAMPLING_OPTION
@click.option("--quiet", is_flag=True, help="No progress bars.")
@report_errors(TrainError)
def eval_command(run_dir, generated, target_from, compare_runs, runs, shards, split, out, metrics, ssim_setting,
                 fid_reference, fid_network, perceptual_frame, no_baseline, max_pairs, batch_size, workers, device,
                 weights_dir, pose_model, pckh_protocol, sampling, quiet) -> None:
    from pgpig.evaluate import compare, evaluate

    names = None
    if metrics is not None:
        names = tuple(m.strip() for m in metrics.split(",") if m.strip())
    cfg = EvalConfig(**given(shards=shards, split=split, run_dir=run_dir, generated=generated,
                             target_from=target_from, out=out, metrics=names, ssim=ssim_setting,
                             fid_reference=fid_reference, fid_network=fid_network,
                             perceptual_frame=perceptual_frame, max_pairs=max_pairs,
                             batch_size=batch_size, num_workers=workers, device=device, weights_dir=weights_dir,
                             pose_model=pose_model, pckh_protocol=pckh_protocol,
                             sampling=parse_set(sampling, "--sampling") or None), baseline=not no_baseline,
                    progress=not quiet)
    if compare_runs:
        if run_dir is not None or generated is not None:
            raise TrainError("--compare reads finished evaluations; leave out --run and --generated")
        click.echo(compare(list(runs), split=cfg.split, out=out), nl=False)
        return
    if runs:
        raise TrainError(f"unexpected argument {runs[0]}; run folders as arguments go with --compare")
    result = evaluate(cfg, log=lambda line: click.echo(line, err=True))
    out_dir = Path(result["out"])
    click.echo((out_dir / "eval.md").read_text(), nl=False)
    click.echo(f"wrote {out_dir / 'eval.json'}, {out_dir / 'eval.md'}, {out_dir / 'pairs.csv'}")


@main.command("import-official")
@click.option("--model", required=True, help="Generator: patn, xinggan, gfla or dptn.")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="The official generator file (a plain state dict: .pth/.pt or .safetensors).")
@click.option("--dataset", type=click.Choice(["deepfashion", "market1501"]), default=None,
              help="Data set the model was trained on [default: read from the weights' shapes].")
@click.option("--constructor", default=None, metavar="JSON",
              help="The official constructor's arguments by their official names, for a model not built at the "
              "paper's settings [default: read from the weights' shapes].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run folder to write (config.yaml, generator.safetensors).")
@report_errors(TrainError)
def import_official(model, checkpoint, dataset, constructor, out) -> None:
    """Turn an official pretrained generator into a run folder for `pgpig generate` and `pgpig eval`.

    \b
    The checkpoint is read with torch.load(weights_only=True) or safetensors
    (nothing is unpickled); keys that do not fit are listed by name. The run's
    config is the shipped paper recipe of the data set with the checkpoint's
    widths, so `pgpig train --init-weights RUN` fine-tunes it.
    \b
      pgpig import-official --model patn --checkpoint latest_net_netG.pth --out runs/patn-official
      pgpig generate --run runs/patn-official --source person.jpg --target-pose pose.jpg
    """
    from pgpig.models.official import import_checkpoint

    arguments = None
    if constructor is not None:
        try:
            arguments = json.loads(constructor)
        except json.JSONDecodeError as error:
            raise click.BadParameter(f"not JSON ({error})", param_hint="--constructor") from None
        if not isinstance(arguments, dict):
            raise click.BadParameter("give a JSON object of argument: value", param_hint="--constructor")
    summary = import_checkpoint(model, checkpoint, out, dataset=dataset, constructor=arguments)
    click.echo(f"{summary['model']} ({summary['dataset']}, {summary['size'][0]}x{summary['size'][1]}, "
               f"{summary['parameters']:,} parameters) from {checkpoint} -> {summary['run']}")


def launch_torchrun(cfg, recipe: Path | None, overrides: dict[str, Any], gpus: int) -> int:
    """Run this ``train`` command again under ``torch.distributed.run`` with ``gpus`` processes; its exit code.

    The children get the same recipe and overrides (as ``--set KEY=JSON``), and a run folder fixed here so that
    they all write to, or resume from, the same one."""
    import signal
    import subprocess
    import tempfile

    import torch

    if cfg.device not in ("auto", "cuda"):
        raise TrainError(f"--gpus {gpus} trains on CUDA devices; leave out --device {cfg.device}")
    available = torch.cuda.device_count()
    if available < gpus:
        raise TrainError(f"--gpus {gpus}: this machine has {available} CUDA device(s)")
    overrides = dict(overrides)
    overrides.pop("resume", None)
    if cfg.run_dir is None:
        overrides["run_dir"] = f"runs/{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    args = ["train"]
    if cfg.resume:
        args += ["--resume", str(cfg.run_dir)]
        overrides.pop("run_dir", None)
    elif recipe is not None:
        args += ["--recipe", str(recipe)]
    for key, value in overrides.items():
        args += ["--set", f"{key}={json.dumps(str(value) if isinstance(value, Path) else value)}"]
    # torchrun's own folder (per-process error files, reported by torchrun itself) would otherwise stay behind in
    # the temporary directory after every run
    with tempfile.TemporaryDirectory(prefix="pgpig-torchrun-") as logs:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
                   f"--log-dir={logs}", "-m", "pgpig.cli", *args]
        click.echo(f"launching {gpus} processes: {' '.join(command)}", err=True)
        process = subprocess.Popen(command)
        # Ctrl-C reaches every process of the terminal's group: the training processes save the current step and
        # exit, and this launcher waits for them instead of killing torchrun. A SIGTERM sent to the launcher alone
        # is passed on.
        previous = signal.signal(signal.SIGTERM, lambda signum, _frame: process.send_signal(signum))
        try:
            while True:
                try:
                    return process.wait()
                except KeyboardInterrupt:
                    click.echo("stopping: the training processes save the current step first", err=True)
        finally:
            signal.signal(signal.SIGTERM, previous)


def console() -> None:
    """``pgpig``'s console entry (``run_console``)."""
    run_console(main)


if __name__ == "__main__":
    console()

"""``pgpig``: the trainer's command line (train, generate, eval land with their issues)."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import click
import yaml

from pgpig.errors import TrainError
from pipeline.cli import package_version
from pipeline.errors import PipelineError
from schemas.errors import SchemaError


def report_errors(fn):
    """Print trainer, pipeline and contract errors as one line and exit 1; ``--debug`` shows the traceback.

    ``pipeline.cli.report_errors`` with ``TrainError`` added."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (TrainError, PipelineError, SchemaError) as exc:
            if click.get_current_context().find_root().params.get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)

    return wrapper


def parse_set(items: tuple[str, ...]) -> dict[str, Any]:
    """``("steps=10", "betas=[0.5, 0.9]")`` → ``{"steps": 10, "betas": [0.5, 0.9]}``; values are read as YAML."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not key=value", param_hint="--set")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise click.BadParameter(f"{item!r}: the value is not valid YAML", param_hint="--set") from None
    return out


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_version(), "--version", prog_name="pgpig")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
def main(debug: bool) -> None:
    """pgpig: train and evaluate pose-guided person image generators on pgpig shards.

    \b
    Typical use, after `pgpig-data extract` and `pgpig-data pair`:
      pgpig train --shards ./shards
    """


@main.command()
@click.option("--shards", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Shard-set root holding train/ (and test/) [default: the recipe's, else ./shards].")
@click.option("--recipe", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Recipe YAML (workflows/...): config fields only.")
@click.option("--model", default=None, help="Generator name in the registry [default: the recipe's, else patn].")
@click.option("--run", "run_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder [default: runs/<model>-<timestamp>].")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Continue the run in this folder with its saved config (other options override it).")
@click.option("--steps", type=click.IntRange(1), default=None, help="Total steps of the run.")
@click.option("--batch-size", type=click.IntRange(1), default=None, help="Pairs per step.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N.")
@click.option("--amp", type=click.Choice(["none", "bf16", "fp16"]), default=None, help="Mixed precision.")
@click.option("--workers", type=click.IntRange(0), default=None, help="DataLoader worker processes.")
@click.option("--vgg-weights", default=None, metavar="PATH|imagenet",
              help="VGG-19 weights of the perceptual loss: a torchvision vgg19 state dict, or imagenet.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Set any config field (YAML value), e.g. --set lambda_gan=0; repeatable.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@report_errors
def train(shards, recipe, model, run_dir, resume_dir, steps, batch_size, device, amp, workers, vgg_weights,
          settings, quiet) -> None:
    """Train a generator on a shard set; checkpoints, samples and TensorBoard logs go to the run folder."""
    from pgpig.train import load_config
    from pgpig.train import train as run_train

    options = {"shards": shards, "model": model, "run_dir": run_dir, "steps": steps, "batch_size": batch_size,
               "device": device, "amp": amp, "num_workers": workers, "vgg_weights": vgg_weights}
    overrides = {k: v for k, v in options.items() if v is not None}
    overrides.update(parse_set(settings))
    if quiet:
        overrides["progress"] = False
    if resume_dir is not None:
        if recipe is not None:
            raise TrainError(f"--resume uses {resume_dir / 'config.yaml'}; leave out --recipe")
        if not (resume_dir / "config.yaml").is_file():
            raise TrainError(f"{resume_dir}: no config.yaml, not a run folder to resume")
        overrides.update({"run_dir": resume_dir, "resume": True})
        recipe = resume_dir / "config.yaml"
    result = run_train(load_config(recipe, overrides))
    losses = ", ".join(f"{k} {v:.4f}" for k, v in result["losses"].items())
    click.echo(f"{result['run_dir']}: step {result['step']}, epoch {result['epoch']}" + (f"; {losses}" if losses
                                                                                          else ""))


if __name__ == "__main__":
    main()

"""``pgpig-data``: the data pipeline's command line. Each command parses options and calls one function."""

from __future__ import annotations

import functools
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import click

from pipeline.errors import PipelineError
from schemas.errors import SchemaError


def package_version() -> str:
    try:
        return version("pgpig")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def report_errors(fn):
    """Print pipeline and contract errors as one line and exit 1; ``--debug`` shows the traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (PipelineError, SchemaError) as exc:
            if click.get_current_context().find_root().params.get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)

    return wrapper


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
@click.version_option(package_version(), "--version", prog_name="pgpig-data")
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
@click.option("--identities", default=20, type=click.IntRange(1), help="People (Market) or items (DeepFashion).")
@click.option("--poses-per-identity", default=8, type=click.IntRange(1), help="Images per identity.")
@click.option("--layout", type=click.Choice(["market", "deepfashion"]), default="market",
              help="Raw layout to write: Market-1501 folders or DeepFashion In-shop img/ tree.")
@click.option("--size", default=None, metavar="HxW",
              help="Image height x width [default: 128x64 market, 256x256 deepfashion].")
@click.option("--seed", default=0, type=int, help="Same seed, same bytes.")
@click.option("--distractors", default=0, type=click.IntRange(0),
              help="Extra images with no usable person (Market 0000/-1 ids, DeepFashion 6_flat).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier synth run in OUT.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@report_errors
def synth(out: Path, identities: int, poses_per_identity: int, layout: str, size: str | None, seed: int,
          distractors: int, overwrite: bool, quiet: bool) -> None:
    """Write the mannequin data set: procedural people with exact keypoints, in a real raw layout.

    OUT gets Market-1501 or DeepFashion In-shop folders and file names, the PATN annotation CSVs with
    the exact keypoints, and mannequin.json describing the run.
    """
    from pipeline.synthetic import SynthConfig, write_mannequins

    cfg = SynthConfig(identities=identities, poses_per_identity=poses_per_identity, layout=layout,
                      size=parse_size(size), seed=seed, distractors=distractors)
    summary = write_mannequins(out, cfg, overwrite=overwrite, progress=not quiet)
    h, w = summary["config"]["size"]
    click.echo(f"wrote {summary['images']} {h}x{w} mannequin images of {identities} identities to {out} "
               f"in {summary['seconds']:.1f} s ({summary['images_per_second']} img/s)")
    for folder, n in summary["folders"].items():
        click.echo(f"  {out / folder}/  {n} images")
    for name in summary["written"]:
        if name.endswith(".csv") or name.endswith(".txt"):
            click.echo(f"  {out / name}")
    click.echo(f"  {out / 'mannequin.json'}")


if __name__ == "__main__":
    main()

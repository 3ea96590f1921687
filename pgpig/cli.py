"""``pgpig``: the trainer's command line (train, generate, eval land with their issues)."""

from __future__ import annotations

import click

from pipeline.cli import package_version


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_version(), "--version", prog_name="pgpig")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
def main(debug: bool) -> None:
    """pgpig: train and evaluate pose-guided person image generators on pgpig shards.

    \b
    Typical use, after `pgpig-data extract` and `pgpig-data pair`:
      pgpig train --shards ./shards
    """


if __name__ == "__main__":
    main()

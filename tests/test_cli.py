"""Both command lines: --help and --version through click, and the installed console scripts."""

from __future__ import annotations

import shutil
import subprocess
from importlib.metadata import version

import click
import pytest
from click.testing import CliRunner

from pgpig.cli import main as pgpig_main
from pipeline.cli import main as data_main


@pytest.mark.parametrize("cli, name", [(data_main, "pgpig-data"), (pgpig_main, "pgpig")])
def test_help_and_version(cli, name):
    runner = CliRunner()
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0 and "Usage:" in result.output
    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"{name}, version {version('pgpig')}"


def test_synth_help_lists_its_options():
    result = CliRunner().invoke(data_main, ["synth", "--help"])
    assert result.exit_code == 0
    for option in ("--identities", "--poses-per-identity", "--size", "--layout", "--seed", "--distractors"):
        assert option in result.output


def test_synth_through_click_writes_and_reports(tmp_path):
    result = CliRunner().invoke(data_main, ["synth", str(tmp_path / "raw"), "--identities", "2",
                                            "--poses-per-identity", "2", "--size", "64x32", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "wrote 4 64x32 mannequin images of 2 identities" in result.output
    assert "market-annotation-train.csv" in result.output
    assert len(list((tmp_path / "raw").rglob("*.jpg"))) == 4


def test_bad_size_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(data_main, ["synth", str(tmp_path / "raw"), "--size", "big"])
    assert result.exit_code == 2 and "HEIGHTxWIDTH" in result.output


@pytest.fixture(scope="module")
def scripts():
    found = {name: shutil.which(name) for name in ("pgpig-data", "pgpig")}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        pytest.fail(f"console scripts {missing} are not installed: run `pip install .` first")
    return found


def test_installed_console_scripts_run_outside_the_repo(scripts, tmp_path):
    for name, path in scripts.items():
        out = subprocess.run([path, "--version"], cwd=tmp_path, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == f"{name}, version {version('pgpig')}"
    run = subprocess.run([scripts["pgpig-data"], "synth", "raw", "--identities", "3", "--quiet"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert len(list((tmp_path / "raw").rglob("*.jpg"))) == 24


def test_errors_are_one_line_without_traceback(scripts, tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "mine.txt").write_text("not synth output")
    run = subprocess.run([scripts["pgpig-data"], "synth", "raw"], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 1
    assert run.stderr.strip().count("\n") == 0
    assert run.stderr.startswith("error: raw is not empty")
    debug = subprocess.run([scripts["pgpig-data"], "--debug", "synth", "raw"], cwd=tmp_path,
                           capture_output=True, text=True)
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    resume = subprocess.run([scripts["pgpig"], "train", "--resume", "nowhere"], cwd=tmp_path, capture_output=True,
                            text=True)
    assert resume.returncode == 1
    assert resume.stderr.strip() == "error: nowhere: no config.yaml, not a run folder to resume"



CONSOLE_PROGRAM = """
import atexit, sys, threading, time
from pathlib import Path

import click

from pipeline.errors import run_console

out, mode = Path(sys.argv[1]), sys.argv[2]


@click.command()
def command():
    def late():
        time.sleep(0.3)
        (out / "thread").write_text("done")

    threading.Thread(target=late).start()  # not a daemon: the exit waits for it
    atexit.register(lambda: (out / "atexit").write_text("done"))
    sys.stdout.write("x" * 100_000)  # still in the pipe's buffer when the command returns
    if mode == "message":
        sys.exit("stopped: a message")
    if mode == "raise":
        raise ValueError("a bug")


sys.argv = sys.argv[:1]
run_console(command)
"""


@pytest.mark.parametrize(("mode", "code"), [("ok", 0), ("message", 1), ("raise", 1)])
def test_a_console_command_ends_after_its_threads_exit_hooks_and_output(tmp_path, mode, code):
    import sys

    program = tmp_path / "program.py"
    program.write_text(CONSOLE_PROGRAM)
    run = subprocess.run([sys.executable, str(program), str(tmp_path), mode], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == code, run.stderr
    assert run.stdout == "x" * 100_000
    assert (tmp_path / "thread").read_text() == "done" and (tmp_path / "atexit").read_text() == "done"
    if mode == "message":
        assert run.stderr.strip() == "stopped: a message"
    if mode == "raise":
        assert "ValueError: a bug" in run.stderr

def test_options_default_to_none_and_show_the_config_dataclass_default():
    """Each default has one home, the command's config dataclass: the options default to None (left out of the
    config) and their help shows the dataclass's value."""
    from pipeline.cli import default_of
    from pipeline.demo import DemoConfig
    from pipeline.extract import ExtractConfig
    from pipeline.pair import PairRunConfig
    from pipeline.report import ReportConfig
    from pipeline.synthetic import SynthConfig

    checked = {"synth": (SynthConfig, {"identities": "identities", "layout": "layout", "seed": "seed"}),
               "extract": (ExtractConfig, {"out": "out", "imgsz": "imgsz", "conf": "conf", "device": "device",
                                           "pose_backend": "pose_backend", "threads": "threads"}),
               "pair": (PairRunConfig, {"keypoints_dir": "keypoints_dir", "fmt": "format",
                                        "images_per_shard": "images_per_shard", "dask_workers": "dask_workers"}),
               "report": (ReportConfig, {"samples": "samples", "verify_mode": "verify", "out": "out"}),
               "demo": (DemoConfig, {"steps": "steps", "identities": "identities", "device": "device"})}
    for command, (config, options) in checked.items():
        params = {p.name: p for p in data_main.commands[command].params}
        for option, field in options.items():
            assert params[option].default in (None, getattr(click.core, "UNSET", None)), (command, option)
            assert params[option].help.endswith(f"[default: {default_of(config, field)}]"), (command, option)


def test_pair_help_gives_each_filter_default_per_data_set():
    """The help's defaults are those ``defaults_for`` applies: Market-1501 keeps any number of persons."""
    from pipeline.pair import defaults_for

    assert defaults_for("market1501", "train")[0].max_persons is None
    assert defaults_for("folder", "train")[0].min_visible == 8
    result = CliRunner(env={"COLUMNS": "400"}).invoke(data_main, ["pair", "--help"], terminal_width=400)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "(0: no limit) [default: no limit for market1501; 1 for deepfashion, folder]" in text
    assert "Minimum visible keypoints [default: none for market1501, deepfashion; 8 for folder]" in text
    assert "[default: r_shoulder,l_shoulder,r_hip,l_hip]" in text


def test_train_without_shards_says_how_to_build_them(tmp_path):
    """No shard set at all: the line says to run extract and pair, and does not offer --skip-verify."""
    result = CliRunner().invoke(pgpig_main, ["train", "--shards", str(tmp_path / "shards"), "--run",
                                             str(tmp_path / "run"), "--steps", "1", "--device", "cpu"])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and result.output.startswith(f"error: {tmp_path / 'shards' / 'train'}: ")
    assert "pgpig-data pair --split train" in result.output and "pgpig-data extract" in result.output
    assert "--skip-verify" not in result.output

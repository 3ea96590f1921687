"""``pgpig eval``: a tiny trained run on mannequin shards, scored end to end (real pose model, injected FID and LPIPS
networks), resumed, re-scored from a folder of images named like PATN's and GFLA's outputs, and compared."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from pgpig.cli import main
from pgpig.config import EvalConfig
from pgpig.evaluate import compare, evaluate, pair_file_name
from pgpig.metrics import LPIPS

MARGIN = 4  # a DeepFashion-like crop on Market's 128x64: the generator makes 128x56, scored padded to 128x64
PAIRS = 6


def tiny_lpips() -> LPIPS:
    """LPIPS on two seeded conv + ReLU stages (the maths is checked against NumPy in test_metrics.py)."""
    torch.manual_seed(0)
    a, b = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1), torch.nn.Conv2d(4, 5, 3, stride=2, padding=1)

    class Backbone(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = a, b

        def forward(self, x):
            f1 = torch.relu(self.a(x))
            return [f1, torch.relu(self.b(f1))]

    return LPIPS(Backbone(), [torch.linspace(0.1, 1.0, 4), torch.linspace(0.5, 2.0, 5)])


def offline(monkeypatch, tmp_path) -> None:
    """No network and an empty torch hub cache."""
    import urllib.error

    def refuse(*_args, **_kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))


class MeanColour(torch.nn.Module):
    """A small feature extractor with FID's interface: per-channel means and standard deviations of 4x4 blocks."""

    name = "mean-colour test features"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.adaptive_avg_pool2d(images.float() / 255, 4)
        return torch.cat([x.flatten(1), images.float().std(dim=(2, 3)) / 255], dim=1)


@pytest.fixture(scope="module")
def run(market_shards, tmp_path_factory) -> Path:
    from pgpig.config import load_config
    from pgpig.train import train

    run_dir = tmp_path_factory.mktemp("eval-run") / "run"
    train(load_config(None, {"shards": market_shards, "run_dir": run_dir, "steps": 1, "batch_size": 2, "ngf": 8,
                             "n_blocks": 1, "d_blocks": 1, "use_gan": False, "crop_margin": MARGIN,
                             "vgg_weights": None, "allow_random_vgg": True, "num_workers": 0, "progress": False,
                             "device": "cpu", "sample_every": 100}))
    return run_dir


def config(**kwargs) -> EvalConfig:
    defaults = {"max_pairs": PAIRS, "device": "cpu", "progress": False, "batch_size": 4,
                "feature_extractor": MeanColour(), "lpips": tiny_lpips()}
    return EvalConfig(**{**defaults, **kwargs})


@pytest.fixture(scope="module")
def evaluated(run, market_shards) -> dict:
    lines: list[str] = []
    result = evaluate(config(shards=market_shards, run_dir=run), log=lines.append)
    result["log"] = lines
    return result


def test_eval_of_a_run_writes_every_metric_for_the_model_and_the_baseline(evaluated, run):
    out = run / "eval" / "test"
    written = json.loads((out / "eval.json").read_text())
    assert written["rows"] == evaluated["rows"] and written["skipped"] == {}
    assert written["pairs"] == PAIRS and written["pairs_in_split"] > PAIRS
    assert written["generator"]["model"] == "patn" and written["generator"]["step"] == 1
    for row in ("model", "copy-source"):
        values = written["rows"][row]
        assert values["scored"] == PAIRS
        for key in ("ssim", "ssim_patn", "ssim_gfla", "ssim_pg2", "mask_ssim", "l1", "lpips", "mask_lpips", "fid",
                    "pckh", "detection_rate"):
            assert isinstance(values[key], float), (row, key)
        assert len(values["pckh_per_joint"]) == 18
        assert values["ssim"] == values["ssim_patn"]
    assert written["settings"]["frame"] == {"stored_size": [128, 64], "margins": [MARGIN], "padding": "white"}
    assert written["settings"]["fid_reference"]["split"] == "train"
    # a generator after one step is worse than copying the source
    assert written["rows"]["model"]["ssim"] < written["rows"]["copy-source"]["ssim"]
    images = sorted((out / "images").iterdir())
    assert len(images) == PAIRS and all(p.name.endswith("_vis.png") and "___" in p.name for p in images)
    with Image.open(images[0]) as im:
        assert im.size == (64 - 2 * MARGIN, 128)
    table = (out / "eval.md").read_text()
    assert "| patn (step 1) | 6 |" in table and "| copy-source (baseline) | 6 |" in table
    assert "SSIM (patn)" in table
    lines = (out / "pairs.csv").read_text().splitlines()
    assert len(lines) == 1 + 2 * PAIRS and lines[0].startswith("row,source,target,ssim_patn")


def test_a_second_eval_reuses_the_images_and_regenerates_a_missing_one(evaluated, run, market_shards):
    out = run / "eval" / "test" / "images"
    victim = sorted(out.iterdir())[2]
    victim.unlink()
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    lines: list[str] = []
    again = evaluate(config(shards=market_shards, run_dir=run), log=lines.append)
    assert any(f"{PAIRS - 1} of {PAIRS} images already written, 1 to do" in line for line in lines)
    assert victim.is_file()
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name in before} == before
    for key in ("ssim", "mask_ssim", "lpips", "fid", "pckh"):
        assert again["rows"]["model"][key] == pytest.approx(evaluated["rows"]["model"][key], abs=1e-12)


def test_generated_folder_with_patn_and_gfla_names_panels_and_bad_files(evaluated, run, market_shards, tmp_path):
    source = run / "eval" / "test" / "images"
    folder = tmp_path / "official"
    folder.mkdir()
    files = sorted(source.iterdir())
    records = [r for r in _pairs_csv(run) if r["row"] == "model"]
    for n, record in enumerate(records):
        src, tgt = record["source"], record["target"]
        image = np.asarray(Image.open(source / pair_file_name(src, tgt)).convert("RGB"))
        if n == 0:  # PATN's test panel: source | pose | target | pose | generated, saved as PNG
            panel = np.concatenate([np.zeros_like(image)] * 4 + [image], axis=1)
            Image.fromarray(panel).save(folder / f"{src}___{tgt}_vis.png")
        elif n == 1:  # GFLA's name
            Image.fromarray(image).save(folder / f"{src.rsplit('.', 1)[0]}_2_{tgt.rsplit('.', 1)[0]}_vis.png")
        elif n == 2:  # wrong size
            Image.fromarray(image[:, :-3]).save(folder / f"{src}___{tgt}_vis.png")
        elif n == 3:  # unreadable
            (folder / f"{src}___{tgt}_vis.png").write_bytes(b"not a png")
        elif n == 4:  # missing
            continue
        else:
            shutil.copy(source / pair_file_name(src, tgt), folder / pair_file_name(src, tgt))
    (folder / "notes.txt").write_text("an extra file")
    assert len(files) == PAIRS
    result = evaluate(config(shards=market_shards, generated=folder))
    assert result["bad"]["count"] == 3
    reasons = {(item["source"], item["target"]): item["reason"] for item in result["bad"]["items"]}
    key = [(r["source"], r["target"]) for r in records]
    assert "53 px wide; expected the stored width 64" in reasons[key[2]]
    assert pair_file_name(*key[3]) in reasons[key[3]] and "not an image" in reasons[key[3]]
    assert reasons[key[4]] == f"no generated image for {key[4][0]} -> {key[4][1]}"
    assert result["unmatched"] == {"count": 1, "names": ["notes.txt"]}
    assert result["rows"]["model"]["scored"] == PAIRS - 3
    # the three good images score as they did in the run's own evaluation: the per-image metrics exactly, LPIPS (a
    # network run on the batch) to float32 rounding, since a batch of 3 pairs instead of 6 may take other CPU
    # convolution kernels (on the development machine, 2026-12: 1.8584427 against 1.8584428)
    scored = {(r["source"], r["target"]): r for r in records}
    again = [r for r in _read_csv(Path(result["out"]) / "pairs.csv") if r["row"] == "model"]
    assert len(again) == PAIRS - 3
    for record in again:
        before = scored[(record["source"], record["target"])]
        for key in ("ssim_patn", "ssim_gfla", "mask_ssim", "l1"):
            assert float(record[key]) == pytest.approx(float(before[key]), abs=1e-12), key
        assert float(record["lpips"]) == pytest.approx(float(before["lpips"]), rel=1e-6)
    assert (Path(result["out"]) / "eval.md").read_text().count("3 pairs not scored") == 1


def test_targets_offered_as_the_generated_images_score_perfectly(market_shards, tmp_path):
    from pgpig.evaluate import read_names
    from pipeline.shards import ShardSet

    stored = ShardSet(market_shards / "test")
    names = read_names(stored)
    folder = tmp_path / "targets"
    folder.mkdir()
    for s, t in stored.pairs[:PAIRS]:
        Image.fromarray(stored[int(t)].image).save(folder / pair_file_name(names[int(s)], names[int(t)]))
    result = evaluate(config(shards=market_shards, generated=folder, metrics=("ssim", "mask_ssim", "l1", "lpips"),
                             baseline=False))
    row = result["rows"]["model"]
    assert row["ssim"] == pytest.approx(1.0) and row["mask_ssim"] == pytest.approx(1.0)
    assert row["l1"] == 0.0 and row["lpips"] == 0.0
    assert "copy-source" not in result["rows"]


def test_fid_of_the_reference_images_against_themselves_is_zero(market_shards, tmp_path):
    from pgpig.evaluate import read_names
    from pipeline.shards import ShardSet

    # every test image once, as the "generated" image of a pair that has it as target: FID vs test split ~ 0
    stored = ShardSet(market_shards / "test")
    names = read_names(stored)
    folder = tmp_path / "all-targets"
    folder.mkdir()
    chosen = {}
    for k, (s, t) in enumerate(stored.pairs):
        chosen.setdefault(int(t), (k, int(s)))
    for t, (_, s) in chosen.items():
        Image.fromarray(stored[t].image).save(folder / pair_file_name(names[s], names[t]))
    result = evaluate(config(shards=market_shards, generated=folder, metrics=("fid",), fid_reference="test",
                             baseline=False, max_pairs=None))
    assert result["rows"]["model"]["scored"] == len(stored)
    assert result["rows"]["model"]["fid"] == pytest.approx(0.0, abs=1e-6)
    assert result["bad"]["count"] == len(stored.pairs) - len(stored)  # the other pairs have no image


def test_cli_eval_offline_skips_metrics_without_weights_and_compare_puts_runs_side_by_side(run, market_shards, tmp_path,
                                                                                           monkeypatch):
    offline(monkeypatch, tmp_path)
    out = tmp_path / "cli-eval"
    args = ["eval", "--run", str(run), "--shards", str(market_shards), "--max-pairs", str(PAIRS), "--device", "cpu",
            "--quiet", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    written = json.loads((out / "eval.json").read_text())
    assert set(written["skipped"]) == {"lpips", "mask_lpips", "fid"}
    assert "alexnet-owt-7be5be79.pth" in written["skipped"]["lpips"]
    assert "skipping lpips, mask_lpips:" in result.output and f"| patn (step 1) | {PAIRS} |" in result.output
    assert "lpips" not in written["rows"]["model"] and "pckh" in written["rows"]["model"]
    # named explicitly, a metric without weights is a one-line error
    failed = CliRunner().invoke(main, args + ["--metrics", "ssim,lpips"])
    assert failed.exit_code == 1
    error = [line for line in failed.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "alexnet-owt-7be5be79.pth" in error[0]
    # compare: two evaluations, one baseline row for the shared shard set
    table = CliRunner().invoke(main, ["eval", "--compare", str(out), str(run)])
    assert table.exit_code == 0, table.output
    rows = [line for line in table.output.splitlines() if line.startswith("| ") and "pairs" not in line]
    assert len(rows) == 3 and sum("copy-source" in r for r in rows) == 1
    assert compare([out / "eval.json"]).count("copy-source") == 1
    # scored with another PCKh protocol (or target): its numbers do not go in the same columns
    other = tmp_path / "other-protocol.json"
    written["settings"]["pckh_protocol"] = "patn"
    other.write_text(json.dumps(written))
    mixed = CliRunner().invoke(main, ["eval", "--compare", str(out), str(other)])
    assert mixed.exit_code == 1 and len(mixed.output.strip().splitlines()) == 1, mixed.output
    assert "different --pckh-protocol (patn, strict)" in mixed.output


def test_bad_options_are_one_line_errors(run, market_shards, tmp_path):
    for args, reason in [(["--shards", str(market_shards)], "exactly one of --run"),
                         (["--run", str(run), "--shards", str(tmp_path)], "manifest"),
                         (["--run", str(run), "--shards", str(market_shards), "--metrics", "ssim,iou"], "unknown iou"),
                         (["--compare", str(tmp_path)], "no eval.json")]:
        result = CliRunner().invoke(main, ["eval", *args])
        assert result.exit_code == 1, result.output
        assert reason in result.output and len(result.output.strip().splitlines()) == 1, result.output


def _read_csv(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))


def _pairs_csv(run: Path) -> list[dict[str, str]]:
    return _read_csv(run / "eval" / "test" / "pairs.csv")

"""The official repositories' own training step against pgpig's, in one process, on the same inputs.

    git --git-dir=/path/to/Pose-Transfer/.git archive HEAD | tar -x -C official/patn      # once per model
    python benchmarks/official_bench.py --official-repo official/patn --model patn [--device cuda] [--batch 32] \
        [--rounds 5] [--steps 10] [--modes fp32,bf16,recipe] [--out FILE.jsonl]

``--official-repo`` is an export of the official repository (``official/`` is git-ignored; nothing of it is
committed): tengteng95/Pose-Transfer (PATN), Ha0Tang/XingGAN, PangzeCheung/Dual-task-Pose-Transformer-Network
(DPTN), RenYurui/Global-Flow-Local-Attention (GFLA), ankanbhunia/PIDM. Its ``.py`` files are copied to ``--work``
with the few textual ports Python 3 and PyTorch 2 force and imported from there, with runtime shims in this process
(random VGG-19, removed names, GFLA's unbuilt CUDA ops replaced by ``pgpig.models.ops``: ``official_ops`` says whose
ops ran); ``official_models.py`` lists them (ports per model, ``SHIMS``), and every official line names those
applied. Its options are the repository's own option parser on the DeepFashion training command of its README or
script, with ``--batchSize`` and ``--gpu_ids`` (one GPU, or none on the CPU) set by the bench (PIDM: ``train.py``'s
flags and ``config/diffusion.conf``); the options used are in the JSON.

Step kinds per mode (``--kinds``; by default those the model has). ``full``: the official model's
``set_input(...)`` + ``optimize_parameters()`` (generator, discriminators, perceptual/style losses, optimizers)
against ``pgpig.train.train_step`` with the shipped recipe ``deepfashion/<model>`` (GFLA: ``gfla-stage2``, the
end-to-end stage; random VGG-19) at the recipe's image size (PATN and XingGAN 256x176, DPTN, GFLA and PIDM 256x256;
``--size`` smaller only to smoke-test the bench, where GFLA's generator and discriminator take pgpig's Market-1501
setting below 256 px and no longer equal the official). ``generator``: the generator's forward, the L1 to the
target, backward and its Adam step, on both sides. PIDM has ``full`` (``train.py``'s step on the official objects,
``official_models.PIDMStep``, against ``train_step`` with ``deepfashion/pidm``, EMA on) and ``sample`` (the
official ``ddim_steps``, 50 steps, cond_scale 2, against ``PIDM.sample`` at DDIM 50 and guidance 2, eager, both in
eval mode from the same x_T: ``sample_max_abs_diff``); benchmarks/README.md has its GPU command lines (paper
config, 256x256, batch 8 and 32).
Modes: ``fp32`` (float32; pgpig eager, no channels-last; PyTorch's default arithmetic, whose cuDNN convolutions
run on TF32 on a GPU that has it), ``strict`` (``fp32`` with TF32 off for convolutions and matmuls: on a GPU, the
precise reference for ``sample_max_abs_diff``), ``bf16`` (the official ``optimize_parameters()`` inside
``torch.autocast(bfloat16)``; pgpig ``amp=bf16``, eager), ``recipe`` (pgpig exactly as shipped, its amp, compile
and channels-last decided for the device, against the official float32 run in the same alternating rounds; its
official line says ``official_amp: none``). Both sides get the same smooth random
images in ``[-1, 1]`` (``train_bench.smooth_images``) and the same pose maps (``pgpig.train.pose_maps`` of the same
random keypoints); pgpig's generator weights are copied into the official generator (the names are the official
ones), so both start from the same generator. After ``--warmup`` untimed steps each, the sides run ``--rounds``
alternating rounds of ``--steps`` steps (official, pgpig, official, ...) so that drift of the machine hits both.

One JSON line per (side, mode, step kind): img/s, ms/step (median, min, max over rounds), peak memory on CUDA
(``peak_gib``: the tensors the side holds, its networks, gradients and optimizer states (and a CUDA graph's
private memory pool, reserved at the capture), plus the largest rise of ``torch.cuda.max_memory_allocated`` above a
round's start; ``process_peak_gib`` the plain maximum, which counts the
other side's tensors too), parameter counts of generator and discriminators on
both sides and ``params_equal``; a final ``official_bench_ratio`` line with pgpig/official img/s per mode and kind.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import official_models  # noqa: E402
from train_bench import arithmetic, smooth_images, unzero  # noqa: E402

from pgpig.cli import parse_set  # noqa: E402
from pgpig.config import load_config, recipe_path, resolve_speed, speed_settings  # noqa: E402
from pgpig.models.objective import StepBatch, generated_image  # noqa: E402
from pgpig.step_graph import GraphedStep  # noqa: E402
from pgpig.train import AMP_DTYPES, build, build_generator, compile_configured, pose_maps, train_step  # noqa: E402
from pipeline.devices import resolve_device  # noqa: E402

MODES = ("fp32", "strict", "bf16", "recipe")
KINDS = ("full", "generator", "sample")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, amp: str) -> torch.autocast:
    return torch.autocast(device.type, dtype=AMP_DTYPES.get(amp, torch.float32), enabled=amp in AMP_DTYPES)


def count(modules: list[torch.nn.Module]) -> list[int]:
    return [sum(p.numel() for p in m.parameters()) for m in modules]


def held_bytes(modules: list[torch.nn.Module], optimizers: list[torch.optim.Optimizer]) -> int:
    """Bytes of the distinct storages of the modules' parameters, buffers and gradients and the optimizers'
    states: what a side keeps between steps."""
    tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())]
    tensors += [p.grad for m in modules for p in m.parameters() if p.grad is not None]
    tensors += [v for o in optimizers for state in o.state.values() for v in state.values()
                if isinstance(v, torch.Tensor)]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def copy_weights(source: torch.nn.Module, target: torch.nn.Module) -> bool | str:
    """Load ``source``'s state into ``target`` when their names and shapes are equal; else say how they differ."""
    theirs, mine = source.state_dict(), target.state_dict()
    differ = sorted(set(theirs) ^ set(mine)) + [k for k in theirs if k in mine and theirs[k].shape != mine[k].shape]
    if differ:
        return f"not copied: {len(differ)} names or shapes differ, e.g. {', '.join(differ[:4])}"
    target.load_state_dict(theirs, strict=True)
    return True


def make_batch(cfg, device: torch.device, size: tuple[int, int], b: int, seed: int) -> dict[str, torch.Tensor]:
    """Smooth random images and pose maps of random keypoints, ``(b, 3, H, W)`` and ``(b, 18, H, W)``."""
    torch.manual_seed(seed)
    h, w = size
    keypoints = torch.rand(2, b, 18, 2, device=device) * torch.tensor([w - 1, h - 1], device=device)
    return {"source": smooth_images(b, h, w, device), "target": smooth_images(b, h, w, device),
            "source_pose": pose_maps(cfg, keypoints[0], size), "target_pose": pose_maps(cfg, keypoints[1], size),
            "source_kp": keypoints[0], "target_kp": keypoints[1]}


# ---------------------------------------------------------------------------------------------------- the sides


class OfficialSide:
    """The official model class built from its options; ``step()`` is one training step of ``kind``."""

    def __init__(self, spec: official_models.Official, opt: Any, kind: str, amp: str, batch: dict,
                 device: torch.device, noise_seed: int = 0):
        torch.manual_seed(1)
        self.model = official_models.quietly(spec.create, opt)
        self.spec, self.kind, self.amp, self.device = spec, kind, amp, device
        self.inputs = spec.inputs(batch)
        self.batch = batch
        self.g = spec.generator(self.model)
        self.d = spec.discriminators(self.model)
        self.opt_g = spec.optimizer_g(self.model)
        if kind == "sample":
            self.g.eval()
            # x_T as pgpig's sampler draws it (a CPU generator per pair, from the seed and the pair's source and
            # pose), so both chains start alike
            from pgpig.models.pidm import pair_generator

            self.noise = torch.stack([torch.randn(image.shape, generator=pair_generator(noise_seed, image, pose))
                                      for image, pose in zip(batch["source"], batch["target_pose"], strict=True)])
            self.noise = self.noise.to(device)
            self.nets, self.optimizers = [self.g], []
        elif kind == "full":
            self.nets = [self.g, *self.d, *official_models.loss_modules(self.model)]
            self.optimizers = [o for o in vars(self.model).values() if isinstance(o, torch.optim.Optimizer)]
        else:
            self.nets, self.optimizers = [self.g], [self.opt_g]

    def step(self) -> torch.Tensor | None:
        with autocast(self.device, self.amp):
            if self.kind == "sample":
                return self.spec.sample(self.model, self.batch, self.noise)
            if self.kind == "full":
                self.model.set_input(self.inputs)
                self.model.optimize_parameters()
                return
            loss = F.l1_loss(self.spec.generate(self.model, self.batch), self.batch["target"])
        self.opt_g.zero_grad()
        loss.backward()
        self.opt_g.step()


class PgpigSide:
    """pgpig's parts of ``cfg``; ``step()`` is ``train_step`` (``full``), the generator's L1 step or PIDM's
    ``sample`` (``sample``: eager, the sampler is not compiled)."""

    def __init__(self, cfg, kind: str, batch: dict, size: tuple[int, int], device: torch.device):
        torch.manual_seed(0)
        self.cfg, self.kind, self.device = resolve_speed(cfg, device), kind, device
        if kind == "sample":
            self.cfg = dataclasses.replace(self.cfg, compile=False)
        fmt = torch.channels_last if self.cfg.channels_last else torch.contiguous_format
        self.batch = StepBatch(*(batch[k].contiguous(memory_format=fmt) if batch[k].dim() == 4 else batch[k]
                                 for k in ("source", "target", "source_pose", "target_pose", "source_kp",
                                           "target_kp")))
        if kind == "full":
            self.parts = build(self.cfg, device, size)
            self.plain_g, self.d = self.parts.generator, list(self.parts.discriminators.values())
            losses = [v for v in vars(self.parts.objective).values() if isinstance(v, torch.nn.Module)]
            self.nets = [self.plain_g, *self.d, *losses]
            self.optimizers = [o for o in (self.parts.opt_g, self.parts.opt_d) if o is not None]
            compile_configured(self.parts, self.cfg)
            if self.parts.ema is not None:
                self.nets.append(self.parts.ema.model)
            # the recipe's CUDA graph, as pgpig train replays it (its first steps run eagerly)
            self.full_step = (GraphedStep(self.parts, self.cfg) if self.cfg.cuda_graph
                              else functools.partial(train_step, self.parts, self.cfg))
        else:
            self.plain_g = build_generator(self.cfg, size).to(device)
            if self.cfg.channels_last:
                self.plain_g.to(memory_format=torch.channels_last)
            self.d = []
            self.opt_g = torch.optim.Adam(self.plain_g.parameters(), lr=self.cfg.lr, betas=self.cfg.betas)
            self.g = torch.compile(self.plain_g) if self.cfg.compile else self.plain_g
            self.nets, self.optimizers = [self.plain_g], [self.opt_g]
            if kind == "sample":
                self.plain_g.eval()
                self.optimizers = []

    def capturing(self) -> bool:
        """Whether the recipe's CUDA graph is still to be captured (its warm-up steps are not over)."""
        graphed = getattr(self, "full_step", None)
        return isinstance(graphed, GraphedStep) and graphed.graph is None and graphed.failure is None

    def step(self) -> torch.Tensor | None:
        if self.kind == "full":
            self.full_step(self.batch)
            return None
        b = self.batch
        if self.kind == "sample":
            with autocast(self.device, self.cfg.amp):
                return self.plain_g.sample(b.source, b.target_pose)
        with autocast(self.device, self.cfg.amp):
            loss = F.l1_loss(generated_image(self.g(b.source, b.source_pose, b.target_pose)), b.target)
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()


def _status_bytes(field: str) -> int:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_rss_peak() -> bool:
    """Reset this process's resident-set peak (``VmHWM``; Linux ``clear_refs`` 5); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def timed_round(side, steps: int, device: torch.device) -> tuple[float, tuple[int, int] | None]:
    """Seconds of ``steps`` steps, and the rise of the peak memory above the round's start and the peak itself
    (bytes; the peak counts what the other side holds too): on CUDA the allocator's, on a Linux CPU the process's
    resident set (``VmHWM`` against ``VmRSS``; with ``MALLOC_MMAP_THRESHOLD_`` set, so that the C allocator hands
    large blocks back when they are freed, it follows the tensors alive)."""
    rss = device.type != "cuda" and _reset_rss_peak()
    if device.type == "cuda":
        start_bytes = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    elif rss:
        start_bytes = _status_bytes("VmRSS")
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        side.step()
    sync(device)
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    elif rss:
        peak = _status_bytes("VmHWM")
    else:
        return seconds, None
    return seconds, (peak - start_bytes, peak)


def host_speed(device: torch.device, launches: int = 2000, rounds: int = 5) -> dict:
    """The host a step's Python and launches run on: its CPU model and count, and on CUDA the microseconds one small
    kernel launch takes from Python (median and slowest of ``rounds`` rounds of ``launches`` in-place adds on one
    element), which tells machines apart where a launch-heavy step's speed differs between them."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 platform.processor() or platform.machine())
    out: dict[str, Any] = {"cpu": model, "cpus": os.cpu_count()}
    if device.type == "cuda":
        one = torch.zeros(1, device=device)
        per_launch = []
        for _ in range(rounds):
            sync(device)
            start = time.perf_counter()
            for _ in range(launches):
                one.add_(1)
            sync(device)
            per_launch.append(1e6 * (time.perf_counter() - start) / launches)
        out.update(launch_us=round(statistics.median(per_launch), 2), launch_us_max=round(max(per_launch), 2))
    return out


def summary(seconds: list[float], peaks: list, steps: int, batch: int, held: int, device: torch.device) -> dict:
    """img/s and ms/step of the median round, the spread over rounds (``rounds_ms`` in the order run) and, where
    ``timed_round`` measured it, ``peak_gib`` (the side's held tensors + its largest rise) and ``process_peak_gib``."""
    ms = [1000 * s / steps for s in seconds]
    median = statistics.median(ms)
    out = {"img_per_s": round(1000 * batch / median, 2), "ms_per_step_median": round(median, 2),
           "ms_per_step_min": round(min(ms), 2), "ms_per_step_max": round(max(ms), 2),
           "spread_pct": round(100 * (max(ms) - min(ms)) / median, 1), "rounds_ms": [round(v, 2) for v in ms]}
    if all(p is not None for p in peaks):
        out["peak_gib"] = round((held + max(rise for rise, _ in peaks)) / 2**30, 2)
        out["process_peak_gib"] = round(max(peak for _, peak in peaks) / 2**30, 2)
        out["held_gib"] = round(held / 2**30, 2)
        if device.type != "cuda":
            out["peak_measure"] = "resident set"
            out["malloc_mmap_threshold"] = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    return out


# ---------------------------------------------------------------------------------------------------- the run


def pgpig_config(recipe: str, mode: str, batch: int, settings: list[str]):
    """The shipped recipe with a random VGG-19 and the bench's batch; ``fp32``, ``strict`` and ``bf16`` eager
    float32 or bf16 autocast without channels-last, ``recipe`` as shipped. ``--set`` overrides last."""
    overrides: dict[str, Any] = {"vgg_weights": None, "allow_random_vgg": True, "progress": False,
                                 "batch_size": batch}
    if mode != "recipe":
        overrides.update(amp="bf16" if mode == "bf16" else "none", compile=False, channels_last=False,
                         cuda_graph=False)
    overrides.update(parse_set(tuple(settings)))
    return load_config(recipe_path(f"deepfashion/{recipe}"), overrides)


def run_pair(args, spec, opt, mode: str, kind: str, device: torch.device, common: dict,
             setup: dict) -> list[dict]:
    """The official side and pgpig's of one mode and step kind, alternating rounds; their two JSON lines (the
    official one carries ``setup``: its options, ports and shims). ``strict`` turns TF32 off process-wide for
    its pair (cuDNN and matmuls) and back as it was after."""
    with arithmetic("fp32" if mode == "strict" else "default"):
        return _run_pair(args, spec, opt, mode, kind, device, common, setup)


def _run_pair(args, spec, opt, mode: str, kind: str, device: torch.device, common: dict,
              setup: dict) -> list[dict]:
    cfg = pgpig_config(spec.recipe or spec.folder, mode, args.batch, args.settings)
    size = args.size or (256, 256 - 2 * cfg.crop_margin)
    batch = make_batch(cfg, device, size, args.batch, args.seed)
    official_amp = "bf16" if mode == "bf16" else "none"
    model_conf = spec.configure(opt, cfg, size) if spec.configure else None
    sides = {"official": OfficialSide(spec, opt, kind, official_amp, batch, device, cfg.sample_seed),
             "pgpig": PgpigSide(cfg, kind, batch, size, device)}
    g_off, g_pg = sides["official"].g, sides["pgpig"].plain_g
    if kind == "sample":
        unzero(g_pg)
    same_weights = copy_weights(g_pg, getattr(g_off, "module", g_off))  # DPTN's and GFLA's in DataParallel on a GPU
    outputs = {name: side.step() for name, side in sides.items()} if kind == "sample" else {}
    params = {"official": {"generator": count([g_off])[0], "discriminators": count(sides["official"].d)},
              "pgpig": {"generator": count([g_pg])[0], "discriminators": count(sides["pgpig"].d)}}
    params_equal = params["official"]["generator"] == params["pgpig"]["generator"] and (
        kind != "full" or sorted(params["official"]["discriminators"]) ==
        sorted(params["pgpig"]["discriminators"]))
    if kind != "full":  # the official model builds its discriminators anyway; they take no part here
        params["official"]["discriminators"] = []

    warmup = {}
    for name, side in sides.items():
        start = time.perf_counter()
        for _ in range(args.warmup):
            side.step()
        while getattr(side, "capturing", lambda: False)():  # a CUDA graph is captured before the timed rounds
            side.step()
        sync(device)
        warmup[name] = round(time.perf_counter() - start, 2)
    seconds: dict[str, list[float]] = {n: [] for n in sides}
    peaks: dict[str, list] = {n: [] for n in sides}
    host = host_speed(device)
    for _ in range(args.rounds):
        for name, side in sides.items():
            s, peak = timed_round(side, args.steps, device)
            seconds[name].append(s)
            peaks[name].append(peak)
    lines = []
    for name, side in sides.items():
        held = held_bytes(side.nets, side.optimizers)
        graphed = getattr(side, "full_step", None)
        if isinstance(graphed, GraphedStep):  # the captured step's memory pool stays reserved between replays
            held += graphed.pool_bytes
        pg = sides["pgpig"].cfg
        line = {**common, "side": name, "mode": mode, "kind": kind, "image_size": list(size),
                **summary(seconds[name], peaks[name], args.steps, args.batch, held, device),
                "warmup_seconds": warmup[name], "params": params, "params_equal": params_equal,
                "same_generator_weights": same_weights, "host": host}
        if outputs:
            line["sample_max_abs_diff"] = round(float((outputs["official"].float().clamp(-1, 1) -
                                                       outputs["pgpig"].float()).abs().max()), 6)
        if name == "official":
            line.update(official_amp=official_amp, **setup)
            if model_conf is not None:
                line["official_model_conf"] = {k: list(v) if isinstance(v, tuple) else v
                                               for k, v in model_conf.items()}
        else:
            line["pgpig_settings"] = speed_settings(pg)
            if kind == "full" and isinstance(sides["pgpig"].full_step, GraphedStep):
                line["pgpig_graph"] = sides["pgpig"].full_step.state()
        lines.append(line)
    del sides
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return lines


def ratios(lines: list[dict]) -> dict:
    """pgpig/official img/s per mode and kind, each against the official side of its own alternating rounds (in
    ``recipe`` that side runs float32: ``<kind>/recipe/official_fp32``); with ``bf16`` among the modes also the recipe
    against the official side's bf16 rounds (``<kind>/recipe/official_bf16``, the rounds of two modes)."""
    rate = {(ln["side"], ln["mode"], ln["kind"]): ln["img_per_s"] for ln in lines}
    out = {}
    for (side, mode, kind), value in rate.items():
        official = rate.get(("official", mode, kind))
        if side == "pgpig" and official:
            out[f"{kind}/{mode}/official_{'fp32' if mode == 'recipe' else mode}"] = round(value / official, 3)
        official_bf16 = rate.get(("official", "bf16", kind))
        if side == "pgpig" and mode == "recipe" and official_bf16:
            out[f"{kind}/recipe/official_bf16"] = round(value / official_bf16, 3)
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official-repo", type=Path, required=True, help="an export of the official repository")
    parser.add_argument("--model", required=True, choices=sorted(official_models.OFFICIAL))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per side before the rounds")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--kinds", help=f"comma-separated, of {', '.join(KINDS)} [default: those the model has: "
                                         "full,generator; PIDM full,sample]")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="override a pgpig config field in every mode (repeatable)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/official-bench"),
                        help="where the ported copy of the official code goes")
    parser.add_argument("--size", type=lambda v: tuple(int(x) for x in v.lower().split("x")), default=None,
                        help="HxW of the images [default: the recipe's, DeepFashion 256x256 less its crop margin]; "
                             "smaller only to smoke-test the bench")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="append the JSON lines to this file")
    args = parser.parse_args(argv)
    spec = official_models.OFFICIAL[args.model]
    modes, kinds = args.modes.split(","), (args.kinds or ",".join(spec.kinds)).split(",")
    for value, allowed, flag in ((modes, MODES, "--modes"), (kinds, spec.kinds, "--kinds")):
        if set(value) - set(allowed):
            raise SystemExit(f"{flag}: {', '.join(sorted(set(value) - set(allowed)))} unknown for {args.model}; "
                             f"choose of {', '.join(allowed)}")
    device = resolve_device(args.device)
    torch.backends.cudnn.benchmark = True  # both sides: the official scripts set it too

    work = args.work / args.model
    ports = official_models.prepare(args.official_repo, work, spec.ports)
    shims = official_models.install_shims(device)
    official_models.load_code(work)
    if spec.after_import:
        shims += spec.after_import()
    if device.type == "cpu":
        shims += spec.cpu_shims
    argv_used = [*spec.argv, *spec.bench_argv(args.batch, device)]
    opt = official_models.quietly(spec.options, argv_used)
    options = {k: (str(v) if not isinstance(v, (int, float, str, bool, list, type(None))) else v)
               for k, v in sorted(vars(opt).items())}
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    common = {"bench": "official", "model": args.model, "official_repo": spec.repo, "batch": args.batch,
              "rounds": args.rounds, "steps": args.steps, "device": machine, "torch": torch.__version__,
              "python": platform.python_version(), "recipe": f"deepfashion/{spec.recipe or spec.folder}",
              "settings": args.settings}
    setup = {"official_argv": argv_used, "official_argv_source": spec.argv_source, "official_options": options,
             "official_ops": spec.ops, "ports": ports, "shims": {k: official_models.SHIMS[k] for k in shims}}
    lines = []
    for mode in modes:
        for kind in kinds:
            for line in run_pair(args, spec, opt, mode, kind, device, common, setup):
                lines.append(line)
                emit(line, args.out)
    final = {"bench": "official_ratio", "model": args.model, "batch": args.batch, "device": machine,
             "pgpig_over_official_img_per_s": ratios(lines),
             "params_equal": all(ln["params_equal"] for ln in lines)}
    emit(final, args.out)
    return [*lines, final]


def emit(line: dict, out: Path | None) -> None:
    text = json.dumps(line)
    print(text, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()

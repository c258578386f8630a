"""Training and inference speed, and what each speed option buys.

    python benchmarks/speed.py [--repeats 5] [--device cuda] [--out results/speed.json]

Training, at 32x32x1 and 64x64x3 with the default width and batch: `Trainer.gan_step` is
timed at two critic counts, n and n + k (n = gp_every, k >= 4 a multiple of it, so every call
holds whole lazy-regularisation periods and lazy penalties are amortised exactly). The critic
step is the slope, the generator update the intercept. Then each speed option alone against
the defaults, and the issue's reference setting with every option off and with the defaults.
Inference: images/s of `model.score` (E, G, D twice, maps, blur) at batch 1 and 64 on
32/64/128 px RGB, and peak memory, each measured in a fresh process (a process keeps the
heap it grew, so after the training measurements its peak would be theirs). The networks are
untrained: speed does not depend on the weights. Tiled scoring: images/s, tiles/s and peak
memory with 32-px patches at 256 and 1024 px working resolution, strides 16 and 32. Every timing is the median of --repeats
after --warmup.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import resource
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from common import fmt, make_config, make_parser, parse, run_settings, table, write_results
from funetgan.config import working_size
from funetgan.data import ImageSet
from funetgan.model import FUNetGAN
from funetgan.scoring.tiling import TileGrid
from funetgan.training.trainer import Trainer

TRAIN_SHAPES = ((32, 1), (64, 3))
SCORE_SIZES = (32, 64, 128)
SCORE_BATCHES = (1, 64)
SCORE_IMAGES = 64  # images scored per timing
# Tiled scoring: 32-px patches over images at these working resolutions (images per timing),
# tile strides, and 64 tiles per pass of the networks.
TILED_SIZES = {256: 8, 1024: 1}
TILED_STRIDES = (16, 32)
TILED_BATCH = 64
MIN_EXTRA_CRITIC_STEPS = 4
# Each changes one speed option from the defaults (gp_every 1). Channels-last and CBAM on feature
# maps of 16x16 or smaller are no longer settings (README, "Speed" measured them).
OPTIONS = ("gan.gp_every=4",)
# The issue's reference: "the straightforward implementation costs 0.5-0.7 s per critic
# step at 32x32x1, width 8, batch 32"; straightforward = no lazy penalty.
REFERENCE = ["model.image_size=32", "model.channels=1", "model.width=8", "batch_size=32"]
ALL_OPTIONS_OFF = ["gan.gp_every=1"]
REFERENCE_SECONDS = "0.5-0.7"


def median_seconds(call: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> float:
    times = []
    for i in range(warmup + repeats):
        synchronize(device)
        start = time.perf_counter()
        call()
        synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def random_images(n: int, size: int, channels: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), np.uint8)


def training_speed(overrides: list[str], args) -> dict:
    config = make_config(overrides, args.device)
    settings, n_critic, gp_every = config.to_dict(), config.gan.n_critic, config.gan.gp_every
    model = FUNetGAN(config)
    images = random_images(2 * config.batch_size, config.model.image_size, config.model.channels)
    trainer = Trainer(model, images, images, run_dir=None)
    low = gp_every
    high = low + gp_every * math.ceil(MIN_EXTRA_CRITIC_STEPS / gp_every)
    seconds = {}
    for count, warmup in ((low, args.warmup), (high, 0)):  # the first count's warm-up serves both
        model.config.gan.n_critic = count  # gan_step reads it on every call
        seconds[count] = median_seconds(lambda: trainer.gan_step(0), model.runtime.device, args.repeats, warmup)
    critic = (seconds[high] - seconds[low]) / (high - low)
    generator = seconds[low] - low * critic
    return {
        "critic_step_s": critic,
        "critic_steps_per_s": 1 / critic,
        "generator_update_s": generator,
        "n_critic": n_critic,
        "generator_step_s": n_critic * critic + generator,
        "settings": settings,
    }


def scoring_speed(overrides: list[str], batch: int, args, n_images: int = SCORE_IMAGES) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    config = make_config(overrides, args.device)
    model = FUNetGAN(config)
    size = working_size(config)
    images = random_images(n_images, size, config.model.channels)
    fit = random_images(n_images, size, config.model.channels, seed=1)  # other images fit the densities
    model.calibrate(
        ImageSet(
            images,
            np.zeros(len(images), np.int64),
            [""] * len(images),
            ["good"] * len(images),
            np.full((len(images), 2), size),
        ),
        fit,
    )
    device = model.runtime.device
    reset_peak_memory(device)
    seconds = median_seconds(lambda: model.score(images, batch), device, args.repeats, args.warmup)
    return {
        "images_per_second": len(images) / seconds,
        "peak_memory_mib": peak_memory_mib(device),
        "settings": config.to_dict(),
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def in_fresh_process(function: Callable, *args) -> dict:
    """`function(*args)` in a new interpreter, so that its peak memory is its own."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    # Linux: "5" resets the peak resident set size (VmHWM) to the current one, so the
    # calibration before the timing does not count (elsewhere it does).
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory_mib(device: torch.device) -> float:
    """Allocated tensors on CUDA; the process's peak resident set on the CPU: VmHWM on Linux
    (getrusage's peak survives exec, so a spawned process would report its parent's)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    bytes_per_unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * bytes_per_unit / 2**20


def measure_training(args) -> tuple[list[dict], dict]:
    rows = []
    for size, channels in TRAIN_SHAPES[:1] if args.smoke else TRAIN_SHAPES:
        shape = [f"model.image_size={size}", f"model.channels={channels}"]
        for option in ("defaults", *OPTIONS):
            variant = [] if option == "defaults" else [option]
            rows.append(
                {
                    "shape": f"{size}x{size}x{channels}",
                    "option": option,
                    **training_speed(run_settings(args, shape, variant), args),
                }
            )
            print(f"measured training {rows[-1]['shape']} {option}", file=sys.stderr, flush=True)
    reference = {
        name: training_speed(run_settings(args, REFERENCE, variant), args)
        for name, variant in (("all_options_off", ALL_OPTIONS_OFF), ("defaults", []))
    }
    return rows, reference


def measure_scoring(args) -> list[dict]:
    rows = []
    for size in SCORE_SIZES[:1] if args.smoke else SCORE_SIZES:
        for batch in SCORE_BATCHES:
            settings = run_settings(args, [f"model.image_size={size}", "model.channels=3"])
            rows.append(
                {"shape": f"{size}x{size}x3", "batch": batch, **in_fresh_process(scoring_speed, settings, batch, args)}
            )
    return rows


def measure_tiled(args) -> list[dict]:
    rows = []
    sizes = {64: 1} if args.smoke else TILED_SIZES
    for size, n_images in sizes.items():
        for stride in TILED_STRIDES:
            settings = run_settings(
                args,
                ["model.image_size=32", "model.channels=3", f"data.resolution={size}", f"score.tile_stride={stride}"],
            )
            row = in_fresh_process(scoring_speed, settings, TILED_BATCH, args, n_images)
            tiles = len(TileGrid(size, size, 32, stride))
            rows.append(
                {
                    "working_resolution": size,
                    "stride": stride,
                    "batch": TILED_BATCH,
                    "tiles_per_image": tiles,
                    "tiles_per_second": row["images_per_second"] * tiles,
                    **row,
                }
            )
            print(f"measured tiled scoring {size} px, stride {stride}", file=sys.stderr, flush=True)
    return rows


def print_tables(training: list[dict], reference: dict, scoring: list[dict], tiled: list[dict]) -> None:
    if training:
        print(
            table(
                ["training", "option", "critic step s", "critic steps/s", "G update s", "s per G step"],
                [
                    [
                        r["shape"],
                        r["option"],
                        fmt(r["critic_step_s"]),
                        fmt(r["critic_steps_per_s"], 2),
                        fmt(r["generator_update_s"]),
                        f"{fmt(r['generator_step_s'], 2)} (n_critic {r['n_critic']})",
                    ]
                    for r in training
                ],
            )
        )
        off, defaults = reference["all_options_off"]["critic_step_s"], reference["defaults"]["critic_step_s"]
        print(
            f"\nreference critic step, 32x32x1, width 8, batch 32: straightforward implementation "
            f"{REFERENCE_SECONDS} s (issue); ours {fmt(off)} s with every speed option off, "
            f"{fmt(defaults)} s with the defaults ({fmt(off / defaults, 2)}x)\n"
        )
    if scoring:
        print(
            table(
                ["scoring", "batch", "images/s", "peak MiB"],
                [
                    [r["shape"], str(r["batch"]), fmt(r["images_per_second"], 1), fmt(r["peak_memory_mib"], 0)]
                    for r in scoring
                ],
            )
        )
    if tiled:
        print(
            table(
                ["tiled scoring (32-px patches, x3)", "stride", "tiles/image", "images/s", "tiles/s", "peak MiB"],
                [
                    [
                        f"{r['working_resolution']} px",
                        str(r["stride"]),
                        str(r["tiles_per_image"]),
                        fmt(r["images_per_second"], 2),
                        fmt(r["tiles_per_second"], 0),
                        fmt(r["peak_memory_mib"], 0),
                    ]
                    for r in tiled
                ],
            )
        )


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__file__, "Training and inference speed, and the effect of each speed option.")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls first")
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=("training", "scoring", "tiled"),
        default=["training", "scoring", "tiled"],
        help="what to measure (default: all)",
    )
    args = parse(parser, argv)
    if args.smoke:
        args.repeats, args.warmup = 1, 1
    training, reference = measure_training(args) if "training" in args.parts else ([], {})
    scoring = measure_scoring(args) if "scoring" in args.parts else []
    tiled = measure_tiled(args) if "tiled" in args.parts else []
    print_tables(training, reference, scoring, tiled)
    write_results(args, {"training": training, "reference": reference, "scoring": scoring, "tiled": tiled})
    print(f"\nresults in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

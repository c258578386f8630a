"""Training speed: steps/s and achieved GFLOP/s of each stage, and where one adversarial
step's FLOPs and time go.

    python benchmarks/train_speed.py [--sizes 32 64 256] [--threads 1 2] [--repeats 3]
                                     [--out benchmarks/results/train_speed.json]

Settings: the CPU recipe (`config.RECIPES["cpu"]`: one critic step per generator step,
penalties every 4th critic step, reconstruction term in stage 1) at batch 64 with the
default networks (width 8, one channel, z_dim 128), at each of --sizes, untrained weights
(speed does not depend on them). `--set` changes any of it (`--set model.channels=3`).

Stages, at each size and each of --threads: a warm-up step (`Trainer.warmup_step`), an
adversarial step (`Trainer.gan_step`: the critic step, then G's step with the reconstruction
term) and an encoder step (`Trainer.encoder_step`). Each timing is the median of --repeats
blocks of `gan.gp_every` steps after one untimed block (so every block holds one penalty,
as training does), divided by the block's steps. FLOPs: PyTorch's FLOP counter
(`torch.utils.flop_counter.FlopCounterMode`: convolutions and matrix products, forward,
backward and double backward) over one more block; GFLOP/s = FLOPs per step / seconds.

Breakdown of one adversarial step (at --breakdown-sizes, the first of --threads): each part
run and timed alone on the same batch. The critic's parts are differences of its loss and
backward with more of it switched on: D on reals and fakes alone, then with the mixup
consistency pass, then with the gradient penalty's double backward (its per-step share:
divided by `gan.gp_every`).
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from common import fmt, make_config, make_parser, parse, run_settings, table, write_results
from funetgan.config import RECIPES
from funetgan.training.losses import critic_loss, generator_loss
from funetgan.model import FUNetGAN
from funetgan.training.trainer import RECON_WEIGHT, Trainer

SIZES = (32, 64, 256)
BREAKDOWN_SIZES = (32, 64)
BASE = [*RECIPES["cpu"], "batch_size=64"]
IMAGES = 128  # random training images per measurement: two batches


def make_trainer(args, size: int) -> Trainer:
    config = make_config(run_settings(args, BASE, [f"model.image_size={size}"]), args.device)
    images = torch.randint(
        0,
        256,
        (IMAGES, size, size, config.model.channels),
        dtype=torch.uint8,
        generator=torch.Generator().manual_seed(0),
    ).numpy()
    return Trainer(FUNetGAN(config), images, images, run_dir=None)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(call: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> float:
    """Median wall time of `call` over `repeats` calls after `warmup` untimed ones."""
    times = []
    for i in range(warmup + repeats):
        synchronize(device)
        start = time.perf_counter()
        call()
        synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def flops(call: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        call()
    return counter.get_total_flops()


def stage_steps(trainer: Trainer) -> dict[str, Callable[[int], object]]:
    """Each stage's step; the encoder's last, as it freezes G and D."""

    def encoder(step: int):
        trainer.freeze_gan()
        return trainer.encoder_step(step)

    return {"warm-up": trainer.warmup_step, "adversarial": trainer.gan_step, "encoder": encoder}


def measure_stages(args) -> list[dict]:
    rows = []
    for size in args.sizes:
        for threads in args.threads:
            torch.set_num_threads(threads)
            trainer = make_trainer(args, size)
            block = trainer.model.config.gan.gp_every  # one lazy penalty per block of critic steps
            device = trainer.model.runtime.device
            for stage, step in stage_steps(trainer).items():

                def run_block():
                    for i in range(block):
                        step(i)

                per_step = seconds(run_block, device, args.repeats, args.warmup) / block
                gflop = flops(run_block) / block / 1e9
                rows.append(
                    {
                        "size": size,
                        "threads": threads,
                        "stage": stage,
                        "seconds_per_step": per_step,
                        "steps_per_s": 1 / per_step,
                        "gflop_per_step": gflop,
                        "gflop_per_s": gflop / per_step,
                        "settings": trainer.model.config.to_dict(),
                    }
                )
                print(f"measured {stage} at {size} px, {threads} thread(s)", file=sys.stderr, flush=True)
    return rows


def step_parts(trainer: Trainer) -> dict[str, Callable[[], object]]:
    """The adversarial step's parts, each alone on one fixed batch (critic parts cumulative)."""
    m, rt = trainer.model, trainer.runtime
    gan = m.config.gan
    real = trainer.source.batch(0)
    with torch.no_grad(), rt.autocast():
        fake = rt.prepare(m.G(trainer.latent(len(real))).float())

    def fakes():
        with torch.no_grad(), rt.autocast():
            m.G(trainer.latent(len(real)))

    def critic(consistency: str, penalise: bool) -> Callable[[], None]:
        settings = dataclasses.replace(gan, consistency=consistency)

        def run():
            trainer.opt_d.zero_grad(set_to_none=True)
            with rt.autocast():
                loss, _ = critic_loss(m.D, real, fake, settings, penalise=penalise, generator=trainer.rng)
            loss.backward()

        return run

    def adversarial():
        m.D.requires_grad_(False)
        with rt.autocast():
            loss = generator_loss(m.D(rt.prepare(m.G(trainer.latent(len(real))))))
        loss.backward()
        m.D.requires_grad_(True)

    def reconstruction():
        with rt.autocast():
            loss, _ = trainer.reconstruction_loss(0)
        (RECON_WEIGHT * loss).backward()

    def optimisers():
        for optimiser in (trainer.opt_d, trainer.opt_g, trainer.opt_e):
            optimiser.step()

    return {
        "G forward for the fakes": fakes,
        "critic: D on reals and fakes": critic("none", False),
        "critic: + mixup consistency pass": critic("mixup", False),
        "critic: + gradient penalty": critic("mixup", True),
        "G's adversarial term": adversarial,
        "reconstruction term": reconstruction,
        "optimisers (Adam on D, G, E)": optimisers,
    }


def measure_breakdown(args, size: int) -> dict:
    """FLOPs and time of each part of one adversarial step; critic parts as increments."""
    torch.set_num_threads(args.threads[0])
    trainer = make_trainer(args, size)
    device, gp_every = trainer.model.runtime.device, trainer.model.config.gan.gp_every
    parts = step_parts(trainer)
    measured = {
        name: (flops(call) / 1e9, seconds(call, device, args.repeats, args.warmup)) for name, call in parts.items()
    }  # the optimisers last: every gradient exists by then
    names = list(parts)
    rows = []
    for i, name in enumerate(names):
        gflop, time_s = measured[name]
        if name.startswith("critic: +"):  # the increment over the critic with less switched on
            gflop, time_s = gflop - measured[names[i - 1]][0], time_s - measured[names[i - 1]][1]
        share = 1 / gp_every if name.endswith("gradient penalty") else 1.0
        rows.append({"part": name, "gflop": gflop, "seconds": time_s, "per_step_share": share})
    step_seconds = sum(r["seconds"] * r["per_step_share"] for r in rows)
    step_gflop = sum(r["gflop"] * r["per_step_share"] for r in rows)
    for row in rows:
        row["share_of_step_time"] = row["seconds"] * row["per_step_share"] / step_seconds
        row["share_of_step_flops"] = row["gflop"] * row["per_step_share"] / step_gflop
    return {
        "size": size,
        "threads": args.threads[0],
        "gp_every": gp_every,
        "parts": rows,
        "step_seconds": step_seconds,
        "step_gflop": step_gflop,
        "settings": trainer.model.config.to_dict(),
    }


def print_tables(stages: list[dict], breakdowns: list[dict]) -> None:
    print(
        table(
            ["stage", "size", "threads", "s/step", "steps/s", "GFLOP/step", "GFLOP/s"],
            [
                [
                    r["stage"],
                    f"{r['size']} px",
                    str(r["threads"]),
                    fmt(r["seconds_per_step"]),
                    fmt(r["steps_per_s"], 2),
                    fmt(r["gflop_per_step"], 1),
                    fmt(r["gflop_per_s"], 1),
                ]
                for r in stages
            ],
        )
    )
    for breakdown in breakdowns:
        print(
            f"\none adversarial step at {breakdown['size']} px, {breakdown['threads']} thread(s), penalty every "
            f"{breakdown['gp_every']} critic steps: {fmt(breakdown['step_gflop'], 1)} GFLOP, "
            f"{fmt(breakdown['step_seconds'])} s (sum of the parts)"
        )
        print(
            table(
                ["part", "GFLOP", "ms", "GFLOP/s", "per step", "% time", "% FLOPs"],
                [
                    [
                        r["part"],
                        fmt(r["gflop"], 2),
                        fmt(1000 * r["seconds"], 1),
                        fmt(r["gflop"] / r["seconds"], 1) if r["seconds"] > 0 else "-",
                        f"x{r['per_step_share']:.2g}",
                        fmt(100 * r["share_of_step_time"], 0),
                        fmt(100 * r["share_of_step_flops"], 0),
                    ]
                    for r in breakdown["parts"]
                ],
            )
        )


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(
        __file__, "Training steps/s and GFLOP/s per stage, and one adversarial step's breakdown.", thread_counts=(1, 2)
    )
    parser.set_defaults(out="benchmarks/results/train_speed.json")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="image sizes (px)")
    parser.add_argument(
        "--breakdown-sizes",
        type=int,
        nargs="*",
        default=list(BREAKDOWN_SIZES),
        help="sizes of the adversarial step's breakdown (none: skip it)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks per measurement (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed blocks first")
    args = parse(parser, argv)
    if args.smoke:
        args.sizes, args.breakdown_sizes, args.threads, args.repeats = [32], [32], [1], 1
    stages = measure_stages(args)
    breakdowns = [measure_breakdown(args, size) for size in args.breakdown_sizes]
    print_tables(stages, breakdowns)
    write_results(args, {"stages": stages, "breakdown": breakdowns})
    print(f"\nresults in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

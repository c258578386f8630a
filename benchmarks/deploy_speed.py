"""Deployment speed: scoring with PyTorch against the exported ONNX model, and `funetgan test`
end to end on a large test set.

    python benchmarks/deploy_speed.py [--threads 1] [--test-run RUN] [--out results/deploy_speed.json]

Scoring: images/s of `FUNetGAN.score` (PyTorch) and `OnnxScorer.score` (onnxruntime + numpy)
at 32/64/128 px RGB, batch 1 and 64, each in a fresh process (so its peak memory and start-up
are its own; the ONNX process never imports torch, and the table says so). Both run the same
tiling and numpy scoring code around the networks; the networks are untrained (speed does
not depend on the weights), exported with the parity check. Every timing is the median of
--repeats calls over 64 images after one untimed call.

`funetgan test`: the command line, in a fresh process, on Fashion-MNIST's 10,000 test images
with the default outputs, once with --run (PyTorch) and once with --model (ONNX): wall time
of the whole process and the parts the command reports (model, data, scoring, metrics, files,
report). --test-run names a trained 32 px run; without one a tiny run is trained first
(20 + 20 steps: speed does not depend on quality).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = (32, 64, 128)
BATCHES = (1, 64)
IMAGES = 64  # images scored per timed call (--smoke: 8)
FASHION = "/usr/share/datasets/fashion-mnist"
TINY_RUN = [
    "--normal-class",
    "0",
    "--set",
    "model.image_size=32",
    "--set",
    "gan.iterations=20",
    "--set",
    "encoder.iterations=20",
    "--set",
    "gan.n_critic=1",
    "--set",
    "checkpoint_every=1000",
]


# ---- one measurement, in its own process (no torch import unless it is the PyTorch row) -----
def measure(spec: dict) -> dict:
    started = time.perf_counter()
    if spec["runtime"] == "onnx":
        from funetgan.deploy.onnx_scorer import OnnxScorer

        model = OnnxScorer.load(spec["model"], threads=spec["threads"])
    else:
        import torch

        from funetgan.model import FUNetGAN

        if spec["threads"]:
            torch.set_num_threads(spec["threads"])
        model = FUNetGAN.load(spec["model"], device=spec["device"])
    loaded = time.perf_counter() - started
    m, n = model.config.model, spec["images"]
    images = np.random.default_rng(0).integers(0, 256, (n, m.image_size, m.image_size, m.channels), np.uint8)
    times = []
    for i in range(spec["repeats"] + 1):  # the first call is not timed
        start = time.perf_counter()
        model.score(images, spec["batch"])
        if i:
            times.append(time.perf_counter() - start)
    return {
        "images_per_second": n / statistics.median(times),
        "start_seconds": loaded,
        "peak_memory_mib": peak_memory_mib(),
        "torch_imported": "torch" in sys.modules,
    }


def peak_memory_mib() -> float | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def in_fresh_process(spec: dict) -> dict:
    """`measure(spec)` in a new interpreter (this file with --measure): imports included."""
    done = subprocess.run(
        [sys.executable, __file__, "--measure", json.dumps(spec)], capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise RuntimeError(f"measurement {spec} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- the benchmark ----------------------------------------------------------------------------
def scoring_rows(args, folder: Path) -> list[dict]:
    from common import make_config
    from funetgan.data import ImageSet
    from funetgan.model import FUNetGAN

    rows = []
    for size in SIZES[:1] if args.smoke else SIZES:
        settings = [
            f"model.image_size={size}",
            "model.channels=3",
            *(["model.width=4"] if args.smoke else []),
            *args.set,
        ]
        model = FUNetGAN(make_config(settings, "cpu"))
        images = np.random.default_rng(0).integers(0, 256, (32, size, size, 3), np.uint8)
        fit = np.random.default_rng(1).integers(0, 256, (32, size, size, 3), np.uint8)  # other images fit the densities
        model.calibrate(ImageSet(images, np.zeros(32, np.int64), [""] * 32, ["good"] * 32, np.full((32, 2), size)), fit)
        weights, graph = folder / f"{size}.safetensors", folder / f"{size}.onnx"
        model.save(weights)
        parity = model.export(graph, check_images=images)
        print(f"{size} px export: " + "; ".join(parity.lines()[1:3]).replace("  ", " "), file=sys.stderr)
        for batch in BATCHES:
            for runtime, path in (("pytorch", weights), ("onnx", graph)):
                spec = {
                    "runtime": runtime,
                    "model": str(path),
                    "batch": batch,
                    "threads": args.threads,
                    "device": "cpu",
                    "repeats": args.repeats,
                    "images": 8 if args.smoke else IMAGES,
                }
                rows.append(
                    {
                        "shape": f"{size}x{size}x3",
                        "batch": batch,
                        "runtime": runtime,
                        "parity_max_rel": max(parity.maps_max_rel, parity.scores_max_rel),
                        **in_fresh_process(spec),
                    }
                )
                print(f"measured {rows[-1]['shape']} batch {batch} {runtime}", file=sys.stderr, flush=True)
    return rows


def test_rows(args, folder: Path) -> list[dict]:
    """`funetgan test` end to end with --run and with --model, default outputs."""
    run, data, extra = prepare_test(args, folder)
    graph = folder / "test-model.onnx"
    cli = [sys.executable, "-m", "funetgan"]
    subprocess.run(
        [*cli, "export", "--run", str(run), "--out", str(graph), "--overwrite"], check=True, capture_output=True
    )
    threads = ["--threads", str(args.threads)] if args.threads else []
    rows = []
    for runtime, option in (("pytorch", ["--run", str(run), "--device", "cpu"]), ("onnx", ["--model", str(graph)])):
        out = folder / f"test-{runtime}"
        started = time.perf_counter()
        done = subprocess.run(
            [*cli, "test", *option, "--data", str(data), *extra, "--out", str(out), "--overwrite", *threads],
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.perf_counter() - started
        if done.returncode:
            raise RuntimeError(f"funetgan test failed:\n{done.stderr}")
        timing = json.loads((out / "metrics.json").read_text())["timing"]
        parts = {
            key: timing[key]
            for key in (
                "model_seconds",
                "data_seconds",
                "seconds",
                "metrics_seconds",
                "files_seconds",
                "report_seconds",
            )
        }
        rows.append(
            {
                "runtime": runtime,
                "images": timing["images"],
                "wall_seconds": wall,
                "start_seconds": wall - sum(parts.values()),
                **parts,
                "overlays": len(list((out / "overlays").glob("*.png"))),
                "masks": len(list((out / "masks").glob("*.png"))),
            }
        )
        print(f"measured funetgan test {runtime}: {wall:.1f} s", file=sys.stderr, flush=True)
    return rows


def prepare_test(args, folder: Path) -> tuple[Path, Path, list[str]]:
    """The run, the data folder and the data options of the end-to-end test."""
    if args.smoke:
        from common import texture_data
        from funetgan.cli import main as cli_main

        data = texture_data("brick", folder, True, 32)
        run = folder / "smoke-run"
        tiny = [
            item
            for key in (
                "model.image_size=32",
                "model.width=4",
                "model.z_dim=16",
                "batch_size=4",
                "gan.iterations=2",
                "gan.n_critic=1",
                "encoder.iterations=2",
            )
            for item in ("--set", key)
        ]
        cli_main(["train", "--data", str(data), "--out", str(run), *tiny, "--device", "cpu"])
        return run, data, []
    data = Path(args.data)
    if args.test_run:
        return Path(args.test_run), data, ["--normal-class", "0"]
    run = folder / "fashion-run"
    print("training a tiny 32 px Fashion-MNIST run for the test timing ...", file=sys.stderr, flush=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "funetgan",
            "train",
            "--data",
            str(data),
            "--out",
            str(run),
            *TINY_RUN,
            "--device",
            "cpu",
        ],
        check=True,
        capture_output=True,
    )
    return run, data, ["--normal-class", "0"]


def print_tables(scoring: list[dict], tests: list[dict]) -> None:
    from common import fmt, table

    if scoring:
        print(
            table(
                ["scoring", "batch", "runtime", "images/s", "start s", "peak MiB", "torch loaded"],
                [
                    [
                        r["shape"],
                        str(r["batch"]),
                        r["runtime"],
                        fmt(r["images_per_second"], 1),
                        fmt(r["start_seconds"], 2),
                        fmt(r["peak_memory_mib"], 0),
                        str(r["torch_imported"]),
                    ]
                    for r in scoring
                ],
            )
        )
    if tests:
        print()
        print(
            table(
                [
                    "funetgan test",
                    "images",
                    "wall s",
                    "start",
                    "model",
                    "data",
                    "scoring",
                    "metrics",
                    "files",
                    "report",
                    "masks",
                    "overlays",
                ],
                [
                    [
                        r["runtime"],
                        str(r["images"]),
                        fmt(r["wall_seconds"], 1),
                        fmt(r["start_seconds"], 1),
                        fmt(r["model_seconds"], 1),
                        fmt(r["data_seconds"], 1),
                        fmt(r["seconds"], 1),
                        fmt(r["metrics_seconds"], 1),
                        fmt(r["files_seconds"], 1),
                        fmt(r["report_seconds"], 1),
                        str(r["masks"]),
                        str(r["overlays"]),
                    ]
                    for r in tests
                ],
            )
        )


def main(argv: list[str] | None = None) -> int:
    from common import make_parser, parse, write_results

    parser = make_parser(__file__, "Scoring speed of PyTorch and ONNX, and `funetgan test` end to end.")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (median)")
    parser.add_argument("--parts", nargs="+", choices=("scoring", "test"), default=["scoring", "test"])
    parser.add_argument("--data", default=FASHION, help=f"Fashion-MNIST IDX folder (default {FASHION})")
    parser.add_argument("--test-run", help="a trained 32 px Fashion-MNIST run (default: train a tiny one)")
    args = parse(parser, argv)
    if args.smoke:
        import torch

        args.repeats, args.threads = 1, 1
        torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="funetgan-deploy-") as tmp:
        folder = Path(tmp)
        scoring = scoring_rows(args, folder) if "scoring" in args.parts else []
        tests = test_rows(args, folder) if "test" in args.parts else []
    print_tables(scoring, tests)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    write_results(args, {"scoring": scoring, "test": tests, "load_average_1min_at_end": load})
    print(f"\nresults in {args.out}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--measure":
        print(json.dumps(measure(json.loads(sys.argv[2]))))
        sys.exit(0)
    sys.exit(main())

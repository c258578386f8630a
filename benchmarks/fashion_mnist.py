"""Fashion-MNIST, one-class protocol: image AUROC per normal class, beside published means.

    python benchmarks/fashion_mnist.py [--classes 0-9] [--minutes 10] [--seeds 0]
                                       [--split report|selection] [--train-images N]
                                       [--out results/fashion_mnist.json]

For each class k, train on the training images of class k (the model holds 10% of them out
for calibration), then score the whole test split, where the other nine classes are the
anomalies (`--split report`, what the README reports). `--split selection`, where settings
are chosen, uses the training file only: 1,000 images of class k and 1,000 of the other
classes (a fixed draw per class) are held out as the test set, and class k's other 5,000
train. Test labels serve only the final metrics. Model: the demo's CPU training recipe
(`funetgan.commands.demo.DEMO_SETTINGS`) at 32x32x1, the smallest size the networks take (the 28 px
images are resized to it). `--train-images N` trains on N of them (a fixed draw per class):
a small data set, where the calibration normals (10 % of N) are few.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

from common import (
    alternatives_table,
    fmt,
    load,
    make_config,
    make_parser,
    mean_std,
    parse,
    run_group,
    run_settings,
    summarise,
    table,
    write_results,
)
from funetgan.commands.demo import DEMO_SETTINGS
from funetgan.data import DataError, Splits
from funetgan.data.idx import FASHION_CLASSES, find_idx, image_set, read_pair

DATA = "/usr/share/datasets/fashion-mnist"  # Debian's fashion-mnist package
BASE = [*DEMO_SETTINGS, "model.image_size=32", "model.channels=1"]
# Mean image AUROC (%) over the ten classes, as published (GEOM: Golan & El-Yaniv 2018).
PUBLISHED = {"GEOM": 93.5, "RAW-OC-SVM": 92.8, "CAE-OC-SVM": 91.7, "ADGAN": 88.4, "DSEBM": 86.6}
SMOKE_SIZES = {"train": 16, "test_normal": 8, "test_anomalous": 24}
SELECTION_HELD_OUT = 1000  # images of the class, and of the other classes, in the selection split's test set


def class_list(text: str) -> list[int]:
    """'0-9', '3' or '0,2,5-7' -> class numbers."""
    classes = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        classes.extend(range(int(low), int(high or low) + 1))
    if not classes or any(not 0 <= k < len(FASHION_CLASSES) for k in classes):
        raise argparse.ArgumentTypeError(f"classes must lie in 0-{len(FASHION_CLASSES) - 1}, got {text!r}")
    return classes


def selection_split(data: str, k: int, size: int, channels: int) -> Splits:
    """The selection split of class `k`, from the training file only (see the module's doc)."""
    files = find_idx(Path(data), "train")
    if files is None:
        raise DataError(f"{data}: no train-images-idx3-ubyte[.gz] / train-labels-idx1-ubyte[.gz]")
    images, labels = read_pair(*files)
    rng = np.random.default_rng(100 + k)  # the same draw for every seed and setting
    own, other = rng.permutation(np.flatnonzero(labels == k)), rng.permutation(np.flatnonzero(labels != k))
    held_out = np.sort(np.r_[own[:SELECTION_HELD_OUT], other[:SELECTION_HELD_OUT]])

    def subset(index: np.ndarray):
        return image_set(images, labels, index, k, FASHION_CLASSES, files[0], size, channels)

    return Splits(train=subset(np.sort(own[SELECTION_HELD_OUT:])), test=subset(held_out))


def fewer_training_images(splits: Splits, k: int, n: int) -> Splits:
    """`n` of the training images of class `k` (the same draw for every seed and setting)."""
    if not 0 < n <= len(splits.train):
        raise ValueError(f"--train-images must lie in 1-{len(splits.train)}, got {n}")
    draw = np.random.default_rng(200 + k).permutation(len(splits.train))[:n]
    return Splits(train=splits.train.subset(np.sort(draw)), test=splits.test)


def shrink(splits: Splits) -> Splits:
    """The first few images of each kind: a smoke test's data."""
    test = splits.test
    normal = np.flatnonzero(test.labels == 0)[: SMOKE_SIZES["test_normal"]]
    anomalous = np.flatnonzero(test.labels == 1)[: SMOKE_SIZES["test_anomalous"]]
    return Splits(
        train=splits.train.subset(np.arange(SMOKE_SIZES["train"])), test=test.subset(np.sort(np.r_[normal, anomalous]))
    )


def mean_over_classes(groups: dict, seeds: list[int]) -> dict:
    """Mean image AUROC over the classes, for each seed; then mean ± std over seeds."""
    per_seed = [
        {"image_auroc": statistics.fmean(g["runs"][i]["image_auroc"] for g in groups.values())}
        for i in range(len(seeds))
    ]
    return summarise(per_seed, ("image_auroc",))["image_auroc"]


def print_tables(groups: dict, mean: dict) -> None:
    print(
        table(
            ["class", "name", "image AUROC %", "train min"],
            [
                [
                    k,
                    FASHION_CLASSES[int(k)],
                    mean_std(g["summary"]["image_auroc"], 100, 1),
                    fmt(g["summary"]["train_minutes"]["mean"], 1),
                ]
                for k, g in groups.items()
            ],
        )
    )
    print()
    methods = [
        ["F-UNetGAN (this run)", mean_std(mean, 100, 1)],
        *([name, f"{value:.1f}"] for name, value in PUBLISHED.items()),
    ]
    print(table(["method", f"mean AUROC % ({len(groups)} classes here, 10 published)"], methods))
    print("\nthe same models under other scoring settings (default: kappa 1, izif)")
    print(alternatives_table(groups))


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__file__, "Fashion-MNIST one-class image AUROC per class.", minutes=10)
    parser.add_argument("--data", default=DATA, help=f"folder of the Fashion-MNIST IDX files (default {DATA})")
    parser.add_argument("--classes", type=class_list, default=list(range(10)), help="e.g. 0-9 or 0,3,5-7")
    parser.add_argument(
        "--split",
        choices=("report", "selection"),
        default="report",
        help="report: the test file (default); selection: held-out training images, where settings are chosen",
    )
    parser.add_argument(
        "--train-images",
        type=int,
        help="train on this many of the class's training images (a fixed draw per class; default: all)",
    )
    args = parse(parser, argv)
    results = {"published_mean_auroc_percent": PUBLISHED, "split": args.split, "train_images": args.train_images}
    for k in args.classes:
        settings = run_settings(args, BASE, [f"data.normal_class={k}"])
        config = make_config(settings, args.device)
        splits = (
            load(args.data, config)
            if args.split == "report"
            else selection_split(args.data, k, config.model.image_size, config.model.channels)
        )
        if args.train_images:
            splits = fewer_training_images(splits, k, args.train_images)
        run_group(args, results, str(k), settings, shrink(splits) if args.smoke else splits)
    results["mean_image_auroc"] = mean_over_classes(results["groups"], args.seeds)
    write_results(args, results)
    print_tables(results["groups"], results["mean_image_auroc"])
    print(f"\nresults in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fashion-MNIST, one-class protocol: image AUROC per normal class, beside published means.

    python benchmarks/fashion_mnist.py [--classes 0-9] [--minutes 10] [--seeds 0]
                                       [--out results/fashion_mnist.json]

For each class k, train on the training images of class k (the model holds 10% of them out
for calibration), then score the whole test split, where the other nine classes are the
anomalies. Test labels serve only the final metrics. Model: the demo's CPU training recipe
(`funetgan.cli.DEMO_SETTINGS`) at 32x32x1, the smallest size the networks take (the 28 px
images are resized to it).
"""
from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np

from common import (alternatives_table, fmt, load, make_config, make_parser, mean_std, parse, run_group,
                    run_settings, summarise, table, write_results)
from funetgan.cli import DEMO_SETTINGS
from funetgan.data import Splits
from funetgan.data.idx import FASHION_CLASSES

DATA = "/usr/share/datasets/fashion-mnist"  # Debian's fashion-mnist package
BASE = [*DEMO_SETTINGS, "model.image_size=32", "model.channels=1"]
# Mean image AUROC (%) over the ten classes, as published (GEOM: Golan & El-Yaniv 2018).
PUBLISHED = {"GEOM": 93.5, "RAW-OC-SVM": 92.8, "CAE-OC-SVM": 91.7, "ADGAN": 88.4, "DSEBM": 86.6}
SMOKE_SIZES = {"train": 16, "test_normal": 8, "test_anomalous": 24}


def class_list(text: str) -> list[int]:
    """'0-9', '3' or '0,2,5-7' -> class numbers."""
    classes = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        classes.extend(range(int(low), int(high or low) + 1))
    if not classes or any(not 0 <= k < len(FASHION_CLASSES) for k in classes):
        raise argparse.ArgumentTypeError(f"classes must lie in 0-{len(FASHION_CLASSES) - 1}, got {text!r}")
    return classes


def shrink(splits: Splits) -> Splits:
    """The first few images of each kind: a smoke test's data."""
    test = splits.test
    normal = np.flatnonzero(test.labels == 0)[:SMOKE_SIZES["test_normal"]]
    anomalous = np.flatnonzero(test.labels == 1)[:SMOKE_SIZES["test_anomalous"]]
    return Splits(train=splits.train.subset(np.arange(SMOKE_SIZES["train"])),
                  test=test.subset(np.sort(np.r_[normal, anomalous])))


def mean_over_classes(groups: dict, seeds: list[int]) -> dict:
    """Mean image AUROC over the classes, for each seed; then mean ± std over seeds."""
    per_seed = [{"image_auroc": statistics.fmean(g["runs"][i]["image_auroc"] for g in groups.values())}
                for i in range(len(seeds))]
    return summarise(per_seed, ("image_auroc",))["image_auroc"]


def print_tables(groups: dict, mean: dict) -> None:
    print(table(["class", "name", "image AUROC %", "train min"],
                [[k, FASHION_CLASSES[int(k)], mean_std(g["summary"]["image_auroc"], 100, 1),
                  fmt(g["summary"]["train_minutes"]["mean"], 1)] for k, g in groups.items()]))
    print()
    methods = [["F-UNetGAN (this run)", mean_std(mean, 100, 1)],
               *([name, f"{value:.1f}"] for name, value in PUBLISHED.items())]
    print(table(["method", f"mean AUROC % ({len(groups)} classes here, 10 published)"], methods))
    print("\nthe same models under other scoring settings (default: kappa 1, izif)")
    print(alternatives_table(groups))


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__file__, "Fashion-MNIST one-class image AUROC per class.", minutes=10)
    parser.add_argument("--data", default=DATA, help=f"folder of the Fashion-MNIST IDX files (default {DATA})")
    parser.add_argument("--classes", type=class_list, default=list(range(10)), help="e.g. 0-9 or 0,3,5-7")
    args = parse(parser, argv)
    results = {"published_mean_auroc_percent": PUBLISHED}
    for k in args.classes:
        settings = run_settings(args, BASE, [f"data.normal_class={k}"])
        splits = load(args.data, make_config(settings, args.device))
        run_group(args, results, str(k), settings, shrink(splits) if args.smoke else splits)
    results["mean_image_auroc"] = mean_over_classes(results["groups"], args.seeds)
    write_results(args, results)
    print_tables(results["groups"], results["mean_image_auroc"])
    print(f"\nresults in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

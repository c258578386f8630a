"""Calibration: do the thresholds keep their promise, and are the masks worth using?

    python benchmarks/calibration.py [--datasets demo grass gravel fashion-mnist] [--split report|selection]
                                     [--seeds 0 1 2] [--classes 0 4 7] [--runs DIR] [--fashion-minutes 5]
    python benchmarks/calibration.py --show results/a.json [results/b.json ...]

For each data set and seed: train with the demo's settings (`funetgan.commands.demo.DEMO_SETTINGS`, the
demo's data options and budget; Fashion-MNIST: its benchmark's settings at --fashion-minutes),
or take the run saved in --runs and calibrate it again with today's code; then measure, on
normal images that played no part in training or calibration, the share the calibrated
thresholds flag against what they promise (1 - score.normal_quantile, and the share the
calibration itself expects from its number of normals):
- same distribution, each on its own: the test split's normals, and for textures FRESH normals
  from photo regions no training, calibration or test crop touches (`data.demo.normal_crops`);
  Fashion-MNIST's test normals are the test file's (report) or the held-out training images'
  (selection);
- shifted domain (textures only): crops from the photo's rows below the training part, where
  the brick photo shows larger bricks: what a change of camera or part would do.
On the test split: image and pixel AUROC, AUPRO, specificity, sensitivity, Dice and IoU of the
masks the library writes, and beside them the oracle Dice: the best plain threshold chosen
on the test masks themselves, never used for a decision, to show the distance.
The same networks are also calibrated as before this benchmark existed ("in-sample": the
density Gaussians fitted on the calibration normals themselves), and, on --split selection,
scored under each mask rule of MASK_RULES: where the library's choices were made.
Data: `make_texture_dataset` with the demo's options (64-px crops, "checker" layout, 300
training crops and 100 calibration normals from regions of their own), data seed = the run's
seed on the report split (the demo's own data), 100 + seed on the selection split, whose tests
come from other regions of the photo than the report split's.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from common import (
    budget,
    data_folder,
    fmt,
    load,
    make_config,
    make_parser,
    mean_std,
    parse,
    summarise,
    table,
    write_results,
)
from fashion_mnist import BASE as FASHION_BASE
from fashion_mnist import DATA as FASHION_DATA
from fashion_mnist import selection_split, shrink
from funetgan.scoring.calibration import calibration_split
from funetgan.commands.demo import DEMO_DATA, DEMO_DATA_SETTINGS, DEMO_SETTINGS
from funetgan.data import ImageSet, Splits
from funetgan.data.demo import make_texture_dataset, normal_crops
from funetgan.scoring.masks import MaskRule
from funetgan.evaluation.metrics import evaluate
from funetgan.model import FUNetGAN
from funetgan.scoring.pixel_histogram import PixelHistogram
from funetgan.scoring.thresholds import quantile_pixel_threshold, rank_threshold

DATASETS = ("demo", "grass", "gravel", "fashion-mnist")  # "demo": the demo's brick set itself
EXTRA_NORMALS = 400  # fresh and shifted crops per texture run
SELECTION_DATA_SEED = 100  # + the run's seed: the selection split's texture data
# The promise's target band, in units of 1 - q (issue 26).
TARGET = (0.5, 2.0)
NOT_MEASURED = {"mean": None, "std": None, "n": 0}
# Normals are measured apart (older results files pooled the test and fresh normals as "_same").
NORMALS = ("test_normals", "fresh", "shifted")
SUMMARY = (
    *(f"{rate}_{normals}" for rate in ("image_rate", "pixel_rate", "masked_images") for normals in NORMALS),
    "expected_image_rate",
    "dice",
    "iou",
    "oracle_dice",
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "specificity",
    "sensitivity",
    "in_sample_image_rate_test_normals",
    "in_sample_image_rate_fresh",
    "in_sample_specificity",
    "in_sample_dice",
)


# ---- data and runs ---------------------------------------------------------------------------
def texture_data(dataset: str, split: str, seed: int, crop: int, folder: Path, smoke: bool) -> Path:
    """The demo's data (another texture for grass and gravel) of `split`."""
    data_seed = seed + (SELECTION_DATA_SEED if split == "selection" else 0)
    options = dict(DEMO_DATA, n_train=16, n_calibration=8, n_test_good=4, n_per_defect=1) if smoke else DEMO_DATA
    return make_texture_dataset(
        folder / f"{dataset}-{split}-data{data_seed}",
        texture_of(dataset),
        crop=crop,
        seed=data_seed,
        split=split,
        **options,
    )


def texture_of(dataset: str) -> str:
    return "brick" if dataset == "demo" else dataset


def run_folder(args, dataset: str, seed: int) -> Path | None:
    return None if args.runs is None else Path(args.runs) / f"{dataset}-{args.split}-s{seed}"


def trained(config, splits: Splits, folder: Path | None) -> tuple[FUNetGAN, float]:
    """A trained, calibrated model: the run in `folder` calibrated again (today's code and
    scoring settings, so --set score.* can be measured without training again), or a
    new one trained there (or nowhere); and its training minutes (0 when reused)."""
    if folder is not None and (folder / "model.safetensors").exists():
        model = FUNetGAN.load(folder, device=config.device, calibrated=False)
        model.config.score = config.score  # today's scoring choices (--set score.*) on the trained networks
        model.recalibrate(splits.train, splits.val)
        return model, 0.0
    started = time.perf_counter()
    model = FUNetGAN(config).fit(splits.train, splits.val, run_dir=folder)
    return model, (time.perf_counter() - started) / 60


# ---- measurements ----------------------------------------------------------------------------
def flag_rates(model: FUNetGAN, images: np.ndarray, rule: MaskRule) -> dict:
    """Of normal `images`: the share flagged, of their pixels at or above the pixel threshold,
    of them with any mask pixel, of their pixels in a mask."""
    result = model.score(images)
    flagged = result.scores >= model.image_threshold
    masks = rule(result.maps, flagged)
    return {
        "image": float(flagged.mean()),
        "pixel": float((result.maps >= model.pixel_threshold).mean()),
        "masked_images": float(masks.reshape(len(masks), -1).any(1).mean()),
        "masked_pixels": float(masks.mean()),
    }


def segmentation(predicted: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Dice and IoU, micro-averaged over every pixel of the test images (normals add false
    positives only), as `metrics.pixel_metrics`."""
    tp = np.count_nonzero(predicted & truth)
    fp, fn = np.count_nonzero(predicted & ~truth), np.count_nonzero(~predicted & truth)
    return 2 * tp / max(2 * tp + fp + fn, 1), tp / max(tp + fp + fn, 1)


def oracle_dice(maps: np.ndarray, truth: np.ndarray) -> float:
    """The best Dice of a plain threshold chosen on the test masks themselves (an oracle: never
    what a decision uses), over 400 candidate thresholds spread over the maps' quantiles."""
    candidates = np.quantile(maps, np.linspace(0.5, 0.99999, 400))
    return max(segmentation(maps >= t, truth)[0] for t in candidates)


def mask_rules(model: FUNetGAN, normals: ImageSet) -> dict[str, MaskRule]:
    """The levers measured on the selection split: thresholds from the calibration normals'
    maps (pixel quantiles; quantiles of each image's largest value, the per-image rate),
    hysteresis between them, masks only in flagged images, a smallest region."""
    maps = model.score(normals.images).maps[normals.labels == 0]
    histogram = PixelHistogram()
    histogram.add(maps)
    pixel = {q: quantile_pixel_threshold(histogram.curves(), q) for q in (0.99, 0.999)}
    peak = {q: rank_threshold(maps.reshape(len(maps), -1).max(1), q)[0] for q in (0.9, 0.99)}
    rules = {
        "pixel quantile 0.99 (the default)": MaskRule(pixel[0.99]),
        "pixel quantile 0.999": MaskRule(pixel[0.999]),
        "per-image rate 0.99": MaskRule(peak[0.99]),
        "per-image rate 0.9": MaskRule(peak[0.9]),
    }
    for share in (0.5, 0.75):
        rules[f"hysteresis: per-image 0.99, grow at {share:g} of it"] = MaskRule(share * peak[0.99], peak[0.99])
    rules["hysteresis: per-image 0.99, grow at pixel 0.99"] = MaskRule(pixel[0.99], peak[0.99])
    for name, rule in list(rules.items()):
        rules[f"{name}, flagged images only"] = dataclasses.replace(rule, flagged_only=True)
    for area in (0.005, 0.02):
        rules[f"per-image rate 0.99, regions >= {area:g} of the image"] = MaskRule(peak[0.99], min_area=area)
    return rules


def in_sample(model: FUNetGAN, normals: ImageSet) -> FUNetGAN:
    """The same networks calibrated as before: the densities fitted on the calibration normals
    themselves, levels and thresholds then taken on them (a copy; `model` is left as it is)."""
    other = FUNetGAN(model.config, model.runtime)
    for name in ("G", "D", "E"):
        getattr(other, name).load_state_dict(getattr(model, name).state_dict())
    other.calibrate(normals, normals.images)
    return other


def measure(
    model: FUNetGAN, splits: Splits, normals: ImageSet, extra: dict[str, np.ndarray], alternatives: bool
) -> dict:
    test = splits.test
    result = model.score(test)
    flagged = result.scores >= model.image_threshold
    rule = model.mask_rule
    metrics = evaluate(result.scores, result.maps, test, model.image_threshold, rule)
    truth = np.zeros(test.images.shape[:3], bool) if test.masks is None else test.masks.astype(bool)
    found = {
        "normals_calibrated": model.calibration.normals,
        "expected_image_rate": model.calibration.expected_image_rate,
        "thresholds": {"image": model.image_threshold, "pixel": model.pixel_threshold},
        "image_auroc": metrics["image"]["auroc"],
        "specificity": metrics["image"]["specificity"],
        "sensitivity": metrics["image"]["sensitivity"],
        "pixel_auroc": metrics.get("pixel", {}).get("auroc"),
        "aupro": metrics.get("pixel", {}).get("aupro"),
        "dice": None,
        "iou": None,
        "oracle_dice": None,
        "metrics": metrics,
    }
    if test.masks is not None:
        found["dice"], found["iou"] = segmentation(rule(result.maps, flagged), truth)
        found["oracle_dice"] = oracle_dice(result.maps, truth)
    sets = {"test_normals": test.images[test.labels == 0], **extra}
    before = in_sample(model, normals)
    for name in NORMALS:  # each kind of normals apart: never pooled
        rates = flag_rates(model, sets[name], rule) if len(sets.get(name, ())) else {}
        found.update(
            {
                f"{rate}_{name}": rates.get(key)
                for rate, key in (
                    ("image_rate", "image"),
                    ("pixel_rate", "pixel"),
                    ("masked_images", "masked_images"),
                    ("masked_pixels", "masked_pixels"),
                )
            }
        )
        if name != "shifted":
            found[f"in_sample_image_rate_{name}"] = (
                flag_rates(before, sets[name], before.mask_rule)["image"] if rates else None
            )
    old = before.score(test)
    old_metrics = evaluate(old.scores, old.maps, test, before.image_threshold, before.mask_rule)
    found.update(
        in_sample_specificity=old_metrics["image"]["specificity"],
        in_sample_dice=old_metrics.get("pixel", {}).get("dice"),
    )
    if alternatives and test.masks is not None:
        found["mask_rules"] = {
            name: dict(zip(("dice", "iou"), segmentation(alternative(result.maps, flagged), truth)))
            for name, alternative in mask_rules(model, normals).items()
        }
    return found


# ---- the benchmark ---------------------------------------------------------------------------
def run_dataset(args, results: dict, dataset: str, name: str, folder: Path) -> None:
    group = results.setdefault("groups", {})[name] = {"runs": []}
    for seed in args.seeds:
        print(f"== {name}, seed {seed}", file=sys.stderr, flush=True)
        config, splits, extra = prepare(args, dataset, name, seed, folder)
        model, minutes = trained(config, splits, run_folder(args, name, seed))
        _, normals = calibration_split(splits.train, splits.val, config.data.val_fraction, config.seed)
        found = measure(model, splits, normals, extra, args.split == "selection")
        group["runs"].append(
            {
                "seed": seed,
                "train_minutes": minutes,
                "steps": model.training,
                "settings": model.config.to_dict(),
                **found,
            }
        )
        group["summary"] = summarise(group["runs"], SUMMARY)
        write_results(args, results)


def prepare(args, dataset: str, name: str, seed: int, folder: Path):
    """The settings, splits and extra normals (same distribution, shifted) of one run."""
    if dataset == "fashion-mnist":
        k = int(name.rpartition("-")[2])
        settings = [*FASHION_BASE, f"data.normal_class={k}", *budget(args.fashion_minutes), *args.set]
        config = make_config(settings, args.device, seed)
        splits = (
            load(args.data, config)
            if args.split == "report"
            else selection_split(args.data, k, config.model.image_size, config.model.channels)
        )
        return config, shrink(splits) if args.smoke else splits, {}
    smoke = (
        [
            "model.width=4",
            "model.z_dim=16",
            "batch_size=4",
            "gan.iterations=2",
            "gan.warmup_iterations=2",
            "encoder.iterations=2",
        ]
        if args.smoke
        else []
    )
    config = make_config([*DEMO_SETTINGS, *DEMO_DATA_SETTINGS, *smoke, *args.set], args.device, seed)
    crop = 2 * config.model.image_size
    data = texture_data(dataset, args.split, seed, crop, folder, args.smoke)
    count = 8 if args.smoke else EXTRA_NORMALS
    extra = {
        part: normal_crops(texture_of(dataset), crop, count, part, 10_000 + seed)[..., None]
        for part in ("fresh", "shifted")
    }
    return config, load(data, config), extra


def print_tables(results: dict) -> None:
    q = results["normal_quantile"]
    band = f"{TARGET[0] * (1 - q):.1%}-{TARGET[1] * (1 - q):.1%}"
    groups = results["groups"]
    rows = []
    for name, group in groups.items():
        s = {key: group["summary"].get(key, NOT_MEASURED) for key in SUMMARY}
        rows.append(
            [
                name,
                str(len(group["runs"])),
                *(mean_std(s[f"image_rate_{n}"], 100, 1) for n in NORMALS),
                mean_std(s["expected_image_rate"], 100, 1),
                *(mean_std(s[f"pixel_rate_{n}"], 100, 2) for n in NORMALS),
                mean_std(s["in_sample_image_rate_test_normals"], 100, 1),
                mean_std(s["in_sample_image_rate_fresh"], 100, 1),
            ]
        )
    print(
        f"normal images (pixels) flagged, % (promise: {100 * (1 - q):g} %, target band {band} on the same "
        f"distribution: test and fresh normals, each on its own); mean ± std over seeds"
    )
    print(
        table(
            [
                "data",
                "seeds",
                "images: test normals",
                "fresh",
                "shifted",
                "expected",
                "pixels: test normals",
                "fresh",
                "shifted",
                "in-sample calibration: test normals",
                "fresh",
            ],
            rows,
        )
    )
    if any("image_rate_same" in g["summary"] for g in groups.values()):
        print("(an older file: its fresh normals were pooled with the test normals as image_rate_same)")
    rows = [
        [
            name,
            *(
                mean_std(s.get(key, NOT_MEASURED))
                for key in (
                    "dice",
                    "iou",
                    "oracle_dice",
                    "in_sample_dice",
                    "specificity",
                    "in_sample_specificity",
                    "image_auroc",
                    "pixel_auroc",
                    "aupro",
                )
            ),
        ]
        for name, s in ((name, g["summary"]) for name, g in groups.items())
    ]
    print(
        "\ntest split: masks at the calibrated thresholds, the oracle (threshold chosen on the test masks: never "
        "used for decisions), specificity; in-sample: the same networks calibrated as before"
    )
    print(
        table(
            [
                "data",
                "Dice",
                "IoU",
                "oracle Dice",
                "in-sample Dice",
                "specificity",
                "in-sample spec.",
                "image AUROC",
                "pixel AUROC",
                "AUPRO",
            ],
            rows,
        )
    )
    rules = [name for g in groups.values() for run in g["runs"] for name in run.get("mask_rules", {})]
    if rules:
        names = list(dict.fromkeys(rules))
        cells = [
            [
                rule,
                *(
                    fmt(
                        statistics.fmean(
                            run["mask_rules"][rule]["dice"] for run in g["runs"] if rule in run.get("mask_rules", {})
                        )
                    )
                    if any(rule in run.get("mask_rules", {}) for run in g["runs"])
                    else "-"
                    for g in groups.values()
                ),
            ]
            for rule in names
        ]
        print("\nmask rules (Dice, mean over seeds)")
        print(table(["rule", *groups], cells))


def show(paths: list[str]) -> int:
    for path in paths:
        document = json.loads(Path(path).read_text())
        print(f"{path}: {document['date']}, {document['results']['split']} split; {document['command']}")
        print_tables(document["results"])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__file__, "Calibration's promise (flag rates on unseen normals) and the masks' Dice.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one run per seed")
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--classes", type=int, nargs="+", default=[0, 4, 7], help="Fashion-MNIST normal classes")
    parser.add_argument("--split", choices=("report", "selection"), default="report")
    parser.add_argument("--fashion-minutes", type=float, default=5.0, help="Fashion-MNIST training budget per run")
    parser.add_argument("--data", default=FASHION_DATA, help="folder of the Fashion-MNIST IDX files")
    parser.add_argument(
        "--data-dir", help="folder for the generated texture data (default: --runs, or a temporary one)"
    )
    parser.add_argument(
        "--runs",
        help="folder to keep each trained run in and take it from when there (calibrated again with today's code)",
    )
    parser.add_argument("--show", nargs="+", metavar="JSON", help="print the tables of earlier results files")
    args = parse(parser, argv)
    if args.show:
        return show(args.show)
    results = {
        "split": args.split,
        "normal_quantile": make_config([], args.device).score.normal_quantile,
        "target_band": TARGET,
    }
    with data_folder(args.data_dir or args.runs) as folder:
        for dataset in args.datasets:
            names = [f"fashion-mnist-{k}" for k in args.classes] if dataset == "fashion-mnist" else [dataset]
            for name in names:
                run_dataset(args, results, dataset, name, Path(folder))
    print_tables(results)
    print(f"\nresults in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

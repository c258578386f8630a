"""Built-in textures (real brick and grass photos, synthetic defects with exact masks):
detection and segmentation beside the issue's targets.

    python benchmarks/textures.py [--textures brick grass] [--minutes 15] [--seeds 0] [--out results/textures.json]

Each texture's set is made deterministically (`make_texture_dataset` with the demo's options,
data seed 0: 300 training crops, 100 calibration normals from regions no training crop
touches, 40 normal and 60 defective test crops of 64 px, twice the model's size) in --data-dir
or a temporary folder. Model: the demo's settings (`funetgan.commands.demo.DEMO_SETTINGS`: 32x32x1, the CPU
recipe) with the budget of --minutes. Also printed: the same models under other scoring
settings (`common.SCORING_ALTERNATIVES`).
"""

from __future__ import annotations

import sys

from common import (
    alternatives_table,
    data_folder,
    fmt,
    load,
    make_config,
    make_parser,
    mean_std,
    parse,
    run_group,
    run_settings,
    table,
    texture_data,
    write_results,
)
from funetgan.commands.demo import DEMO_SETTINGS
from funetgan.data.demo import TEXTURES

TARGETS = {"image_auroc": 0.95, "pixel_auroc": 0.95, "train_minutes": 15.0}  # issue 5


def meets_targets(summary: dict) -> bool:
    means = {key: summary[key]["mean"] for key in TARGETS}
    if None in means.values():
        return False
    return (
        means["image_auroc"] >= TARGETS["image_auroc"]
        and means["pixel_auroc"] >= TARGETS["pixel_auroc"]
        and means["train_minutes"] <= TARGETS["train_minutes"]
    )


def print_table(groups: dict) -> None:
    rows = [
        [
            name,
            mean_std(s["image_auroc"]),
            mean_std(s["pixel_auroc"]),
            mean_std(s["aupro"]),
            fmt(s["train_minutes"]["mean"], 1),
            "yes" if meets_targets(s) else "no",
        ]
        for name, s in ((name, g["summary"]) for name, g in groups.items())
    ]
    rows.append(
        [
            "target",
            f">= {TARGETS['image_auroc']}",
            f">= {TARGETS['pixel_auroc']}",
            "",
            f"<= {TARGETS['train_minutes']:g}",
            "",
        ]
    )
    print(table(["texture", "image AUROC", "pixel AUROC", "AUPRO", "train min", "met"], rows))
    print("\nthe same models under other scoring settings (default: kappa 1, izif)")
    print(alternatives_table(groups))


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__file__, "Detection and segmentation on the built-in textures.", minutes=15)
    parser.add_argument("--textures", nargs="+", choices=TEXTURES, default=list(TEXTURES))
    parser.add_argument("--data-dir", help="folder for the generated data (default: a temporary one)")
    args = parse(parser, argv)
    results = {"targets": TARGETS}
    settings = run_settings(args, DEMO_SETTINGS)
    with data_folder(args.data_dir) as folder:
        for texture in args.textures:
            config = make_config(settings, args.device)
            splits = load(texture_data(texture, folder, args.smoke, config.model.image_size), config)
            run_group(args, results, texture, settings, splits)
    for group in results["groups"].values():
        group["meets_targets"] = meets_targets(group["summary"])
    write_results(args, results)
    print_table(results["groups"])
    print(f"\nresults in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Ablation: the four discriminator variants and the f-AnoGAN baseline on the same data and
budget, over several seeds.

    python benchmarks/ablation.py [--data texture:brick | DATASET] [--minutes 7] [--seeds 0 1 2]
                                  [--variants conv res_attn f-AnoGAN] [--out results/ablation.json]

Every variant trains for the same wall-clock budget (--minutes), so a slower variant gets
fewer steps: the comparison is at equal cost. Model: the demo's settings
(`funetgan.commands.demo.DEMO_SETTINGS`: 32x32x1, its CPU training recipe); for another dataset set
its size with e.g. --set model.image_size=128 --set model.channels=3.
"""

from __future__ import annotations

import sys

from common import (
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
)
from funetgan.commands.demo import DEMO_SETTINGS
from funetgan.data.demo import TEXTURES

VARIANTS = {
    "conv": ["model.variant=conv"],
    "conv_attn": ["model.variant=conv_attn"],
    "res": ["model.variant=res"],
    "res_attn": ["model.variant=res_attn"],
    # f-AnoGAN: the ordinary WGAN-GP ResNet critic (global head only, no consistency term);
    # E is trained with izi_f on its features and the map is the image residual alone.
    "f-AnoGAN": ["model.variant=res", "model.critic_head=global", "gan.consistency=none"],
}
TEXTURE_PREFIX = "texture:"


def print_table(groups: dict) -> None:
    print(
        table(
            ["variant", "image AUROC", "pixel AUROC", "AUPRO", "train min", "seeds"],
            [
                [
                    name,
                    mean_std(s["image_auroc"]),
                    mean_std(s["pixel_auroc"]),
                    mean_std(s["aupro"]),
                    fmt(s["train_minutes"]["mean"], 1),
                    str(s["image_auroc"]["n"]),
                ]
                for name, s in ((name, g["summary"]) for name, g in groups.items())
            ],
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__file__, "D variants and the f-AnoGAN baseline at equal budget.", minutes=7, seeds=(0, 1, 2))
    parser.add_argument(
        "--data",
        default="texture:brick",
        help=f"a dataset folder, or {TEXTURE_PREFIX}NAME, a built-in texture "
        f"({', '.join(TEXTURES)}; default %(default)s)",
    )
    parser.add_argument("--data-dir", help="folder for a generated texture set (default: a temporary one)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    args = parse(parser, argv)
    results = {"variants": {name: VARIANTS[name] for name in args.variants}}
    with data_folder(args.data_dir) as folder:
        data, config = args.data, make_config(run_settings(args, DEMO_SETTINGS), args.device)
        if data.startswith(TEXTURE_PREFIX):
            data = texture_data(data.removeprefix(TEXTURE_PREFIX), folder, args.smoke, config.model.image_size)
        splits = load(data, config)
        for name in args.variants:
            run_group(args, results, name, run_settings(args, DEMO_SETTINGS, VARIANTS[name]), splits)
    print_table(results["groups"])
    print(f"\nresults in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Localisation: F-UNetGAN's maps against the f-AnoGAN baseline's, on three mask-labelled
texture sets, at equal training budgets, over several seeds (issue 10's table).

    python benchmarks/localisation.py [--textures brick grass gravel] [--models F-UNetGAN f-AnoGAN]
                                      [--resolution 256] [--minutes 6] [--seeds 0 1 2]
                                      [--split report|selection] [--previews DIR]
    python benchmarks/localisation.py --show results/a.json results/b.json   # tables of earlier runs

Data: `common.texture_set` (256-px crops of scikit-image's brick, grass and gravel photos,
training crops from the top half, test crops from the bottom half, half of the defects at a
quarter size); `--split selection` (data seed 1) is where scoring settings are chosen,
`--split report` (data seed 0) is what the README reports. Models: the demo's settings
(`funetgan.commands.demo.DEMO_SETTINGS`, 32x32x1 networks, the CPU recipe) with `--resolution`
(working resolution: 32-px patches and tiles; "whole" resizes crops to 32 px); f-AnoGAN is
the same recipe with the ordinary global ResNet critic and no consistency term. The baseline scores
as published (residual maps only: `score.density_weight=0`, `score.smoothness_weight=0`; izif
without the latent term or the smoothness evidence: `score.latent_density_weight=0`,
`score.image_smoothness_weight=0`).
Pixel metrics at the crops' own resolution. Every run also reports the same networks under the
scoring settings of ALTERNATIVES (one pass of the networks): the feature-density and the
smoothness terms at several weights (for the baseline, the density on its own critic's
bottleneck), and the margin table is printed a second time against the baseline given the
default's map terms, which says how much of the margin the U-Net critic itself brings.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from common import (
    CROP,
    SPLIT_SEEDS,
    SUMMARY_KEYS,
    at_resolution,
    data_folder,
    fmt,
    make_parser,
    mean_std,
    parse,
    print_crop_alternatives,
    run_crop_group,
    run_settings,
    summarise,
    table,
    texture_set,
)
from funetgan.commands.demo import DEMO_SETTINGS
from funetgan.data.demo import TEXTURES
from funetgan.scoring.terms import Terms

MODELS = {
    "F-UNetGAN": [],  # the library's defaults: res_attn U-Net critic, consistency term
    "f-AnoGAN": [
        "model.variant=res",
        "model.critic_head=global",
        "gan.consistency=none",
        "score.density_weight=0",
        "score.smoothness_weight=0",
        "score.latent_density_weight=0",
        "score.image_smoothness_weight=0",
    ],
}
# Targets of issue 10: the default's margin over the baseline, and absolute levels.
MARGIN = {"pixel_auroc": 0.02, "aupro": 0.03}
ABSOLUTE = {"brick": {"pixel_auroc": 0.97, "image_auroc": 0.95}, "grass": {"pixel_auroc": 0.92, "image_auroc": 0.85}}
IZIF_ALONE = {"image_smoothness_weight": 0.0}
ALTERNATIVES = {
    "density 0, smoothness 0 (residual maps only)": {"density_weight": 0.0, "smoothness_weight": 0.0},
    **{f"density {w:g}, smoothness 0": {"density_weight": w, "smoothness_weight": 0.0} for w in (1.0, 2.0)},
    **{f"density 1, smoothness {w:g}": {"density_weight": 1.0, "smoothness_weight": w} for w in (1.0, 2.0, 4.0)},
    "density 0, smoothness 2": {"density_weight": 0.0, "smoothness_weight": 2.0},
    "density 2, smoothness 2": {"density_weight": 2.0, "smoothness_weight": 2.0},
    # The map's blur on the stitched map (default: scoring.TILED_BLUR x 1 px at 32 px = 2 px).
    # This row and those below change what the image score's evidence was standardised by at
    # calibration (calibration.image_evidence_levels), so they score images by izif alone, as before the
    # smoothness evidence existed (their image AUROC compares with earlier results files).
    **{
        f"density 1, smoothness 2, blur {sigma:g} px": {
            "density_weight": 1.0,
            "smoothness_weight": 2.0,
            "blur_sigma": sigma,
            **IZIF_ALONE,
        }
        for sigma in (1.0, 3.0)
    },
    "density 0, smoothness 0, blur 1 px (residual maps as scored before)": {
        "density_weight": 0.0,
        "smoothness_weight": 0.0,
        "blur_sigma": 1.0,
        **IZIF_ALONE,
    },
    **{
        f"density 1, smoothness 2, kappa {kappa:g}": {
            "density_weight": 1.0,
            "smoothness_weight": 2.0,
            "kappa": kappa,
            **IZIF_ALONE,
        }
        for kappa in (0.0, 0.5)
    },
    "density 1, smoothness 2, top 1% of map as image score": {
        "density_weight": 1.0,
        "smoothness_weight": 2.0,
        "image_score": "topk",
    },
    # izif's latent-density term (image AUROC only; the maps are the default's).
    **{
        f"density 1, smoothness 2, latent density {latent:g}": {
            "density_weight": 1.0,
            "smoothness_weight": 2.0,
            "latent_density_weight": latent,
            **IZIF_ALONE,
        }
        for latent in (0.0, 16.0)
    },
    # The image's smoothest region beside izif (the default on tiled images: weight 1).
    **{
        f"density 1, smoothness 2, image smoothness {weight:g}": {
            "density_weight": 1.0,
            "smoothness_weight": 2.0,
            "image_smoothness_weight": weight,
        }
        for weight in (0.0, 2.0)
    },
}


def preview_writer(folder: str | None):
    """A `run_crop_group` look-hook writing, per run, a strip of test crops with defects (rows:
    crop, true mask, default map, density-only map, smoothness-only map), or None without
    --previews."""
    if folder is None:
        return None

    def write(name: str, seed: int, model, terms, truth) -> None:
        rows = np.flatnonzero(truth.labels == 1)[::12][:8]  # a crop of each defect kind
        alone = Terms({**terms.arrays, "pixel_residual": np.zeros_like(terms["pixel_residual"])}, terms.region)
        density, smoothness = (
            dataclasses.replace(model.config.score, kappa=0.0, density_weight=d, smoothness_weight=s)
            for d, s in ((1.0, 0.0), (0.0, 1.0))
        )
        size = truth.images.shape[1:3]
        strips = [truth.images[rows, ..., 0].astype(np.float32), truth.masks[rows].astype(np.float32) * 255]
        for settings, source in ((None, terms), (density, alone), (smoothness, alone)):
            maps = at_resolution(model.scores_from_terms(source, settings).maps[rows], size)
            low, high = np.percentile(maps, [1, 99])
            strips.append(np.clip((maps - low) / max(high - low, 1e-12), 0, 1) * 255)
        grid = np.concatenate([np.concatenate(list(strip), axis=1) for strip in strips], axis=0)
        Path(folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid.astype(np.uint8)).save(Path(folder) / f"{name.replace(' ', '-')}-seed{seed}.png")

    return write


def comparison(groups: dict, texture: str, models: list[str], scoring: str | None = None) -> list[str] | None:
    """Margin of the first model over the second on `texture` (pixel AUROC, AUPRO), and
    whether the seed ranges (min..max) are apart and the targets met; with `scoring` (an
    ALTERNATIVES name), the second model's figures under that scoring setting."""
    if len(models) < 2 or any(f"{texture} {m}" not in groups for m in models[:2]):
        return None
    first, second = (groups[f"{texture} {m}"]["runs"] for m in models[:2])
    if scoring is not None:
        second = [run["scoring_alternatives"][scoring] for run in second if scoring in run["scoring_alternatives"]]
        if not second:
            return None
    cells = [texture]
    for key, margin in MARGIN.items():
        ours, theirs = [r[key] for r in first], [r[key] for r in second]
        gap = statistics.fmean(ours) - statistics.fmean(theirs)
        apart = min(ours) > max(theirs) or max(ours) < min(theirs)
        cells += [f"{gap:+.3f}", "yes" if apart else "no", "yes" if gap >= margin and apart else "no"]
    return cells


def absolute(texture: str, summary: dict) -> str:
    targets = ABSOLUTE.get(texture)
    if not targets:
        return "-"
    return "yes" if all((summary[k]["mean"] or 0) >= v for k, v in targets.items()) else "no"


def print_tables(groups: dict, textures: list[str], models: list[str]) -> None:
    print(
        table(
            [
                "texture model",
                "image AUROC",
                "pixel AUROC",
                "AUPRO",
                "small defects pixel AUROC",
                "train min",
                "seeds",
                "absolute target",
            ],
            [
                [
                    name,
                    mean_std(s["image_auroc"]),
                    mean_std(s["pixel_auroc"]),
                    mean_std(s["aupro"]),
                    mean_std(s["small_defects_pixel_auroc"]),
                    fmt(s["train_minutes"]["mean"], 1),
                    str(s["image_auroc"]["n"]),
                    absolute(name.split()[0], s),
                ]
                for name, s in ((name, g["summary"]) for name, g in groups.items())
            ],
        )
    )
    for scoring in (None, same_map(groups, models[0])):
        rows = [row for row in (comparison(groups, t, models, scoring) for t in textures) if row]
        if rows:
            against = models[1] if scoring is None else f"{models[1]} scored with '{scoring}'"
            print(
                f"\n{models[0]} minus {against} (target: >= {MARGIN['pixel_auroc']} pixel AUROC and "
                f">= {MARGIN['aupro']} AUPRO, seed ranges apart)"
            )
            print(table(["texture", "pixel AUROC", "apart", "met", "AUPRO", "apart", "met"], rows))


def same_map(groups: dict, model: str) -> str | None:
    """The ALTERNATIVES name of `model`'s map weights (density and smoothness), when all its
    runs share them, they are not both 0 and ALTERNATIVES has them."""
    weights = {
        (run["settings"]["score"].get("density_weight", 0.0), run["settings"]["score"].get("smoothness_weight", 0.0))
        for name, group in groups.items()
        if name.endswith(f" {model}")
        for run in group["runs"]
    }
    name = "density {:g}, smoothness {:g}".format(*weights.pop()) if len(weights) == 1 else None
    return name if name in ALTERNATIVES else None


def show(paths: list[str]) -> int:
    """The tables of earlier results files: groups of the same name (other seeds) pooled."""
    documents = [json.loads(Path(path).read_text()) for path in paths]
    groups: dict[str, dict] = {}
    for document in documents:
        for name, group in document["results"].get("groups", {}).items():
            groups.setdefault(name, {"runs": []})["runs"] += group["runs"]
    for group in groups.values():
        group["summary"] = summarise(group["runs"], SUMMARY_KEYS)
    models = list(dict.fromkeys(m for d in documents for m in d["results"]["models"]))
    textures = list(dict.fromkeys(name.split()[0] for name in groups))
    for path, d in zip(paths, documents):
        print(
            f"{path}: {d['date']}, {d['results']['split']} split, working resolution "
            f"{d['results']['resolution']}; {d['command']}"
        )
    print_tables(groups, textures, models)
    print_crop_alternatives(groups, ALTERNATIVES)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(
        __file__, "F-UNetGAN's maps against the f-AnoGAN baseline's on three textures.", minutes=6, seeds=(0, 1, 2)
    )
    parser.add_argument("--textures", nargs="+", choices=TEXTURES, default=list(TEXTURES))
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument(
        "--resolution",
        default=str(CROP),
        help="working resolution in px (32-px patches and tiles), or 'whole' (default %(default)s)",
    )
    parser.add_argument(
        "--split",
        choices=list(SPLIT_SEEDS),
        default="report",
        help="selection: the set settings are chosen on; report: the set the README reports",
    )
    parser.add_argument("--data-dir", help="folder for the generated data (default: a temporary one)")
    parser.add_argument(
        "--show",
        nargs="+",
        metavar="JSON",
        help="train nothing: print the tables of earlier results files together (e.g. one per model, run side by side)",
    )
    parser.add_argument(
        "--previews",
        help="folder for a PNG per run: defective test crops, their "
        "masks, the default map, the density-only and the smoothness-only map",
    )
    args = parse(parser, argv)
    if args.show:
        return show(args.show)
    resolution = "64" if args.smoke and args.resolution != "whole" else args.resolution
    results = {
        "split": args.split,
        "resolution": resolution,
        "models": {m: MODELS[m] for m in args.models},
        "margin_target": MARGIN,
        "absolute_targets": ABSOLUTE,
    }
    working = [] if resolution == "whole" else [f"data.resolution={resolution}"]
    with data_folder(args.data_dir) as folder:
        for texture in args.textures:
            data = texture_set(folder, texture, args.split, args.smoke)
            for model in args.models:
                settings = run_settings(args, DEMO_SETTINGS, working, MODELS[model])
                run_crop_group(
                    args, results, f"{texture} {model}", settings, data, ALTERNATIVES, preview_writer(args.previews)
                )
    print(f"{args.split} split; working resolution {resolution}; pixel metrics at the crops' own size")
    print_tables(results["groups"], args.textures, args.models)
    print_crop_alternatives(results["groups"], ALTERNATIVES, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the benchmark scripts share: command-line options, settings under a wall-clock
budget, one fit + score + evaluate run, a description of the machine, tables, and the JSON
results file."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from funetgan.commands.demo import DEMO_DATA
from funetgan.config import Config, ScoreConfig, apply_overrides, working_size
from funetgan.data import DataError, ImageSet, Splits, load_dataset
from funetgan.data.demo import make_texture_dataset
from funetgan.evaluation.metrics import evaluate
from funetgan.files import atomic_write_text
from funetgan.model import FUNetGAN
from funetgan.runtime import select_device
from funetgan.scoring.terms import Terms, all_terms

# Share of each run's --minutes given to stage 1 (G and D); stage 2 (E) gets the rest. E
# converges much faster than the GAN (the demo's tuned split is 5.5 / 1.5 min).
GAN_SHARE = 0.75
# Step counts so large that the time budget, not the count, ends each stage: variants then
# compare at equal cost whatever their speed.
UNBOUNDED = 1_000_000
SMOKE_SETTINGS = [
    "model.image_size=32",
    "model.width=4",
    "model.z_dim=16",
    "batch_size=4",
    "gan.n_critic=1",
    "gan.iterations=2",
    "gan.warmup_iterations=2",
    "encoder.iterations=2",
]
# Other scoring settings measured on every benchmark run, from the same networks' outputs:
# D-feature residuals in the map and image score or not (kappa), the image score, and izif's
# latent-density term (`score.latent_density_weight`; 0: izif as METHOD.md).
SCORING_ALTERNATIVES = {
    **{
        f"kappa {kappa:g}, {name}": {"kappa": kappa, "image_score": score}
        for kappa in (1.0, 0.0)
        for name, score in (("izif", "izif"), ("max of map", "max"), ("top 1% of map", "topk"))
    },
    **{
        f"kappa 1, izif + latent density {latent:g}": {
            "kappa": 1.0,
            "image_score": "izif",
            "latent_density_weight": latent,
        }
        for latent in (0.0, 2.0, 16.0)
    },
}
HEADLINE = {"image_auroc": ("image", "auroc"), "pixel_auroc": ("pixel", "auroc"), "aupro": ("pixel", "aupro")}
# Texture sets at full crop size (benchmarks of working resolution and localisation): crops of
# CROP px, two data seeds: "selection" (where settings are chosen) and "report" (the README's).
CROP = 256
SPLIT_SEEDS = {"report": 0, "selection": 1}
SUMMARY_KEYS = (*HEADLINE, "train_minutes", "small_defects_pixel_auroc")  # of a crop-resolution group


# ---- command line ------------------------------------------------------------------------
def make_parser(
    script: str,
    description: str,
    minutes: float | None = None,
    seeds: tuple[int, ...] = (0,),
    thread_counts: tuple[int, ...] | None = None,
) -> argparse.ArgumentParser:
    """The options every benchmark takes; `minutes` None for one that trains nothing;
    `thread_counts`: --threads takes several counts (this default), one measurement each."""
    name = Path(script).stem
    parser = argparse.ArgumentParser(prog=f"benchmarks/{name}.py", description=description)
    if minutes is not None:
        parser.add_argument(
            "--minutes",
            type=float,
            default=minutes,
            help=f"training minutes per run, {GAN_SHARE * 100:.0f}%% GAN, the rest encoder (default %(default)s)",
        )
        parser.add_argument("--seeds", type=int, nargs="+", default=list(seeds), help="one run per seed")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting in every run, e.g. --set gan.n_critic=5 (repeatable; wins "
        "over the script's own settings)",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or mps (default: best available)")
    if thread_counts is None:
        parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    else:
        parser.add_argument(
            "--threads",
            type=int,
            nargs="+",
            default=list(thread_counts),
            help="torch CPU thread counts, one measurement each (default %(default)s)",
        )
    parser.add_argument("--out", default=f"results/{name}.json", help="JSON file of all results")
    parser.add_argument("--smoke", action="store_true", help="tiny data and networks: a seconds-long check")
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.script, args.command = parser.prog, shlex.join(["python", parser.prog, *argv])
    if isinstance(args.threads, int):  # one count for the whole run (scripts measuring several set their own)
        torch.set_num_threads(args.threads)
    return args


# ---- settings ----------------------------------------------------------------------------
def budget(minutes: float) -> list[str]:
    return [
        f"gan.iterations={UNBOUNDED}",
        f"gan.max_minutes={GAN_SHARE * minutes:g}",
        f"encoder.iterations={UNBOUNDED}",
        f"encoder.max_minutes={(1 - GAN_SHARE) * minutes:g}",
    ]


def run_settings(args: argparse.Namespace, *parts: list[str]) -> list[str]:
    """The overrides of one run, later ones winning: `parts` (the script's base settings, the
    variant measured), the time budget (scripts that train), --smoke, then the user's --set."""
    timed = budget(args.minutes) if "minutes" in args else []
    smoke = SMOKE_SETTINGS if args.smoke else []
    return [*(item for part in parts for item in part), *timed, *smoke, *args.set]


def make_config(overrides: list[str], device: str, seed: int = 0) -> Config:
    return apply_overrides(Config(), [*overrides, f"device={device}", f"seed={seed}"])


# ---- data --------------------------------------------------------------------------------
@contextlib.contextmanager
def data_folder(path: str | None) -> Iterator[Path]:
    """`path`, or a temporary folder removed afterwards."""
    if path is not None:
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="funetgan-bench-") as folder:
        yield Path(folder)


def texture_data(texture: str, folder: Path, smoke: bool, image_size: int) -> Path:
    """The built-in texture set with the demo's options (fixed data seed 0: every run and
    variant sees the same files), crops at twice the model's size as in the demo."""
    if smoke:
        return make_texture_dataset(
            folder / f"{texture}-smoke", texture, crop=32, n_train=12, n_calibration=4, n_test_good=4, n_per_defect=2
        )
    return make_texture_dataset(folder / texture, texture, crop=2 * image_size, **DEMO_DATA)


def texture_set(folder: Path, texture: str, split: str, smoke: bool) -> Path:
    """CROP-px crops of `texture` (training from the top half of the photo, tests from the
    bottom half; half of the defects at a quarter size, as `<kind>_small`) for `split`."""
    if smoke:
        return make_texture_dataset(
            folder / f"{texture}-smoke",
            texture,
            crop=64,
            n_train=8,
            n_test_good=4,
            n_per_defect=1,
            train_share=0.5,
            small_defects=0.5,
            layout="below",
        )
    return make_texture_dataset(
        folder / f"{texture}-{split}",
        texture,
        crop=CROP,
        n_train=120,
        n_test_good=40,
        n_per_defect=12,
        seed=SPLIT_SEEDS[split],
        train_share=0.5,
        small_defects=0.5,
        layout="below",
    )


# ---- runs ----------------------------------------------------------------------------------
def load(path: str | Path, config: Config) -> Splits:
    """The set at `config`'s working resolution (the model's size unless data.resolution)."""
    splits = load_dataset(path, working_size(config), config.model.channels, config.data)
    if splits.test is None or not len(splits.test):
        raise DataError(f"{path}: no test images to benchmark on")
    return splits


def train_and_score(config: Config, splits: Splits) -> tuple[FUNetGAN, Terms, dict]:
    """Train on `splits.train` (calibrating on `splits.val` or held-out training normals) and
    run the networks once on `splits.test`: the model, its residual terms and the timings."""
    started = time.perf_counter()
    model = FUNetGAN(config).fit(splits.train, splits.val)
    trained = time.perf_counter()
    terms = model.residual_terms(splits.test.images)
    scored = time.perf_counter()
    return (
        model,
        terms,
        {"train_minutes": (trained - started) / 60, "test_seconds": scored - trained, "test_images": len(splits.test)},
    )


def fit_and_test(config: Config, splits: Splits) -> dict:
    """`train_and_score`, then evaluate with the calibrated thresholds."""
    model, terms, timings = train_and_score(config, splits)
    result = model.scores_from_terms(terms)
    metrics = evaluate(result.scores, result.maps, splits.test, model.image_threshold, model.mask_rule)
    return {
        "seed": config.seed,
        **headline(metrics),
        **timings,
        "settings": config.to_dict(),
        "metrics": metrics,
        "scoring_alternatives": scoring_alternatives(model, terms, splits.test),
    }


def scoring_alternatives(model: FUNetGAN, terms: Terms, test: ImageSet) -> dict:
    """Headline figures of the same trained model under each of SCORING_ALTERNATIVES, from the
    networks' outputs on `test` (`terms`; threshold-free figures only: the thresholds belong
    to the default)."""
    figures = {}
    for name, changes in SCORING_ALTERNATIVES.items():
        if calibrated_for(model, changes):
            result = model.scores_from_terms(terms, dataclasses.replace(model.config.score, **changes))
            metrics = evaluate(result.scores, result.maps, test, model.image_threshold, model.mask_rule)
            figures[name] = headline(metrics)
    return figures


def calibrated_for(model: FUNetGAN, changes: dict) -> bool:
    """Whether the model's calibration has the normal level of every term `changes` weighs
    (a density term's is missing when its Gaussian could not be fitted)."""
    levels = model.calibration.levels
    return all(not changes.get(term.weight) or term.name in levels for term in all_terms())


def run_group(args: argparse.Namespace, results: dict, name: str, settings: list[str], splits: Splits) -> dict:
    """Train and test `settings` once per --seeds, kept as results["groups"][name] with their
    summary; the results file is rewritten after every run, so a long benchmark that stops
    keeps what it measured."""
    group = results.setdefault("groups", {})[name] = {"runs": []}
    for seed in args.seeds:
        print(f"== {name}, seed {seed}", file=sys.stderr, flush=True)
        group["runs"].append(fit_and_test(make_config(settings, args.device, seed), splits))
        group["summary"] = summarise(group["runs"])
        write_results(args, results)
    return group


def at_resolution(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of N x h x w maps to `size`, as the masks written at original size."""
    if maps.shape[1:] == size:
        return maps
    return np.stack([np.asarray(Image.fromarray(m).resize(size[::-1], Image.Resampling.BILINEAR)) for m in maps])


def full_resolution_metrics(
    model: FUNetGAN, terms: Terms, truth: ImageSet, settings: ScoreConfig | None = None
) -> dict:
    """Metrics with the pixel part on `truth`'s own (crop) resolution."""
    result = model.scores_from_terms(terms, settings)
    maps = at_resolution(result.maps, truth.images.shape[1:3])
    return evaluate(result.scores, maps, truth, model.image_threshold, model.mask_rule)


def run_crop_group(
    args: argparse.Namespace,
    results: dict,
    name: str,
    settings: list[str],
    data: Path,
    alternatives: dict[str, dict],
    look=None,
) -> dict:
    """`settings` on the set in `data`, once per --seeds, judged at the crops' own resolution,
    with the same networks' figures under each scoring setting of `alternatives` (name ->
    ScoreConfig changes); kept as results["groups"][name], rewritten after every run.
    `look(name, seed, model, terms, truth)`, when given, is called after each run (previews)."""
    config = make_config(settings, args.device)
    splits = load(data, config)
    truth = load_dataset(data, None, config.model.channels, config.data).test  # crops at their own size
    group = results.setdefault("groups", {})[name] = {"runs": []}
    for seed in args.seeds:
        print(f"== {name}, seed {seed}", file=sys.stderr, flush=True)
        model, terms, timings = train_and_score(make_config(settings, args.device, seed), splits)
        metrics = full_resolution_metrics(model, terms, truth)
        if look is not None:
            look(name, seed, model, terms, truth)
        figures = {
            alternative: headline(
                full_resolution_metrics(model, terms, truth, dataclasses.replace(model.config.score, **changes))
            )
            for alternative, changes in alternatives.items()
            if calibrated_for(model, changes)
        }
        group["runs"].append(
            {
                "seed": seed,
                **headline(metrics),
                **timings,
                "settings": model.config.to_dict(),
                "metrics": metrics,
                "steps": model.training,
                "small_defects_pixel_auroc": small_defects(metrics),
                "scoring_alternatives": figures,
            }
        )
        group["summary"] = summarise(group["runs"], SUMMARY_KEYS)
        write_results(args, results)
    return group


def small_defects(metrics: dict) -> float | None:
    """Pixel AUROC over the small defects' kinds (`<kind>_small` folders), mean of kinds."""
    values = [
        v["pixel"]["auroc"]
        for k, v in metrics["per_kind"].items()
        if k.endswith("_small") and v.get("pixel", {}).get("auroc") is not None
    ]
    return float(np.mean(values)) if values else None


def headline(metrics: dict) -> dict:
    """Image AUROC, pixel AUROC and AUPRO (None where the data has no pixel truth)."""
    return {name: metrics.get(level, {}).get(key) for name, (level, key) in HEADLINE.items()}


def summarise(runs: list[dict], keys: tuple[str, ...] = (*HEADLINE, "train_minutes")) -> dict:
    """Mean and sample standard deviation over runs (seeds) of each key; None where undefined."""
    summary = {}
    for key in keys:
        values = [run[key] for run in runs if run[key] is not None]
        summary[key] = {
            "mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values),
        }
    return summary


# ---- output --------------------------------------------------------------------------------
def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def mean_std(stat: dict, scale: float = 1.0, digits: int = 3) -> str:
    """'mean ± std' of a `summarise` entry (just the mean for a single run)."""
    if stat["mean"] is None:
        return "-"
    text = fmt(stat["mean"] * scale, digits)
    return text if stat["std"] is None else f"{text} ± {fmt(stat['std'] * scale, digits)}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *map(line, rows)])


def crop_alternatives_table(groups: dict, alternatives: dict) -> str:
    """Image / pixel AUROC / AUPRO of each scoring setting (rows) in each group of
    `run_crop_group` (columns), mean over the group's runs that measured it (with their count
    when not all did: results of an older benchmark version may lack a setting)."""

    def cell(group: dict, name: str) -> str:
        runs = [run["scoring_alternatives"][name] for run in group["runs"] if name in run["scoring_alternatives"]]
        if not runs:
            return "-"
        text = " / ".join(
            fmt(statistics.fmean(r[key] for r in runs)) for key in ("image_auroc", "pixel_auroc", "aupro")
        )
        return text if len(runs) == len(group["runs"]) else f"{text} ({len(runs)} runs)"

    return table(
        ["scoring (image / pixel AUROC / AUPRO, mean)", *groups],
        [[name, *(cell(g, name) for g in groups.values())] for name in alternatives],
    )


def print_crop_alternatives(groups: dict, alternatives: dict, out: str | None = None) -> None:
    """`crop_alternatives_table` under its heading, then where the results file is."""
    print("\nthe same models under other scoring settings")
    print(crop_alternatives_table(groups, alternatives))
    if out:
        print(f"\nresults in {out}")


def alternatives_table(groups: dict) -> str:
    """Image / pixel AUROC of each scoring alternative (rows) in each group (columns), mean over
    the group's runs."""

    def cell(group: dict, name: str) -> str:
        runs = [run["scoring_alternatives"][name] for run in group["runs"] if name in run["scoring_alternatives"]]
        if len(runs) < len(group["runs"]):  # not measurable in every run (or an older results file)
            return "-"
        return " / ".join(
            fmt(statistics.fmean(values)) if None not in values else "-"
            for values in ([r[key] for r in runs] for key in ("image_auroc", "pixel_auroc"))
        )

    return table(
        ["scoring (image / pixel AUROC)", *groups],
        [[name, *(cell(g, name) for g in groups.values())] for name in SCORING_ALTERNATIVES],
    )


def machine(device: str) -> dict:
    chosen = select_device(device)
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(chosen),
    }
    if chosen.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(chosen)
    return info


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def write_results(args: argparse.Namespace, results: dict) -> None:
    """The JSON results file: when, where, how (command line and options) and what. Written
    atomically, so it can be rewritten after every run of a long benchmark."""
    options = {k: v for k, v in vars(args).items() if k not in ("script", "command")}
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    document = {
        "script": args.script,
        "date": date,
        "command": args.command,
        "machine": machine(args.device),
        "options": options,
        "results": results,
    }
    atomic_write_text(args.out, json.dumps(document, indent=2) + "\n")

"""Does a longer budget lower quality? Fashion-MNIST one-class, the CPU recipe (and variants)
at several wall-clock budgets, several seeds, with what each stage did.

    python benchmarks/budgets.py [--classes 4,6] [--budgets 2 4] [--seeds 0 1 2]
                                 [--variants "CPU recipe"] [--test-subset 3000]
                                 [--keep results/budgets-runs] [--out results/budgets.json]

Per run: image AUROC on the test split (or a fixed subset of it: all test normals and a fixed
random draw of the anomalies, the same for every run), the steps each stage made, and the
validation normals' mean residual terms (izif's parts; no anomalies involved). With --keep,
each run's folder (log.jsonl, samples, model) stays there, and a PNG of reconstructions of
test normals (top rows) and anomalies (bottom rows) is written beside it.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from common import budget, fmt, load, make_config, make_parser, parse, run_settings, table, write_results
from fashion_mnist import BASE, DATA, class_list, shrink
from funetgan.evaluation.metrics import image_metrics
from funetgan.model import FUNetGAN
from funetgan.nn.tensors import to_tensor, to_uint8
from funetgan.training.samples import evaluating, save_grid

# Settings compared at every budget, run by run (the weight averages measured here once were
# removed: REMOVED_SETTINGS.md); add a variant as a list of --set items.
VARIANTS = {
    "CPU recipe": [],
}


def test_subset(test, size: int | None):
    """All normals and a fixed random draw of anomalies (seed 0), `size` images in all."""
    if size is None or size >= len(test):
        return test
    normal = np.flatnonzero(test.labels == 0)
    anomalous = np.flatnonzero(test.labels == 1)
    draw = np.random.default_rng(0).choice(anomalous, size - len(normal), replace=False)
    return test.subset(np.sort(np.r_[normal, draw]))


@torch.no_grad()
def save_reconstructions(model: FUNetGAN, test, path: Path) -> None:
    """16 test normals and 16 anomalies (the first of each), each above its reconstruction."""
    rows = np.r_[np.flatnonzero(test.labels == 0)[:16], np.flatnonzero(test.labels == 1)[:16]]
    rt = model.runtime
    x = rt.prepare(to_tensor(test.images[rows], rt.device))
    with evaluating(model.G, model.E):
        recon = model.G(model.E(x)).float()
    pairs = []
    for half in (slice(0, 16), slice(16, 32)):
        for part in (slice(0, 8), slice(8, 16)):
            pairs += [x[half][part].float(), recon[half][part]]
    save_grid(path, to_uint8(torch.cat(pairs)), columns=8)


def run(args, config, splits, test, folder: Path | None, name: str) -> dict:
    run_dir = folder / name if folder is not None else None
    model = FUNetGAN(config).fit(splits.train, splits.val, run_dir=run_dir)
    result = model.score(test)
    metrics = image_metrics(result.scores, test.labels, model.image_threshold)
    if run_dir is not None:
        save_reconstructions(model, test, run_dir / "test_reconstructions.png")
    norms = model.calibration.levels
    completed = model.training
    return {
        "seed": config.seed,
        "image_auroc": metrics["auroc"],
        "steps": {stage: v["steps"] for stage, v in completed.items()},
        "seconds": {stage: v["seconds"] for stage, v in completed.items()},
        "val_normal": {k: norms[k] for k in ("image_residual", "image_features")},
        "settings": config.to_dict(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__file__, "Quality against the wall-clock budget (Fashion-MNIST one-class).")
    parser.add_argument("--data", default=DATA, help=f"folder of the Fashion-MNIST IDX files (default {DATA})")
    parser.add_argument("--classes", type=class_list, default=[4, 6], help="e.g. 4,6 or 0-9")
    parser.add_argument("--budgets", type=float, nargs="+", default=[2.0, 4.0], help="training minutes per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one run per seed")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["CPU recipe"])
    parser.add_argument(
        "--test-subset",
        type=int,
        default=3000,
        help="score all test normals and a fixed draw of anomalies, this many images in all (0: the whole test split)",
    )
    parser.add_argument("--keep", help="keep each run's folder (logs, samples, reconstructions) under this folder")
    args = parse(parser, argv)
    results = {"variants": {v: VARIANTS[v] for v in args.variants}, "budgets": args.budgets, "runs": []}
    with tempfile.TemporaryDirectory(prefix="funetgan-budgets-") as tmp:
        folder = Path(args.keep) if args.keep else Path(tmp)
        for k in args.classes:
            splits = load(args.data, make_config(run_settings(args, BASE, [f"data.normal_class={k}"]), args.device))
            splits = shrink(splits) if args.smoke else splits
            test = test_subset(splits.test, args.test_subset or None)
            for seed in args.seeds:
                for minutes in args.budgets:
                    for variant in args.variants:
                        name = f"{variant.replace(' ', '_')}-{minutes:g}min-class{k}-seed{seed}"
                        print(f"== {name}", file=sys.stderr, flush=True)
                        settings = run_settings(
                            args, BASE, VARIANTS[variant], [f"data.normal_class={k}"], budget(minutes)
                        )
                        record = run(args, make_config(settings, args.device, seed), splits, test, folder, name)
                        results["runs"].append({"variant": variant, "minutes": minutes, "class": k, **record})
                        print(f"   {record}", file=sys.stderr, flush=True)
                        write_results(args, results)
    print_table(results, args)
    print(f"\nresults in {args.out}")
    return 0


def print_table(results: dict, args) -> None:
    rows = []
    for variant in args.variants:
        for k in args.classes:
            cells = []
            for minutes in args.budgets:
                values = [
                    100 * r["image_auroc"]
                    for r in results["runs"]
                    if (r["variant"], r["class"], r["minutes"]) == (variant, k, minutes)
                ]
                std = f" ± {fmt(statistics.stdev(values), 1)}" if len(values) > 1 else ""
                cells.append(f"{fmt(statistics.fmean(values), 1)}{std}" if values else "-")
            rows.append([f"{variant}, class {k}", *cells])
    print(table(["image AUROC % (mean ± std over seeds)", *(f"{m:g} min" for m in args.budgets)], rows))


if __name__ == "__main__":
    sys.exit(main())

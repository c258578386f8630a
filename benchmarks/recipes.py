"""Speed per unit of quality: training recipes at equal wall-clock budgets on Fashion-MNIST
one-class, from the straightforward implementation to the CPU recipe.

    python benchmarks/recipes.py [--classes 0,4,6] [--budgets 2 4] [--seeds 0] [--recipes ...]
                                 [--out results/recipes.json]

Every recipe trains for each budget in --budgets (minutes, split between the stages as
--minutes is in the other benchmarks) on each class, so the table reads both ways:
along a row, what more time buys; down a column, what a recipe gets from the same time. A
recipe is "k times faster per unit of quality" than another when it reaches the other's
AUROC in 1/k of the time.
"""

from __future__ import annotations

import statistics
import sys

from common import budget, fmt, load, make_config, make_parser, parse, run_group, run_settings, table, write_results
from fashion_mnist import BASE, DATA, class_list, shrink

# The "straightforward implementation": the method as described, five critic steps per
# generator step at one learning rate, both penalties on every critic step, no autoencoder help
# (channels-last and CBAM on maps of 16 px or less are no longer settings: always on).
STRAIGHTFORWARD = ["gan.n_critic=5", "gan.lr_d=0.0001", "gan.gp_every=1", "gan.warmup_iterations=0"]
SPEED_OPTIONS = ["gan.n_critic=1", "gan.lr_d=0.0004"]
RECIPES = {
    "straightforward": STRAIGHTFORWARD,
    # Only the speed options: one critic step per generator step with a 4x critic learning rate
    # (two time scales).
    "speed options": [*STRAIGHTFORWARD, *SPEED_OPTIONS],
    # The same, with the penalties on every 4th critic step (weighted 4x).
    "speed options + lazy GP": [*STRAIGHTFORWARD, *SPEED_OPTIONS, "gan.gp_every=4"],
    # The demo's CPU recipe: the speed options, an autoencoder warm-up and reconstruction term.
    "CPU recipe": [],
}


def print_table(results: dict, recipes: list[str], budgets: list[float], classes: list[int]) -> None:
    def mean_auroc(recipe: str, minutes: float) -> str:
        runs = [run for k in classes for run in results["groups"][group_name(recipe, minutes, k)]["runs"]]
        return fmt(100 * statistics.fmean(run["image_auroc"] for run in runs), 1)

    print(
        table(
            ["recipe", *(f"{m:g} min" for m in budgets)],
            [[recipe, *(mean_auroc(recipe, m) for m in budgets)] for recipe in recipes],
        )
    )
    print(f"\nmean image AUROC % over classes {','.join(map(str, classes))}")


def group_name(recipe: str, minutes: float, k: int) -> str:
    return f"{recipe} | {minutes:g} min | class {k}"


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__file__, "Training recipes at equal wall-clock budgets (Fashion-MNIST one-class).")
    parser.add_argument("--data", default=DATA, help=f"folder of the Fashion-MNIST IDX files (default {DATA})")
    parser.add_argument("--classes", type=class_list, default=[0, 4, 6], help="e.g. 0,4,6 or 0-9")
    parser.add_argument(
        "--budgets",
        type=float,
        nargs="+",
        default=[2.0, 4.0],
        help="training minutes per run (each recipe runs at each)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed")
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    args = parse(parser, argv)
    results = {"recipes": {name: RECIPES[name] for name in args.recipes}, "budgets": args.budgets}
    for k in args.classes:
        splits = load(args.data, make_config(run_settings(args, BASE, [f"data.normal_class={k}"]), args.device))
        splits = shrink(splits) if args.smoke else splits
        for minutes in args.budgets:
            for recipe in args.recipes:
                settings = run_settings(args, BASE, RECIPES[recipe], [f"data.normal_class={k}"], budget(minutes))
                run_group(args, results, group_name(recipe, minutes, k), settings, splits)
    write_results(args, results)
    print_table(results, args.recipes, args.budgets, args.classes)
    print(f"\nresults in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

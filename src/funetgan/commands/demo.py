"""`funetgan demo`: the built-in brick texture set made, trained on with the CPU recipe and
tested, every output written: a first look in about 8 minutes on a 2-core CPU."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ..config import RECIPES
from ..data.demo import make_texture_dataset
from ..training.tracking import check_trackers
from .common import RESULT_OUTPUTS, claim_folder, refuse_inputs_as_outputs
from .trained import test_one
from .training import resolve_config, train_one

# The demo: 32x32 grey brick texture on a 2-core CPU in about 8 minutes, with the CPU recipe.
DEMO_SETTINGS = [
    "model.image_size=32",
    "model.channels=1",
    "model.width=8",
    "batch_size=16",
    *RECIPES["cpu"],
    "gan.max_minutes=6",
    "encoder.max_minutes=1.5",
    "checkpoint_every=200",
]


# The demo keeps its 64-px crops as they are and trains on 32-px patches of them: on brick at
# the same budget this gave image / pixel AUROC / AUPRO 0.820 / 0.953 / 0.865 against whole
# crops' 0.665 / 0.746 / 0.503 (data seed 1, the selection split; docs/design.md). Beside its
# 300 training crops, 100 normals from parts of the photo no training crop touches calibrate
# (val/good/): enough for the 0.99 quantile to be one (thresholds.normals_needed). The
# benchmarks build on DEMO_SETTINGS alone and choose their data themselves
# (benchmarks/calibration.py takes the demo's as it is).
DEMO_DATA_SETTINGS = ["data.resolution=native"]
# make_texture_dataset's options; crops twice the model's size
DEMO_DATA: dict[str, Any] = {"n_train": 300, "n_calibration": 100}


def cmd_demo(args) -> int:
    config = resolve_config(args, [*DEMO_SETTINGS, *DEMO_DATA_SETTINGS])
    if args.print_config:
        print(config.to_yaml(), end="")
        return 0
    out = Path(args.out)
    refuse_inputs_as_outputs(out, [args.config])
    check_trackers(config)
    claim_folder(out, RESULT_OUTPUTS, args.overwrite)
    started = time.monotonic()
    # Crops at twice the model's size, scored at it in tiles; outputs come back at that size.
    data = make_texture_dataset(out / "data", "brick", crop=2 * config.model.image_size, seed=config.seed, **DEMO_DATA)
    print(f"demo data (real brick photo, synthetic defects with masks): {data}")
    model = train_one(data, out / "run", config, resume=False, overwrite=True)
    # Every output for every image: the demo's test set is small, and shows everything.
    test_args = argparse.Namespace(threshold=None, pixel_threshold=None, overwrite=True, outputs=["all"])
    test_one(model, data, out, test_args, run=out / "run")
    print(f"demo finished in {(time.monotonic() - started) / 60:.1f} min; open {out / 'report.html'}")
    return 0

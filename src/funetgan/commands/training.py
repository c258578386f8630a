"""`funetgan train`: the settings (defaults, recipe, settings file, --set; or a resumed
run's), one run per dataset or per MVTec AD category, each in its own locked folder."""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Config, all_keys, apply_overrides, get_key, working_size
from ..data import load_dataset
from ..errors import RunFolderError, UsageError
from ..files import CHECKPOINT_FILE, LOG_FILE, MODEL_FILE, atomic_write_text
from ..runlock import folder_lock
from ..training.tracking import check_trackers
from .common import (
    CONFIG_FILE,
    RUN_OUTPUTS,
    choose_data,
    claim_folder,
    each_category,
    print_notes,
    refuse_inputs_as_outputs,
    removed_on_failure,
)

if TYPE_CHECKING:
    from ..model import FUNetGAN

# Settings a resumed run keeps (`resumed_config`): they decide the split, the batches or the
# networks its checkpoint holds.
RESUME_FIXED = (
    "model.",
    "data.resolution",
    "data.val_fraction",
    "data.test_fraction",
    "data.split_seed",
    "data.category",
    "data.normal_class",
    "data.hu_window",
    "data.lung_threshold",
    "batch_size",
    "seed",
)


def resolve_config(args, base: Sequence[str] = ()) -> Config:
    """Defaults < --recipe < --config file < `base` (the demo's settings) < --set."""
    config = Config.recipe(args.recipe) if getattr(args, "recipe", None) else Config()
    if getattr(args, "config", None):
        config = Config.load(args.config, config)
    return command_line_on(config, args, getattr(args, "category", None), base).validate()


def command_line_on(config: Config, args, category: str | None, base: Sequence[str] = ()) -> Config:
    """`base`, then --set, --device, `category` and --normal-class on `config`."""
    config = apply_overrides(config, [*base, *args.set])
    if args.device:
        config.device = args.device
    choose_data(config, category, getattr(args, "normal_class", None))
    return config


def cmd_train(args) -> int:
    out = Path(args.out)
    config = resumed_config(args, out) if args.resume and args.category != "all" else resolve_config(args)
    if args.print_config:
        print(config.to_yaml(), end="")
        return 0
    refuse_inputs_as_outputs(out, [args.data, args.config])
    if config.data.category == "all":

        def train_category(name: str) -> None:
            if args.resume:  # each category's own run, with its own fitted batch_size
                category = resumed_config(args, out / name)
            else:
                category = copy.deepcopy(config)  # train_one fits its batch_size to the category
                category.data.category = name
            train_one(Path(args.data), out / name, category, args.resume, args.overwrite)

        return each_category(args.data, train_category)
    train_one(Path(args.data), out, config, args.resume, args.overwrite)
    return 0


def resumed_config(args, run: Path) -> Config:
    """The settings of the run in `run` with --config and --set on top, refusing changes to
    RESUME_FIXED: they decide the split, the batches or the networks the checkpoint holds."""
    saved_file = run / CONFIG_FILE
    if not saved_file.exists():
        raise RunFolderError(f"{saved_file}: nothing to resume")
    saved = Config.load(saved_file)
    config = Config.load(args.config, saved) if args.config else copy.deepcopy(saved)
    config = command_line_on(config, args, None if args.category == "all" else args.category)
    changed = [
        key for key in all_keys() if key.startswith(RESUME_FIXED) and get_key(config, key) != get_key(saved, key)
    ]
    if changed:
        raise UsageError(
            f"--resume: {', '.join(changed)} differ from {saved_file} (they change the split, the batches "
            f"or the networks); start a new run instead (--overwrite)"
        )
    return config.validate()


def train_one(data: Path, out: Path, config: Config, resume: bool, overwrite: bool) -> FUNetGAN:
    from ..runtime import is_main_process

    check_trackers(config)
    if not is_main_process():  # rank 0 writes for all
        return _train(data, out, config, resume)
    with folder_lock(out):
        if resume:
            return _train(data, out, config, resume)
        claim_folder(out, RUN_OUTPUTS, overwrite)
        with removed_on_failure(out, RUN_OUTPUTS, lambda: training_started(out)):
            return _train(data, out, config, resume)


def training_started(out: Path) -> bool:
    """Whether training logged a step or saved a checkpoint: what it wrote is then kept."""
    return any((out / name).exists() for name in (LOG_FILE, CHECKPOINT_FILE))


def _train(data: Path, out: Path, config: Config, resume: bool) -> FUNetGAN:
    from ..model import FUNetGAN, training_split
    from ..runtime import is_main_process, world_size

    main_process = is_main_process()
    splits = load_dataset(data, working_size(config), config.model.channels, config.data)
    _, _, batch_note = training_split(config, splits.train, splits.val, world_size())
    if main_process:
        print_notes(splits.train.notes + ([batch_note] if batch_note else []))
        atomic_write_text(out / CONFIG_FILE, config.to_yaml())
    started = time.monotonic()
    model = FUNetGAN(config)
    model.fit(splits.train, splits.val, run_dir=out, resume=resume)
    if model.runtime.is_main:  # rank 0 calibrates
        calibration = model.calibration
        assert calibration is not None
        print_notes(calibration.notes)
        print(
            f"trained in {(time.monotonic() - started) / 60:.1f} min on {model.runtime.device}; "
            f"model: {out / MODEL_FILE}; image threshold {model.image_threshold:.4g}, "
            f"pixel threshold {model.pixel_threshold:.4g} ({calibration.rule}, "
            f"{calibration.normals} calibration normals)"
        )
    return model

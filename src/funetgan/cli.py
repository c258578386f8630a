"""`funetgan train | test | predict | export | calibrate | mood | demo`: parses arguments, calls the
model, data and report modules, prints a summary. No training or metric logic lives here.

PyTorch is imported only by the commands that need it (train, demo, export, and test or
predict with --run): `test` and `predict` with an exported --model run on onnxruntime alone."""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import logging
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .calibration import calibration_split
from .chunked import run_predict, run_test
from .config import RECIPES, Config, all_keys, apply_overrides, get_key, working_size
from .data import DataError, fit_batch, load_dataset, load_unlabelled, mvtec_categories
from .data.demo import make_texture_dataset
from .files import CHECKPOINT_FILE, MODEL_FILE, atomic_write_text
from .masks import MaskRule
from .mood import TASKS, run_mood
from .outputs import PREDICT_DEFAULT, TEST_DEFAULT, Outputs
from .runlock import FolderLocked, folder_lock
from .scoring import Scorer
from .tracking import TENSORBOARD_FOLDER, open_tracker

if TYPE_CHECKING:
    from .model import FUNetGAN

CONFIG_FILE = "config.yaml"
RUN_OUTPUTS = (MODEL_FILE, CHECKPOINT_FILE, CONFIG_FILE, "log.jsonl", "samples", TENSORBOARD_FOLDER)
RESULT_OUTPUTS = ("metrics.json", "predictions.csv", "scores.csv", "report.html", "masks", "overlays", "plots",
                  "volumes.csv", "volumes", TENSORBOARD_FOLDER)

# The demo: 32x32 grey brick texture on a 2-core CPU in about 8 minutes, with the CPU recipe.
DEMO_SETTINGS = [
    "model.image_size=32", "model.channels=1", "model.width=8", "batch_size=16", *RECIPES["cpu"],
    "gan.max_minutes=6", "encoder.max_minutes=1.5", "checkpoint_every=200",
]
# The demo keeps its 64-px crops as they are and trains on 32-px patches of them: on brick at
# the same budget this gave image / pixel AUROC / AUPRO 0.820 / 0.953 / 0.865 against whole
# crops' 0.665 / 0.746 / 0.503 (data seed 1, the selection split; docs/design.md). Of its 400
# training crops a quarter calibrate: 100 normals, enough for the 0.99 quantile to be one
# (thresholds.normals_needed). The benchmarks build on DEMO_SETTINGS alone and choose their
# data themselves (benchmarks/calibration.py takes the demo's as it is).
DEMO_RESOLUTION = "data.resolution=native"
DEMO_DATA_SETTINGS = [DEMO_RESOLUTION, "data.val_fraction=0.25"]
DEMO_DATA = {"n_train": 400}  # make_texture_dataset's options; crops twice the model's size


# The settings `test` and `predict` may change with --set: where and how data is read (a lung
# found by data.lung_threshold where a scan has no lung mask), how much is scored at once, and
# where test's metrics are logged (tracking.py).
# The others are the trained run's: its normal levels and thresholds were calibrated under them.
# Settings a resumed run keeps (`resumed_config`).
RESUME_FIXED = ("model.", "data.resolution", "data.val_fraction", "data.test_fraction", "data.split_seed",
                "data.category", "data.normal_class", "data.hu_window", "data.lung_threshold", "batch_size", "seed")
# Test-time settings that change what the thresholds were calibrated on (the lung mask
# decides which pixels the pixel threshold and image scores saw): a change needs `calibrate`.
CALIBRATED_SETTINGS = ("data.lung_threshold",)
TEST_SETTINGS = ("data.cache_dir", "data.on_bad_file", "data.lung_threshold", "score.batch_size",
                 "log.tensorboard", "log.mlflow")


class UsageError(Exception):
    pass


# What a command reports in one line (exit code 2) rather than as a traceback.
EXPECTED_ERRORS = (DataError, UsageError, ValueError, FolderLocked, OSError)


def main(argv: list[str] | None = None) -> int:
    # Decoders' own warnings about the files they fail on ("Corrupt EXIF data", ...) would
    # add lines to the one-line error that names those files.
    warnings.filterwarnings("ignore", module=r"PIL\.")
    logging.getLogger("nibabel").setLevel(logging.ERROR)  # "sizeof_hdr should be 348; set ..."
    for name in ("mlflow", "alembic"):  # "Creating initial MLflow database tables...", migrations
        logging.getLogger(name).setLevel(logging.WARNING)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except EXPECTED_ERRORS as err:
        print(f"funetgan: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except _training_stopped() as err:
        from .runtime import is_main_process
        if is_main_process():
            resume = f"funetgan train --data {args.data} --out {args.out} --resume" if args.command == "train" else ""
            print(f"funetgan: {err}" + (f"; continue with: {resume}" if resume else ""), file=sys.stderr)
        return 128 + err.signum
    except KeyboardInterrupt:
        print("funetgan: interrupted", file=sys.stderr)
        return 130
    finally:
        if "funetgan.runtime" in sys.modules:  # only a command that used PyTorch has a process group
            sys.modules["funetgan.runtime"].teardown()


class _NeverRaised(Exception):
    pass


def _training_stopped() -> type[Exception]:
    """stages.TrainingStopped, once training code is loaded (only it raises it): importing it
    up front would import PyTorch into every command, `predict --model` included."""
    stages = sys.modules.get("funetgan.stages")
    return stages.TrainingStopped if stages is not None else _NeverRaised


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="funetgan", description="F-UNetGAN anomaly detection and segmentation.")
    parser.add_argument("--version", action="version", version=f"funetgan {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train G and D, then E, on the normal training images")
    train.add_argument("--data", required=True, help="dataset folder")
    train.add_argument("--out", required=True, help="run folder for weights, settings, logs, samples")
    _settings_arguments(train)
    train.add_argument("--recipe", choices=list(RECIPES),
                       help="named settings under --config and --set: 'cpu' trains in minutes on a CPU "
                            "(15 + 5 min budget; README, 'design choices')")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    train.set_defaults(func=cmd_train)

    test = commands.add_parser("test", help="score a labelled test set: metrics, maps, masks, report")
    _model_arguments(test)
    test.add_argument("--data", required=True, help="dataset folder")
    test.add_argument("--out", required=True, help="folder for metrics.json, scores.csv, report.html, ...")
    _data_arguments(test)
    _threshold_arguments(test)
    _test_settings_argument(test)
    _outputs_argument(test, TEST_DEFAULT)
    test.set_defaults(func=cmd_test)

    predict = commands.add_parser("predict", help="anomaly maps, masks and scores for new images")
    _model_arguments(predict)
    predict.add_argument("--out", required=True, help="folder for predictions.csv, masks, overlays")
    predict.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders or volumes")
    _threshold_arguments(predict)
    _test_settings_argument(predict)
    _outputs_argument(predict, PREDICT_DEFAULT)
    predict.set_defaults(func=cmd_predict)

    export = commands.add_parser("export", help="the trained networks as one ONNX graph, checked against PyTorch")
    export.add_argument("--run", required=True, help="a trained run folder")
    export.add_argument("--out", required=True, help="the .onnx file to write")
    export.add_argument("--data", help="dataset folder: the parity check scores the run's validation images "
                                       "(default: generated images)")
    _data_arguments(export)
    export.add_argument("--tolerance", type=float,
                        help="largest relative error of maps and scores against PyTorch (default 1e-3)")
    export.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript",
                        help="PyTorch's ONNX exporter (default: torchscript; dynamo needs onnxscript)")
    export.set_defaults(func=cmd_export)

    calibrate = commands.add_parser("calibrate", help="calibrate a trained run again under new scoring "
                                                      "settings (map terms, image score): no retraining")
    calibrate.add_argument("--run", required=True, help="a trained run folder (its model file is rewritten)")
    calibrate.add_argument("--data", required=True, help="the dataset the run was trained on: its calibration "
                                                         "images (validation split or held-out normals) are reused")
    calibrate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                           help="change one scoring setting (score.*), e.g. --set score.density_weight=0 "
                                "(repeatable); also " + ", ".join(k for k in TEST_SETTINGS if not k.startswith("score.")))
    calibrate.add_argument("--threads", type=int, help="CPU threads (default: the runtime's choice)")
    calibrate.set_defaults(func=cmd_calibrate)

    mood = commands.add_parser("mood", help="the MOOD challenge's entry point: each volume of INPUT_DIR scored, "
                                            "<case>.nii.gz.txt and <case>.nii.gz in [0, 1] in OUTPUT_DIR")
    _model_arguments(mood)
    mood.add_argument("input_dir", metavar="INPUT_DIR", help="folder of NIfTI volumes (.nii.gz)")
    mood.add_argument("output_dir", metavar="OUTPUT_DIR", help="folder for each case's score and voxel map")
    mood.add_argument("--task", choices=("sample", "pixel", "both"), default="both",
                      help="write the case scores (sample), the voxel maps (pixel) or both (default)")
    _test_settings_argument(mood)
    mood.set_defaults(func=cmd_mood)

    demo = commands.add_parser("demo", help="make the built-in texture set, train and test on it")
    demo.add_argument("--out", required=True, help="folder for the data, the run and the results")
    _settings_arguments(demo, data=False)
    demo.set_defaults(func=cmd_demo)
    for command in (train, test, predict, export, calibrate, mood, demo):
        command.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: best available; "
                                              "export: cpu)")
    for command in (train, test, predict, export, mood, demo):
        command.add_argument("--overwrite", action="store_true", help="replace earlier results in --out "
                                                                      "(mood: in OUTPUT_DIR)")
    return parser


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="a trained run folder (scored with PyTorch)")
    which.add_argument("--model", help="an exported .onnx model (scored with onnxruntime, no PyTorch)")
    parser.add_argument("--threads", type=int, help="CPU threads for scoring (default: the runtime's choice; "
                                                    "1 is faster when other processes hold the cores)")


def _outputs_argument(parser: argparse.ArgumentParser, default: tuple[str, ...]) -> None:
    parser.add_argument("--outputs", nargs="+", default=list(default), metavar="ITEM",
                        help=f"what to write: metrics, scores, report, masks[=WHICH], overlays[=WHICH] or all; "
                             f"WHICH: all, none, flagged, examples, worst:N, best:N, joined by + "
                             f"(default: {' '.join(default)})")


def _settings_arguments(parser: argparse.ArgumentParser, data: bool = True) -> None:
    parser.add_argument("--config", help="YAML settings file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. --set model.image_size=128 (repeatable)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved settings and exit")
    if data:
        _data_arguments(parser)


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--category", help="MVTec AD category when --data is the dataset root; 'all' for each")
    parser.add_argument("--normal-class", type=int, help="the normal class of a labelled (IDX) set")


def _test_settings_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"change one of the run's settings for this command: {', '.join(TEST_SETTINGS)} "
                             f"(repeatable), e.g. --set data.cache_dir=/scratch/cache")


def _threshold_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threshold", type=float, help="image-score threshold (default: the calibrated one)")
    parser.add_argument("--pixel-threshold", type=float, help="anomaly-map threshold (default: calibrated)")


# ---- settings and output folders --------------------------------------------------------
def resolve_config(args, base: list[str] = ()) -> Config:
    """Defaults < --recipe < --config file < `base` (the demo's settings) < --set."""
    config = apply_overrides(Config(), RECIPES[args.recipe]) if getattr(args, "recipe", None) else Config()
    if getattr(args, "config", None):
        config = Config.load(args.config, config)
    config = apply_overrides(config, [*base, *args.set])
    if args.device:
        config.device = args.device
    if getattr(args, "category", None) is not None:
        config.data.category = args.category
    if getattr(args, "normal_class", None) is not None:
        config.data.normal_class = args.normal_class
    return config.validate()


def claim_folder(folder: Path, outputs: tuple[str, ...], overwrite: bool) -> None:
    """Refuse to write over earlier results unless --overwrite; with it, remove them first."""
    existing = [folder / name for name in outputs if (folder / name).exists()]
    if existing and not overwrite:
        resume = " or --resume to continue" if CHECKPOINT_FILE in outputs else ""
        raise FileExistsError(f"{folder} already holds results ({existing[0].name}); "
                              f"use --overwrite to replace them{resume}")
    for path in existing:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    folder.mkdir(parents=True, exist_ok=True)


# ---- commands -------------------------------------------------------------------------------
def cmd_train(args) -> int:
    out = Path(args.out)
    config = resumed_config(args, out) if args.resume and args.category != "all" else resolve_config(args)
    if args.print_config:
        print(config.to_yaml(), end="")
        return 0
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
        raise FileNotFoundError(f"{saved_file}: nothing to resume")
    saved = Config.load(saved_file)
    config = Config.load(args.config, saved) if args.config else copy.deepcopy(saved)
    config = apply_overrides(config, args.set)
    if args.device:
        config.device = args.device
    if args.category not in (None, "all"):
        config.data.category = args.category
    if args.normal_class is not None:
        config.data.normal_class = args.normal_class
    changed = [key for key in all_keys() if key.startswith(RESUME_FIXED) and get_key(config, key) != get_key(saved, key)]
    if changed:
        raise UsageError(f"--resume: {', '.join(changed)} differ from {saved_file} (they change the split, the batches "
                         f"or the networks); start a new run instead (--overwrite)")
    return config.validate()


def train_one(data: Path, out: Path, config: Config, resume: bool, overwrite: bool) -> FUNetGAN:
    from .model import FUNetGAN
    from .runtime import is_main_process, world_size
    main_process = is_main_process()
    with folder_lock(out) if main_process else contextlib.nullcontext():  # rank 0 writes for all
        if not resume and main_process:
            claim_folder(out, RUN_OUTPUTS, overwrite)
        splits = load_dataset(data, working_size(config), config.model.channels, config.data)
        rows, _ = calibration_split(splits.train, splits.val, config.data.val_fraction, config.seed)
        config.batch_size, batch_note = fit_batch(splits.train, rows, config.batch_size, world_size(),
                                                  config.model.image_size)
        if main_process:
            _print_notes(splits.train.notes + ([batch_note] if batch_note else []))
            atomic_write_text(out / CONFIG_FILE, config.to_yaml())
        started = time.monotonic()
        model = FUNetGAN(config)
        model.fit(splits.train, splits.val, run_dir=out, resume=resume)
        if model.runtime.is_main:
            _print_notes(model.calibration.notes)
            print(f"trained in {(time.monotonic() - started) / 60:.1f} min on {model.runtime.device}; "
                  f"model: {out / MODEL_FILE}; image threshold {model.image_threshold:.4g}, "
                  f"pixel threshold {model.pixel_threshold:.4g} ({model.calibration.rule}, "
                  f"{model.calibration.normals} calibration normals)")
        return model


def each_category(data: str, run: Callable[[str], None]) -> int:
    """`run(name)` for every MVTec AD category under `data`. A category that fails does not
    stop the others: each failure is reported at the end, one line each, with exit code 2."""
    failed = []
    for name in categories(data):
        print(f"== {name}")
        try:
            run(name)
        except EXPECTED_ERRORS as err:
            failed.append(f"{name}: {_one_line(err)}")
            print(f"== {name}: failed (reported at the end)")
    for line in failed:
        print(f"funetgan: error: {line}", file=sys.stderr)
    return 2 if failed else 0


def categories(data: str) -> list[str]:
    found = mvtec_categories(data)
    if not found:
        raise DataError(f"{data}: no MVTec AD categories (folders with train/good) found")
    return found


def load_scorer(args, run: str | Path | None = None) -> Scorer:
    """The trained run (`run`, else --run) on PyTorch, or --model on onnxruntime (and then
    PyTorch is never imported)."""
    if args.model is not None:
        from .onnx_scorer import OnnxScorer
        return OnnxScorer.load(args.model, threads=args.threads)
    return load_run(run or args.run, args.device, args.threads)


def load_run(run: str | Path, device: str | None, threads: int | None, calibrated: bool = True) -> "FUNetGAN":
    """A trained run on PyTorch (imported only here), with `threads` CPU threads if given
    (`calibrated` False: whatever its calibration, to calibrate it again)."""
    import torch

    from .model import FUNetGAN
    if threads:
        torch.set_num_threads(threads)
    return FUNetGAN.load(run, device=device, calibrated=calibrated)


def check_run_settings(items: list[str], command: str, prefixes: tuple[str, ...] = ()) -> None:
    """--set of the commands that use a trained run: only TEST_SETTINGS and keys starting with
    one of `prefixes` (checked before any work)."""
    for item in items:
        key = item.partition("=")[0].strip()
        if key not in TEST_SETTINGS and not key.startswith(prefixes):
            allowed = ", ".join((*(f"{prefix}*" for prefix in prefixes), *TEST_SETTINGS))
            raise UsageError(f"--set {key}: {command} can change only {allowed} (the others are the trained run's)")


def apply_test_settings(model: Scorer, items: list[str], run: str | Path | None, data: str) -> None:
    """--set of test and predict on the run's settings, refusing a change to what its
    thresholds were calibrated on (CALIBRATED_SETTINGS) with the command that makes it valid."""
    if not items:
        return
    before = {key: get_key(model.config, key) for key in CALIBRATED_SETTINGS}
    apply_overrides(model.config, items)
    for key, old in before.items():
        new = get_key(model.config, key)
        if new != old:
            raise UsageError(f"--set {key}={new}: this run's thresholds were calibrated with {key}={old}; "
                             f"calibrate it under the new value first: funetgan calibrate --run {run or 'RUN'} "
                             f"--data {data} --set {key}={new}")


def cmd_test(args) -> int:
    check_run_settings(args.set, "test and predict")
    if args.category == "all":
        if args.model:
            raise UsageError("--category all needs --run (a folder of runs), not one exported --model")
        return each_category(args.data, lambda name: test_run(Path(args.run) / name, Path(args.out) / name, args,
                                                              name))
    test_run(args.run, Path(args.out), args, args.category)
    return 0


def test_run(run: str | Path | None, out: Path, args, category: str | None) -> None:
    started = time.perf_counter()
    model = load_scorer(args, run)
    apply_test_settings(model, args.set, run, args.data)
    if category is not None:
        model.config.data.category = category
    if args.normal_class is not None:
        model.config.data.normal_class = args.normal_class
    test_one(model, Path(args.data), out, args, load_seconds=time.perf_counter() - started)


def test_one(model: Scorer, data: Path, out: Path, args, load_seconds: float = 0.0) -> None:
    outputs = Outputs.parse(args.outputs)
    with folder_lock(out):
        claim_folder(out, RESULT_OUTPUTS, args.overwrite)
        started = time.perf_counter()
        splits = load_dataset(data, working_size(model.config), model.config.model.channels, model.config.data)
        if splits.test is None or not len(splits.test):
            raise DataError(f"{data}: no test images")
        _print_notes(splits.test.notes)
        loaded = time.perf_counter()
        image_t, rule = _thresholds(model, args)
        shown = len(splits.test.notes)
        # Volume by volume: the whole set's maps are never held (chunked.py).
        metrics = run_test(model, splits.test, out, outputs, image_t, rule,
                           {"model_seconds": round(load_seconds, 3), "data_seconds": round(loaded - started, 3)})
        _print_notes(splits.test.notes[shown:])  # the outputs' own (volumes.write_volume)
        with open_tracker(out, model.config, "test") as tracker:  # TensorBoard / MLflow, if log.* says so
            tracker.figures("test", metrics)
        _print_metrics(metrics, out, outputs)


def cmd_predict(args) -> int:
    outputs = Outputs.parse(args.outputs, test=False)
    check_run_settings(args.set, "test and predict")
    model = load_scorer(args)
    apply_test_settings(model, args.set, args.run, "DATA")
    out = Path(args.out)
    with folder_lock(out):
        claim_folder(out, RESULT_OUTPUTS, args.overwrite)
        images = load_unlabelled(args.paths, working_size(model.config), model.config.model.channels, model.config.data)
        _print_notes(images.notes)
        image_t, rule = _thresholds(model, args)
        shown = len(images.notes)
        scores = run_predict(model, images, out, outputs, image_t, rule)  # volume by volume, as test
        _print_notes(images.notes[shown:])
        flagged = int((scores >= image_t).sum())  # the rule of metrics and report
        print(f"{len(images)} image(s) scored, {flagged} at or above the threshold {image_t:.4g}; "
              f"results in {out / 'predictions.csv' if outputs.scores else out}")
        return 0


def cmd_mood(args) -> int:
    """Score a MOOD input folder (mood.py). OUTPUT_DIR gets no lock file: the challenge reads
    it as it is; every file is written atomically and none is replaced without --overwrite."""
    check_run_settings(args.set, "mood")
    model = load_scorer(args)
    apply_test_settings(model, args.set, args.run, "DATA")
    tasks = TASKS if args.task == "both" else (args.task,)
    scores = run_mood(model, Path(args.input_dir), Path(args.output_dir), tasks, args.overwrite)
    print(f"{len(scores)} case(s) scored ({' and '.join(tasks)}); results in {args.output_dir}")
    return 0


def cmd_calibrate(args) -> int:
    """Calibrate the run in --run again on its calibration images under --set's scoring
    settings; the model file and config.yaml are replaced only when calibration succeeds."""
    check_run_settings(args.set, "calibrate", prefixes=("score.",))
    run = Path(args.run)
    with folder_lock(run):
        model = load_run(run, args.device, args.threads, calibrated=False)
        model.config = apply_overrides(model.config, args.set)
        splits = load_dataset(args.data, working_size(model.config), model.config.model.channels, model.config.data)
        _print_notes(splits.train.notes)
        try:
            model.recalibrate(splits.train, splits.val)
        except ValueError as err:
            raise DataError(f"{args.data}: {err}") from None
        model.save(run / MODEL_FILE)
        atomic_write_text(run / CONFIG_FILE, model.config.to_yaml())
    _print_notes(model.calibration.notes)
    print(f"{run / MODEL_FILE}: calibrated again on {model.calibration.normals} normal image(s); "
          f"image / pixel threshold {model.image_threshold:.4g} / {model.pixel_threshold:.4g} "
          f"({model.calibration.rule})")
    return 0


def cmd_export(args) -> int:
    from .export import PARITY_TOLERANCE, export_onnx, validation_images
    from .model import FUNetGAN
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} already exists; use --overwrite to replace it")
    model = FUNetGAN.load(args.run, device=args.device or "cpu")
    images = source = None
    if args.data is not None:
        if args.category is not None:
            model.config.data.category = args.category
        if args.normal_class is not None:
            model.config.data.normal_class = args.normal_class
        images, source = validation_images(model, Path(args.data))
    else:
        print("note: no --data: the parity check scores generated images; pass the training data to check "
              "on the run's validation images")
    tolerance = args.tolerance if args.tolerance is not None else PARITY_TOLERANCE
    parity = export_onnx(model, out, images, tolerance, args.exporter, source)
    print("\n".join(parity.lines()))
    print(f"model: {out} (score it with: funetgan predict --model {out} --out DIR PATH...)")
    return 0


def cmd_demo(args) -> int:
    config = resolve_config(args, [*DEMO_SETTINGS, *DEMO_DATA_SETTINGS])
    if args.print_config:
        print(config.to_yaml(), end="")
        return 0
    out = Path(args.out)
    claim_folder(out, RESULT_OUTPUTS, args.overwrite)
    started = time.monotonic()
    # Crops at twice the model's size, scored at it in tiles; outputs come back at that size.
    data = make_texture_dataset(out / "data", "brick", crop=2 * config.model.image_size, seed=config.seed, **DEMO_DATA)
    print(f"demo data (real brick photo, synthetic defects with masks): {data}")
    model = train_one(data, out / "run", config, resume=False, overwrite=True)
    # Every output for every image: the demo's test set is small, and shows everything.
    test_args = argparse.Namespace(threshold=None, pixel_threshold=None, overwrite=True, outputs=["all"])
    test_one(model, data, out, test_args)
    print(f"demo finished in {(time.monotonic() - started) / 60:.1f} min; open {out / 'report.html'}")
    return 0


def _one_line(err: Exception) -> str:
    """The message of an expected error; an OSError from outside our own messages names its
    file and the reason ("[Errno 13] Permission denied: '...'" otherwise)."""
    if isinstance(err, OSError) and err.strerror and err.filename:
        return f"{err.filename}: {err.strerror}"
    return str(err)


def _thresholds(model: Scorer, args) -> tuple[float, MaskRule]:
    """The image threshold and the mask rule: the calibrated ones, or --threshold and
    --pixel-threshold."""
    image_t = args.threshold if args.threshold is not None else model.image_threshold
    rule = model.mask_rule
    if args.pixel_threshold is not None:
        rule = dataclasses.replace(rule, pixel_threshold=args.pixel_threshold)
    return image_t, rule


def _print_notes(notes: list[str]) -> None:
    for note in notes:
        print(f"note: {note}")


def _print_metrics(metrics: dict, out: Path, outputs: Outputs) -> None:
    def line(name: str, values: dict, keys: tuple[str, ...]) -> str:
        shown = [f"{k} {values[k]:.3f}" for k in keys if isinstance(values.get(k), (int, float))]
        return f"{name}: " + ", ".join(shown)

    print(line("image", metrics["image"], ("auroc", "ap", "f1", "f1_max", "sensitivity", "specificity")))
    kept = metrics.get("promise")
    if kept is not None:
        print(f"normal images flagged: {kept['flagged']} of {kept['normals']} ({kept['rate']:.1%}), "
              f"about {kept['expected_rate']:.1%} expected")
        if kept["warning"]:
            print(f"warning: {kept['warning']}")
    if metrics.get("pixel"):
        print(line("pixel", metrics["pixel"], ("auroc", "ap", "aupro", "dice", "iou", "hausdorff")))
    if metrics.get("volume"):
        volume = metrics["volume"]
        print(line(f"volume ({volume['n_volumes']})", {**volume["detection"], **volume},
                   ("auroc", "sensitivity", "specificity", "dice_mean", "lesion_ml_abs_error_mean", "voxel_ap")))
    t = metrics["timing"]
    print(f"time: model {t['model_seconds']:.1f} s, data {t['data_seconds']:.1f} s, scoring {t['seconds']:.1f} s "
          f"({t['images_per_second']:.0f} images/s), metrics {t['metrics_seconds']:.1f} s, "
          f"files {t['files_seconds']:.1f} s, report {t['report_seconds']:.1f} s")
    written = [name for name, wanted in (("metrics.json", outputs.metrics), ("scores.csv", outputs.scores),
                                         ("report.html", outputs.report)) if wanted]
    print(f"results in {out}" + (f": {', '.join(written)}" if written else ""))

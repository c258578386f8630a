"""The commands on a trained run (PyTorch) or an exported model (onnxruntime): `test` (a
labelled set: metrics, maps, report), `predict` (new images), `mood` (the MOOD challenge's
folders), `calibrate` (again, under new scoring settings) and `export` (ONNX)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import apply_overrides, get_key, working_size
from ..data import load_dataset, load_unlabelled
from ..errors import DataError, RunFolderError, UsageError
from ..files import MODEL_FILE, atomic_write_text
from ..medical.mood import TASKS, run_mood
from ..outputs.selection import Outputs
from ..pipeline import run_predict, run_test
from ..runlock import folder_lock
from ..scoring.calibration import Calibration, with_thresholds
from ..scoring.masks import MaskRule
from ..scoring.scorer import Scorer
from ..scoring.thresholds import promise_summary
from ..training.tracking import check_trackers, open_tracker
from .common import (
    CONFIG_FILE,
    RESULT_OUTPUTS,
    choose_data,
    claim_folder,
    each_category,
    print_notes,
    refuse_inputs_as_outputs,
    removed_on_failure,
)

if TYPE_CHECKING:
    from ..model import FUNetGAN

# The settings `test`, `predict` and `mood` may change with --set: where and how data is read
# (a lung found by data.lung_threshold where a scan has no lung mask), how much is scored at
# once, and where test's metrics are logged (tracking.py). The others are the trained run's:
# its normal levels and thresholds were calibrated under them.
TEST_SETTINGS = (
    "data.cache_dir",
    "data.on_bad_file",
    "data.lung_threshold",
    "score.batch_size",
    "log.tensorboard",
    "log.mlflow",
)
# Test-time settings that change what the thresholds were calibrated on (the lung mask
# decides which pixels the pixel threshold and image scores saw): a change needs `calibrate`.
CALIBRATED_SETTINGS = ("data.lung_threshold",)


def load_scorer(args, run: str | Path | None = None) -> Scorer:
    """The trained run (`run`, else --run) on PyTorch, or --model on onnxruntime (and then
    PyTorch is never imported)."""
    if args.model is not None:
        from ..deploy.onnx_scorer import OnnxScorer

        return OnnxScorer.load(args.model, threads=args.threads)
    return load_run(run or args.run, args.device, args.threads)


def load_run(run: str | Path, device: str | None, threads: int | None, calibrated: bool = True) -> FUNetGAN:
    """A trained run on PyTorch (imported only here), with `threads` CPU threads if given
    (`calibrated` False: whatever its calibration, to calibrate it again)."""
    import torch

    from ..model import FUNetGAN

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
            raise UsageError(
                f"--set {key}={new}: this run's thresholds were calibrated with {key}={old}; "
                f"calibrate it under the new value first: funetgan calibrate --run {run or 'RUN'} "
                f"--data {data} --set {key}={new}"
            )


def cmd_test(args) -> int:
    check_run_settings(args.set, "test and predict")
    refuse_inputs_as_outputs(args.out, [args.data, args.run or args.model])
    if args.category == "all":
        if args.model:
            raise UsageError("--category all needs --run (a folder of runs), not one exported --model")
        return each_category(args.data, lambda name: test_run(Path(args.run) / name, Path(args.out) / name, args, name))
    test_run(args.run, Path(args.out), args, args.category)
    return 0


def test_run(run: str | Path | None, out: Path, args, category: str | None) -> None:
    started = time.perf_counter()
    model = load_scorer(args, run)
    apply_test_settings(model, args.set, run, args.data)
    choose_data(model.config, category, args.normal_class)
    test_one(model, Path(args.data), out, args, load_seconds=time.perf_counter() - started, run=run)


def test_one(
    model: Scorer, data: Path, out: Path, args, load_seconds: float = 0.0, run: str | Path | None = None
) -> None:
    outputs = Outputs.parse(args.outputs)
    check_trackers(model.config)
    with folder_lock(out):
        claim_folder(out, RESULT_OUTPUTS, args.overwrite)
        # A test that fails leaves none of its outputs, so its retry is not refused; TensorBoard /
        # MLflow (if log.* says so) start before any work.
        with removed_on_failure(out, RESULT_OUTPUTS, lambda: False), open_tracker(out, model.config, "test") as tracker:
            started = time.perf_counter()
            splits = load_dataset(data, working_size(model.config), model.config.model.channels, model.config.data)
            if splits.test is None or not len(splits.test):
                raise DataError(f"{data}: no test images")
            print_notes(splits.test.notes)
            loaded = time.perf_counter()
            image_t, rule = thresholds(model, args)
            shown = len(splits.test.notes)
            # Volume by volume: the whole set's maps are never held (pipeline.py).
            metrics = run_test(
                model,
                splits.test,
                out,
                outputs,
                image_t,
                rule,
                {"model_seconds": round(load_seconds, 3), "data_seconds": round(loaded - started, 3)},
                None if run is None else str(run),
            )
            print_notes(splits.test.notes[shown:])  # the outputs' own (volumes.write_volume)
            tracker.figures("test", metrics)
        print_metrics(metrics, out, outputs)


def cmd_predict(args) -> int:
    outputs = Outputs.parse(args.outputs, test=False)
    check_run_settings(args.set, "test and predict")
    refuse_inputs_as_outputs(args.out, [*args.paths, args.run or args.model])
    model = load_scorer(args)
    apply_test_settings(model, args.set, args.run, "DATA")
    out = Path(args.out)
    with folder_lock(out):
        claim_folder(out, RESULT_OUTPUTS, args.overwrite)
        with removed_on_failure(out, RESULT_OUTPUTS, lambda: False):  # a failure leaves no outputs, as test's
            images = load_unlabelled(
                args.paths, working_size(model.config), model.config.model.channels, model.config.data
            )
            print_notes(images.notes)
            image_t, rule = thresholds(model, args)
            shown = len(images.notes)
            scores = run_predict(model, images, out, outputs, image_t, rule)  # volume by volume, as test
            print_notes(images.notes[shown:])
            flagged = int((scores >= image_t).sum())  # the rule of metrics and report
            print(
                f"{len(images)} image(s) scored, {flagged} at or above the threshold {image_t:.4g}; "
                f"results in {out / 'predictions.csv' if outputs.scores else out}"
            )
            return 0


def cmd_mood(args) -> int:
    """Score a MOOD input folder (mood.py). OUTPUT_DIR gets no lock file: the challenge reads
    it as it is; every file is written atomically and none is replaced without --overwrite."""
    check_run_settings(args.set, "mood")
    refuse_inputs_as_outputs(args.output_dir, [args.input_dir, args.run or args.model])
    model = load_scorer(args)
    apply_test_settings(model, args.set, args.run, "DATA")
    tasks = TASKS if args.task == "both" else (args.task,)
    scores = run_mood(model, Path(args.input_dir), Path(args.output_dir), tasks, args.overwrite)
    print(f"{len(scores)} case(s) scored ({' and '.join(tasks)}); results in {args.output_dir}")
    return 0


def cmd_calibrate(args) -> int:
    """Calibrate the run in --run again on its calibration images under --set's scoring
    settings (with --data), and/or make --threshold and --pixel-threshold its own; the model
    file and config.yaml are replaced only when all of it succeeds."""
    check_run_settings(args.set, "calibrate", prefixes=("score.",))
    chosen = (args.threshold, args.pixel_threshold)
    if args.data is None and (args.set or chosen == (None, None)):
        raise UsageError(
            "calibrate needs --data (the dataset the run was trained on), unless it only sets "
            "--threshold and/or --pixel-threshold"
        )
    run = Path(args.run)
    refuse_inputs_as_outputs(run, [args.data])
    with folder_lock(run):
        model = load_run(run, args.device, args.threads, calibrated=args.data is None)
        calibration = recalibrate(model, args) if args.data is not None else model.calibration
        assert calibration is not None  # load_run(calibrated=True) refuses an uncalibrated run
        try:
            model.calibration = with_thresholds(calibration, *chosen)
        except RunFolderError as err:
            raise UsageError(f"{run}: {err}") from None
        model.save(run / MODEL_FILE)
        atomic_write_text(run / CONFIG_FILE, model.config.to_yaml())
    print_notes(model.calibration.notes)
    again = f"calibrated again on {model.calibration.normals} normal image(s); " if args.data is not None else ""
    rate = model.calibration.expected_image_rate
    print(
        f"{run / MODEL_FILE}: {again}image / pixel threshold {model.image_threshold:.6g} / "
        f"{model.pixel_threshold:.6g} ({model.calibration.rule})"
        + ("" if rate is None else f"; about {rate:.2%} of new normal images expected at or above it")
    )
    return 0


def recalibrate(model: FUNetGAN, args) -> Calibration:
    """`model` calibrated again on --data's calibration images under --set's settings."""
    model.config = apply_overrides(model.config, args.set)
    splits = load_dataset(args.data, working_size(model.config), model.config.model.channels, model.config.data)
    print_notes(splits.train.notes)
    try:
        return model.recalibrate(splits.train, splits.val)
    except DataError as err:  # the calibration images' problem: name the data they came from
        raise DataError(f"{args.data}: {err}") from None


def cmd_export(args) -> int:
    from ..deploy.export import PARITY_TOLERANCE, export_onnx, validation_images
    from ..model import FUNetGAN

    out = Path(args.out)
    # The run's model file, not its folder: an ONNX file beside it is the usual place.
    run = Path(args.run)
    refuse_inputs_as_outputs(out, [run / MODEL_FILE if run.is_dir() else run, args.data])
    if out.exists() and not args.overwrite:
        raise RunFolderError(f"{out} already exists; use --overwrite to replace it")
    model = FUNetGAN.load(args.run, device=args.device or "cpu")
    images = source = None
    if args.data is not None:
        choose_data(model.config, args.category, args.normal_class)
        images, source = validation_images(model, Path(args.data))
    else:
        print(
            "note: no --data: the parity check scores generated images; pass the training data to check "
            "on the run's validation images"
        )
    tolerance = args.tolerance if args.tolerance is not None else PARITY_TOLERANCE
    parity = export_onnx(model, out, images, tolerance, args.exporter, source)
    print("\n".join(parity.lines()))
    print(f"model: {out} (score it with: funetgan predict --model {out} --out DIR PATH...)")
    return 0


def thresholds(model: Scorer, args) -> tuple[float, MaskRule]:
    """The image threshold and the mask rule: the calibrated ones, or --threshold and
    --pixel-threshold."""
    image_t = args.threshold if args.threshold is not None else model.image_threshold
    rule = model.mask_rule
    if args.pixel_threshold is not None:
        rule = dataclasses.replace(rule, pixel_threshold=args.pixel_threshold)
    return image_t, rule


def print_metrics(metrics: dict, out: Path, outputs: Outputs) -> None:
    def line(name: str, values: dict, keys: tuple[str, ...]) -> str:
        shown = [f"{k} {values[k]:.3f}" for k in keys if isinstance(values.get(k), (int, float))]
        return f"{name}: " + ", ".join(shown)

    print(line("image", metrics["image"], ("auroc", "ap", "f1", "f1_max", "sensitivity", "specificity")))
    kept = metrics.get("promise")
    if kept is not None:
        print(promise_summary(kept))
        if kept["warning"]:
            print(f"warning: {kept['warning']}")
    if metrics.get("pixel"):
        print(line("pixel", metrics["pixel"], ("auroc", "ap", "aupro", "dice", "iou", "hausdorff")))
    if metrics.get("volume"):
        volume = metrics["volume"]
        print(
            line(
                f"volume ({volume['n_volumes']})",
                {**volume["detection"], **volume},
                ("auroc", "sensitivity", "specificity", "dice_mean", "lesion_ml_abs_error_mean", "voxel_ap"),
            )
        )
    t = metrics["timing"]
    print(
        f"time: model {t['model_seconds']:.1f} s, data {t['data_seconds']:.1f} s, scoring {t['seconds']:.1f} s "
        f"({t['images_per_second']:.0f} images/s), metrics {t['metrics_seconds']:.1f} s, "
        f"files {t['files_seconds']:.1f} s, report {t['report_seconds']:.1f} s"
    )
    written = [
        name
        for name, wanted in (
            ("metrics.json", outputs.metrics),
            ("scores.csv", outputs.scores),
            ("report.html", outputs.report),
        )
        if wanted
    ]
    print(f"results in {out}" + (f": {', '.join(written)}" if written else ""))

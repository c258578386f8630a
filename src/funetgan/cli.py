"""`funetgan train | test | predict | export | calibrate | mood | demo`: the arguments of each
command and the entry point that runs it (`commands/`) and reports an expected error in one
line. No training or metric logic lives here.

PyTorch is imported only by the commands that need it (train, demo, export, and test or
predict with --run): `test` and `predict` with an exported --model run on onnxruntime alone."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings

from . import __version__
from .commands.demo import cmd_demo
from .commands.trained import TEST_SETTINGS, cmd_calibrate, cmd_export, cmd_mood, cmd_predict, cmd_test
from .commands.training import cmd_train
from .config import RECIPES
from .errors import FunetganError, TrainingStopped
from .outputs.selection import PREDICT_DEFAULT, TEST_DEFAULT

# Said before the traceback of anything but an expected error (errors.py), a bug by definition.
BUG = (
    "this is a bug in funetgan, not a problem with your data or settings; please report it on "
    "funetgan's issue tracker with the command line and the traceback below"
)


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
    except FunetganError as err:
        print(f"funetgan: error: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        if err.name != "torch":
            raise  # a broken install or a bug: its traceback says which
        # The scoring-only install (docs/deployment.md) has no PyTorch by design.
        print(
            f"funetgan: error: {args.command} needs PyTorch, which is not installed here: pip install torch "
            f"(without it, predict and test score an exported model: --model)",
            file=sys.stderr,
        )
        return 2
    except TrainingStopped as err:
        from .runtime import is_main_process, leave_together

        leave_together()
        if is_main_process():
            resume = f"funetgan train --data {args.data} --out {args.out} --resume" if args.command == "train" else ""
            print(f"funetgan: {err}" + (f"; continue with: {resume}" if resume else ""), file=sys.stderr)
        return 128 + err.signum
    except KeyboardInterrupt:
        print("funetgan: interrupted", file=sys.stderr)
        return 130
    except Exception:
        print(f"funetgan: {BUG}", file=sys.stderr)
        raise
    finally:
        if "funetgan.runtime" in sys.modules:  # only a command that used PyTorch has a process group
            sys.modules["funetgan.runtime"].teardown()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="funetgan", description="F-UNetGAN anomaly detection and segmentation.")
    parser.add_argument("--version", action="version", version=f"funetgan {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train G and D, then E, on the normal training images")
    train.add_argument("--data", required=True, help="dataset folder")
    train.add_argument("--out", required=True, help="run folder for weights, settings, logs, samples")
    _settings_arguments(train)
    train.add_argument(
        "--recipe",
        choices=list(RECIPES),
        help="named settings under --config and --set: 'cpu' trains in minutes on a CPU "
        "(15 + 5 min budget; docs/design.md)",
    )
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
    export.add_argument(
        "--data", help="dataset folder: the parity check scores the run's validation images (default: generated images)"
    )
    _data_arguments(export)
    export.add_argument(
        "--tolerance", type=float, help="largest relative error of maps and scores against PyTorch (default 1e-3)"
    )
    export.add_argument(
        "--exporter",
        choices=("torchscript", "dynamo"),
        default="torchscript",
        help="PyTorch's ONNX exporter (default: torchscript; dynamo needs onnxscript)",
    )
    export.set_defaults(func=cmd_export)

    calibrate = commands.add_parser(
        "calibrate",
        help="calibrate a trained run again under new scoring settings (map terms, image score): no retraining",
    )
    calibrate.add_argument("--run", required=True, help="a trained run folder (its model file is rewritten)")
    calibrate.add_argument(
        "--data",
        help="the dataset the run was trained on: its calibration images (validation "
        "split or held-out normals) are reused; not needed to set thresholds only",
    )
    calibrate.add_argument(
        "--threshold",
        type=float,
        help="make this image-score threshold the run's own, with its promise measured on the "
        "calibration normals (e.g. one chosen in report.html's operating-point panel)",
    )
    calibrate.add_argument("--pixel-threshold", type=float, help="make this anomaly-map threshold the run's own")
    calibrate.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change one scoring setting (score.*), e.g. --set score.density_weight=0 "
        "(repeatable); also " + ", ".join(k for k in TEST_SETTINGS if not k.startswith("score.")),
    )
    calibrate.add_argument("--threads", type=int, help="CPU threads (default: the runtime's choice)")
    calibrate.set_defaults(func=cmd_calibrate)

    mood = commands.add_parser(
        "mood",
        help="the MOOD challenge's entry point: each volume of INPUT_DIR scored, "
        "<case>.nii.gz.txt and <case>.nii.gz in [0, 1] in OUTPUT_DIR",
    )
    _model_arguments(mood)
    mood.add_argument("input_dir", metavar="INPUT_DIR", help="folder of NIfTI volumes (.nii.gz)")
    mood.add_argument("output_dir", metavar="OUTPUT_DIR", help="folder for each case's score and voxel map")
    mood.add_argument(
        "--task",
        choices=("sample", "pixel", "both"),
        default="both",
        help="write the case scores (sample), the voxel maps (pixel) or both (default)",
    )
    _test_settings_argument(mood)
    mood.set_defaults(func=cmd_mood)

    demo = commands.add_parser("demo", help="make the built-in texture set, train and test on it")
    demo.add_argument("--out", required=True, help="folder for the data, the run and the results")
    _settings_arguments(demo, data=False)
    demo.set_defaults(func=cmd_demo)
    for command in (train, test, predict, export, calibrate, mood, demo):
        command.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: best available; export: cpu)")
    for command in (train, test, predict, export, mood, demo):
        command.add_argument(
            "--overwrite", action="store_true", help="replace earlier results in --out (mood: in OUTPUT_DIR)"
        )
    return parser


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="a trained run folder (scored with PyTorch)")
    which.add_argument("--model", help="an exported .onnx model (scored with onnxruntime, no PyTorch)")
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads for scoring (default: the runtime's choice; 1 is faster when other processes hold the cores)",
    )


def _outputs_argument(parser: argparse.ArgumentParser, default: tuple[str, ...]) -> None:
    parser.add_argument(
        "--outputs",
        nargs="+",
        default=list(default),
        metavar="ITEM",
        help=f"what to write: metrics, scores, report, masks[=WHICH], overlays[=WHICH] or all; "
        f"WHICH: all, none, flagged, examples, worst:N, best:N, joined by + "
        f"(default: {' '.join(default)})",
    )


def _settings_arguments(parser: argparse.ArgumentParser, data: bool = True) -> None:
    parser.add_argument("--config", help="YAML settings file")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set model.image_size=128 (repeatable)",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved settings and exit")
    if data:
        _data_arguments(parser)


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--category", help="MVTec AD category when --data is the dataset root; 'all' for each")
    parser.add_argument("--normal-class", type=int, help="the normal class of a labelled (IDX) set")


def _test_settings_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"change one of the run's settings for this command: {', '.join(TEST_SETTINGS)} "
        f"(repeatable), e.g. --set data.cache_dir=/scratch/cache",
    )


def _threshold_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threshold", type=float, help="image-score threshold (default: the calibrated one)")
    parser.add_argument("--pixel-threshold", type=float, help="anomaly-map threshold (default: calibrated)")

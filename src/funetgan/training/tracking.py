"""Experiment tracking beside `log.jsonl` and `samples/`: TensorBoard event files and MLflow
runs of the losses, the sample grids and reconstructions, and the final figures (the
calibration at the end of training, the metrics of `test`).

    log.tensorboard   event files in FOLDER/tensorboard (`tensorboard --logdir FOLDER`);
                      pip install funetgan[tensorboard]
    log.mlflow        one MLflow run per command, at MLflow's MLFLOW_TRACKING_URI (default
                      ./mlflow.db), in experiment MLFLOW_EXPERIMENT_NAME (default "funetgan");
                      pip install funetgan[mlflow]

Nothing is imported while both are off. The TensorBoard writer is tensorboard's own event
file writer, not PyTorch's, so that `test --model` (onnxruntime, no PyTorch) can log too.
"""

from __future__ import annotations

import importlib
import io
import os
import re
import time
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

from ..config import Config, all_keys, get_key
from ..errors import MissingExtra, SettingsError

TENSORBOARD_FOLDER = "tensorboard"
DEFAULT_EXPERIMENT = "funetgan"  # MLflow's experiment where MLFLOW_EXPERIMENT_NAME is not set
BATCH, MAX_PARAM = 100, 500  # MLflow's limits: entries per log_batch call, characters per parameter value


def require(module: str, extra: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(f"log.{extra} needs {extra}: pip install funetgan[{extra}]") from None


def check_trackers(config: Config) -> None:
    """Before anything is written: `MissingDependency` if a tracker `config.log` turns on is
    not installed (a run that fails there leaves nothing behind to refuse its retry)."""
    for extra in ("tensorboard", "mlflow"):
        if getattr(config.log, extra):
            require(extra, extra)


class Tracker:
    """Sends records to the trackers `open_tracker` started (none: does nothing)."""

    def __init__(self, backends: list | None = None):
        self.backends = backends or []

    def scalars(self, prefix: str, step: int, values: dict[str, float]) -> None:
        """`values` as `prefix/name` at `step` (e.g. one log line of a training stage)."""
        named = {f"{prefix}/{name}": float(value) for name, value in values.items()}
        for backend in self.backends:
            backend.scalars(step, named)

    def image(self, tag: str, step: int, image: np.ndarray) -> None:
        """A uint8 H x W x C picture (C 1 or 3), e.g. a grid of samples."""
        for backend in self.backends:
            backend.image(tag, step, image)

    def figures(self, prefix: str, values: dict) -> None:
        """Final figures: the numbers in nested `values` (metrics.json's layout), as
        `prefix/key/subkey`, at step 0."""
        self.scalars(prefix, 0, flat_numbers(values))

    def close(self) -> None:
        for backend in self.backends:
            backend.close()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_tracker(folder: str | Path | None, config: Config, command: str) -> Tracker:
    """The trackers `config.log` turns on for `command` ("train", "test") writing to
    `folder` (a run or results folder; TensorBoard's event files go in its tensorboard/)."""
    log = config.log
    backends: list[TensorBoard | MLflow] = []
    if log.tensorboard:
        if folder is None:
            raise ValueError("log.tensorboard needs a folder for its event files (fit(..., run_dir=...))")
        backends.append(TensorBoard(Path(folder) / TENSORBOARD_FOLDER, command))
    if log.mlflow:
        backends.append(MLflow(command, folder, config))
    return Tracker(backends)


def flat_numbers(values: dict, prefix: str = "") -> dict[str, float]:
    """The numbers (not bools) in nested `values`, keyed `a/b/c`; names reduced to the
    characters every tracker accepts."""
    flat = {}
    for key, value in values.items():
        name = f"{prefix}{re.sub(r'[^A-Za-z0-9_.-]+', '_', str(key))}"
        if isinstance(value, dict):
            flat.update(flat_numbers(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


class TensorBoard:
    """Event files that TensorBoard reads: scalars and PNG images, each run (command) in
    its own file of `folder`."""

    def __init__(self, folder: Path, command: str):
        require("tensorboard", "tensorboard")
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        folder.mkdir(parents=True, exist_ok=True)
        self.writer = EventFileWriter(str(folder), filename_suffix=f".{command}")

    def _write(self, step: int, values: list) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        self.writer.add_event(Event(wall_time=time.time(), step=step, summary=Summary(value=values)))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        self._write(step, [Summary.Value(tag=tag, simple_value=value) for tag, value in values.items()])

    def image(self, tag: str, step: int, image: np.ndarray) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        height, width, channels = image.shape
        png = io.BytesIO()
        Image.fromarray(image[..., 0] if channels == 1 else image).save(png, format="PNG")
        picture = Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=png.getvalue())
        self._write(step, [Summary.Value(tag=tag, image=picture)])

    def close(self) -> None:
        self.writer.close()


class MLflow:
    """One MLflow run: every setting (dotted key) as a parameter, scalars as metrics, images
    as artifacts (by MlflowClient: the caller's own active MLflow run, if any, is left alone)."""

    def __init__(self, command: str, folder: str | Path | None, config: Config):
        mlflow = require("mlflow", "mlflow")
        try:
            self.client = mlflow.MlflowClient()  # at MLFLOW_TRACKING_URI, MLflow's own variable
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT)
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment is not None else self.client.create_experiment(name)
            tags = {"funetgan.command": command, **({"funetgan.folder": str(folder)} if folder is not None else {})}
            self.run_id = self.client.create_run(experiment_id, tags=tags, run_name=command).info.run_id
            params = [mlflow.entities.Param(key, str(get_key(config, key))[:MAX_PARAM]) for key in all_keys()]
            for start in range(0, len(params), BATCH):
                self.client.log_batch(self.run_id, params=params[start : start + BATCH])
        except mlflow.exceptions.MlflowException as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            store = os.environ.get("MLFLOW_TRACKING_URI", "the default store")
            raise SettingsError(f"log.mlflow: cannot start an MLflow run at {store} ({first})") from None
        self.entities = mlflow.entities

    def scalars(self, step: int, values: dict[str, float]) -> None:
        stamp = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id, metrics=[self.entities.Metric(key, value, stamp, step) for key, value in values.items()]
        )

    def image(self, tag: str, step: int, image: np.ndarray) -> None:
        self.client.log_image(self.run_id, image, key=tag.replace("/", "_"), step=step)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)

"""Experiment tracking (tracking.py): TensorBoard event files and a local MLflow store, read
back; nothing imported while both are off."""

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from funetgan.cli import main
from funetgan.errors import MissingExtra, SettingsError
from funetgan.model import FUNetGAN
from funetgan.training.tracking import flat_numbers, open_tracker


def events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def test_flat_numbers_keeps_numbers_under_slashed_names():
    nested = {
        "image": {"auroc": 0.75, "counts": {"tp": 3}, "threshold": 1, "note": "x", "f1": None},
        "per_kind": {"crack/big": {"ap": 0.5}},
        "flag": True,
    }
    assert flat_numbers(nested) == {
        "image/auroc": 0.75,
        "image/counts/tp": 3.0,
        "image/threshold": 1.0,
        "per_kind/crack_big/ap": 0.5,
    }


def test_the_cli_logs_losses_samples_calibration_and_test_metrics(texture_dataset, tmp_path, monkeypatch, tiny_args):  # noqa: F811
    pytest.importorskip("tensorboard")
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    store = f"file:{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)  # MLflow's own variable: no setting of ours
    run, results = tmp_path / "run", tmp_path / "results"
    assert (
        main(
            [
                "train",
                "--data",
                str(texture_dataset),
                "--out",
                str(run),
                *tiny_args,
                "--set",
                "log.tensorboard=true",
                "--set",
                "log.mlflow=true",
            ]
        )
        == 0
    )
    logged = events(run / "tensorboard")
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    for stage in ("gan", "encoder"):
        lines = [record for record in log if record["stage"] == stage]
        for name in [key for key in lines[0] if key not in ("stage", "step")]:
            values = [(event.step, event.value) for event in logged.Scalars(f"{stage}/{name}")]
            assert values == [(r["step"], pytest.approx(r[name], rel=1e-5, abs=1e-6)) for r in lines]
    for tag, file in (("samples/gan", "gan_000002.png"), ("samples/recon", "recon_000002.png")):
        (picture,) = [image for image in logged.Images(tag) if image.step == 2]
        decoded = np.asarray(Image.open(io.BytesIO(picture.encoded_image_string)))
        np.testing.assert_array_equal(decoded, np.asarray(Image.open(run / "samples" / file)))
    model = FUNetGAN.load(run)
    assert logged.Scalars("calibration/image_threshold")[0].value == pytest.approx(model.image_threshold, rel=1e-6)

    assert main(["test", "--run", str(run), "--data", str(texture_dataset), "--out", str(results)]) == 0
    metrics = json.loads((results / "metrics.json").read_text())
    test_events = events(results / "tensorboard")
    for key in ("image/auroc", "pixel/aupro", "image/counts/tp"):
        group, *rest = key.split("/")
        expected = metrics[group][rest[0]] if len(rest) == 1 else metrics[group][rest[0]][rest[1]]
        assert test_events.Scalars(f"test/{key}")[0].value == pytest.approx(expected, rel=1e-6)
    # MLflow too, as the run's settings say: a train run and a test run in the default experiment
    runs = mlflow.MlflowClient(store).search_runs(
        [mlflow.MlflowClient(store).get_experiment_by_name("funetgan").experiment_id]
    )
    (test_run,) = [r for r in runs if r.info.run_name == "test"]
    assert test_run.data.metrics["test/image/auroc"] == pytest.approx(metrics["image"]["auroc"], rel=1e-6)
    assert test_run.data.tags["funetgan.folder"] == str(results)


def test_mlflow_gets_settings_losses_samples_and_final_figures_through_the_python_api(
    tmp_path, monkeypatch, random_images, tiny_config
):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # the local file store (newer MLflow prefer SQLite)
    store = f"file:{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tiny")
    config = tiny_config(log__mlflow=True)
    model = FUNetGAN(config).fit(random_images(12), run_dir=tmp_path / "run")
    result = model.score(random_images(4, seed=1))
    with open_tracker(tmp_path / "results", config, "test") as tracker:  # what `funetgan test` does
        tracker.figures("test", {"image": {"mean_score": float(result.scores.mean())}})

    client = mlflow.MlflowClient(store)
    experiment = client.get_experiment_by_name("tiny")
    train, test = sorted(client.search_runs([experiment.experiment_id]), key=lambda r: r.info.run_name != "train")
    assert (train.info.run_name, test.info.run_name) == ("train", "test")
    assert train.data.params["model.image_size"] == "32" and train.data.params["log.mlflow"] == "True"
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    history = client.get_metric_history(train.info.run_id, "gan/loss_d")
    assert [(m.step, m.value) for m in history] == [
        (r["step"], pytest.approx(r["loss_d"], rel=1e-5)) for r in log if r["stage"] == "gan"
    ]
    assert train.data.metrics["calibration/pixel_threshold"] == pytest.approx(model.pixel_threshold, rel=1e-6)
    assert test.data.metrics["test/image/mean_score"] == pytest.approx(float(result.scores.mean()), rel=1e-6)
    images = [a.path for a in client.list_artifacts(train.info.run_id, "images")]
    assert any(path.startswith("images/samples_gan+step+3") for path in images)
    assert any(path.startswith("images/samples_recon+step+3") for path in images)
    assert train.info.status == test.info.status == "FINISHED"


def test_nothing_is_imported_while_tracking_is_off(texture_dataset, tmp_path, tiny_args):  # noqa: F811
    data, run, out = str(texture_dataset), str(tmp_path / "run"), str(tmp_path / "out")
    script = (
        f"import sys; from funetgan.cli import main; "
        f"assert main(['train', '--data', {data!r}, '--out', {run!r}, *{tiny_args!r}]) == 0; "
        f"assert main(['test', '--run', {run!r}, '--data', {data!r}, '--out', {out!r}]) == 0; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorboard', 'mlflow')))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_a_missing_package_is_one_line_naming_the_extra(tmp_path, monkeypatch, tiny_config):
    from funetgan.training import tracking

    def no_module(name):
        raise ImportError(name)

    monkeypatch.setattr(tracking.importlib, "import_module", no_module)
    for key, extra in (("tensorboard", "tensorboard"), ("mlflow", "mlflow")):
        with pytest.raises(MissingExtra, match=rf"^log.{key} needs {extra}: pip install funetgan\[{extra}\]$"):
            open_tracker(tmp_path, tiny_config(**{f"log__{key}": True}), "train")


def test_tensorboard_needs_a_folder_and_an_unreachable_mlflow_store_is_one_line(tmp_path, monkeypatch, tiny_config):
    pytest.importorskip("tensorboard")
    with pytest.raises(ValueError, match=r"log.tensorboard needs a folder"):
        open_tracker(None, tiny_config(log__tensorboard=True), "train")
    pytest.importorskip("mlflow")
    with pytest.raises(SettingsError, match=r"^log.mlflow: cannot start an MLflow run at nowhere://x \(") as caught:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "nowhere://x")
        open_tracker(tmp_path, tiny_config(log__mlflow=True), "train")
    assert "\n" not in str(caught.value)


def _run_outputs(folder) -> list[str]:
    from funetgan.commands.common import RUN_OUTPUTS

    return sorted(name for name in RUN_OUTPUTS if (folder / name).exists())


def test_a_missing_tracker_writes_nothing_and_the_same_command_runs_again(
    texture_dataset, tmp_path, monkeypatch, capsys, tiny_args
):
    """Checked before the run folder is written: a retry is refused for the same reason, never
    because the first try left config.yaml ("already holds results")."""
    from funetgan.training import tracking

    real = tracking.importlib.import_module

    def without_mlflow(name, *args):
        if name.split(".")[0] == "mlflow":
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(tracking.importlib, "import_module", without_mlflow)
    command = [
        "train",
        "--data",
        str(texture_dataset),
        "--out",
        str(tmp_path / "run"),
        *tiny_args,
        "--set",
        "log.mlflow=true",
    ]
    for _ in range(2):
        assert main(command) == 2
        assert capsys.readouterr().err == "funetgan: error: log.mlflow needs mlflow: pip install funetgan[mlflow]\n"
        assert _run_outputs(tmp_path / "run") == []


def test_a_tracker_that_fails_to_start_takes_back_what_the_start_wrote(
    texture_dataset, tmp_path, monkeypatch, capsys, tiny_args
):
    """TensorBoard's folder is made before MLflow's store is found unreachable: it goes, with
    config.yaml, and the same command fails again for the same reason."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nowhere://x")
    out = tmp_path / "run"
    command = [
        "train",
        "--data",
        str(texture_dataset),
        "--out",
        str(out),
        *tiny_args,
        "--set",
        "log.mlflow=true",
        "--set",
        "log.tensorboard=true",
    ]
    for _ in range(2):
        assert main(command) == 2
        assert capsys.readouterr().err.startswith("funetgan: error: log.mlflow: cannot start an MLflow run at nowhere")
        assert _run_outputs(out) == []
    capsys.readouterr()
    monkeypatch.setattr("funetgan.commands.training.training_started", lambda out: True)  # as if it had logged
    assert main(command) == 2
    assert _run_outputs(out) == ["config.yaml", "tensorboard"]  # a run that got as far as training keeps them

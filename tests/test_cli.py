"""A tiny end-to-end run through the command line: train, test, predict, resume, refusals."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from funetgan.cli import BUG, main
from funetgan.commands.common import each_category
from funetgan.data.demo import make_texture_dataset
from funetgan.errors import DataError, RunFolderError
from funetgan.model import FUNetGAN

SOURCE = Path(__file__).resolve().parents[1] / "src"


def test_train_writes_weights_settings_and_log(tiny_run):
    for name in ("model.safetensors", "checkpoint.safetensors", "config.yaml", "log.jsonl"):
        assert (tiny_run / name).exists(), name
    assert "image_size: 32" in (tiny_run / "config.yaml").read_text()


def test_test_writes_metrics_for_both_levels(tiny_run, texture_dataset, tmp_path, capsys):
    assert main(["test", "--run", str(tiny_run), "--data", str(texture_dataset), "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["image"]["n_normal"] == 3 and metrics["image"]["n_anomalous"] == 5
    rows = list(csv.DictReader((tmp_path / "scores.csv").open()))
    assert len(rows) == 8
    flagged = sum(row["label"] == "0" and float(row["score"]) >= metrics["image"]["threshold"] for row in rows)
    kept = metrics["promise"]
    assert (kept["normals"], kept["flagged"]) == (3, flagged) and kept["expected_rate"] > 0
    out = capsys.readouterr().out
    assert "image: auroc" in out
    expected = kept["expected_rate"]
    assert f"normal images flagged: {flagged} of 3 ({flagged / 3:.1%}), about {expected:.1%} expected" in out
    page = (tmp_path / "report.html").read_text()
    assert page.index(f"{flagged} of 3") < page.index("<h2>Metrics</h2>")  # near the top, before the metrics
    panel = json.loads(page.split('<script type="application/json" id="panel-data">')[1].split("</script>")[0])
    assert panel["run"] == str(tiny_run) and len(panel["normals"]) == 1  # the run's one calibration normal
    assert sorted(float(row["score"]) for row in rows) == panel["scores"]


def test_predict_scores_unlabelled_files(tiny_run, texture_dataset, tmp_path):
    files = [str(texture_dataset / "test" / "hole" / "000.png"), str(texture_dataset / "test" / "good")]
    assert main(["predict", "--run", str(tiny_run), "--out", str(tmp_path), *files]) == 0
    rows = list(csv.DictReader((tmp_path / "predictions.csv").open()))
    assert len(rows) == 4
    assert len(list((tmp_path / "masks").glob("*.png"))) == 4


def test_existing_results_are_not_overwritten(tiny_run, texture_dataset, capsys, tiny_args):
    assert main(["train", "--data", str(texture_dataset), "--out", str(tiny_run), *tiny_args]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_resume_of_a_finished_run_trains_nothing_more(tiny_run, texture_dataset):
    log = (tiny_run / "log.jsonl").read_text()
    assert main(["train", "--data", str(texture_dataset), "--out", str(tiny_run), "--resume", "--device", "cpu"]) == 0
    assert (tiny_run / "log.jsonl").read_text() == log


def test_a_test_time_change_of_what_was_calibrated_is_refused_with_the_calibrate_command(
    tiny_run, texture_dataset, tmp_path, capsys
):
    argv = [
        "test",
        "--run",
        str(tiny_run),
        "--data",
        str(texture_dataset),
        "--out",
        str(tmp_path / "o"),
        "--set",
        "data.lung_threshold=-400",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(
        f"calibrated with data.lung_threshold=None; calibrate it under the new value first: "
        f"funetgan calibrate --run {tiny_run} --data {texture_dataset} "
        f"--set data.lung_threshold=-400.0"
    )
    assert not (tmp_path / "o").exists()  # refused before any work


def test_resume_with_settings_that_change_the_split_or_batches_is_refused_naming_them(
    tiny_run, texture_dataset, capsys
):
    log = (tiny_run / "log.jsonl").read_text()
    argv = [
        "train",
        "--data",
        str(texture_dataset),
        "--out",
        str(tiny_run),
        "--resume",
        "--device",
        "cpu",
        "--set",
        "data.val_fraction=0.5",
        "--set",
        "batch_size=2",
        "--set",
        "gan.iterations=3",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("funetgan: error: --resume: data.val_fraction, batch_size differ from")
    assert len(err.splitlines()) == 1 and (tiny_run / "log.jsonl").read_text() == log


def test_print_config_shows_resolved_settings(capsys):
    assert main(["train", "--data", "x", "--out", "y", "--print-config", "--set", "model.variant=conv"]) == 0
    assert "variant: conv" in capsys.readouterr().out


def test_recipe_lies_under_the_settings_file_and_set(tmp_path, capsys):
    settings = tmp_path / "s.yaml"
    settings.write_text("gan: {n_critic: 3, lr_g: 0.0002}\n")
    argv = ["train", "--data", "x", "--out", "y", "--print-config", "--recipe", "cpu"]
    assert main([*argv, "--config", str(settings), "--set", "gan.lr_g=0.0003"]) == 0
    gan = yaml.safe_load(capsys.readouterr().out)["gan"]
    assert gan["warmup_iterations"] == 100000 and gan["gp_every"] == 4 and gan["max_minutes"] == 15  # the recipe
    assert gan["n_critic"] == 3 and gan["lr_g"] == 0.0003  # the file over the recipe, --set over both


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--data", "/nonexistent", "--out", "{tmp}/r"], "/nonexistent"),
        (["train", "--data", "{tmp}", "--out", "{tmp}/r", "--set", "model.image_size=40"], "power of two"),
        (["test", "--run", "{tmp}/run", "--data", "{tmp}/data", "--out", "{tmp}/o"], "no trained model"),
        (["train", "--data", "{tmp}", "--out", "{tmp}/r", "--set", "gan.lr_dd=1e-4"], "did you mean gan.lr_d"),
        (["train", "--data", "{tmp}", "--out", "{tmp}/r", "--set", "gan.lr_d=fast"], "must be a number"),
        (["train", "--data", "{tmp}", "--out", "{tmp}/r", "--set", "gan.lr_d=[1"], "gan.lr_d: cannot read '[1'"),
        (["train", "--data", "{tmp}", "--out", "{tmp}/r", "--config", "{tmp}"], "cannot read settings"),
        (["test", "--model", "{tmp}/m.onnx", "--data", "{tmp}/d", "--out", "{tmp}/o"], "m.onnx: no such model file"),
    ],
)
def test_bad_input_gives_one_line_error(argv, message, tmp_path, capsys):
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_a_bug_shows_its_traceback_after_a_line_saying_so(tmp_path):
    """A plain ValueError is a bug, never a user's mistake: not one line and exit code 2."""
    script = (
        "import sys; from funetgan import cli; from funetgan.commands import training\n"
        "def broken(*args): raise ValueError('a bug')\n"
        "training.resolve_config = broken\n"
        "sys.exit(cli.main(['train', '--data', 'x', '--out', 'y', '--print-config']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(SOURCE)},
    )
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert lines[0] == f"funetgan: {BUG}" and "report it" in lines[0]
    assert lines[1] == "Traceback (most recent call last):" and lines[-1] == "ValueError: a bug"


def categories_root(root: Path, names: tuple[str, ...]) -> str:
    for name in names:
        (root / name / "train" / "good").mkdir(parents=True)
    return str(root)


def test_each_category_goes_on_past_expected_errors_and_lists_them_at_the_end(tmp_path, capsys):
    ran = []

    def run(name: str) -> None:
        ran.append(name)
        if name == "b":
            raise DataError("b/train/good: no training images")
        if name == "c":
            raise RunFolderError("runs/c is in use by another funetgan process")

    assert each_category(categories_root(tmp_path, ("a", "b", "c", "d")), run) == 2
    assert ran == ["a", "b", "c", "d"]
    out, err = capsys.readouterr()
    assert "== b: failed (reported at the end)" in out
    assert err.splitlines() == [
        "funetgan: error: 2 of 4 categories failed:",
        "funetgan: error: b: b/train/good: no training images",
        "funetgan: error: c: runs/c is in use by another funetgan process",
    ]


def test_each_category_stops_at_a_bug(tmp_path):
    ran = []

    def run(name: str) -> None:
        ran.append(name)
        if name == "b":
            raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        each_category(categories_root(tmp_path, ("a", "b", "c")), run)
    assert ran == ["a", "b"]


def test_every_mvtec_category_gets_its_own_run_and_one_that_fails_stops_no_other(tmp_path, capsys, tiny_args):
    root = tmp_path / "mvtec"
    for name, n_train in (("brick", 12), ("grass", 1), ("gravel", 12)):  # grass: nothing left after the hold-out
        make_texture_dataset(root / name, texture=name, crop=32, n_train=n_train, n_test_good=2, n_per_defect=1)
    runs, results = tmp_path / "runs", tmp_path / "results"
    settings = [*tiny_args, "--set", "batch_size=12"]  # 11 images after the hold-out: the batch is fitted to them
    assert main(["train", "--data", str(root), "--category", "all", "--out", str(runs), *settings]) == 2
    out, err = capsys.readouterr()
    assert (
        out.count("note: batch_size 12 lowered to 11: only 11 training image(s) after holding out 1 for validation")
        == 2
    )
    assert [line for line in err.splitlines() if line.startswith("funetgan")] == [  # not tqdm's bars
        "funetgan: error: 1 of 3 categories failed:",
        "funetgan: error: grass: one training volume (or image) cannot be split into training and calibration "
        "normals: add normals or give a validation split",
    ]
    assert main(["test", "--run", str(runs), "--data", str(root), "--category", "all", "--out", str(results)]) == 2
    assert [line for line in capsys.readouterr().err.splitlines() if line.startswith("funetgan")] == [
        "funetgan: error: 1 of 3 categories failed:",
        f"funetgan: error: grass: {runs / 'grass' / 'model.safetensors'}: no trained model here (did training finish?)",
    ]
    for name in ("brick", "gravel"):
        assert (runs / name / "model.safetensors").exists()
        assert "batch_size: 11" in (runs / name / "config.yaml").read_text()
        assert json.loads((results / name / "metrics.json").read_text())["image"]["n_anomalous"] == 5
    logs = {name: (runs / name / "log.jsonl").read_text() for name in ("brick", "gravel")}
    assert (
        main(["train", "--data", str(root), "--category", "all", "--out", str(runs), "--resume", "--device", "cpu"])
        == 2
    )  # each category's own run resumes (finished: nothing more to train)
    assert [line for line in capsys.readouterr().err.splitlines() if line.startswith("funetgan")] == [
        "funetgan: error: 1 of 3 categories failed:",
        f"funetgan: error: grass: {runs / 'grass' / 'config.yaml'}: nothing to resume",
    ]
    assert logs == {name: (runs / name / "log.jsonl").read_text() for name in ("brick", "gravel")}


def test_overwrite_removes_earlier_per_image_outputs(tiny_run, texture_dataset, tmp_path):
    (tmp_path / "overlays").mkdir()
    (tmp_path / "overlays" / "stale.png").write_bytes(b"old")
    assert main(["test", "--run", str(tiny_run), "--data", str(texture_dataset), "--out", str(tmp_path)]) == 2
    assert (
        main(["test", "--run", str(tiny_run), "--data", str(texture_dataset), "--out", str(tmp_path), "--overwrite"])
        == 0
    )
    assert not (tmp_path / "overlays" / "stale.png").exists()
    assert len(list((tmp_path / "overlays").glob("*.png"))) == 8


def test_patch_training_then_tiled_test_and_predict_at_full_resolution(texture_dataset, tmp_path, tiny_args):
    run, results = tmp_path / "run", tmp_path / "results"
    patches = [*tiny_args, "--set", "data.resolution=native", "--set", "score.tile_stride=16"]
    assert main(["train", "--data", str(texture_dataset), "--out", str(run), *patches]) == 0
    assert (
        main(["test", "--run", str(run), "--data", str(texture_dataset), "--out", str(results), "--outputs", "all"])
        == 0
    )
    with Image.open(next((results / "masks").rglob("*.png"))) as mask:
        assert mask.size == (64, 64)  # the crops' own size: scored at it, no resizing
    assert (
        main(
            [
                "predict",
                "--run",
                str(run),
                "--out",
                str(tmp_path / "p"),
                str(texture_dataset / "test" / "hole" / "000.png"),
            ]
        )
        == 0
    )


def test_a_patch_larger_than_the_working_resolution_is_one_line(texture_dataset, tmp_path, capsys, tiny_args):
    assert (
        main(
            ["train", "--data", str(texture_dataset), "--out", str(tmp_path), *tiny_args, "--set", "data.resolution=16"]
        )
        == 2
    )
    assert "data.resolution (16) must be at least model.image_size (32)" in capsys.readouterr().err


def test_outputs_choose_what_test_writes(tiny_run, texture_dataset, tmp_path, capsys):
    argv = ["test", "--run", str(tiny_run), "--data", str(texture_dataset), "--out", str(tmp_path)]
    assert main([*argv, "--outputs", "scores", "overlays=worst:2"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".funetgan.lock") == ["overlays", "scores.csv"]
    assert len(list((tmp_path / "overlays").glob("*.png"))) == 2
    out = capsys.readouterr().out
    assert "time: model" in out and "files" in out and "report" in out  # what each part cost
    assert main([*argv, "--overwrite", "--outputs", "overlays=some"]) == 2
    assert "--outputs: overlays=some" in capsys.readouterr().err


def test_predict_counts_a_score_at_the_threshold_as_flagged(tiny_run, texture_dataset, tmp_path, capsys):
    """Flagged means score >= threshold, as in metrics.json and predictions.csv."""
    image = str(texture_dataset / "test" / "hole" / "000.png")
    assert main(["predict", "--run", str(tiny_run), "--out", str(tmp_path / "a"), image]) == 0
    (row,) = csv.DictReader((tmp_path / "a" / "predictions.csv").open())
    capsys.readouterr()
    assert (
        main(["predict", "--run", str(tiny_run), "--out", str(tmp_path / "b"), "--threshold", row["score"], image]) == 0
    )
    assert "1 image(s) scored, 1 at or above" in capsys.readouterr().out
    (row,) = csv.DictReader((tmp_path / "b" / "predictions.csv").open())
    assert row["predicted"] == "1"


def test_a_full_disk_during_training_is_one_line_and_keeps_the_earlier_checkpoint(
    texture_dataset, tmp_path, capsys, monkeypatch, tiny_args
):
    from safetensors import SafetensorError

    from funetgan.training import checkpoint

    saves, original = [], checkpoint.save_file

    def second_save_finds_the_disk_full(tensors, path, metadata):
        saves.append(path)
        if len(saves) == 2:  # what safetensors raises on ENOSPC
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        original(tensors, path, metadata=metadata)

    monkeypatch.setattr(checkpoint, "save_file", second_save_finds_the_disk_full)
    out = tmp_path / "run"
    assert (
        main(["train", "--data", str(texture_dataset), "--out", str(out), *tiny_args, "--set", "checkpoint_every=1"])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    full = f"funetgan: error: {out / 'checkpoint.safetensors'}: cannot write (No space left on device)"
    assert err.splitlines()[-1] == full
    assert checkpoint.load(out / "checkpoint.safetensors")[1]["state"]["step"] == 0  # the first one, intact
    assert not list(out.glob(".*.tmp"))


def test_a_read_only_output_folder_is_one_line(tiny_run, texture_dataset, tmp_path, tmpfs, capsys):
    out = tmpfs(tmp_path / "ro", "ro")
    assert main(["test", "--run", str(tiny_run), "--data", str(texture_dataset), "--out", str(out / "results")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"funetgan: error: {out / 'results'}: cannot write (Read-only file system)"


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    """A copy of the trained run that a test may rewrite."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


def test_calibrate_with_unchanged_settings_gives_the_training_thresholds(run_copy, texture_dataset, capsys):
    """The same held-out normals as at training, the same networks: the same thresholds."""
    before = FUNetGAN.load(run_copy).calibration
    assert main(["calibrate", "--run", str(run_copy), "--data", str(texture_dataset), "--device", "cpu"]) == 0
    after = FUNetGAN.load(run_copy).calibration
    assert (after.normals, after.rule) == (before.normals, before.rule)
    assert after.image_threshold == pytest.approx(before.image_threshold, rel=1e-5)
    assert after.pixel_threshold == pytest.approx(before.pixel_threshold, rel=1e-5)
    assert "calibrated again on 1 normal image(s)" in capsys.readouterr().out  # 10 % of 12 training crops


def test_calibrate_under_new_map_terms_rewrites_the_model_and_its_settings(run_copy, texture_dataset, tmp_path):
    before = FUNetGAN.load(run_copy)
    assert (
        main(
            [
                "calibrate",
                "--run",
                str(run_copy),
                "--data",
                str(texture_dataset),
                "--device",
                "cpu",
                "--set",
                "score.density_weight=0",
                "--set",
                "score.smoothness_weight=0",
            ]
        )
        == 0
    )
    after = FUNetGAN.load(run_copy)
    assert (after.config.score.density_weight, after.config.score.smoothness_weight) == (0, 0)
    settings = yaml.safe_load((run_copy / "config.yaml").read_text())["score"]
    assert (settings["density_weight"], settings["smoothness_weight"]) == (0, 0)
    assert after.calibration.levels == pytest.approx(before.calibration.levels, rel=1e-5)  # the same images
    assert after.pixel_threshold != pytest.approx(before.pixel_threshold, rel=1e-3)  # a different map
    assert main(["test", "--run", str(run_copy), "--data", str(texture_dataset), "--out", str(tmp_path / "t")]) == 0


def test_calibrate_makes_chosen_thresholds_the_runs_own_with_their_promise(run_copy, tmp_path, capsys):
    """No --data: the thresholds are set on the run as it is, the image threshold's promise
    measured on the calibration normals' scores, and `test` then uses and checks them."""
    before = FUNetGAN.load(run_copy).calibration
    (normal,) = before.normal_scores  # 1 calibration normal (10 % of 12 training crops)
    assert (
        main(
            [
                "calibrate",
                "--run",
                str(run_copy),
                "--threshold",
                repr(normal / 2),
                "--pixel-threshold",
                "0.25",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    after = FUNetGAN.load(run_copy).calibration
    assert (after.image_threshold, after.pixel_threshold) == (normal / 2, 0.25)
    assert after.expected_image_rate == 1.0  # the one normal exceeds it: (1 + 1) / (1 + 1)
    assert after.rule == f"image and pixel threshold set by the user; calibrated: {before.rule}"
    assert after.levels == before.levels and after.normal_scores == before.normal_scores
    assert "about 100.00% of new normal images expected at or above it" in capsys.readouterr().out
    assert main(["calibrate", "--run", str(run_copy), "--threshold", repr(normal * 2)]) == 0
    again = FUNetGAN.load(run_copy).calibration
    assert (again.pixel_threshold, again.expected_image_rate) == (0.25, 0.5)  # beyond the normal: 1 / 2
    assert again.rule == f"image threshold set by the user; calibrated: {before.rule}"


def test_calibrate_without_data_only_sets_thresholds_and_old_runs_need_data(run_copy, capsys):
    assert main(["calibrate", "--run", str(run_copy)]) == 2
    assert "calibrate needs --data" in capsys.readouterr().err
    model = FUNetGAN.load(run_copy)
    model.calibration.normal_scores = None  # as in a run calibrated before they were kept
    model.save(run_copy / "model.safetensors")
    assert main(["calibrate", "--run", str(run_copy), "--threshold", "1.0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "calibrate it again with --data first" in err and len(err.splitlines()) == 1
    assert main(["calibrate", "--run", str(run_copy), "--pixel-threshold", "1.0"]) == 0  # needs no promise


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--set", "gan.lr_d=1e-4"], "calibrate can change only score.*"),
        (["--set", "score.density_weight=much"], "must be a number"),
    ],
)
def test_calibrate_refuses_settings_of_the_networks_and_bad_values(argv, message, run_copy, texture_dataset, capsys):
    model = (run_copy / "model.safetensors").read_bytes()
    assert main(["calibrate", "--run", str(run_copy), "--data", str(texture_dataset), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert (run_copy / "model.safetensors").read_bytes() == model


def test_calibrate_on_other_data_than_the_run_was_trained_on_is_refused(run_copy, tmp_path, capsys):
    other = make_texture_dataset(tmp_path / "other", crop=64, n_train=30, n_test_good=1, n_per_defect=1)
    model = (run_copy / "model.safetensors").read_bytes()
    assert main(["calibrate", "--run", str(run_copy), "--data", str(other), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert str(other) in err and "3 calibration normals here, 1 when the run was calibrated" in err
    assert len(err.splitlines()) == 1 and (run_copy / "model.safetensors").read_bytes() == model


def separable_dataset(root: Path, size: int = 32) -> Path:
    """Flat grey normals (a little noise) and test images with one bright square each, with
    its mask, in MVTec AD's layout: anything that ranks by the residual must separate them."""
    rng = np.random.default_rng(0)

    def flat() -> np.ndarray:
        return np.clip(rng.normal(110, 3, (size, size)), 0, 255)

    def save(path: Path, image: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.astype(np.uint8)).save(path)

    for i in range(24):
        save(root / "train" / "good" / f"{i:03d}.png", flat())
    for i in range(6):
        save(root / "test" / "good" / f"{i:03d}.png", flat())
        image, mask = flat(), np.zeros((size, size))
        top, left = rng.integers(2, size - 10, 2)
        image[top : top + 8, left : left + 8] = mask[top : top + 8, left : left + 8] = 255
        save(root / "test" / "square" / f"{i:03d}.png", image)
        save(root / "ground_truth" / "square" / f"{i:03d}_mask.png", mask)
    return root


@pytest.fixture(scope="module")
def separable(tmp_path_factory, tiny_args):
    root = separable_dataset(tmp_path_factory.mktemp("separable") / "flat")
    run = root.parent / "run"
    assert main(["train", "--data", str(root), "--out", str(run), *tiny_args]) == 0
    return root, run


def test_separable_anomalies_are_found_at_both_levels(separable, tmp_path):
    root, run = separable
    assert main(["test", "--run", str(run), "--data", str(root), "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["image"]["auroc"] >= 0.9 and metrics["pixel"]["auroc"] >= 0.9


def test_the_separable_check_fails_when_the_score_sign_is_flipped(separable, tmp_path, monkeypatch):
    """The check above can fail: the same run with its scores and maps negated ranks backwards."""
    from funetgan.scoring.scorer import Scorer, Scores

    score = Scorer.score
    monkeypatch.setattr(
        Scorer, "score", lambda self, *a, **k: Scores(*(-x for x in vars(score(self, *a, **k)).values()))
    )
    root, run = separable
    assert main(["test", "--run", str(run), "--data", str(root), "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["image"]["auroc"] < 0.9 and metrics["pixel"]["auroc"] < 0.9


def test_a_run_with_a_damaged_calibration_is_one_line_and_calibrate_repairs_it(
    run_copy, texture_dataset, tmp_path, capsys
):
    from funetgan.training import checkpoint

    model_file = run_copy / "model.safetensors"
    tensors, meta = checkpoint.load(model_file)
    meta["calibration"]["levels"] = {}
    checkpoint.save(model_file, tensors, meta)
    assert main(["test", "--run", str(run_copy), "--data", str(texture_dataset), "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"funetgan: error: calibration of {model_file} is damaged: levels lack pixel_residual")
    assert len(err.splitlines()) == 1
    assert main(["calibrate", "--run", str(run_copy), "--data", str(texture_dataset), "--device", "cpu"]) == 0
    assert "pixel_residual" in FUNetGAN.load(run_copy).calibration.levels

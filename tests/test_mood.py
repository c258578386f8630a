"""The MOOD challenge: its data layout (data/mood.py) and its conventions (mood.py), end to
end on generated volumes normalised to 0..1 as the challenge's are: train on the layout, test
(the voxel-pooled average precision), and score its toy/ folder with a run and an exported model."""

import csv
import json
import re
import shutil

import numpy as np
import pytest

from funetgan.cli import main
from funetgan.config import DataConfig
from funetgan.data import DataError, load_dataset
from funetgan.medical.mood import run_mood
from funetgan.model import FUNetGAN
from funetgan.scoring.unit_scale import to_unit

nibabel = pytest.importorskip("nibabel")


def test_the_layout_trains_on_every_training_slice_and_tests_on_toy(tmp_path, mood_region):
    splits = load_dataset(mood_region(tmp_path), 8, 1, DataConfig())
    assert len(splits.train) == 4 * 6 and set(splits.train.labels) == {0} and splits.train.masks is None
    assert splits.val is None  # calibration: data.val_fraction of the training slices
    assert len(splits.test) == 3 * 6 and splits.test.labels.sum() == 2  # slices 3 and 4 of the first
    assert splits.test.masks.sum() > 0 and splits.test.has_mask.all()
    # intensities in 0..1 are scaled to 0..255 (as HU would be windowed): the block at 0.5 -> about 128
    assert 110 < np.median(splits.train.images[splits.train.images > 0]) < 145


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda r: (r / "toy_label/pixel/00002.nii.gz").unlink(),
            r"toy/00002.nii.gz \(no voxel label in toy_label/pixel/\)",
        ),
        (
            lambda r: shutil.copy(r / "toy/00001.nii.gz", r / "toy_label/pixel/00009.nii.gz"),
            r"00009.nii.gz \(voxel label without a volume in toy/\)",
        ),
        (
            lambda r: shutil.copytree(r / "brain_train", r / "abdom_train"),
            r"several training folders \(abdom_train, brain_train\)",
        ),
    ],
)
def test_a_broken_layout_is_one_line(tmp_path, change, message, mood_region):
    change(mood_region(tmp_path))
    with pytest.raises(DataError, match=message) as caught:
        load_dataset(tmp_path, 8, 1)
    assert "\n" not in str(caught.value)


@pytest.fixture(scope="module")
def mood_run(tmp_path_factory, tiny_args, mood_region):
    """A run trained on a MOOD region, and the region."""
    data = mood_region(tmp_path_factory.mktemp("brain"))
    run = tmp_path_factory.mktemp("run")
    assert main(["train", "--data", str(data), "--out", str(run), *tiny_args]) == 0
    return run, data / "toy"


def test_test_reports_the_voxel_pooled_average_precision(mood_run, tmp_path):
    run, toy = mood_run
    assert main(["test", "--run", str(run), "--data", str(toy.parent), "--out", str(tmp_path)]) == 0
    volume = json.loads((tmp_path / "metrics.json").read_text())["volume"]
    assert volume["n_volumes"] == 3 and volume["detection"]["n_anomalous"] == 1
    assert 0 < volume["voxel_ap"] <= 1 and volume["detection"]["ap"] is not None  # MOOD's pixel and sample AP


def test_each_case_gets_a_score_and_a_voxel_map_in_zero_one_on_its_grid(mood_run, tmp_path, capsys):
    run, cases = mood_run
    assert main(["mood", "--run", str(run), str(cases), str(tmp_path / "out")]) == 0
    assert "3 case(s) scored (sample and pixel)" in capsys.readouterr().out
    names = [f"{i:05d}.nii.gz" for i in range(3)]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([*names, *(n + ".txt" for n in names)])
    for name in names:
        text = (tmp_path / "out" / f"{name}.txt").read_text()
        assert text.count("\n") == 1 and 0 <= float(text) <= 1
        written, source = nibabel.load(tmp_path / "out" / name), nibabel.load(cases / name)
        assert written.shape == source.shape == (8, 10, 6)
        np.testing.assert_allclose(written.affine, source.affine, atol=1e-6)
        values = written.get_fdata()
        assert values.min() >= 0 and values.max() <= 1


def test_the_outputs_are_predicts_on_the_calibrated_scale(mood_run, tmp_path):
    """The map: predict's NIfTI map through the calibration's map scale; the score: predict's
    volume score through the slice scores' scale."""
    run, cases = mood_run
    assert main(["mood", "--run", str(run), str(cases), str(tmp_path / "mood")]) == 0
    assert main(["predict", "--run", str(run), "--out", str(tmp_path / "predict"), str(cases)]) == 0
    scales = FUNetGAN.load(run).calibration.unit_scale
    volumes = {row["volume"]: float(row["score"]) for row in csv.DictReader((tmp_path / "predict/volumes.csv").open())}
    for i in range(3):
        raw = nibabel.load(tmp_path / "predict/volumes" / f"{i:05d}_map.nii.gz").get_fdata(dtype=np.float32)
        mapped = nibabel.load(tmp_path / "mood" / f"{i:05d}.nii.gz").get_fdata(dtype=np.float32)
        np.testing.assert_allclose(mapped, to_unit(raw, scales["map"]), rtol=1e-6)
        score = float((tmp_path / "mood" / f"{i:05d}.nii.gz.txt").read_text())
        assert score == pytest.approx(float(to_unit(volumes[f"{i:05d}"], scales["score"])), rel=1e-9)


def test_an_exported_model_writes_the_same(mood_run, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    run, cases = mood_run
    model = tmp_path / "model.onnx"
    assert main(["export", "--run", str(run), "--out", str(model)]) == 0
    assert main(["mood", "--run", str(run), str(cases), str(tmp_path / "torch"), "--task", "sample"]) == 0
    assert main(["mood", "--model", str(model), str(cases), str(tmp_path / "onnx"), "--task", "sample"]) == 0
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == [f"{i:05d}.nii.gz.txt" for i in range(3)]
    for i in range(3):
        torch_score, onnx_score = (
            float((tmp_path / folder / f"{i:05d}.nii.gz.txt").read_text()) for folder in ("torch", "onnx")
        )
        assert onnx_score == pytest.approx(torch_score, rel=1e-3, abs=1e-6)


def test_earlier_outputs_are_kept_without_overwrite(mood_run, tmp_path, capsys):
    run, cases = mood_run
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "00001.nii.gz").write_text("earlier")
    assert main(["mood", "--run", str(run), str(cases), str(tmp_path / "out"), "--task", "pixel"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds results (00001.nii.gz); use --overwrite" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["00001.nii.gz"]  # nothing scored
    assert main(["mood", "--run", str(run), str(cases), str(tmp_path / "out"), "--task", "pixel", "--overwrite"]) == 0
    assert nibabel.load(tmp_path / "out" / "00001.nii.gz").shape == (8, 10, 6)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda folder: None, r"in: no NIfTI volumes \(.nii.gz, .nii\) to score"),
        (lambda folder: (folder / "x.nii.gz").write_bytes(b"not a volume"), r"1 bad file\(s\).*x.nii.gz"),
    ],
)
def test_bad_input_folders_are_one_line(mood_run, tmp_path, capsys, make, message):
    run, _ = mood_run
    (tmp_path / "in").mkdir()
    make(tmp_path / "in")
    assert main(["mood", "--run", str(run), str(tmp_path / "in"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err)


def test_the_python_api_returns_the_scores_it_writes(mood_run, tmp_path):
    run, cases = mood_run
    scores = run_mood(FUNetGAN.load(run), cases, tmp_path, tasks=("sample",))
    assert sorted(scores) == [f"{i:05d}.nii.gz" for i in range(3)]
    for name, score in scores.items():
        assert float((tmp_path / f"{name}.txt").read_text()) == score
    assert not list(tmp_path.glob("*.nii.gz"))  # no maps: the sample task only

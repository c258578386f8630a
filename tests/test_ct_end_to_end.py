"""The CT workflow through the command line: train on a lung CT layout, test (per-patient
metrics, volumes.csv, NIfTI maps on each scan's grid), predict on a volume."""

import csv
import json

import numpy as np
import pytest

from funetgan.cli import main

nibabel = pytest.importorskip("nibabel")
pytest.importorskip("pydicom")


@pytest.fixture(scope="module")
def ct_run(tmp_path_factory, ct_dataset, save_nifti, tiny_args):
    data = ct_dataset(tmp_path_factory.mktemp("ct"), volumes=5, slices=6, lesion_from=3)
    for v in range(5):
        lung = np.zeros((8, 8, 6), np.uint8)
        lung[1:7, 1:7] = 1
        save_nifti(data / "lung_mask" / f"case{v}.nii.gz", lung)
    run = tmp_path_factory.mktemp("run")
    assert main(["train", "--data", str(data), "--out", str(run), *tiny_args]) == 0
    return data, run


def test_test_writes_per_patient_results_and_volumes(ct_run, tmp_path, capsys):
    data, run = ct_run
    assert main(["test", "--run", str(run), "--data", str(data), "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    volume = metrics["volume"]
    assert volume["n_volumes"] == 2 and volume["n_with_lesion"] == 2  # every case has a lesion
    assert volume["detection"]["n_anomalous"] == 2
    assert 0 < volume["voxel_ap"] <= 1  # MOOD's measure (volumes.voxel_ap: checked by hand in test_volumes)
    rows = list(csv.DictReader((tmp_path / "volumes.csv").open()))
    assert [r["label"] for r in rows] == ["1", "1"] and float(rows[0]["lesion_ml"]) == pytest.approx(0.048)
    assert volume["dice_mean"] == pytest.approx(sum(float(r["dice"]) for r in rows) / 2)  # per patient, then the mean
    for row in rows:
        scan = nibabel.load(data / "ct_scans" / f"{row['volume']}.nii.gz")
        for suffix in ("map", "mask"):
            written = nibabel.load(tmp_path / "volumes" / f"{row['volume']}_{suffix}.nii.gz")
            assert written.shape == scan.shape
            np.testing.assert_allclose(written.affine, scan.affine)
            assert not written.get_fdata()[[0, -1]].any() and not written.get_fdata()[:, [0, -1]].any()
        anomaly_map = nibabel.load(tmp_path / "volumes" / f"{row['volume']}_map.nii.gz").get_fdata()
        assert anomaly_map[1:7, 1:7].all()  # and 0 outside the lung (1..6 x 1..6), checked above
    assert metrics["scored_pixels"].startswith("lung")
    page = (tmp_path / "report.html").read_text()
    assert "Per patient (2 volumes)" in page and page.count("<h3>case") == 2
    assert "volume (2): auroc" not in capsys.readouterr().out  # one class only: no AUROC shown


def test_predict_writes_a_volume_per_input_volume(ct_run, tmp_path):
    data, run = ct_run
    scan = data / "ct_scans" / "case0.nii.gz"
    assert main(["predict", "--run", str(run), "--out", str(tmp_path), str(scan)]) == 0
    rows = list(csv.DictReader((tmp_path / "volumes.csv").open()))
    assert len(rows) == 1 and rows[0]["volume"] == "case0" and rows[0]["label"] == "-1"
    written = nibabel.load(tmp_path / "volumes" / "case0_mask.nii.gz")
    assert written.shape == (8, 8, 6)


def test_train_and_test_through_the_slice_cache_match_the_in_memory_run(ct_run, tmp_path, monkeypatch, tiny_args):
    data, _ = ct_run
    cache, run, cached_run = tmp_path / "cache", tmp_path / "run", tmp_path / "cached_run"
    # Both trained here: runs trained after the tests above (in this process) differ from the
    # fixture's, with or without the cache (not explained yet), so it is not the reference.
    assert main(["train", "--data", str(data), "--out", str(run), *tiny_args]) == 0
    assert (
        main(["train", "--data", str(data), "--out", str(cached_run), *tiny_args, "--set", f"data.cache_dir={cache}"])
        == 0
    )
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 1  # one cache folder (and its lock file)
    assert main(["test", "--run", str(run), "--data", str(data), "--out", str(tmp_path / "memory")]) == 0
    from funetgan.data import ct

    monkeypatch.setattr(ct, "read_scan", lambda path: pytest.fail("test decoded the volumes again"))
    assert main(["test", "--run", str(cached_run), "--data", str(data), "--out", str(tmp_path / "cached")]) == 0
    memory, cached = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("memory", "cached"))
    for key in ("image", "pixel", "volume"):
        assert memory[key] == cached[key]
    assert (tmp_path / "memory" / "volumes.csv").read_text() == (tmp_path / "cached" / "volumes.csv").read_text()


def test_predict_and_test_read_volumes_through_the_slice_cache(ct_run, tmp_path, monkeypatch):
    """--set data.cache_dir on a run trained without it: predict caches its list of volumes,
    test the test set; the second time neither decodes a volume, and the results are the same."""
    data, run = ct_run
    cache = ["--set", f"data.cache_dir={tmp_path / 'cache'}"]
    scans = [str(data / "ct_scans" / f"case{v}.nii.gz") for v in (0, 1)]

    def both(name: str) -> None:
        assert main(["predict", "--run", str(run), "--out", str(tmp_path / name / "predict"), *cache, *scans]) == 0
        assert (
            main(["test", "--run", str(run), "--data", str(data), "--out", str(tmp_path / name / "test"), *cache]) == 0
        )

    assert main(["predict", "--run", str(run), "--out", str(tmp_path / "memory" / "predict"), *scans]) == 0
    assert main(["test", "--run", str(run), "--data", str(data), "--out", str(tmp_path / "memory" / "test")]) == 0
    both("built")
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 2  # predict's volumes, the test set
    from funetgan.data import ct

    monkeypatch.setattr(ct, "read_scan", lambda path: pytest.fail("decoded the volumes again"))
    both("mapped")
    for name in ("built", "mapped"):
        for table in ("predict/predictions.csv", "predict/volumes.csv", "test/scores.csv", "test/volumes.csv"):
            assert (tmp_path / name / table).read_text() == (tmp_path / "memory" / table).read_text()


def test_test_and_predict_refuse_training_settings(ct_run, tmp_path, capsys):
    data, run = ct_run
    assert main(["test", "--run", str(run), "--data", str(data), "--out", str(tmp_path), "--set", "score.kappa=2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--set score.kappa: test and predict can change only data.cache_dir" in err


def test_predict_on_a_dicom_series_writes_seg_and_parametric_map_matching_the_nifti_files(
    ct_run, tmp_path, frames_by_source, real_series
):
    """A real CT series (pydicom's test files): the SEG's and the Parametric Map's frames hold
    the NIfTI mask's and map's values at each source slice's position."""
    pytest.importorskip("highdicom")
    _, run = ct_run
    series = real_series(tmp_path / "CT5N")
    predict = ["predict", "--run", str(run), "--out", str(tmp_path / "out"), str(series)]
    assert main(predict) == 0
    folder = tmp_path / "out" / "volumes"
    # Again with the map's median as the pixel threshold, so that the mask holds both values.
    median = float(np.median(nibabel.load(folder / "CT5N_map.nii.gz").get_fdata()))
    assert main([*predict, "--pixel-threshold", str(median), "--overwrite"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == [
        "CT5N_map.dcm",
        "CT5N_map.nii.gz",
        "CT5N_mask.nii.gz",
        "CT5N_seg.dcm",
    ]
    nifti = {suffix: nibabel.load(folder / f"CT5N_{suffix}.nii.gz") for suffix in ("map", "mask")}
    to_voxel = np.linalg.inv(nifti["map"].affine)
    for dicom, suffix in (("CT5N_map.dcm", "map"), ("CT5N_seg.dcm", "mask")):
        frames = frames_by_source(folder / dicom)
        assert len(frames) == 5
        for frame, position in frames.values():
            i, j, k = (to_voxel @ [-position[0], -position[1], position[2], 1])[:3]  # LPS -> RAS -> voxel
            assert abs(i) < 1e-3 and abs(j) < 1e-3 and abs(k - round(k)) < 1e-3  # a slice's first voxel
            expected = nifti[suffix].get_fdata(dtype=np.float32)[:, :, round(k)].T  # columns x rows -> rows x columns
            np.testing.assert_array_equal(frame, expected)
    assert set(np.unique(nifti["mask"].get_fdata())) == {0, 1}

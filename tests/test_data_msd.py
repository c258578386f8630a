"""The Medical Segmentation Decathlon layout (Task06_Lung): dataset.json, imagesTr/, labelsTr/."""

import json

import numpy as np
import pytest

from funetgan.config import DataConfig
from funetgan.data import DataError, load_dataset
from funetgan.data.ct import split_by_volume

nibabel = pytest.importorskip("nibabel")

AFFINE = np.diag([-0.8, -0.8, 2.5, 1.0])  # LPS-stored like the published volumes


def msd_dataset(save_nifti, root, volumes=4, slices=5):
    """lung_00v volumes of 8 x 8 HU slices; a tumour (label 1) in slices 3 and 4."""
    training = []
    for v in range(volumes):
        name = f"lung_{v:03d}.nii.gz"
        scan = np.full((8, 8, slices), -800, np.int16)
        label = np.zeros((8, 8, slices), np.uint8)
        label[2:4, 2:4, 3:] = 1
        save_nifti(root / "imagesTr" / name, scan, AFFINE)
        save_nifti(root / "labelsTr" / name, label, AFFINE)
        (root / "imagesTr" / f"._{name}").write_bytes(b"\0" * 10)  # macOS companions in the archive
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    (root / "imagesTs").mkdir()
    index = {
        "name": "Lung",
        "labels": {"0": "background", "1": "cancer"},
        "training": training,
        "test": ["./imagesTs/lung_100.nii.gz"],
    }
    (root / "dataset.json").write_text(json.dumps(index))
    return root


def test_msd_layout_is_recognised_and_split_by_patient(tmp_path, save_nifti):
    root = msd_dataset(save_nifti, tmp_path)
    splits = load_dataset(root, 8, 1, DataConfig(test_fraction=0.5, split_seed=2))
    names = [f"lung_{v:03d}" for v in range(4)]
    expected = split_by_volume(names, 0.5, 2)  # the same patient split as the lung CT layout
    test_volumes = {p.rsplit("/", 1)[1].split(".")[0] for p in splits.test.paths}
    train_volumes = {p.rsplit("/", 1)[1].split(".")[0] for p in splits.train.paths}
    assert test_volumes == expected and train_volumes == set(names) - expected
    assert len(splits.train) == 2 * 3 and set(splits.train.labels) == {0}
    assert splits.test.labels.tolist() == [0, 0, 0, 1, 1] * 2
    assert splits.test.masks[3].sum() == 4 and len(splits.test.volumes) == 2
    geometry = next(iter(splits.test.volumes.values()))
    np.testing.assert_allclose(geometry.affine, AFFINE)
    assert geometry.voxel_ml == pytest.approx(0.8 * 0.8 * 2.5 / 1000)


def msd_error(root, match):
    with pytest.raises(DataError, match=match) as caught:
        load_dataset(root, 8, 1)
    assert "\n" not in str(caught.value)


def test_msd_bad_and_mismatched_files(tmp_path, save_nifti):
    root = msd_dataset(save_nifti, tmp_path)
    save_nifti(root / "imagesTr" / "lung_009.nii.gz", np.zeros((8, 8, 5), np.int16))
    msd_error(root, r"imagesTr/lung_009.nii.gz \(not listed in dataset.json\)")
    (root / "imagesTr" / "lung_009.nii.gz").unlink()
    (root / "labelsTr" / "lung_001.nii.gz").unlink()
    msd_error(root, r"lung_001.nii.gz \(its label lung_001.nii.gz is listed in dataset.json but missing\)")
    save_nifti(root / "labelsTr" / "lung_001.nii.gz", np.zeros((8, 8, 4), np.uint8))
    msd_error(root, r"lung_001.nii.gz \(its mask lung_001.nii.gz has shape \(4, 8, 8\), the scan \(5, 8, 8\)\)")
    (root / "dataset.json").write_text("{not json")
    msd_error(root, r"dataset.json: not a readable dataset index")
    (root / "dataset.json").write_text(json.dumps({"training": [{"image": "./imagesTr/x.nii.gz"}]}))
    msd_error(root, r"dataset.json: training entry 0 is not an image/label pair")

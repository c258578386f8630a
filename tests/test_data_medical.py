"""DICOM files and series, NIfTI volumes and the lung CT layout (split by patient)."""

import numpy as np
import pytest
from PIL import Image

from funetgan.config import DataConfig
from funetgan.data import load_dataset, load_unlabelled, read_image
from funetgan.data.medical import read_volume, volume_to_uint8
from funetgan.errors import DataError, MissingExtra

nibabel = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")


def grey(path, **kwargs):
    return read_image(path, **kwargs)[..., 0]


# ----- DICOM -----------------------------------------------------------------------------------


def test_ct_rescale_to_hu_then_lung_window(tmp_path, write_dicom):
    raw = np.array([[12, 712, 362, 900]], np.int16)  # slope 2, intercept -1024: HU -1000, 400, -300, 776
    path = write_dicom(tmp_path / "ct.dcm", raw, slope=2.0, intercept=-1024.0)
    np.testing.assert_array_equal(grey(path), [[0, 255, 128, 255]])
    np.testing.assert_array_equal(grey(path, hu_window=(-1000.0, 1800.0)), [[0, 128, 64, 162]])


def test_radiograph_16bit_is_stretched_and_monochrome1_inverted(tmp_path, write_dicom):
    raw = np.array([[0, 2048, 4095]], np.uint16)
    np.testing.assert_array_equal(grey(write_dicom(tmp_path / "a.dcm", raw, modality="DX")), [[0, 128, 255]])
    inverted = write_dicom(tmp_path / "b.dcm", raw, modality="CR", photometric="MONOCHROME1")
    np.testing.assert_array_equal(grey(inverted), [[255, 127, 0]])


def test_radiograph_window_from_the_file(tmp_path, write_dicom):
    raw = np.array([[0, 500, 1000, 1500, 4000]], np.uint16)
    path = write_dicom(tmp_path / "a.dcm", raw, modality="DX", window=(1000, 1000))
    image = grey(path)[0]
    assert image[0] == image[1] == 0 and image[3] == image[4] == 255
    assert abs(int(image[2]) - 128) <= 1


def test_dicom_without_suffix_and_broken_dicom(tmp_path, write_dicom):
    for name in ("IM0001", "slice.12"):
        path = write_dicom(tmp_path / name, np.full((3, 3), 1024, np.int16), intercept=-1024.0)
        np.testing.assert_array_equal(grey(path), np.full((3, 3), 182))  # 0 HU in -1000..400
    (tmp_path / "x.dcm").write_bytes(b"\0" * 200)
    with pytest.raises(DataError, match=r"x.dcm \(not a DICOM file\)"):
        load_unlabelled([str(tmp_path / "x.dcm")], 8, 1, DataConfig())


def test_dicom_files_in_a_generic_folder(tmp_path, write_dicom):
    for i in range(2):
        write_dicom(tmp_path / "train" / f"{i}.dcm", np.full((6, 6), 24, np.int16), intercept=-1024.0)
    Image.new("L", (8, 8), 5).save(tmp_path / "x.png")
    (tmp_path / "test/good").mkdir(parents=True)
    (tmp_path / "x.png").rename(tmp_path / "test/good/x.png")
    splits = load_dataset(tmp_path, 8, 1)
    assert (splits.train.images == 0).all() and splits.train.sizes.tolist() == [[6, 6]] * 2


def test_missing_package_is_named_and_never_skipped(tmp_path, monkeypatch, write_dicom):
    import funetgan.data.medical as medical

    def no_module(name):
        raise ImportError(name)

    monkeypatch.setattr(medical.importlib, "import_module", no_module)
    write_dicom(tmp_path / "train/a.dcm", np.zeros((4, 4), np.int16))
    with pytest.raises(MissingExtra, match=r"needs pydicom: pip install funetgan\[medical\]"):
        load_dataset(tmp_path, 8, 1, DataConfig(on_bad_file="skip"))


# ----- NIfTI and the lung CT layout ----------------------------------------------------------


def test_volumes_come_out_in_one_orientation(tmp_path, save_nifti):
    ras = np.zeros((4, 3, 2), np.int16)
    ras[3, 2, 1] = 7  # the patient's right-most, most anterior voxel of the top slice
    save_nifti(tmp_path / "ras.nii.gz", ras)
    las = np.diag([-1.0, 1, 1, 1])  # same scan stored with x running to the left
    save_nifti(tmp_path / "las.nii.gz", ras[::-1].copy(), las)
    for name in ("ras.nii.gz", "las.nii.gz"):
        volume = read_volume(tmp_path / name)
        assert volume.shape == (2, 3, 4)
        assert volume[1, 0, 0] == 7 and volume.sum() == 7  # top-left of the upper slice


def volume_of(path):
    return path.rsplit("/", 1)[1].split("#")[0]


def test_ct_dataset_is_split_by_patient(tmp_path, ct_dataset):
    root = ct_dataset(tmp_path)
    options = DataConfig(test_fraction=0.5, split_seed=3)
    splits = load_dataset(root, 8, 1, options)
    train, test = splits.train, splits.test
    train_volumes, test_volumes = {volume_of(p) for p in train.paths}, {volume_of(p) for p in test.paths}
    assert len(train_volumes) == len(test_volumes) == 2 and not train_volumes & test_volumes
    assert len(train) == 4 and set(train.labels) == {0} and train.masks is None
    assert sorted(p.rsplit("#", 1)[1] for p in train.paths) == ["z=0", "z=0", "z=1", "z=1"]
    assert len(test) == 8 and test.labels.tolist() == [0, 0, 1, 1] * 2
    assert test.kinds[:4] == ["good", "good", "lesion", "lesion"] and test.has_mask.all()
    assert test.masks[2, :4, :4].all() and test.masks[2].sum() == 16 and not test.masks[0].any()
    assert set(np.unique(test.images)) == {0, 255}  # -1000 HU and 400 HU in the lung window
    assert (test.images[0, 2:6, 2:6] == 255).all() and test.images[0].sum() == 16 * 255
    np.testing.assert_array_equal(test.sizes, [[8, 8]] * 8)
    assert load_dataset(root, 8, 1, options).test.paths == test.paths  # deterministic
    assert any("split by patient" in note for note in test.notes)


def test_lung_mask_selects_slices(tmp_path, ct_dataset, save_nifti):
    root = ct_dataset(tmp_path, volumes=2, slices=5)
    for v in range(2):
        lung = np.zeros((8, 8, 5), np.uint8)
        lung[1:7, 2:6, 1:4] = 1  # slices 1..3 only
        save_nifti(root / "lung_mask" / f"case{v}.nii.gz", lung)
    splits = load_dataset(root, 16, 1, DataConfig())
    assert sorted(p.rsplit("#", 1)[1] for p in splits.test.paths) == ["z=1", "z=2", "z=3"]
    assert splits.test.labels.tolist() == [0, 1, 1]
    np.testing.assert_array_equal(splits.test.sizes, [[8, 8]] * 3)


def test_kaggle_names_through_metadata_csv_and_grey_volumes(tmp_path, save_nifti):
    root = tmp_path
    for v in range(2):
        scan = np.full((8, 8, 2), 30, np.uint8)  # stored as 0..255 grey, not HU
        save_nifti(root / "ct_scans" / f"case_org_{v}.nii", scan)
        save_nifti(root / "infection_mask" / f"case_{v}.nii", np.zeros((8, 8, 2), np.uint8))
    rows = [f"../input/x/ct_scans/case_org_{v}.nii,../input/x/infection_mask/case_{v}.nii" for v in range(2)]
    (root / "metadata.csv").write_text("ct_scan,infection_mask\n" + "\n".join(rows) + "\n")
    splits = load_dataset(root, 8, 1)
    assert (splits.train.images == 30).all() and (splits.test.images == 30).all()
    assert any("not HU" in note for note in splits.test.notes)


def test_dicom_series_is_a_volume_sorted_by_position(tmp_path, ct_dataset, write_dicom):
    root = ct_dataset(tmp_path, volumes=2)
    (root / "ct_scans/case1.nii.gz").unlink()
    for z, name in zip((2, 0, 1, 3), ("b", "c", "a", "d")):  # file names out of order
        hu = np.full((8, 8), -1000 + 100 * z, np.int16)
        write_dicom(root / "ct_scans/case1" / f"{name}.dcm", hu, z=float(z))
    volume = read_volume(root / "ct_scans/case1")
    np.testing.assert_array_equal(volume[:, 0, 0], [-1000, -900, -800, -700])
    splits = load_dataset(root, 8, 1, DataConfig(split_seed=1))
    assert {volume_of(p) for p in splits.test.paths + splits.train.paths} == {"case0.nii.gz", "case1"}


def test_load_unlabelled_nifti_slices(tmp_path, save_nifti):
    save_nifti(tmp_path / "v.nii.gz", np.full((8, 8, 3), 400, np.int16))
    images = load_unlabelled([str(tmp_path / "v.nii.gz")], 8, 3, DataConfig())
    assert images.paths == [f"{tmp_path}/v.nii.gz#z={z}" for z in range(3)]
    assert (images.images == 255).all() and images.labels.tolist() == [-1] * 3


def ct_error(root, match, options=None):
    with pytest.raises(DataError, match=match) as caught:
        load_dataset(root, 8, 1, options or DataConfig())
    assert "\n" not in str(caught.value)


def test_ct_bad_input(tmp_path, ct_dataset, save_nifti):
    root = ct_dataset(tmp_path, volumes=3)
    save_nifti(root / "infection_mask/case9.nii.gz", np.zeros((8, 8, 4), np.uint8))
    ct_error(root, r"infection_mask/case9.nii.gz \(mask without a CT scan\)")
    (root / "infection_mask/case9.nii.gz").unlink()
    save_nifti(root / "infection_mask/case1.nii.gz", np.zeros((8, 8, 3), np.uint8))
    ct_error(
        root,
        r"ct_scans/case1.nii.gz \(its mask case1.nii.gz has shape \(3, 8, 8\), "
        r"the scan \(4, 8, 8\)\)",
    )
    (root / "infection_mask/case1.nii.gz").unlink()
    ct_error(root, r"ct_scans/case1.nii.gz \(no lesion mask in infection_mask/\)")
    with pytest.warns(UserWarning, match="skipped 1 bad file"):
        splits = load_dataset(root, 8, 1, DataConfig(on_bad_file="skip"))
    assert "case1.nii.gz" not in " ".join(splits.train.paths + splits.test.paths)
    (root / "ct_scans/readme.txt").write_text("x")
    ct_error(root, "readme.txt is neither a NIfTI file nor a DICOM series folder")


def test_ct_needs_two_volumes_and_its_mask_folder(tmp_path, ct_dataset):
    root = ct_dataset(tmp_path, volumes=1)
    ct_error(root, r"1 CT volume\(s\): the split by patient needs at least 2")
    ct_error(root, "test_fraction must be between 0 and 1", DataConfig(test_fraction=1.0))
    for path in (root / "infection_mask").iterdir():
        path.unlink()
    (root / "infection_mask").rmdir()
    ct_error(root, "missing folder infection_mask/")


def test_intensities_in_zero_one_are_scaled_to_grey_levels():
    """Normalised volumes (the MOOD challenge's MRI and CT) are not HU nor 0..255 grey levels."""
    grey, in_hu = volume_to_uint8(np.array([0.0, 0.25, 0.5, 1.0], np.float32), (-1000.0, 400.0))
    assert grey.tolist() == [0, 64, 128, 255] and not in_hu  # 63.75 and 127.5 round to 64 and 128
    grey, in_hu = volume_to_uint8(np.array([0.0, 30.0, 255.0]), (-1000.0, 400.0))
    assert grey.tolist() == [0, 30, 255] and not in_hu  # grey levels, as before

"""Per-patient results and maps written back on the scan's voxel grid (NIfTI, DICOM series)."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from funetgan.config import DataConfig
from funetgan.data import ImageSet, load_unlabelled
from funetgan.data.medical import Geometry, read_scan, read_volume
from funetgan.medical.volumes import volume_metrics, volume_results, voxel_ap_of_set, write_volumes
from funetgan.scoring.masks import MaskRule

nibabel = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")


def oblique_affine():
    """Stored axes: 0 -> posterior (y flipped), 1 -> superior, 2 -> right; 0.7 / 2.5 / 0.8 mm;
    turned 10 degrees about z; shifted."""
    turn = np.deg2rad(10)
    rotation = np.array([[np.cos(turn), -np.sin(turn), 0], [np.sin(turn), np.cos(turn), 0], [0, 0, 1]])
    axes = np.array([[0, 0, 1], [-1, 0, 0], [0, 1, 0]], float)  # columns: where stored axes point
    affine = np.eye(4)
    affine[:3, :3] = rotation @ axes @ np.diag([0.7, 2.5, 0.8])
    affine[:3, 3] = [12.0, -30.0, 55.0]
    return affine


def test_map_of_a_volume_overlays_the_scan_voxel_for_voxel(tmp_path, save_nifti):
    affine = oblique_affine()
    scan = np.full((8, 5, 8), -1000, np.int16)  # HU: air
    lesion = np.zeros(scan.shape, np.uint8)
    lesion[2:4, 1, 5:7] = 1
    lesion[6, 3, 0] = 1
    scan[lesion > 0] = 40
    save_nifti(tmp_path / "scan.nii.gz", scan, affine)
    save_nifti(tmp_path / "lesion.nii.gz", lesion, affine)
    images = load_unlabelled([str(tmp_path / "scan.nii.gz")], 8, 1, DataConfig())
    assert images.volumes[str(tmp_path / "scan.nii.gz")].slice_shape == (5, 8, 8)
    maps = read_volume(tmp_path / "lesion.nii.gz")  # the truth as the "anomaly map", slice by slice
    results = volume_results(images, np.zeros(5), maps >= 0.5, 1.0)
    write_volumes(tmp_path / "out", images, np.zeros(5), maps, MaskRule(0.5, 0.5), 1.0, results)
    for suffix in ("map", "mask"):
        written = nibabel.load(tmp_path / "out" / "volumes" / f"scan_{suffix}.nii.gz")
        np.testing.assert_allclose(written.affine, affine, atol=1e-5)
        np.testing.assert_array_equal(written.get_fdata(), lesion)
    assert results[0]["predicted_ml"] == pytest.approx(5 * 0.7 * 2.5 * 0.8 / 1000)


def test_slices_resized_back_onto_the_scan(tmp_path, save_nifti):
    images = load_unlabelled([str(save_volume(save_nifti, tmp_path / "v.nii.gz", (12, 6, 3)))], 4, 1, DataConfig())
    geometry = images.volumes[str(tmp_path / "v.nii.gz")]
    assert geometry.slice_shape == (3, 6, 12)
    maps = np.stack([np.full((4, 4), z, np.float32) for z in (1.0, 2.0, 3.0)])
    results = volume_results(images, np.zeros(3), maps >= 2.5, 1)
    write_volumes(tmp_path, images, np.zeros(3), maps, MaskRule(2.5, 2.5), 1, results)
    written = nibabel.load(tmp_path / "volumes" / "v_map.nii.gz").get_fdata()
    assert written.shape == (12, 6, 3)
    np.testing.assert_allclose(written[:, :, 2], 3.0)
    mask = nibabel.load(tmp_path / "volumes" / "v_mask.nii.gz").get_fdata()
    assert mask[:, :, :2].sum() == 0 and mask[:, :, 2].all()


def save_volume(save_nifti, path, shape, affine=None):
    save_nifti(path, np.full(shape, -500, np.int16), affine)
    return path


def test_dicom_series_round_trip_to_nifti(tmp_path, write_dicom):
    """A series with spacing 0.6 x 0.9 mm, 3 mm between slices, rows running posterior, an
    origin away from 0: the written map's affine puts voxel (column, row, slice) where DICOM's
    ImagePositionPatient + column * 0.9 * row direction + row * 0.6 * column direction says
    (LPS, so x and y flip for NIfTI's RAS)."""
    origin = np.array([-100.0, -80.0, 20.0])
    for k, name in zip(range(4), ("c", "a", "d", "b")):
        pixels = np.full((5, 7), -1000, np.int16)
        pixels[1, 3] = 100 * k  # a marker per slice
        write_dicom(tmp_path / "series" / f"{name}.dcm", pixels, z=0.0)
        ds = pydicom.dcmread(tmp_path / "series" / f"{name}.dcm")
        ds.ImagePositionPatient = list(origin + [0, 0, 3.0 * k])
        ds.PixelSpacing = [0.6, 0.9]
        ds.SeriesInstanceUID = "1.2.3"
        ds.save_as(tmp_path / "series" / f"{name}.dcm")
    slices, geometry = read_scan(tmp_path / "series")
    assert slices.shape == (4, 5, 7) and slices[2, 1, 3] == 200
    images = load_unlabelled([str(tmp_path / "series")], 8, 1, DataConfig())  # a volume, not 4 files
    assert images.paths == [f"{tmp_path / 'series'}#z={z}" for z in range(4)]
    maps = np.zeros((4, 8, 8), np.float32)
    maps[2] = 1.0
    write_volumes(
        tmp_path / "out",
        images,
        np.zeros(4),
        maps,
        MaskRule(0.5, 0.5),
        1,
        volume_results(images, np.zeros(4), maps >= 0.5, 1),
    )
    written = nibabel.load(tmp_path / "out" / "volumes" / "series_mask.nii.gz")
    assert written.shape == (7, 5, 4) and written.get_fdata()[:, :, 2].all()
    assert written.get_fdata().sum() == 35
    column, row, k = 3, 1, 2
    lps = origin + column * 0.9 * np.array([1, 0, 0]) + row * 0.6 * np.array([0, 1, 0]) + [0, 0, 3.0 * k]
    np.testing.assert_allclose(written.affine @ [column, row, k, 1], [-lps[0], -lps[1], lps[2], 1])
    np.testing.assert_allclose(written.affine, geometry.affine)
    # A series without study and frame-of-reference UIDs: no DICOM objects can reference it; NIfTI only.
    assert sorted(p.suffix for p in (tmp_path / "out" / "volumes").iterdir()) == [".gz", ".gz"]
    (note,) = images.notes
    assert note.startswith(f"no DICOM SEG or Parametric Map: {tmp_path / 'series'}: cannot write DICOM outputs")


def slice_set(masks, voxel=(1.0, 1.0, 2.0)):
    """Two volumes a, b of three 4 x 4 working slices each, cut from 8 x 8 slices."""
    n = len(masks)
    geometry = Geometry(np.diag([*voxel, 1.0]), (8, 8, 3))
    return ImageSet(
        images=np.zeros((n, 4, 4, 1), np.uint8),
        labels=masks.any((1, 2)).astype(np.int64),
        paths=[f"{v}.nii.gz#z={z}" for v in "ab" for z in (2, 0, 1)],
        kinds=["x"] * n,
        sizes=np.full((n, 2), 8),
        masks=masks,
        volumes={"a.nii.gz": geometry, "b.nii.gz": geometry},
    )


def test_per_volume_results_against_hand_computed_values():
    masks = np.zeros((6, 4, 4), bool)
    masks[0, :2, :2] = True  # volume a, slice z=2: a 4-pixel lesion
    maps = np.zeros((6, 4, 4), np.float32)
    maps[0, :2, :1] = 1.0  # 2 of its pixels found
    maps[1, 3, 3] = 1.0  # and 1 false pixel in slice z=0
    maps[4, 0, 0] = 1.0  # volume b (no lesion): 1 false pixel
    scores = np.array([0.9, 0.2, 0.4, 0.3, 0.6, 0.1])
    results = volume_results(slice_set(masks), scores, maps >= 0.5, 0.5)
    a, b = results
    # One working pixel = 2 x 2 original pixels of 1 x 1 x 2 mm = 8 mm^3 = 0.008 ml.
    assert a["volume"] == "a" and a["label"] == 1 and a["slices"] == 3 and a["score"] == 0.9
    assert a["lesion_ml"] == pytest.approx(4 * 0.008) and a["predicted_ml"] == pytest.approx(3 * 0.008)
    assert a["dice"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 2)) and a["iou"] == pytest.approx(2 / 5)
    assert a["top_rows"] == [0, 2, 1] and a["predicted"] == 1
    assert b["label"] == 0 and b["score"] == 0.6 and b["lesion_ml"] == 0 and b["dice"] == 0.0
    summary = volume_metrics(results, 0.7)  # a (0.9) flagged, b (0.6) not
    assert summary["detection"]["auroc"] == 1.0 and summary["detection"]["counts"] == {
        "tp": 1,
        "fp": 0,
        "fn": 0,
        "tn": 1,
    }
    assert summary["dice_mean"] == pytest.approx(4 / 7) and summary["n_with_lesion"] == 1
    assert summary["lesion_ml_abs_error_mean"] == pytest.approx(0.008) and summary["voxel_ap"] is None
    # All 96 voxels pooled: at 1.0 four (2 lesion, 2 not: precision 1/2, recall 2/4), then at 0 all
    # (precision 4/96, recall 1): AP = 1/2 x 1/2 + 4/96 x 1/2.
    assert voxel_ap_of_set(slice_set(masks), maps) == pytest.approx(0.25 + 4 / 96 / 2)
    assert voxel_ap_of_set(slice_set(masks), maps) == pytest.approx(
        average_precision_score(masks.ravel(), maps.ravel())
    )
    assert voxel_ap_of_set(slice_set(np.zeros_like(masks)), maps) is None  # no lesion voxel: undefined


def test_images_that_are_not_volume_slices_give_no_volume_rows():
    images = ImageSet(
        images=np.zeros((2, 4, 4, 1), np.uint8),
        labels=np.zeros(2, np.int64),
        paths=["a.png", "b.png"],
        kinds=["good"] * 2,
        sizes=np.full((2, 2), 4),
    )
    assert volume_results(images, np.zeros(2), np.zeros((2, 4, 4), bool), 1) == []

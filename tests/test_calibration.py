"""Calibration (calibration.py): the split that keeps patients whole, the promise on normals no
part was fitted on, the note on too few normals, the typed record and its file form."""

import dataclasses
import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats

from funetgan.config import apply_overrides
from funetgan.data.base import ImageSet
from funetgan.data.medical import Geometry
from funetgan.errors import DataError, RunFolderError
from funetgan.model import FUNetGAN
from funetgan.scoring.calibration import Calibration, calibration_split, few_normals_note, image_groups
from funetgan.scoring.thresholds import expected_rate


def volume_slices(volumes: int, slices: int) -> ImageSet:
    """`volumes` volumes of `slices` slices each, interleaved in the set as a loader may give them."""
    paths = [f"case{v}.nii.gz#z={z}" for z in range(slices) for v in range(volumes)]
    n = len(paths)
    geometry = Geometry(np.eye(4), (4, 4, slices))
    return ImageSet(
        np.zeros((n, 4, 4, 1), np.uint8),
        np.zeros(n, np.int64),
        paths,
        ["good"] * n,
        np.full((n, 2), 4),
        volumes={f"case{v}.nii.gz": geometry for v in range(volumes)},
    )


def test_volumes_are_held_out_whole():
    images = volume_slices(volumes=10, slices=6)
    rows, held_out = calibration_split(images, None, 0.2, seed=3)
    volume = lambda path: path.partition("#")[0]  # noqa: E731
    kept = {volume(images.paths[i]) for i in rows}
    out = {volume(path) for path in held_out.paths}
    assert len(out) == 2 and not kept & out  # 20 % of 10 patients, none on both sides
    assert len(held_out) == 12 and len(rows) == 48
    assert held_out.volumes.keys() == out  # the held-out set keeps its volumes' geometry
    again = calibration_split(images, None, 0.2, seed=3)
    np.testing.assert_array_equal(again[0], rows)  # the same draw for the same seed


def test_images_that_are_no_slices_are_each_their_own_group(random_images):
    images = random_images(5)
    np.testing.assert_array_equal(image_groups(images), np.arange(5))
    rows, held_out = calibration_split(images, None, 0.4, seed=0)
    assert len(rows) == 3 and len(held_out) == 2


def test_a_single_volume_cannot_be_split_and_a_validation_set_is_used_as_it_is(random_images):
    with pytest.raises(DataError, match="one training volume"):
        calibration_split(volume_slices(volumes=1, slices=8), None, 0.5, seed=0)
    val = random_images(3)
    assert calibration_split(random_images(5), val, 0.5, seed=0) == (None, val)
    anomalous = random_images(4)
    anomalous.labels[1] = 1
    with pytest.raises(DataError, match="1 anomalous images"):
        calibration_split(anomalous, None, 0.5, seed=0)


def test_the_image_threshold_keeps_its_promise_on_fresh_normals(random_images, tiny_config):
    """Untrained networks and noise images make every image as normal as any other; the score
    is dominated by the latent term (a Gaussian of 64 dimensions). Fitted on training images
    and levelled on 150 other normals, the calibration normals and fresh normals are
    exchangeable, which is tested directly on their ranks; fitted on those 150 normals
    themselves (in-sample, as before), their Mahalanobis distances are biased low and fresh
    normals rank far above them.

    Each check fails a correct calibration with probability under 1/2,000, so the test fails
    under 1 in 1,000 correct runs whatever the draws (the band it had held a correct
    calibration's rate only ~73 % of the time):
    - Mann-Whitney's p-value of fresh against calibration scores is uniform when they are
      exchangeable: P(p < 0.0005) = 0.0005.
    - The threshold is the calibration normals' maximum (a 1/151 rate), so K fresh normals lie
      above it exactly when the K highest of all 3,150 scores are fresh. With every placing of
      the 150 calibration scores among the 3,150 equally likely, P(K >= k) = C(3150 - k, 150) /
      C(3150, 150): 0.376 at k = 20 (the expected 3000/151), 0.000498 at k = 152."""
    torch.set_num_threads(1)
    config = apply_overrides(tiny_config(), ["model.z_dim=64", "score.latent_density_weight=50"])
    model = FUNetGAN(config)
    training, normals, fresh = random_images(1000, seed=1), random_images(150, seed=2), random_images(3000, seed=3)
    calibration = model.calibrate(normals, training.images)
    assert calibration.expected_image_rate == pytest.approx(1 / 151)
    assert math.comb(3150 - 152, 150) / math.comb(3150, 150) < 0.0005
    calibration_scores, fresh_scores = model.score(normals).scores, model.score(fresh).scores
    assert model.image_threshold == calibration_scores.max()
    assert stats.mannwhitneyu(fresh_scores, calibration_scores).pvalue > 0.0005
    assert np.sum(fresh_scores >= model.image_threshold) < 152
    # The normals' scores are kept, ascending, and give the same promise at the threshold.
    kept = calibration.normal_scores
    assert len(kept) == 150 and kept == sorted(kept)
    assert expected_rate(kept, calibration.image_threshold) == calibration.expected_image_rate
    model.calibrate(normals, normals.images)  # the densities fitted on the calibration normals themselves
    calibration_scores, fresh_scores = model.score(normals).scores, model.score(fresh).scores
    assert stats.mannwhitneyu(fresh_scores, calibration_scores, alternative="greater").pvalue < 1e-6
    assert np.sum(fresh_scores >= model.image_threshold) >= 152


def test_the_note_on_too_few_normals_says_what_to_expect():
    assert few_normals_note(99, 0.99) == []
    (note,) = few_normals_note(24, 0.99)
    assert note.startswith(
        "24 calibration normals: the 0.99 quantile of their scores is their maximum, so about "
        "1 in 25 (4.0 %) normal images will be flagged, not 1 %"
    )
    assert "hold out at least 99 normals" in note
    assert few_normals_note(9, 0.9) == [] and len(few_normals_note(8, 0.9)) == 1


# Every level scoring reads (the density terms' may be missing: they then count 0).
LEVELS = {
    "pixel_residual": 0.5,
    "pixel_features": 0.4,
    "pixel_contrast": 3.0,
    "pixel_contrast_std": 1.0,
    "image_residual": 0.2,
    "image_features": 0.1,
    "image_izif": 2.0,
    "image_izif_std": 0.5,
}


def saved_record() -> dict:
    return Calibration(
        levels=dict(LEVELS),
        image_threshold=2.0,
        pixel_threshold=1.5,
        blur_sigma=2.0,
        normals=100,
        anomalous=0,
        rule="normal quantile 0.99",
        expected_image_rate=1 / 101,
        unit_scale={"score": {"median": 1.0, "spread": 2.0}, "map": {"median": 0.5, "spread": 1.0}},
        notes=["a note"],
    ).to_dict()


def test_the_record_survives_its_file_form_and_other_layouts_are_refused():
    record = saved_record()
    assert Calibration.from_dict(record, "run").to_dict() == record
    record = Calibration.from_dict(saved_record(), "run")
    older = {key: value for key, value in record.to_dict().items() if key != "normal_scores"}
    assert Calibration.from_dict(older, "run") == record  # saved before the normals' scores were kept
    scored = dataclasses.replace(record, normal_scores=[0.5, 1.0, 2.5])
    assert Calibration.from_dict(scored.to_dict(), "run") == scored
    with pytest.raises(RunFolderError, match="run: calibrated by an earlier funetgan"):
        Calibration.from_dict({"norms": {}, "image_threshold": 2.0}, "run")


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda r: r.update(image_threshold="2.0"), "image_threshold is '2.0', not a finite number"),
        (lambda r: r.update(pixel_threshold=float("nan")), "pixel_threshold is nan, not a finite number"),
        (lambda r: r.update(levels={}), "levels lack pixel_residual, pixel_features, pixel_contrast"),
        (lambda r: r["levels"].pop("pixel_contrast_std"), "levels lack pixel_contrast_std"),
        (lambda r: r["levels"].update(image_residual=[1]), "levels['image_residual'] is [1], not a finite number"),
        (lambda r: r.update(levels=None), "levels is NoneType, not a table of levels"),
        (lambda r: r.update(normals=True), "normals is True, not a count"),
        (lambda r: r.update(expected_image_rate=3), "expected_image_rate is 3, not a share in [0, 1]"),
        (lambda r: r["unit_scale"].pop("map"), "unit_scale['map'] is None, not a median and a positive spread"),
        (lambda r: r["unit_scale"]["score"].update(spread=0), "unit_scale['score'] is"),
    ],
)
def test_a_damaged_calibration_is_one_line_naming_the_run_and_the_fix(edit, problem):
    """A hand-edited or damaged record (a string threshold, emptied levels) is refused where it
    is read, not at the first arithmetic on it (`_UFuncNoLoopError`, `KeyError`)."""
    from funetgan.errors import RunFolderError

    record = saved_record()
    edit(record)
    with pytest.raises(RunFolderError) as caught:
        Calibration.from_dict(record, "run/model.safetensors")
    message = str(caught.value)
    assert message.startswith(f"calibration of run/model.safetensors is damaged: {problem}")
    assert message.endswith("; run funetgan calibrate --run RUN --data DATA") and "\n" not in message


def test_a_density_term_without_its_level_is_no_damage():
    """A density term whose Gaussian could not be fitted has no level (it counts 0)."""
    record = saved_record()
    record["levels"].update(pixel_density=1.0)  # present or not: both load
    assert Calibration.from_dict(record, "run").levels["pixel_density"] == 1.0


def dicom_slices(write_dicom, tmp_path, patients: list[str], series: list[str]) -> ImageSet:
    """One DICOM slice file per (patient, series) pair given, read as 2-D images would be."""
    pydicom = pytest.importorskip("pydicom")
    paths = []
    for n, (patient, uid) in enumerate(zip(patients, series)):
        path = write_dicom(tmp_path / f"slice_{n:03d}.dcm", np.zeros((4, 4), np.int16), z=n)
        dataset = pydicom.dcmread(path)
        dataset.PatientID, dataset.SeriesInstanceUID = patient, uid
        dataset.save_as(path)
        paths.append(str(path))
    n = len(paths)
    return ImageSet(np.zeros((n, 4, 4, 1), np.uint8), np.zeros(n, np.int64), paths, ["good"] * n, np.full((n, 2), 4))


def test_dicom_slices_are_held_out_by_patient_or_else_by_series(tmp_path, write_dicom):
    """A folder of DICOM slices read as images was split image by image, neighbouring slices
    of one patient on both sides of the calibration split."""
    patients = ["P1", "P2", "P1", "P3", "P2", "P3"]
    by_patient = dicom_slices(write_dicom, tmp_path / "a", patients, ["1.1", "1.2", "1.1", "1.3", "1.2", "1.3"])
    np.testing.assert_array_equal(np.unique(image_groups(by_patient), return_inverse=True)[1], [0, 1, 0, 2, 1, 2])
    rows, held_out = calibration_split(by_patient, None, 0.34, seed=0)  # 1 of 3 patients
    out = {patients[by_patient.paths.index(path)] for path in held_out.paths}
    assert len(out) == 1 and len(held_out) == 2 and not out & {patients[i] for i in rows}
    one_patient = dicom_slices(write_dicom, tmp_path / "b", ["P1"] * 4, ["1.1", "1.2", "1.1", "1.2"])
    np.testing.assert_array_equal(np.unique(image_groups(one_patient), return_inverse=True)[1], [0, 1, 0, 1])


def slice_images(count: int, smooth: bool) -> ImageSet:
    """Images named in order: slices of one smooth volume (each like the next), or noise."""
    rng = np.random.default_rng(0)
    if smooth:
        base = rng.random((32, 32)) * 200
        images = np.stack([base + 40 * np.sin(z / 5) for z in range(count)])
    else:
        images = rng.random((count, 32, 32)) * 255
    images = images.astype(np.uint8)[..., None]
    return ImageSet(
        images,
        np.zeros(count, np.int64),
        [f"slice_{z:03d}.png" for z in range(count)],
        ["good"] * count,
        np.full((count, 2), 32),
    )


def test_slice_like_images_without_series_information_are_split_per_image_with_a_warning():
    with pytest.warns(UserWarning, match="20 images in name order look like slices of volumes"):
        groups = image_groups(slice_images(20, smooth=True))
    np.testing.assert_array_equal(groups, np.arange(20))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image_groups(slice_images(20, smooth=False))  # unrelated images: no warning

"""Calibration (calibration.py): the split that keeps patients whole, the promise on normals no
part was fitted on, the note on too few normals, the typed record and its file form."""
import dataclasses

import numpy as np
import pytest
import torch

from conftest import random_images, tiny_config
from funetgan.scoring.calibration import Calibration, calibration_split, few_normals_note, image_groups
from funetgan.config import apply_overrides
from funetgan.data.base import ImageSet
from funetgan.data.medical import Geometry
from funetgan.model import FUNetGAN
from funetgan.scoring.thresholds import expected_rate


def volume_slices(volumes: int, slices: int) -> ImageSet:
    """`volumes` volumes of `slices` slices each, interleaved in the set as a loader may give them."""
    paths = [f"case{v}.nii.gz#z={z}" for z in range(slices) for v in range(volumes)]
    n = len(paths)
    geometry = Geometry(np.eye(4), (4, 4, slices))
    return ImageSet(np.zeros((n, 4, 4, 1), np.uint8), np.zeros(n, np.int64), paths, ["good"] * n, np.full((n, 2), 4),
                    volumes={f"case{v}.nii.gz": geometry for v in range(volumes)})


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


def test_images_that_are_no_slices_are_each_their_own_group():
    images = random_images(5)
    np.testing.assert_array_equal(image_groups(images), np.arange(5))
    rows, held_out = calibration_split(images, None, 0.4, seed=0)
    assert len(rows) == 3 and len(held_out) == 2


def test_a_single_volume_cannot_be_split_and_a_validation_set_is_used_as_it_is():
    with pytest.raises(ValueError, match="one training volume"):
        calibration_split(volume_slices(volumes=1, slices=8), None, 0.5, seed=0)
    val = random_images(3)
    assert calibration_split(random_images(5), val, 0.5, seed=0) == (None, val)
    anomalous = random_images(4)
    anomalous.labels[1] = 1
    with pytest.raises(ValueError, match="1 anomalous images"):
        calibration_split(anomalous, None, 0.5, seed=0)


def test_the_image_threshold_keeps_its_promise_on_fresh_normals():
    """Untrained networks and noise images make every image as normal as any other; the score
    is dominated by the latent term (a Gaussian of 64 dimensions). Fitted on training images
    and levelled on 150 other normals, the threshold flags about 1 in 151 fresh normals, as the
    calibration expects; fitted on those 150 normals themselves (in-sample, as before), its
    Mahalanobis distances are biased low and it flags several times as many."""
    torch.set_num_threads(1)
    config = apply_overrides(tiny_config(), ["model.z_dim=64", "score.latent_density_weight=50"])
    model = FUNetGAN(config)
    training, normals, fresh = random_images(1000, seed=1), random_images(150, seed=2), random_images(3000, seed=3)
    calibration = model.calibrate(normals, training.images)
    assert calibration.expected_image_rate == pytest.approx(1 / 151)
    # The normals' scores are kept, ascending, and give the same promise at the threshold.
    kept = calibration.normal_scores
    assert len(kept) == 150 and kept == sorted(kept)
    assert expected_rate(kept, calibration.image_threshold) == calibration.expected_image_rate
    rate = np.mean(model.score(fresh).scores >= model.image_threshold)
    assert 0.2 / 151 < rate < 2.5 / 151
    model.calibrate(normals, normals.images)  # the densities fitted on the calibration normals themselves
    assert np.mean(model.score(fresh).scores >= model.image_threshold) > 4 * rate


def test_the_note_on_too_few_normals_says_what_to_expect():
    assert few_normals_note(99, 0.99) == []
    (note,) = few_normals_note(24, 0.99)
    assert note.startswith("24 calibration normals: the 0.99 quantile of their scores is their maximum, so about "
                           "1 in 25 (4.0 %) normal images will be flagged, not 1 %")
    assert "hold out at least 99 normals" in note
    assert few_normals_note(9, 0.9) == [] and len(few_normals_note(8, 0.9)) == 1


def test_the_record_survives_its_file_form_and_other_layouts_are_refused():
    record = Calibration(levels={"pixel_residual": 0.5}, image_threshold=2.0, pixel_threshold=1.5,
                         blur_sigma=2.0, normals=100, anomalous=0, rule="normal quantile 0.99",
                         expected_image_rate=1 / 101, unit_scale={"score": {"median": 1.0, "spread": 2.0}},
                         notes=["a note"])
    assert Calibration.from_dict(record.to_dict(), "run") == record
    older = {key: value for key, value in record.to_dict().items() if key != "normal_scores"}
    assert Calibration.from_dict(older, "run") == record  # saved before the normals' scores were kept
    scored = dataclasses.replace(record, normal_scores=[0.5, 1.0, 2.5])
    assert Calibration.from_dict(scored.to_dict(), "run") == scored
    with pytest.raises(ValueError, match="run: calibrated by an earlier funetgan"):
        Calibration.from_dict({"norms": {}, "image_threshold": 2.0}, "run")

"""The feature-density terms (nn.density): hand-computed Mahalanobis values (one Gaussian
for every location, or one per location; of E's latent codes), statistics equal to numpy's,
up-sampling, calibration, persistence and the scoring weights."""
import dataclasses

import numpy as np
import pytest
import torch

from conftest import random_images, tiny_config
from funetgan import checkpoint
from funetgan.config import ScoreConfig, apply_overrides
from funetgan.model import FUNetGAN
from funetgan.nn.density import GRID, SHRINKAGE, DensityStatistics, FeatureDensity, up_sampled
from funetgan.nn.tensors import to_tensor
from funetgan.scoring import Terms, combine


def test_the_term_is_the_squared_mahalanobis_distance_over_the_channels():
    density = FeatureDensity(2)
    density.mean.copy_(torch.tensor([[1.0, 0.0]]))
    density.precision.copy_(torch.tensor([[[1.0, 0.0], [0.0, 4.0]]]))
    features = torch.tensor([1.0, 2.0]).reshape(1, 2, 1, 1).repeat(1, 1, 2, 2)
    # ((1 - 1)^2 * 1 + (2 - 0)^2 * 4) / 2 channels = 8 at every location
    assert torch.equal(density(features), torch.full((1, 2, 2), 8.0))
    density.precision.copy_(torch.tensor([[[1.0, 3.0], [3.0, 1.0]]]))  # cross terms: 2 * 3 * 0 * 2
    assert density(features)[0, 0, 0].item() == pytest.approx(2.0)  # (0 + 0 + 4) / 2


def test_one_gaussian_per_location_by_hand():
    """2 locations (a 1 x 2 grid), 1 channel: location 0 ~ N(0, 1), location 1 ~ N(3, 1/4)."""
    density = FeatureDensity(1, locations=2)
    density.mean.copy_(torch.tensor([[0.0], [3.0]]))
    density.precision.copy_(torch.tensor([[[1.0]], [[4.0]]]))
    features = torch.tensor([[[[2.0, 2.0]]]])  # 1 x 1 x 1 x 2: the value 2 at both locations
    assert density(features).tolist() == [[[4.0, 4.0]]]  # (2 - 0)^2 * 1 and (2 - 3)^2 * 4


def test_the_term_is_up_sampled_bilinearly_to_the_tile():
    density = FeatureDensity(1)  # standard normal: the term is the squared feature
    features = torch.tensor([[[[1.0, 2.0], [1.0, 2.0]]]])  # 1 x 1 x 2 x 2: squares 1 and 4
    term = up_sampled(density(features), 4)
    assert term.shape == (1, 4, 4)
    assert term[0, 0].tolist() == [1.0, 1.75, 3.25, 4.0]  # 1 + 3 * (0, 1/4, 3/4, 1), edges clamped


def test_statistics_are_the_mean_and_shrunk_covariance_of_all_pixels():
    rng = np.random.default_rng(0)
    scale, shift = np.array([1.0, 3.0])[:, None, None], np.array([5.0, -1.0])[:, None, None]
    batches = [torch.tensor(rng.normal(size=(3, 2, 4, 4)) * scale + shift, dtype=torch.float32)  # B x C x h x w
               for _ in range(2)]
    statistics = DensityStatistics()
    for batch in batches:
        statistics.add(batch)
    density = statistics.fit(FeatureDensity(2))
    rows = np.concatenate([b.permute(0, 2, 3, 1).reshape(-1, 2).numpy() for b in batches]).astype(np.float64)
    covariance = np.cov(rows, rowvar=False, bias=True)
    covariance += SHRINKAGE * np.trace(covariance) / 2 * np.eye(2)
    np.testing.assert_allclose(density.mean[0].numpy(), rows.mean(0), rtol=1e-5)
    np.testing.assert_allclose(density.precision[0].numpy(), np.linalg.inv(covariance), rtol=1e-4)
    # Over the pixels it was fitted on, the term's mean is trace(precision @ covariance) / C:
    # 1 / (1 + shrinkage) per channel for independent channels of equal spread, here near it.
    mean_term = torch.cat([density(b).flatten() for b in batches]).mean().item()
    unshrunk = np.cov(rows, rowvar=False, bias=True)
    assert mean_term == pytest.approx(np.trace(np.linalg.inv(covariance) @ unshrunk) / 2, rel=1e-4)


def test_statistics_per_location_are_each_locations_own():
    rng = np.random.default_rng(1)
    features = torch.tensor(rng.normal(size=(20, 2, 1, 2)) + np.array([0.0, 5.0]), dtype=torch.float32)
    statistics = DensityStatistics(locations=2)
    statistics.add(features[:7])
    statistics.add(features[7:])
    density = statistics.fit(FeatureDensity(2, locations=2))
    for location in range(2):
        rows = features[:, :, 0, location].numpy().astype(np.float64)  # 20 x 2 channels
        covariance = np.cov(rows, rowvar=False, bias=True)
        covariance += SHRINKAGE * np.trace(covariance) / 2 * np.eye(2)
        np.testing.assert_allclose(density.mean[location].numpy(), rows.mean(0), rtol=1e-5)
        np.testing.assert_allclose(density.precision[location].numpy(), np.linalg.inv(covariance), rtol=1e-4)


def test_statistics_need_features():
    with pytest.raises(ValueError, match="no normal features"):
        DensityStatistics().fit(FeatureDensity(2))


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    images = random_images(12, seed=3)
    config = apply_overrides(tiny_config(), ["score.density_weight=1.0", "score.image_density_weight=1.0",
                                             "score.latent_density_weight=1.0"])
    # 70 calibration normals: the image term's 16 Gaussians of 32 channels need 2 x 32 (MIN_SAMPLES_PER_CHANNEL).
    return FUNetGAN(config).fit(images, random_images(70, seed=4)), images


def test_calibration_fits_the_density_and_its_normal_level(trained):
    model, images = trained
    assert not torch.equal(model.density.precision, torch.eye(len(model.density.mean)))
    assert 0 < model.calibration["norms"]["pixel_density"] < 2  # ~1 on the normals it was fitted on
    terms = model.residual_terms(images.images)
    assert terms.pixel_density.shape == terms.pixel_residual.shape and (terms.pixel_density >= 0).all()


def test_calibration_fits_one_gaussian_per_bottleneck_location_for_the_image_term(trained):
    model, images = trained
    assert model.image_density.mean.shape == (GRID, model.D.bottleneck_width)
    assert not torch.equal(model.image_density.mean[0], model.image_density.mean[5])  # locations differ
    assert 0 < model.calibration["norms"]["image_density"] < 2  # ~1 on the normals it was fitted on
    terms = model.residual_terms(images.images)
    assert terms.image_density.shape == (len(images), 1) and (terms.image_density > 0).all()


def test_the_latent_term_is_the_distance_of_e_x_to_the_calibration_normals_codes(trained):
    model, images = trained
    with torch.no_grad():
        codes = model.E(to_tensor(random_images(70, seed=4).images, "cpu")).double().numpy()  # the calibration set
        z = model.E(to_tensor(images.images, "cpu")).double().numpy()
    covariance = np.cov(codes.T, bias=True)
    covariance += SHRINKAGE * np.trace(covariance) / len(covariance) * np.eye(len(covariance))
    centred = z - codes.mean(0)
    expected = np.einsum("ni,ij,nj->n", centred, np.linalg.inv(covariance), centred) / codes.shape[1]
    terms = model.residual_terms(images.images)
    np.testing.assert_allclose(terms.latent_density[:, 0], expected, rtol=1e-3)
    assert 0 < model.calibration["norms"]["latent_density"] < 2  # ~1 on the normals it was fitted on


def test_the_density_is_saved_with_the_weights(trained, tmp_path):
    model, images = trained
    model.save(tmp_path / "model.safetensors")
    loaded = FUNetGAN.load(tmp_path / "model.safetensors")
    np.testing.assert_allclose(loaded.score(images).maps, model.score(images).maps, rtol=1e-6, atol=1e-6)


def test_a_run_calibrated_before_the_density_term_is_scored_as_it_was(trained, tmp_path):
    model, images = trained
    old = FUNetGAN(tiny_config())  # a file of that time: no density norm (its settings then had no weight)
    assert old.config.score.density_weight > 0
    old.G, old.D, old.E = model.G, model.D, model.E
    old.calibration = {**model.calibration, "norms": {k: v for k, v in model.calibration["norms"].items()
                                                      if k != "pixel_density"}}
    old.save(tmp_path / "old.safetensors")
    loaded = FUNetGAN.load(tmp_path / "old.safetensors")
    assert loaded.config.score.density_weight == 0
    residual_only = dataclasses.replace(model.config.score, density_weight=0.0)
    expected = model.scores_from_terms(model.residual_terms(images.images), residual_only)
    np.testing.assert_allclose(loaded.score(images).maps, expected.maps, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("term, normals, needed", [("image_density", 63, 64),  # 2 x 32 bottleneck channels
                                                   ("latent_density", 31, 32)])  # 2 x 16 latent values
def test_too_few_calibration_normals_leave_a_per_image_term_off_with_a_note(term, normals, needed):
    model = FUNetGAN(apply_overrides(tiny_config(), [f"score.{term}_weight=1.0"]))
    model.calibrate(random_images(normals, seed=4))  # no training images to top it up with
    assert getattr(model.config.score, f"{term}_weight") == 0 and term not in model.calibration["norms"]
    assert model.calibration["notes"] == [f"score.{term}_weight set to 0: {normals} normal images (or tiles) "
                                          f"to fit its Gaussian on, it needs {needed}"]


def latent_codes(model: FUNetGAN, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.E(to_tensor(images, "cpu")).double().numpy()


def test_a_thin_calibration_fits_the_latent_gaussian_on_training_images_too():
    """20 calibration normals, 32 needed at z_dim 16: all 25 training rows are drawn (4 x 32 -
    20 = 108 wanted); the Gaussian is that of the 45 codes, the level the 20 normals' mean."""
    torch.set_num_threads(1)
    model = FUNetGAN(apply_overrides(tiny_config(), ["score.latent_density_weight=1.0"]))
    val, train = random_images(20, seed=4), random_images(50, seed=5)
    rows = np.arange(50)[::2]
    model.calibrate(val, top_up=(train.images, rows))
    codes = latent_codes(model, np.concatenate([val.images, train.images[rows]]))
    np.testing.assert_allclose(model.latent_density.mean[0].numpy(), codes.mean(0), rtol=1e-4, atol=1e-6)
    covariance = np.cov(codes.T, bias=True)
    covariance += SHRINKAGE * np.trace(covariance) / len(covariance) * np.eye(len(covariance))
    centred = latent_codes(model, val.images) - codes.mean(0)
    distances = np.einsum("ni,ij,nj->n", centred, np.linalg.inv(covariance), centred) / codes.shape[1]
    assert model.calibration["norms"]["latent_density"] == pytest.approx(distances.mean(), rel=1e-3)
    assert model.config.score.latent_density_weight == 1.0
    assert model.calibration["notes"] == [
        "score.latent_density_weight: its Gaussian was fitted on 45 normal images (or tiles) (20 for calibration, "
        "25 from 25 training images), as the calibration normals alone are fewer than the 32 it needs"]


def test_the_top_up_draws_what_the_gaussian_wants_and_says_when_it_is_still_short():
    torch.set_num_threads(1)
    model = FUNetGAN(apply_overrides(tiny_config(), ["score.latent_density_weight=1.0",
                                                     "score.image_density_weight=1.0"]))
    model.calibrate(random_images(20, seed=4), top_up=(random_images(200, seed=5).images, None))
    # 4 x 64 - 20 = 236 wanted for the image term (the larger want): all 200 drawn; 220 >= 64 and >= 32
    assert [note.split(":")[0] for note in model.calibration["notes"]] == ["score.image_density_weight",
                                                                          "score.latent_density_weight"]
    assert all("220 normal images (or tiles) (20 for calibration, 200 from 200 training images)" in note
               for note in model.calibration["notes"])
    model = FUNetGAN(apply_overrides(tiny_config(), ["score.latent_density_weight=1.0"]))
    model.calibrate(random_images(20, seed=4), top_up=(random_images(300, seed=5).images, None))
    assert "256 normal images (or tiles) (20 for calibration, 236 from 236 training images)" \
        in model.calibration["notes"][0]  # no more than the image term wants (it is short too, weight or not)
    model = FUNetGAN(apply_overrides(tiny_config(), ["score.image_density_weight=1.0"]))
    model.calibrate(random_images(20, seed=4), top_up=(random_images(30, seed=5).images, None))
    assert model.config.score.image_density_weight == 0
    assert "score.image_density_weight set to 0: 50 normal images (or tiles) (20 for calibration, 30 from 30 " \
           "training images) to fit its Gaussian on, it needs 64" in model.calibration["notes"]


def test_fit_tops_up_from_the_training_rows_it_did_not_hold_out():
    """Without a validation set, the held-out training normals calibrate and the other rows top up."""
    torch.set_num_threads(1)
    config = apply_overrides(tiny_config(), ["score.latent_density_weight=1.0", "data.val_fraction=0.25"])
    model = FUNetGAN(config).fit(random_images(40, seed=3))
    assert model.config.score.latent_density_weight == 1.0
    assert model.calibration["notes"] == [
        "score.latent_density_weight: its Gaussian was fitted on 40 normal images (or tiles) (10 for calibration, "
        "30 from 30 training images), as the calibration normals alone are fewer than the 32 it needs"]


def test_a_file_from_before_the_image_term_loads_and_scores_as_it_was(trained, tmp_path):
    """Such a file has the map's Gaussian without its location axis, no image Gaussian and no
    image-density level: it loads, with image_density_weight 0."""
    model, images = trained
    model.save(tmp_path / "new.safetensors")
    tensors, meta = checkpoint.load(tmp_path / "new.safetensors")
    tensors = {k: v for k, v in tensors.items() if not k.startswith("image_density.")}
    tensors["density.mean"], tensors["density.precision"] = tensors["density.mean"][0], tensors["density.precision"][0]
    del meta["calibration"]["norms"]["image_density"]
    meta["config"]["score"]["image_density_weight"] = 1.0  # even if it said so, the level is missing
    checkpoint.save(tmp_path / "old.safetensors", tensors, meta)
    loaded = FUNetGAN.load(tmp_path / "old.safetensors")
    assert loaded.config.score.image_density_weight == 0
    assert torch.equal(loaded.density.precision, model.density.precision)
    expected = model.scores_from_terms(model.residual_terms(images.images),
                                       dataclasses.replace(model.config.score, image_density_weight=0.0))
    assert not np.allclose(model.score(images).scores, expected.scores, rtol=1e-3)  # the term counts when on
    np.testing.assert_allclose(loaded.score(images).scores, expected.scores, rtol=1e-6)


def test_a_file_from_before_the_latent_term_loads_and_scores_as_it_was(trained, tmp_path):
    model, images = trained
    model.save(tmp_path / "new.safetensors")
    tensors, meta = checkpoint.load(tmp_path / "new.safetensors")
    tensors = {k: v for k, v in tensors.items() if not k.startswith("latent_density.")}
    del meta["calibration"]["norms"]["latent_density"]
    checkpoint.save(tmp_path / "old.safetensors", tensors, meta)
    loaded = FUNetGAN.load(tmp_path / "old.safetensors")
    assert loaded.config.score.latent_density_weight == 0
    expected = model.scores_from_terms(model.residual_terms(images.images),
                                       dataclasses.replace(model.config.score, latent_density_weight=0.0))
    assert not np.allclose(model.score(images).scores, expected.scores, rtol=1e-3)  # the term counts when on
    np.testing.assert_allclose(loaded.score(images).scores, expected.scores, rtol=1e-6)


def test_the_weight_adds_the_term_over_its_normal_level():
    ones = np.ones((1, 2, 2), np.float32)
    terms = Terms(pixel_residual=ones, pixel_features=ones * 0, pixel_critic=ones * 0,
                  pixel_density=np.array([[[2.0, 4.0], [0.0, 2.0]]], np.float32),
                  image_residual=np.ones((1, 1)), image_features=np.ones((1, 1)), image_density=np.ones((1, 1)),
                  latent_density=np.ones((1, 1)),
                  pixel_contrast=ones * 0)
    norms = {"pixel_residual": 1.0, "pixel_features": 1.0, "pixel_density": 2.0,
             "image_residual": 1.0, "image_features": 1.0}
    _, maps = combine(terms, norms, ScoreConfig(kappa=0.0, density_weight=0.5, smoothness_weight=0.0, blur_sigma=0.0,
                                                 latent_density_weight=0.0), 2)
    assert maps[0].tolist() == [[1.5, 2.0], [1.0, 1.5]]  # 1 + 0.5 * density / 2
    del norms["pixel_density"]  # calibrated by an older funetgan
    with pytest.raises(ValueError, match="density_weight=0"):
        combine(terms, norms, ScoreConfig(density_weight=1.0, smoothness_weight=0.0), 2)

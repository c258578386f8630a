"""The feature-density terms (nn.density): hand-computed Mahalanobis values (one Gaussian
for every location; of E's latent codes), statistics equal to numpy's,
up-sampling, calibration, persistence and the scoring weights."""

import numpy as np
import pytest
import torch

from funetgan.config import ScoreConfig, apply_overrides
from funetgan.model import FUNetGAN
from funetgan.nn.density import SHRINKAGE, DensityStatistics, FeatureDensity, up_sampled
from funetgan.nn.tensors import to_tensor
from funetgan.scoring.combine import combine
from funetgan.scoring.terms import Terms


def test_the_term_is_the_squared_mahalanobis_distance_over_the_channels():
    density = FeatureDensity(2)
    density.mean.copy_(torch.tensor([[1.0, 0.0]]))
    density.precision.copy_(torch.tensor([[[1.0, 0.0], [0.0, 4.0]]]))
    features = torch.tensor([1.0, 2.0]).reshape(1, 2, 1, 1).repeat(1, 1, 2, 2)
    # ((1 - 1)^2 * 1 + (2 - 0)^2 * 4) / 2 channels = 8 at every location
    assert torch.equal(density(features), torch.full((1, 2, 2), 8.0))
    density.precision.copy_(torch.tensor([[[1.0, 3.0], [3.0, 1.0]]]))  # cross terms: 2 * 3 * 0 * 2
    assert density(features)[0, 0, 0].item() == pytest.approx(2.0)  # (0 + 0 + 4) / 2


def test_the_term_is_up_sampled_bilinearly_to_the_tile():
    density = FeatureDensity(1)  # standard normal: the term is the squared feature
    features = torch.tensor([[[[1.0, 2.0], [1.0, 2.0]]]])  # 1 x 1 x 2 x 2: squares 1 and 4
    term = up_sampled(density(features), 4)
    assert term.shape == (1, 4, 4)
    assert term[0, 0].tolist() == [1.0, 1.75, 3.25, 4.0]  # 1 + 3 * (0, 1/4, 3/4, 1), edges clamped


def test_statistics_are_the_mean_and_shrunk_covariance_of_all_pixels():
    rng = np.random.default_rng(0)
    scale, shift = np.array([1.0, 3.0])[:, None, None], np.array([5.0, -1.0])[:, None, None]
    batches = [
        torch.tensor(rng.normal(size=(3, 2, 4, 4)) * scale + shift, dtype=torch.float32)  # B x C x h x w
        for _ in range(2)
    ]
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


def test_statistics_need_features():
    with pytest.raises(ValueError, match="no normal features"):
        DensityStatistics().fit(FeatureDensity(2))


@pytest.fixture(scope="module")
def trained(random_images, tiny_config):
    torch.set_num_threads(1)
    train, val = random_images(80, seed=3), random_images(20, seed=4)
    config = apply_overrides(tiny_config(), ["score.density_weight=1.0", "score.latent_density_weight=1.0"])
    return FUNetGAN(config).fit(train, val), train, val


def latent_codes(model: FUNetGAN, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.E(to_tensor(images, "cpu")).double().numpy()


def test_the_densities_are_fitted_on_training_images_and_levelled_on_the_calibration_normals(trained):
    """E's codes of the 80 training images (whole images at the model's size: each once) make
    the latent Gaussian; its level is the mean distance of the 20 calibration normals, which
    it never saw."""
    model, train, val = trained
    codes = latent_codes(model, train.images)
    np.testing.assert_allclose(model.densities["latent_density"].mean[0].numpy(), codes.mean(0), rtol=1e-4, atol=1e-6)
    covariance = np.cov(codes.T, bias=True)
    covariance += SHRINKAGE * np.trace(covariance) / len(covariance) * np.eye(len(covariance))
    centred = latent_codes(model, val.images) - codes.mean(0)
    distances = np.einsum("ni,ij,nj->n", centred, np.linalg.inv(covariance), centred) / codes.shape[1]
    assert model.calibration.levels["latent_density"] == pytest.approx(distances.mean(), rel=1e-3)
    terms = model.residual_terms(val.images)
    np.testing.assert_allclose(terms["latent_density"][:, 0], distances, rtol=1e-3)
    assert model.calibration.levels["pixel_density"] == pytest.approx(terms["pixel_density"].mean(), rel=1e-5)


def test_the_map_density_has_its_shape(trained):
    model, train, _ = trained
    assert not torch.equal(
        model.densities["pixel_density"].precision, torch.eye(len(model.densities["pixel_density"].mean))
    )
    assert model.densities["pixel_density"].mean.shape == (1, model.D.bottleneck_width)
    terms = model.residual_terms(train.images[:5])
    assert terms["pixel_density"].shape == terms["pixel_residual"].shape and (terms["pixel_density"] >= 0).all()


def test_held_out_normals_are_never_in_the_fit(random_images, tiny_config):
    """Without a validation set the held-out rows calibrate and only the other rows fit: the
    latent Gaussian's mean is that of the 45 training rows' codes."""
    torch.set_num_threads(1)
    config = apply_overrides(tiny_config(), ["score.latent_density_weight=1.0", "data.val_fraction=0.25"])
    images = random_images(60, seed=3)
    model = FUNetGAN(config).fit(images)
    held_out = np.sort(np.random.default_rng(config.seed).permutation(60)[:15])  # calibration_split's draw
    rows = np.setdiff1d(np.arange(60), held_out)
    np.testing.assert_allclose(
        model.densities["latent_density"].mean[0].numpy(),
        latent_codes(model, images.images[rows]).mean(0),
        rtol=1e-4,
        atol=1e-6,
    )
    assert model.calibration.normals == 15 and model.calibration.notes == [
        "15 calibration normals: the 0.99 quantile of their scores is their maximum, so about 1 in 16 (6.2 %) "
        "normal images will be flagged, not 1 %; hold out at least 99 normals (data.val_fraction) or give a "
        "validation split"
    ]


def test_the_density_is_saved_with_the_weights(trained, tmp_path):
    model, _, val = trained
    model.save(tmp_path / "model.safetensors")
    loaded = FUNetGAN.load(tmp_path / "model.safetensors")
    np.testing.assert_allclose(loaded.score(val).maps, model.score(val).maps, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(loaded.score(val).scores, model.score(val).scores, rtol=1e-6)


@pytest.mark.parametrize("term, images, needed", [("latent_density", 31, 32)])  # 2 x 16 latent values
def test_too_few_training_images_leave_a_density_term_out_with_a_note(term, images, needed, random_images, tiny_config):
    model = FUNetGAN(apply_overrides(tiny_config(), [f"score.{term}_weight=1.0"]))
    unfitted, notes = model.fit_densities(random_images(images, seed=4).images)
    assert term in unfitted and notes == [
        f"score.{term}_weight counts 0: {images} training samples to fit its Gaussian on, it needs {needed}"
    ]
    model.calibrate(random_images(5, seed=5), random_images(images, seed=4).images)
    assert term not in model.calibration.levels and getattr(model.config.score, f"{term}_weight") == 1.0


def test_the_weight_adds_the_term_over_its_normal_level():
    ones = np.ones((1, 2, 2), np.float32)
    terms = Terms(
        dict(
            pixel_residual=ones,
            pixel_features=ones * 0,
            pixel_density=np.array([[[2.0, 4.0], [0.0, 2.0]]], np.float32),
            image_residual=np.ones((1, 1)),
            image_features=np.ones((1, 1)),
            latent_density=np.ones((1, 1)),
            pixel_contrast=ones * 0,
        )
    )
    norms = {
        "pixel_residual": 1.0,
        "pixel_features": 1.0,
        "pixel_density": 2.0,
        "image_residual": 1.0,
        "image_features": 1.0,
    }
    _, maps = combine(
        terms,
        norms,
        ScoreConfig(kappa=0.0, density_weight=0.5, smoothness_weight=0.0, blur_sigma=0.0, latent_density_weight=0.0),
        2,
    )
    assert maps[0].tolist() == [[1.5, 2.0], [1.0, 1.5]]  # 1 + 0.5 * density / 2
    del norms["pixel_density"]  # its Gaussian could not be fitted: the term counts 0
    _, maps = combine(
        terms,
        norms,
        ScoreConfig(kappa=0.0, density_weight=1.0, smoothness_weight=0.0, blur_sigma=0.0, latent_density_weight=0.0),
        2,
    )
    assert maps[0].tolist() == [[1.0, 1.0], [1.0, 1.0]]

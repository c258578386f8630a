import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from funetgan.config import ScoreConfig, apply_overrides, scored_in_tiles
from funetgan.model import FUNetGAN
from funetgan.nn import CriticOutput
from funetgan.scoring import terms as table
from funetgan.scoring.combine import blur_sigma, combine, formula, gaussian_blur
from funetgan.scoring.terms import IMAGE, MAP, Terms, of_kind


def test_blur_keeps_constants_and_spreads_a_point():
    flat = np.full((1, 16, 16), 3.0, np.float32)
    np.testing.assert_allclose(gaussian_blur(flat, 2.0), flat, rtol=1e-6)
    point = np.zeros((1, 33, 33), np.float32)
    point[0, 16, 16] = 1.0
    blurred = gaussian_blur(point, 2.0)
    assert blurred.sum() == pytest.approx(1.0, abs=1e-4)
    assert blurred[0, 16, 16] < 0.1 and blurred[0, 16, 18] > 0
    ys, xs = np.mgrid[:33, :33]
    variance = (blurred[0] * ((ys - 16) ** 2)).sum()
    assert variance == pytest.approx(4.0, rel=0.05)  # sigma^2


def test_default_blur_scales_with_image_size():
    assert blur_sigma(ScoreConfig(), 128) == 4.0 and blur_sigma(ScoreConfig(), 64) == 2.0
    assert blur_sigma(ScoreConfig(), 32, tiled=True) == 2.0  # twice a whole image's (TILED_BLUR)
    assert blur_sigma(ScoreConfig(blur_sigma=1.5), 32, tiled=True) == 1.5  # a set blur is kept


def test_a_map_stitched_from_tiles_gets_the_tiled_blur(tiny_config):
    """Maps stitched from tiles (a working resolution other than the patch's) get 2 px at
    32-px patches by default, whole images 1 px."""
    assert scored_in_tiles(apply_overrides(tiny_config(), ["data.resolution=256"]))
    assert scored_in_tiles(apply_overrides(tiny_config(), ["data.resolution=native"]))
    assert not scored_in_tiles(tiny_config())
    assert not scored_in_tiles(apply_overrides(tiny_config(), ["data.resolution=32"]))  # the patch's own size
    cfg = ScoreConfig(
        kappa=0.0, density_weight=0.0, smoothness_weight=0.0, latent_density_weight=0.0, image_smoothness_weight=0.0
    )
    norms = {"image_residual": 1.0, "image_features": 1.0, "pixel_residual": 1.0}
    residual = np.zeros((1, 64, 64), np.float32)
    residual[0, 32, 32] = 1.0
    impulse = zeros_terms(residual, np.ones((1, 1)))
    for tiled, sigma in ((False, 1.0), (True, 2.0)):
        _, maps = combine(impulse, norms, cfg, 32, tiled)
        np.testing.assert_allclose(maps, gaussian_blur(residual, sigma), atol=1e-7)


def test_residual_terms_by_hand():
    x = torch.zeros(1, 2, 2, 2)
    r = torch.zeros(1, 2, 2, 2)
    r[0, 0, 0, 0] = 1.0  # one channel of one pixel off by 1
    verdict = torch.tensor([[[[1.0, -2.0], [0.5, 0.0]]]])  # D_p(x): B x 1 x S x S
    f = lambda v: CriticOutput(None, verdict, torch.full((1, 1, 1, 1), v), torch.full((1, 3, 2, 2), v))  # noqa
    step = SimpleNamespace(x=x, recon=r, out_x=f(0.0), out_r=f(2.0))  # one pass of the networks (`Forward`)
    pixel_residual, pixel_features, image_residual, image_features = (
        function(step)
        for function in (table.pixel_residual, table.pixel_features, table.image_residual, table.image_features)
    )
    assert pixel_residual[0].tolist() == [[0.5, 0.0], [0.0, 0.0]]
    assert pixel_features[0].tolist() == [[2.0, 2.0], [2.0, 2.0]]
    assert image_residual.item() == pytest.approx(1 / 8)
    assert image_features.item() == pytest.approx(4.0)


def test_global_critic_has_no_per_pixel_feature_term():
    x, r = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)
    out = CriticOutput(torch.zeros(1), None, torch.zeros(1, 3, 1, 1), None)
    pixel_features = table.pixel_features(SimpleNamespace(x=x, recon=r, out_x=out, out_r=out))
    assert pixel_features.abs().sum() == 0


def zeros_terms(maps: np.ndarray, image_residual: np.ndarray) -> Terms:
    """Terms with `maps` as the pixel residual, `image_residual` per tile and zeros elsewhere."""
    return Terms(
        dict(
            pixel_residual=maps,
            pixel_features=np.zeros_like(maps),
            pixel_density=np.zeros_like(maps),
            image_residual=image_residual,
            image_features=np.zeros_like(image_residual),
            latent_density=np.zeros_like(image_residual),
            pixel_contrast=np.zeros_like(maps),
        )
    )


def test_combine_normalises_terms_by_their_normal_level():
    terms = Terms(
        dict(
            pixel_residual=np.full((1, 4, 4), 2.0),
            pixel_features=np.full((1, 4, 4), 30.0),
            pixel_density=np.zeros((1, 4, 4)),
            image_residual=np.array([[0.5]]),
            image_features=np.array([[6.0]]),
            latent_density=np.array([[4.0]]),
            pixel_contrast=np.zeros((1, 4, 4)),
        )
    )
    norms = {"pixel_residual": 1.0, "pixel_features": 10.0, "image_residual": 0.25, "image_features": 3.0}
    cfg = ScoreConfig(kappa=0.5, blur_sigma=0.0, density_weight=0.0, smoothness_weight=0.0, latent_density_weight=0.0)
    scores, maps = combine(terms, norms, cfg, 4)
    np.testing.assert_allclose(maps, np.full((1, 4, 4), 2.0 + 0.5 * 3.0))
    assert scores.item() == pytest.approx(2.0 + 0.5 * 2.0)
    # A density term without its level (its Gaussian could not be fitted) counts 0.
    unfitted, _ = combine(terms, norms, dataclasses.replace(cfg, latent_density_weight=1.0), 4)
    assert unfitted.item() == pytest.approx(2.0 + 0.5 * 2.0)
    norms["latent_density"] = 2.0
    scores, _ = combine(terms, norms, dataclasses.replace(cfg, latent_density_weight=0.5), 4)
    assert scores.item() == pytest.approx(2.0 + 0.5 * 2.0 + 0.5 * 4.0 / 2.0)
    cfg.image_score = "max"
    assert combine(terms, norms, cfg, 4)[0].item() == pytest.approx(3.5)


def test_the_term_table_names_every_raw_term_and_the_setting_weighing_it():
    assert [t.name for t in of_kind(MAP)] == ["pixel_residual", "pixel_features", "pixel_density", "pixel_contrast"]
    assert [t.name for t in of_kind(IMAGE)] == ["image_residual", "image_features", "latent_density"]
    for term in table.TERMS:
        assert term.weight is None or hasattr(ScoreConfig(), term.weight)


def test_the_formula_shows_the_terms_that_count_with_their_weights(tiny_config):
    text = formula(tiny_config(score__density_weight=0.5, score__latent_density_weight=0.0))
    assert "0.5 * pixel_density / m_pixel_density" in text
    assert "2 * max(m_pixel_contrast - pixel_contrast, 0) / pixel_contrast_std" in text
    assert "latent_density" not in text  # weight 0: not shown
    assert "blur_1px" in text  # 4 px at 128, scaled to 32


def test_tile_values_reduce_to_one_image_score_by_their_max():
    tiles = np.array([[1.0, 3.0, 2.0]])  # one image, three tiles
    terms = zeros_terms(np.zeros((1, 4, 4)), tiles)
    norms = {"pixel_residual": 1.0, "pixel_features": 1.0, "image_residual": 1.0, "image_features": 1.0}
    cfg = ScoreConfig(kappa=0.0, blur_sigma=0.0, density_weight=0.0, smoothness_weight=0.0, latent_density_weight=0.0)
    assert combine(terms, norms, cfg, 4)[0].item() == 3.0


def test_topk_score_is_the_mean_of_the_largest_values():
    maps = np.arange(1000.0).reshape(1, 25, 40)
    terms = zeros_terms(maps, np.zeros((1, 1)))
    cfg = ScoreConfig(kappa=0.0, blur_sigma=0.0, image_score="topk", density_weight=0.0, smoothness_weight=0.0)
    norms = {k: 1.0 for k in ("pixel_residual", "pixel_features", "image_residual", "image_features")}
    assert combine(terms, norms, cfg, 10)[0].item() == pytest.approx(np.mean(np.arange(990, 1000)))  # the top 1 %


def test_model_scores_have_the_documented_shapes_and_are_deterministic(tiny_model, random_images):
    images = random_images(5, seed=1)
    first, second = tiny_model.score(images), tiny_model.score(images, batch_size=2)
    assert first.scores.shape == (5,) and first.maps.shape == (5, 32, 32) and first.maps.dtype == np.float32
    assert first.scores == pytest.approx(second.scores, rel=1e-4)


def test_other_scoring_settings_from_one_pass_of_the_networks(tiny_model, random_images):
    images = random_images(5, seed=1).images
    terms = tiny_model.residual_terms(images)
    same = tiny_model.scores_from_terms(terms)
    np.testing.assert_allclose(same.scores, tiny_model.score(images).scores, rtol=1e-5)
    settings = dataclasses.replace(tiny_model.config.score, kappa=0.0, image_score="max")
    top = tiny_model.scores_from_terms(terms, settings)
    np.testing.assert_allclose(top.scores, top.maps.reshape(5, -1).max(1), rtol=1e-6)
    assert tiny_model.config.score.image_score == "izif"  # the model's own settings are left alone


def test_score_rejects_images_of_the_wrong_shape(tiny_model):
    with pytest.raises(ValueError, match="images must be uint8 N x 32 x 32 x 1"):
        tiny_model.score(np.zeros((2, 64, 64, 1), np.uint8))


def test_uncalibrated_model_refuses_to_score(random_images, tiny_config):
    with pytest.raises(RuntimeError, match="not calibrated"):
        FUNetGAN(tiny_config()).score(random_images(2))

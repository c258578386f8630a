"""The smoothness term (scoring.smoothness_term): the local contrast of the images, its normal
levels, the term and its weight in the map, lung restriction and calibration."""
import dataclasses

import numpy as np
import pytest
import torch

from conftest import random_images, tiny_config
from funetgan.config import ScoreConfig, apply_overrides
from funetgan.model import FUNetGAN
from funetgan.scoring import Terms, combine, local_contrast, restrict, smoothness_term, without_uncalibrated_terms


def test_local_contrast_is_the_windowed_standard_deviation():
    flat = np.full((1, 8, 8, 1), 200, np.uint8)
    assert np.allclose(local_contrast(flat), 0.0, atol=1e-3)
    checks = (np.indices((8, 8)).sum(0) % 2 * 255).astype(np.uint8)[None, ..., None]  # pixels -1 and +1
    # Inside, a 5 x 5 window holds 13 of one sign and 12 of the other: mean +-1/25, mean square 1.
    contrast = local_contrast(checks)
    assert contrast[0, 2:-2, 2:-2] == pytest.approx(np.full((4, 4), np.sqrt(1 - 1 / 625)), abs=1e-5)
    # Colour: the channels' contrasts averaged (a flat channel beside a checked one: half).
    both = np.concatenate([checks, np.full_like(checks, 9)], axis=3)
    assert local_contrast(both)[0, 3, 3] == pytest.approx(np.sqrt(1 - 1 / 625) / 2, abs=1e-5)


def terms_with_contrast(contrast: np.ndarray) -> Terms:
    zeros = np.zeros_like(contrast)
    return Terms(pixel_residual=zeros + 1, pixel_features=zeros, pixel_critic=zeros, pixel_density=zeros,
                 image_residual=np.ones((len(contrast), 1)), image_features=np.ones((len(contrast), 1)),
                 image_density=np.ones((len(contrast), 1)),
                 latent_density=np.ones((len(contrast), 1)), pixel_contrast=contrast)


def test_the_term_counts_only_what_is_smoother_than_normal_in_normal_spreads():
    terms = terms_with_contrast(np.array([[[0.5, 0.25], [0.0, 1.0]]], np.float32))
    norms = {"pixel_contrast": 0.5, "pixel_contrast_std": 0.25}
    assert smoothness_term(terms, norms).tolist() == [[[0.0, 1.0], [2.0, 0.0]]]


def test_normal_levels_give_the_contrasts_mean_and_spread_inside_the_region():
    terms = terms_with_contrast(np.array([[[1.0, 5.0], [3.0, 7.0]]], np.float32))
    inside = restrict(terms, np.array([[[True, False], [True, False]]]))
    assert inside.pixel_contrast.tolist() == [[[1.0, 0.0], [3.0, 0.0]]]
    levels = inside.normal_levels()
    assert levels["pixel_contrast"] == pytest.approx(2.0) and levels["pixel_contrast_std"] == pytest.approx(1.0)
    norms = {"pixel_contrast": 4.0, "pixel_contrast_std": 1.0}
    assert smoothness_term(inside, norms).tolist() == [[[3.0, 0.0], [1.0, 0.0]]]  # 0 outside the lung


def test_the_weight_adds_the_term_to_the_map_and_old_calibrations_get_a_clear_error():
    terms = terms_with_contrast(np.array([[[0.5, 0.25], [0.0, 1.0]]], np.float32))
    norms = {"pixel_residual": 1.0, "pixel_features": 1.0, "image_residual": 1.0, "image_features": 1.0,
             "pixel_contrast": 0.5, "pixel_contrast_std": 0.25}
    settings = dict(kappa=0.0, density_weight=0.0, blur_sigma=0.0, latent_density_weight=0.0)
    _, maps = combine(terms, norms, ScoreConfig(smoothness_weight=0.5, **settings), 2)
    assert maps.tolist() == [[[1.0, 1.5], [2.0, 1.0]]]  # residual 1 + 0.5 x (0, 1, 2, 0)
    del norms["pixel_contrast_std"]
    with pytest.raises(ValueError, match="smoothness_weight=0"):
        combine(terms, norms, ScoreConfig(smoothness_weight=1.0, **settings), 2)


def test_calibration_measures_the_contrast_and_smooth_patches_score_higher():
    torch.set_num_threads(1)
    images = random_images(12, seed=5)
    model = FUNetGAN(apply_overrides(tiny_config(), ["score.smoothness_weight=1.0"])).fit(images)
    norms = model.calibration["norms"]
    assert norms["pixel_contrast"] > 0 and norms["pixel_contrast_std"] > 0
    smudged = images.images.copy()
    smudged[0, 4:12, 4:12] = smudged[0, 4:12, 4:12].mean()  # a flat patch on random texture
    terms = model.residual_terms(smudged[:1])
    term = smoothness_term(terms, norms)[0]
    assert term[6:10, 6:10].min() > 3.0 > 3 * term[20:, 20:].mean()  # flat: ~7 spreads below; noise: ~0.4


def test_runs_calibrated_before_a_term_existed_are_scored_without_it(tmp_path):
    torch.set_num_threads(1)
    images = random_images(12, seed=6)
    model = FUNetGAN(tiny_config()).fit(images)
    assert model.config.score.smoothness_weight > 0  # the default
    old_norms = {k: v for k, v in model.calibration["norms"].items() if not k.startswith("pixel_contrast")}
    settings = ScoreConfig()
    without_uncalibrated_terms(settings, old_norms)
    assert settings.smoothness_weight == 0 and settings.density_weight == ScoreConfig().density_weight
    model.calibration = {**model.calibration, "norms": old_norms}  # a file of that time
    model.save(tmp_path / "old.safetensors")
    loaded = FUNetGAN.load(tmp_path / "old.safetensors")
    assert loaded.config.score.smoothness_weight == 0
    expected = model.scores_from_terms(model.residual_terms(images.images),
                                       dataclasses.replace(model.config.score, smoothness_weight=0.0))
    np.testing.assert_allclose(loaded.score(images).maps, expected.maps, rtol=1e-6, atol=1e-6)

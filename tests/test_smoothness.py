"""The smoothness term (the "below" term pixel_contrast of scoring.terms): the local contrast of
the images, its normal levels, the term and its weight in the map, lung restriction and
calibration; the image's smoothest region as evidence in the image score
(scoring.image_evidence, calibration.image_evidence_levels)."""

import dataclasses

import numpy as np
import pytest
import torch

from funetgan.config import ScoreConfig, apply_overrides
from funetgan.model import FUNetGAN
from funetgan.scoring.calibration import image_evidence_levels
from funetgan.scoring.combine import combine, image_evidence, image_smoothness_weight, normalised, standardised_value
from funetgan.scoring.terms import Terms, local_contrast, restrict, term

SMOOTHNESS = term("pixel_contrast")  # "below" its normal level


def smoothness_term(terms: Terms, levels: dict) -> np.ndarray:
    return normalised(SMOOTHNESS, terms, levels)


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
    return Terms(
        dict(
            pixel_residual=zeros + 1,
            pixel_features=zeros,
            pixel_density=zeros,
            image_residual=np.ones((len(contrast), 1)),
            image_features=np.ones((len(contrast), 1)),
            latent_density=np.ones((len(contrast), 1)),
            pixel_contrast=contrast,
        )
    )


def test_the_term_counts_only_what_is_smoother_than_normal_in_normal_spreads():
    terms = terms_with_contrast(np.array([[[0.5, 0.25], [0.0, 1.0]]], np.float32))
    norms = {"pixel_contrast": 0.5, "pixel_contrast_std": 0.25}
    assert smoothness_term(terms, norms).tolist() == [[[0.0, 1.0], [2.0, 0.0]]]


def test_normal_levels_give_the_contrasts_mean_and_spread_inside_the_region():
    terms = terms_with_contrast(np.array([[[1.0, 5.0], [3.0, 7.0]]], np.float32))
    inside = restrict(terms, np.array([[[True, False], [True, False]]]))
    assert inside["pixel_contrast"].tolist() == [[[1.0, 0.0], [3.0, 0.0]]]
    levels = inside.normal_levels()
    assert levels["pixel_contrast"] == pytest.approx(2.0) and levels["pixel_contrast_std"] == pytest.approx(1.0)
    norms = {"pixel_contrast": 4.0, "pixel_contrast_std": 1.0}
    assert smoothness_term(inside, norms).tolist() == [[[3.0, 0.0], [1.0, 0.0]]]  # 0 outside the lung


def test_the_weight_adds_the_term_to_the_map():
    terms = terms_with_contrast(np.array([[[0.5, 0.25], [0.0, 1.0]]], np.float32))
    norms = {
        "pixel_residual": 1.0,
        "pixel_features": 1.0,
        "image_residual": 1.0,
        "image_features": 1.0,
        "pixel_contrast": 0.5,
        "pixel_contrast_std": 0.25,
    }
    settings = dict(kappa=0.0, density_weight=0.0, blur_sigma=0.0, latent_density_weight=0.0)
    _, maps = combine(terms, norms, ScoreConfig(smoothness_weight=0.5, **settings), 2)
    assert maps.tolist() == [[[1.0, 1.5], [2.0, 1.0]]]  # residual 1 + 0.5 x (0, 1, 2, 0)


def test_calibration_measures_the_contrast_and_smooth_patches_score_higher(random_images, tiny_config):
    torch.set_num_threads(1)
    images = random_images(12, seed=5)
    model = FUNetGAN(apply_overrides(tiny_config(), ["score.smoothness_weight=1.0"])).fit(images)
    norms = model.calibration.levels
    assert norms["pixel_contrast"] > 0 and norms["pixel_contrast_std"] > 0
    smudged = images.images.copy()
    smudged[0, 4:12, 4:12] = smudged[0, 4:12, 4:12].mean()  # a flat patch on random texture
    terms = model.residual_terms(smudged[:1])
    term = smoothness_term(terms, norms)[0]
    assert term[6:10, 6:10].min() > 3.0 > 3 * term[20:, 20:].mean()  # flat: ~7 spreads below; noise: ~0.4


def test_the_smoothest_region_counts_beside_izif_in_their_normal_spreads():
    # Contrasts 0.5 (normal: term 0), 0.25 (term 1) and 0 (term 2); izif = image residual.
    terms = terms_with_contrast(np.array([[[0.5, 0.5]], [[0.25, 0.5]], [[0.0, 0.5]]], np.float32))
    terms.arrays["image_residual"] = np.array([[3.0], [1.0], [1.0]])
    norms = {
        "pixel_residual": 1.0,
        "image_residual": 1.0,
        "pixel_contrast": 0.5,
        "pixel_contrast_std": 0.25,
        "image_izif": 1.0,
        "image_izif_std": 0.5,
        "image_smoothness": 0.5,
        "image_smoothness_std": 0.25,
    }
    settings = dict(kappa=0.0, density_weight=0.0, smoothness_weight=0.0, blur_sigma=0.0, latent_density_weight=0.0)
    scores, _ = combine(terms, norms, ScoreConfig(image_smoothness_weight=1.0, **settings), 2)
    # izif in spreads: (3 - 1) / 0.5 = 4, 0, 0; smoothest region: (0 - 0.5) / 0.25 = -2, 2, 6.
    assert scores.tolist() == [4.0, 2.0, 6.0]
    halved, _ = combine(terms, norms, ScoreConfig(image_smoothness_weight=0.5, **settings), 2)
    assert halved.tolist() == [4.0, 1.0, 3.0]
    alone, _ = combine(terms, norms, ScoreConfig(image_smoothness_weight=0.0, **settings), 2)
    assert alone.tolist() == [3.0, 1.0, 1.0]  # izif itself, as before the evidence existed
    # A spread of 0 (normals that agree) counts as 5 % of the mean: (3 - 1) / 0.05.
    agreeing, _ = combine(
        terms, {**norms, "image_izif_std": 0.0}, ScoreConfig(image_smoothness_weight=1.0, **settings), 2
    )
    assert agreeing[0] == pytest.approx(40.0)


def test_image_levels_are_the_normals_mean_and_spread_of_each_kind_of_evidence(tiny_config):
    terms = terms_with_contrast(np.array([[[0.25, 0.5]], [[0.0, 0.5]]], np.float32))
    terms.arrays["image_residual"] = np.array([[1.0, 3.0], [2.0, 1.0]])  # two tiles: the max counts
    norms = {"pixel_residual": 1.0, "image_residual": 1.0, "pixel_contrast": 0.5, "pixel_contrast_std": 0.25}
    config = tiny_config(
        score__kappa=0.0, score__blur_sigma=0.0, score__latent_density_weight=8.0, score__image_smoothness_weight=1.0
    )  # no latent level: counts 0
    halves = [terms.rows(np.array([0])), terms.rows(np.array([1]))]  # a chunk at a time, as calibration
    levels = image_evidence_levels(halves, norms, config)
    assert levels == {"image_izif": 2.5, "image_izif_std": 0.5, "image_smoothness": 1.5, "image_smoothness_std": 0.5}


def test_the_smoothness_evidence_is_on_by_default_only_for_images_scored_in_tiles():
    assert image_smoothness_weight(ScoreConfig(), tiled=True) == 1.0
    assert image_smoothness_weight(ScoreConfig(), tiled=False) == 0.0
    assert image_smoothness_weight(ScoreConfig(image_smoothness_weight=0.5), tiled=False) == 0.5


def test_a_tiled_model_calibrates_and_scores_with_the_smoothness_evidence(random_images, tiny_config):
    torch.set_num_threads(1)
    images = random_images(16, seed=7, size=48)
    model = FUNetGAN(apply_overrides(tiny_config(), ["data.resolution=48", "data.val_fraction=0.25"])).fit(images)
    norms = model.calibration.levels
    assert norms["image_smoothness_std"] > 0 and norms["image_izif_std"] > 0  # over 4 calibration images
    terms = model.residual_terms(images.images)
    izif = model.scores_from_terms(terms, dataclasses.replace(model.config.score, image_smoothness_weight=0.0)).scores
    smoothest = image_evidence(terms, norms, model.config.score, 32, tiled=True)["image_smoothness"]
    expected = np.maximum(
        standardised_value(izif, norms, "image_izif"), standardised_value(smoothest, norms, "image_smoothness")
    )
    np.testing.assert_allclose(model.score(images).scores, expected, rtol=1e-6)

"""The table of terms (scoring/terms.py): adding a term is one entry and one function there. A
toy term registered in the table alone is computed by the scoring network, levelled by
calibration, weighed into the maps and exported to ONNX, where the parity check covers it."""

import dataclasses

import numpy as np
import pytest
import torch

from funetgan.model import FUNetGAN
from funetgan.scoring import terms
from funetgan.scoring.calibration import calibration_split
from funetgan.scoring.combine import combine, formula


def pixel_brightness(f):
    """The toy term's function: x + 1 (0 for black, 2 for white) per pixel, channels averaged."""
    return (f.x.float() + 1).mean(1)


TOY = terms.Term("pixel_brightness", terms.MAP, "the image's brightness (a toy)", network=pixel_brightness)


@pytest.fixture(scope="module")
def with_toy(random_images, tiny_config):
    """A tiny model trained and calibrated with the toy term added to the table (for this
    module only), and its training images."""
    torch.set_num_threads(1)
    images = random_images(12)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(terms, "TERMS", (*terms.TERMS, TOY))
        yield FUNetGAN(tiny_config()).fit(images), images


def test_the_toy_term_is_computed_and_calibrated(with_toy):
    model, images = with_toy
    raw = model.residual_terms(images.images[:3])
    np.testing.assert_allclose(raw["pixel_brightness"], images.images[:3, ..., 0] / 127.5, rtol=1e-5)
    _, normals = calibration_split(images, None, model.config.data.val_fraction, model.config.seed)
    level = model.calibration.levels["pixel_brightness"]
    assert level == pytest.approx(normals.images.mean() / 127.5, rel=1e-5)  # its mean over the calibration normals


def test_the_toy_term_weighs_into_the_maps(with_toy):
    model, images = with_toy
    raw = model.residual_terms(images.images[:3])
    levels = model.calibration.levels
    alone = dataclasses.replace(
        model.config.score, kappa=0.0, density_weight=0.0, smoothness_weight=0.0, blur_sigma=0.0
    )  # the residual (weight 1) and the toy (weight 1) count
    _, maps = combine(raw, levels, alone, model.config.model.image_size)
    expected = raw["pixel_residual"] / levels["pixel_residual"] + raw["pixel_brightness"] / levels["pixel_brightness"]
    np.testing.assert_allclose(maps, expected, rtol=1e-5)
    assert "1 * pixel_brightness / m_pixel_brightness" in formula(model.config)  # the ONNX doc string's formula


def test_the_toy_term_is_an_output_of_the_exported_graph(with_toy, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from funetgan.deploy.onnx_scorer import OnnxScorer

    model, images = with_toy
    parity = model.export(tmp_path / "model.onnx", images)
    assert parity.passed
    scorer = OnnxScorer.load(tmp_path / "model.onnx")
    assert "pixel_brightness" in [output.name for output in scorer.session.get_outputs()]
    ours, theirs = scorer.residual_terms(images.images), model.residual_terms(images.images)
    np.testing.assert_allclose(ours["pixel_brightness"], theirs["pixel_brightness"], rtol=1e-6)

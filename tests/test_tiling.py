import numpy as np
import pytest
import torch

from funetgan.config import Config, apply_overrides, working_size
from funetgan.errors import DataError
from funetgan.model import FUNetGAN
from funetgan.runtime import Runtime
from funetgan.scoring.tiling import TileGrid, blend_window, patches_per_image, random_corners, score_tiled, starts
from funetgan.training.batches import BatchSource


def echo_scorer(tiles):
    """Each tile's own pixels as its map, its mean as its value."""
    grey = tiles[..., 0].astype(np.float32)
    return {"maps": {"echo": grey}, "values": {"mean": grey.mean((1, 2))}}


def test_tile_starts_cover_every_pixel_and_end_flush():
    assert starts(10, 4, 2).tolist() == [0, 2, 4, 6]
    assert starts(11, 4, 3).tolist() == [0, 3, 6, 7]  # the last tile moved back to fit
    assert starts(4, 4, 2).tolist() == [0]
    with pytest.raises(DataError, match="tile of 4 px does not fit an image side of 3 px; lower model.image_size"):
        starts(3, 4, 2)


@pytest.mark.parametrize("height, width, stride", [(64, 64, 16), (37, 53, 5), (32, 32, 32), (45, 32, 32)])
def test_constant_tiles_stitch_to_that_constant(height, width, stride):
    images = np.zeros((2, height, width, 1), np.uint8)
    maps, values = score_tiled(
        images, 32, stride, 7, lambda t: {"maps": {"c": np.full(t.shape[:3], 2.5, np.float32)}, "values": {}}
    )
    np.testing.assert_allclose(maps["c"], 2.5, rtol=1e-6)
    assert maps["c"].shape == (2, height, width)


def test_stitching_an_identity_scorer_gives_the_image_back_at_odd_sizes():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 45, 61, 1), dtype=np.uint8)
    maps, values = score_tiled(images, 16, 5, 11, echo_scorer)
    np.testing.assert_allclose(maps["echo"], images[..., 0], atol=1e-3)
    grid = TileGrid(45, 61, 16, 5)
    assert values["mean"].shape == (3, len(grid))
    y, x = grid.corners[-1]
    assert values["mean"][1, -1] == pytest.approx(images[1, y : y + 16, x : x + 16, 0].mean())


def test_one_tile_grid_is_the_whole_image():
    images = np.arange(32 * 32, dtype=np.uint8).reshape(1, 32, 32, 1)
    maps, values = score_tiled(images, 32, 16, 64, echo_scorer)
    np.testing.assert_allclose(maps["echo"][0], images[0, ..., 0], rtol=1e-6)
    assert values["mean"].shape == (1, 1)


def test_the_window_is_positive_and_symmetric():
    window = blend_window(8)
    assert (window > 0).all() and np.allclose(window, window.T) and np.allclose(window, window[::-1])
    assert window[4, 4] > 10 * window[0, 0]


def test_bad_strides_are_refused():
    for stride in (0, 33):
        with pytest.raises(ValueError, match="tile_stride"):
            TileGrid(64, 64, 32, stride)


def test_random_corners_stay_inside_and_patch_counts():
    corners = random_corners(1000, 50, 70, 32, np.random.default_rng(0))
    assert corners[:, 0].min() == 0 and corners[:, 0].max() == 18
    assert corners[:, 1].min() == 0 and corners[:, 1].max() == 38
    assert patches_per_image(128, 96, 32) == 12 and patches_per_image(32, 32, 32) == 1


def test_working_size_settings(tiny_config):
    assert working_size(Config()) == 64
    assert working_size(apply_overrides(tiny_config(), ["data.resolution=128"])) == 128
    assert working_size(apply_overrides(tiny_config(), ["data.resolution=native"])) is None
    with pytest.raises(ValueError, match="at least model.image_size"):
        apply_overrides(tiny_config(), ["data.resolution=16"])
    with pytest.raises(ValueError, match="number of pixels or 'native'"):
        apply_overrides(tiny_config(), ["data.resolution=big"])
    with pytest.raises(ValueError, match="tile_stride"):
        apply_overrides(tiny_config(), ["score.tile_stride=0"])


def test_patch_batches_are_reproducible_patches_of_the_images(random_images):
    images = random_images(6, size=64).images
    source = BatchSource(images, 4, seed=3, runtime=Runtime(torch.device("cpu")), patch=32)
    assert source.per_epoch == (6 * 4) // 4
    first, again = source.batch(5), BatchSource(images, 4, 3, Runtime(torch.device("cpu")), patch=32).batch(5)
    assert first.shape == (4, 1, 32, 32) and torch.equal(first, again)
    # every patch is a window of one of the images
    as_uint8 = ((first + 1) * 127.5).round().to(torch.uint8)[:, 0].numpy()
    windows = np.lib.stride_tricks.sliding_window_view(images[..., 0], (32, 32), axis=(1, 2))
    for patch in as_uint8:
        assert (windows == patch).all(axis=(-2, -1)).any()


def test_patch_model_trains_and_scores_at_working_resolution(random_images, tiny_config):
    config = apply_overrides(tiny_config(), ["data.resolution=48", "score.tile_stride=8"])
    model = FUNetGAN(config).fit(random_images(12, size=48))
    result = model.score(random_images(3, size=48, seed=1), batch_size=5)
    assert result.maps.shape == (3, 48, 48) and result.scores.shape == (3,)
    assert np.isfinite(result.maps).all()
    with pytest.raises(ValueError, match="N x 48 x 48 x 1"):
        model.score(np.zeros((2, 32, 32, 1), np.uint8))


def test_a_tiled_run_records_the_blur_its_thresholds_were_set_with(random_images, tiny_config):
    """Calibration records the stitched map's blur: 2 x the whole-image rule."""
    config = apply_overrides(tiny_config(), ["data.resolution=48", "score.tile_stride=8"])
    model = FUNetGAN(config).fit(random_images(12, size=48))
    assert model.calibration.blur_sigma == 2 * 4.0 * config.model.image_size / 128

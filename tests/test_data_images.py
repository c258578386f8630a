"""Pixel formats through read_image / read_mask and the fit to the model's size."""

import numpy as np
import pytest
from PIL import Image

from funetgan.data import fit_image, fit_mask, read_image, read_mask


def saved(tmp_path, name, image: Image.Image, **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def test_8bit_grey_png_is_read_exactly(tmp_path):
    values = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    image = read_image(saved(tmp_path, "a.png", Image.fromarray(values)))
    assert image.shape == (12, 10, 1) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[..., 0], values)


@pytest.mark.parametrize("name", ["a.png", "a.tif"])
def test_16bit_grey_uses_the_full_range(tmp_path, name):
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    image = read_image(saved(tmp_path, name, Image.fromarray(values)))
    np.testing.assert_array_equal(image[..., 0], [[0, 100, 255]])


def test_rgb_jpeg(tmp_path):
    image = read_image(saved(tmp_path, "a.jpg", Image.new("RGB", (16, 8), (200, 40, 90)), quality=95))
    assert image.shape == (8, 16, 3)
    assert np.abs(image.reshape(-1, 3).mean(0) - [200, 40, 90]).max() < 3


def test_rgba_alpha_is_dropped(tmp_path):
    image = read_image(saved(tmp_path, "a.png", Image.new("RGBA", (4, 4), (10, 20, 30, 0))))
    assert image.shape == (4, 4, 3)
    np.testing.assert_array_equal(image[0, 0], [10, 20, 30])


def test_palette_image_gives_its_colours(tmp_path):
    palette = Image.new("P", (3, 1))
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (768 - 9))
    palette.putdata([0, 1, 2])
    image = read_image(saved(tmp_path, "a.png", palette))
    np.testing.assert_array_equal(image[0], [[0, 0, 0], [255, 0, 0], [0, 0, 255]])


def test_exif_orientation_is_applied(tmp_path):
    values = np.zeros((2, 3), np.uint8)
    values[0, 0] = 255  # top-left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    path = saved(tmp_path, "a.png", Image.fromarray(values), exif=exif)
    image = read_image(path)[..., 0]
    assert image.shape == (3, 2)
    assert image[0, 1] == 255 and image.sum() == 255  # the stored top-left is now top-right


def test_grey_to_rgb_repeats_and_rgb_to_grey_is_luminance():
    grey = np.full((4, 4, 1), 77, np.uint8)
    np.testing.assert_array_equal(fit_image(grey, 4, 3)[0, 0], [77, 77, 77])
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255
    assert fit_image(red, 4, 1)[0, 0, 0] == 76  # 0.299 * 255


def test_shrinking_averages_instead_of_aliasing():
    checker = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)[..., None]
    small = fit_image(checker, 16, 1)
    assert small.shape == (16, 16, 1)
    assert np.abs(small.astype(int) - 128).max() <= 2


def test_masks_stay_binary_when_resized():
    mask = np.zeros((8, 8), bool)
    mask[:4, :4] = True
    small = fit_mask(mask, 4)
    assert small.dtype == bool
    np.testing.assert_array_equal(small, np.kron([[1, 0], [0, 0]], np.ones((2, 2))).astype(bool))


@pytest.mark.parametrize("mode, value", [("L", 1), ("RGB", (0, 0, 9)), ("RGBA", (0, 9, 0, 0))])
def test_any_nonzero_mask_value_is_truth(tmp_path, mode, value):
    image = Image.new(mode, (5, 4), 0 if mode == "L" else (0,) * len(mode))
    image.putpixel((2, 1), value)
    mask = read_mask(saved(tmp_path, "m.png", image))
    assert mask.shape == (4, 5) and mask.sum() == 1 and mask[1, 2]

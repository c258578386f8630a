"""Decode image files and fit them to the model's size and channel count.

Every source goes through `read_image` (files) and `fit_image` (arrays), so pixels are
treated the same way whatever the layout.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageOps

from ..errors import DataError
from .base import ImageSet
from .checks import BadFiles, describe
from .medical import DEFAULT_HU_WINDOW, finite, is_dicom, read_dicom

SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
GREY_MODES = {"1", "L", "LA", "La", "F"} | SIXTEEN_BIT_MODES
PARALLEL_FROM = 64  # fewer items decode faster on the calling thread
MAX_WORKERS = 8
T = TypeVar("T")
R = TypeVar("R")


def read_image(path: str | Path, hu_window: tuple[float, float] = DEFAULT_HU_WINDOW) -> np.ndarray:
    """One image file (PNG, TIFF, JPEG, ... or DICOM) -> uint8 H x W x C, C = 1 (grey) or 3,
    at its original size and EXIF orientation, alpha dropped."""
    if is_dicom(path):
        return read_dicom(path, hu_window)
    with open_image(path) as image:
        # PIL refuses more than twice this many pixels and only warns below that; a file of a
        # few hundred kB could still take gigabytes on every decoding thread.
        if image.width * image.height > Image.MAX_IMAGE_PIXELS:
            raise DataError(
                f"{image.width}x{image.height} pixels, more than the limit of "
                f"{Image.MAX_IMAGE_PIXELS} (a decompression bomb?)"
            )
        ImageOps.exif_transpose(image, in_place=True)
        if image.mode == "F":  # 32-bit float (TIFF): may hold NaN or infinity
            finite(np.asarray(image), "pixels")
        if image.mode in SIXTEEN_BIT_MODES:
            # The full 16-bit range onto 8 bits: one scale for every image, so intensities
            # stay comparable between images (a per-image stretch would hide anomalies).
            values = np.clip(np.asarray(image, dtype=np.float32), 0, 65535)
            return np.rint(values / 257).astype(np.uint8)[..., None]
        image = image.convert("L" if image.mode in GREY_MODES else "RGB")
        return np.asarray(image).reshape(image.height, image.width, -1)


def open_image(path: str | Path) -> Image.Image:
    """Image.open on the file's bytes in memory: PIL reads some chunks by their declared length
    (PNG's last IDAT: up to 2 GiB), and from a file Python allocates that much first; from
    memory a read takes what there is (found by tests/test_fuzz.py)."""
    return Image.open(io.BytesIO(Path(path).read_bytes()))


def read_mask(path: str | Path) -> np.ndarray:
    """A mask file -> bool H x W: any non-zero value (palette index, grey or colour) is truth."""
    with open_image(path) as image:
        ImageOps.exif_transpose(image, in_place=True)
        values = np.asarray(image).reshape(image.height, image.width, -1)
        colour = [i for i, band in enumerate(image.getbands()) if band != "A"]
    return np.asarray(values[..., colour].any(axis=2))


def fit_image(image: np.ndarray, size: int | None, channels: int) -> np.ndarray:
    """uint8 H x W x C -> S x S x `channels`: grey repeated to RGB or RGB to luminance, then
    a bilinear resize that PIL antialiases when shrinking (its filter widens with the scale).
    `size` None keeps the image's own size (data.resolution "native")."""
    picture = Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)
    picture = picture.convert("L" if channels == 1 else "RGB")
    if size is not None and picture.size != (size, size):
        picture = picture.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(picture).reshape(picture.height, picture.width, channels)


def fit_mask(mask: np.ndarray, size: int | None) -> np.ndarray:
    """bool H x W -> bool S x S by nearest neighbour, so truth stays binary."""
    if size is None or mask.shape == (size, size):
        return mask
    return np.asarray(Image.fromarray(mask).resize((size, size), Image.Resampling.NEAREST))


def fit_images(images: Collection[np.ndarray], size: int | None, channels: int) -> np.ndarray:
    fitted = parallel_map(lambda image: fit_image(image, size, channels), images)
    if not fitted:
        return np.zeros((0, size or 0, size or 0, channels), np.uint8)
    return stack_same_size(fitted, ["image"] * len(fitted))


def fit_masks(masks: Collection[np.ndarray], size: int | None) -> np.ndarray:
    fitted = [fit_mask(mask, size) for mask in masks]
    return stack_same_size(fitted, ["mask"] * len(fitted)) if fitted else np.zeros((0, size or 0, size or 0), bool)


def stack_same_size(arrays: Sequence[np.ndarray], names: Sequence[str]) -> np.ndarray:
    """np.stack, or a one-line error naming two items of different sizes: only at a working
    resolution of "native" can sizes differ, and one set holds one size."""
    first = arrays[0].shape[:2]
    for array, name in zip(arrays, names):
        if array.shape[:2] != first:
            raise DataError(
                f"data.resolution=native needs images of one size, but {names[0]} is "
                f"{first[1]}x{first[0]} and {name} is {array.shape[1]}x{array.shape[0]}; "
                f"set data.resolution to a number of pixels"
            )
    return np.stack(arrays)


def parallel_map(function: Callable[[T], R], items: Collection[T]) -> list[R]:
    """`map` on a thread pool: PIL, zlib and numpy release the GIL while they decode."""
    if len(items) < PARALLEL_FROM:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(MAX_WORKERS, os.cpu_count() or 1)) as pool:
        return list(pool.map(function, items))


def empty_set(size: int | None, channels: int) -> ImageSet:
    return ImageSet(
        images=np.zeros((0, size or 0, size or 0, channels), np.uint8),
        labels=np.zeros(0, np.int64),
        paths=[],
        kinds=[],
        sizes=np.zeros((0, 2), np.int64),
    )


@dataclass(frozen=True)
class Entry:
    """One image file to load and what the layout says about it."""

    path: Path
    label: int = 0  # 0 normal, 1 anomalous, -1 unknown
    kind: str = "good"
    mask: Path | None = None  # pixel truth file, if there is one


@dataclass
class Decoded:
    image: np.ndarray  # S x S x C
    size: tuple[int, int]  # original (height, width)
    mask: np.ndarray | None  # S x S bool


def load_files(
    entries: Sequence[Entry],
    size: int | None,
    channels: int,
    split: str,
    bad: BadFiles,
    with_masks: bool,
    hu_window: tuple[float, float] = DEFAULT_HU_WINDOW,
) -> ImageSet:
    """Decode `entries` into an ImageSet; files that fail are recorded in `bad` and left out.

    With `with_masks`, every image gets a mask row: its mask file, or empty truth for a normal
    image; anomalous images without a mask file have has_mask False."""

    def decode(entry: Entry) -> Decoded | None:
        return bad.attempt(split, entry.path, lambda: _decode(entry, size, channels, hu_window))

    decoded = parallel_map(decode, entries)
    kept = [(entry, item) for entry, item in zip(entries, decoded) if item is not None]
    if not kept:
        return empty_set(size, channels)
    images = ImageSet(
        images=stack_same_size([item.image for _, item in kept], [str(entry.path) for entry, _ in kept]),
        labels=np.array([entry.label for entry, _ in kept], np.int64),
        paths=[str(entry.path) for entry, _ in kept],
        kinds=[entry.kind for entry, _ in kept],
        sizes=np.array([item.size for _, item in kept], np.int64),
    )
    if with_masks:
        empty = np.zeros(images.images.shape[1:3], bool)
        images.masks = np.stack([empty if item.mask is None else item.mask for _, item in kept])
        images.has_mask = np.array([entry.mask is not None or entry.label == 0 for entry, _ in kept])
    return images


def _decode(entry: Entry, size: int | None, channels: int, hu_window: tuple[float, float]) -> Decoded:
    image = read_image(entry.path, hu_window)
    mask = None
    if entry.mask is not None:
        try:
            mask = read_mask(entry.mask)
        except Exception as err:  # name the mask, not its image, as the broken file
            raise DataError(f"its mask {entry.mask.name}: {describe(err)}") from None
        if mask.shape != image.shape[:2]:
            raise DataError(f"its mask {entry.mask.name} is {_size(mask)}, the image {_size(image)}")
        mask = fit_mask(mask, size)
    return Decoded(fit_image(image, size, channels), image.shape[:2], mask)


def _size(array: np.ndarray) -> str:
    return f"{array.shape[1]}x{array.shape[0]}"

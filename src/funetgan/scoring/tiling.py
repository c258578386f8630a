"""Patches and tiles: how networks of one size see images of another.

With `data.resolution` set, images are kept at a working resolution larger than the model
and the networks only ever see patches of `model.image_size`: training draws random patch
positions (`patch_positions`), scoring covers each image with overlapping tiles
(`TileGrid`) and blends the per-tile maps back with a smooth window, so no seams appear
where tiles meet. Without it the grid has one tile, the whole image, and the same code runs.

Numpy only: the PyTorch scorer and the ONNX runtime stitch through the same functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..errors import DataError, SettingsError

# How to fix images smaller than the networks' patch (possible at data.resolution=native).
SMALLER_PATCH = "lower model.image_size, or set data.resolution to a number of pixels"

# A tile scorer: uint8 B x P x P x C tiles -> {"maps": {name: B x P x P}, "values": {name: B}}.
TileScorer = Callable[[np.ndarray], dict[str, dict[str, np.ndarray]]]


def check_tile_stride(stride: int, patch: int) -> None:
    """Tiles must start at most a patch apart, or pixels between them would go unscored."""
    if not 0 < stride <= patch:
        raise SettingsError(f"score.tile_stride must lie in 1..{patch} (the patch size), got {stride}")


def starts(length: int, patch: int, stride: int) -> np.ndarray:
    """Tile offsets along one axis: every `stride` pixels, the last one flush with the end,
    so every pixel is covered whatever the length."""
    if patch > length:
        raise DataError(f"a tile of {patch} px does not fit an image side of {length} px; {SMALLER_PATCH}")
    offsets = list(range(0, length - patch + 1, stride))
    if offsets[-1] != length - patch:
        offsets.append(length - patch)
    return np.array(offsets)


def blend_window(patch: int) -> np.ndarray:
    """P x P weights for stitching: a raised cosine, highest at the tile's centre and small
    (never zero) at its edges, where a tile's view is cut off and its maps are least reliable.
    Overlapping windows fade one tile into the next instead of meeting at a seam."""
    ramp = np.sin(np.pi * (np.arange(patch) + 0.5) / patch) ** 2
    return np.outer(ramp, ramp).astype(np.float32) + 1e-3


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one H x W image lie: tile t covers rows y:y+patch and columns x:x+patch
    of its corner (y, x) = corners[t]."""

    height: int
    width: int
    patch: int
    stride: int

    def __post_init__(self) -> None:
        check_tile_stride(self.stride, self.patch)
        self.corners  # noqa: B018 (computed now, so a patch that does not fit is an error at once)

    @cached_property
    def corners(self) -> list[tuple[int, int]]:
        return [
            (y, x)
            for y in starts(self.height, self.patch, self.stride)
            for x in starts(self.width, self.patch, self.stride)
        ]

    def __len__(self) -> int:
        return len(self.corners)

    def weight_sum(self) -> np.ndarray:
        """H x W: the sum of the windows over all tiles, what stitching divides by."""
        total = np.zeros((self.height, self.width), np.float32)
        window = blend_window(self.patch)
        for y, x in self.corners:
            total[y : y + self.patch, x : x + self.patch] += window
        return total


def score_tiled(
    images: np.ndarray, patch: int, stride: int, batch_size: int, scorer: TileScorer
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Run `scorer` over every tile of uint8 N x H x W x C `images`, `batch_size` tiles at a
    time, and stitch its maps back to N x H x W (window-weighted mean of overlapping tiles).
    Per-tile values come back as N x T (T tiles per image). Memory beyond the results is one
    batch of tiles, whatever the image or set size. Each batch is cut and stitched by a few
    array operations, whatever its number of tiles."""
    n, height, width = images.shape[:3]
    grid = TileGrid(height, width, patch, stride)
    corners, window = np.array(grid.corners), blend_window(patch)
    maps: dict[str, np.ndarray] = {}
    values: dict[str, np.ndarray] = {}
    for image, tile in _tile_batches(n, len(grid), batch_size):
        offsets = np.arange(patch)
        rows = corners[tile, 0, None, None] + offsets[:, None]  # B x P x 1
        cols = corners[tile, 1, None, None] + offsets  # B x 1 x P
        out = scorer(images[image[:, None, None], rows, cols])  # B x P x P x C, cut in one indexing
        pixels = ((image[:, None, None] * height + rows) * width + cols).ravel()  # in the flattened N x H x W maps
        if not maps and not values:  # the results, once the scorer has said what it returns
            maps = {name: np.zeros((n, height, width), np.float32) for name in out["maps"]}
            values = {name: np.zeros((n, len(corners)), np.float64) for name in out["values"]}
        for name, tile_maps in out["maps"].items():
            if len(grid) == 1:  # one tile an image: no pixel twice in a batch
                maps[name][image] += window * tile_maps
            else:  # tiles overlap, so pixels repeat: add.at adds every one, in order (as tile by tile would)
                np.add.at(maps[name].reshape(-1), pixels, (window * tile_maps).ravel())
        for name, tile_values in out["values"].items():
            values[name][image, tile] = tile_values
    total = grid.weight_sum()
    for stitched in maps.values():
        stitched /= total
    return maps, values


def _tile_batches(n_images: int, n_tiles: int, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The (image index, tile index) of every tile of every image, tile fastest, in batches."""
    for start in range(0, n_images * n_tiles, batch_size):
        pair = np.arange(start, min(start + batch_size, n_images * n_tiles))
        yield pair // n_tiles, pair % n_tiles


def patches_per_image(height: int, width: int, patch: int) -> int:
    """How many non-overlapping patches an image holds: training draws this many random
    patches from each image per epoch, so an epoch sees about every pixel once."""
    return max(1, (height // patch) * (width // patch))


def random_corners(count: int, height: int, width: int, patch: int, generator: np.random.Generator) -> np.ndarray:
    """`count` x 2 uniformly random top-left corners of P x P patches inside H x W."""
    if patch > min(height, width):
        raise DataError(f"a patch of {patch} px does not fit images of {height}x{width} px; {SMALLER_PATCH}")
    return np.stack(
        [generator.integers(0, height - patch + 1, count), generator.integers(0, width - patch + 1, count)], 1
    )


def random_patches(
    images: np.ndarray, rows: np.ndarray | None, patch: int, count: int, seed: int, batch_size: int
) -> Iterator[np.ndarray]:
    """`count` random P x P patches of the uint8 N x H x W x C `images` (of `rows`, None: all),
    in batches of `batch_size`, drawn by `seed`: images with replacement and uniform positions;
    where the images are the patch's size, at most `count` of them, each once."""
    rows = np.arange(len(images)) if rows is None else np.asarray(rows)
    generator = np.random.default_rng(seed)
    height, width = images.shape[1:3]
    whole = (height, width) == (patch, patch)
    picks = np.sort(generator.permutation(rows)[:count] if whole else generator.choice(rows, count))
    corners = np.zeros((len(picks), 2), int) if whole else random_corners(len(picks), height, width, patch, generator)
    for start in range(0, len(picks), batch_size):
        batch = slice(start, start + batch_size)
        yield np.stack([images[i, y : y + patch, x : x + patch] for i, (y, x) in zip(picks[batch], corners[batch])])


def centre_crop(images: np.ndarray, patch: int) -> np.ndarray:
    """The central P x P patch of each of N x H x W x C images (previews during training)."""
    height, width = images.shape[1:3]
    top, left = (height - patch) // 2, (width - patch) // 2
    return images[:, top : top + patch, left : left + patch]

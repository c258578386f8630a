"""Built-in demo data: an MVTec-AD-layout set made from scikit-image's real texture photos
(brick, grass, gravel; 512 x 512 grey, shipped with scikit-image, no download), with
synthetic defects of several kinds and their exact masks.

Training and normal test crops come from different parts of the photo (top rows for
training, bottom rows for testing), so the test measures generalisation to unseen texture.
Everything is drawn from one seeded generator: the same arguments give the same files.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import data as skdata
from skimage import draw

from ..files import atomic_save_png

TEXTURES = ("brick", "grass", "gravel")
DEFECTS = ("scratch", "hole", "stain", "smudge", "foreign")
TRAIN_ROWS = 0.62  # fraction of the photo's rows used for training crops


def texture_photo(name: str) -> np.ndarray:
    if name not in TEXTURES:
        raise ValueError(f"unknown texture {name!r}; choose from {TEXTURES}")
    return getattr(skdata, name)().astype(np.float32)


def random_crop(photo: np.ndarray, size: int, rows: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    top = rng.integers(rows[0], rows[1] - size + 1)
    left = rng.integers(0, photo.shape[1] - size + 1)
    return photo[top:top + size, left:left + size].copy()


def blob(size: int, radius: float, rng: np.random.Generator) -> np.ndarray:
    """An irregular filled region around a random centre: a thresholded smoothed noise field
    inside an ellipse."""
    cy, cx = rng.uniform(radius + 2, size - radius - 2, 2)
    ry, rx = radius * rng.uniform(0.6, 1.0, 2)
    yy, xx = np.mgrid[:size, :size]
    ellipse = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
    noise = ndimage.gaussian_filter(rng.normal(size=(size, size)), radius / 3)
    noise /= noise.std() + 1e-8
    return ellipse + 0.25 * noise < 1.0


def add_defect(crop: np.ndarray, kind: str, rng: np.random.Generator, other: np.ndarray,
               scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Returns (defective crop, boolean mask of the defect region). `scale` shrinks the defect
    (0.25: a few pixels across on a 128-256 px crop)."""
    size = crop.shape[0]
    extent = scale * size  # defect sizes are fractions of this
    out = crop.copy()
    if kind == "scratch":
        mask = np.zeros_like(crop, dtype=bool)
        length, angle = rng.uniform(0.3, 0.6) * extent, rng.uniform(0, np.pi)
        cy, cx = rng.uniform(0.3, 0.7, 2) * size
        dy, dx = np.sin(angle) * length / 2, np.cos(angle) * length / 2
        rr, cc = draw.line(int(cy - dy), int(cx - dx), int(cy + dy), int(cx + dx))
        mask[np.clip(rr, 0, size - 1), np.clip(cc, 0, size - 1)] = True
        mask = ndimage.binary_dilation(mask, iterations=int(rng.integers(1, 3)) if scale >= 1 else 1)
        out[mask] = rng.choice([25.0, 235.0])
    elif kind == "hole":
        mask = blob(size, rng.uniform(0.06, 0.11) * extent, rng)
        out[mask] = rng.uniform(10, 30)
    elif kind == "stain":
        mask = blob(size, rng.uniform(0.08, 0.14) * extent, rng)
        out[mask] = out[mask] * 0.45 + rng.uniform(0, 20)
    elif kind == "smudge":
        mask = blob(size, rng.uniform(0.09, 0.15) * extent, rng)
        blurred = ndimage.uniform_filter(crop, size=9) * 0.8 + crop.mean() * 0.2
        out[mask] = blurred[mask] + 25.0
    elif kind == "foreign":
        mask = blob(size, rng.uniform(0.09, 0.15) * extent, rng)
        patch = random_crop(other, size, (0, other.shape[0]), rng)
        out[mask] = patch[mask]
    else:
        raise ValueError(f"unknown defect {kind!r}; choose from {DEFECTS}")
    return np.clip(out, 0, 255), mask


def save_png(path: Path, array: np.ndarray) -> None:
    atomic_save_png(path, Image.fromarray(np.clip(array, 0, 255).round().astype(np.uint8)))


def make_texture_dataset(root: str | Path, texture: str = "brick", crop: int = 128, n_train: int = 240,
                         n_test_good: int = 40, n_per_defect: int = 12, seed: int = 0,
                         train_rows: float = TRAIN_ROWS, small_defects: float = 0.0) -> Path:
    """Write an MVTec-AD-layout category folder (train/good, test/<kind>, ground_truth/<kind>)
    under `root` and return it. Training crops come from the first `train_rows` of the
    photo's rows, test crops from the rest; `small_defects` of the defects are drawn at a
    quarter of the usual size, as kinds of their own (`test/<kind>_small`)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    photo = texture_photo(texture)
    other = texture_photo(next(t for t in TEXTURES if t != texture))
    split = int(train_rows * photo.shape[0])
    train_rows, test_rows = (0, split), (split, photo.shape[0])
    if min(split, test_rows[1] - test_rows[0]) < crop:
        raise ValueError(f"crop {crop} is larger than the photo's training or test region "
                         f"({split} and {test_rows[1] - test_rows[0]} rows)")
    for i in range(n_train):
        save_png(root / "train" / "good" / f"{i:03d}.png", random_crop(photo, crop, train_rows, rng))
    for i in range(n_test_good):
        save_png(root / "test" / "good" / f"{i:03d}.png", random_crop(photo, crop, test_rows, rng))
    for kind in DEFECTS:
        for i in range(n_per_defect):
            small = bool(small_defects) and rng.random() < small_defects
            image, mask = add_defect(random_crop(photo, crop, test_rows, rng), kind, rng, other, 0.25 if small else 1.0)
            folder = f"{kind}_small" if small else kind  # its own kind in per-kind metrics
            save_png(root / "test" / folder / f"{i:03d}.png", image)
            save_png(root / "ground_truth" / folder / f"{i:03d}_mask.png", mask * 255.0)
    return root

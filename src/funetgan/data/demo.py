"""Built-in demo data: an MVTec-AD-layout set made from scikit-image's real texture photos
(brick, grass, gravel; 512 x 512 grey, shipped with scikit-image, no download), with
synthetic defects of several kinds and their exact masks.

Each crop comes from a part of the photo that no crop of another role touches, so held-out
normals and tests measure texture no training crop covers. Where the parts lie is the layout:
- "checker" (the default): the photo's top rows cut into a grid of regions a little larger
  than a crop, `GAP` of a crop apart. Regions of one colour of a checkerboard give the
  training crops; the others take turns, row by row, as calibration normals (`val/good/`),
  fresh normals (`normal_crops`), the selection split's tests and the report split's tests
  (`HELD_OUT`). The brick photo is taken at an angle, so its bricks lean one way on the left,
  the other way on the right, and grow towards the bottom: interleaved regions give every role
  the same mixture, so held-out normals are the training normals' kind of texture. The rows
  below the grid are a shifted domain ("shifted"), to measure that effect apart.
- "below": training crops from the top rows, test crops from the rows below them (the
  shifted domain in the test set itself; the localisation benchmark's layout, whose 256-px
  crops leave no room for more parts: its splits differ by seed only).
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
LAYOUTS = ("checker", "below")
SPLITS = ("report", "selection")  # each split's tests come from regions of their own
# The roles of the "checker" layout's held-out regions, in turn along each row.
HELD_OUT = ("calibration", "fresh", "selection", "report")
TRAIN_SHARE = 0.62  # share of the photo's rows the grid ("checker") or the training crops ("below") take
GAP = 8  # pixels between two regions per 64 px of crop: neighbouring pixels are alike
Region = tuple[tuple[int, int], tuple[int, int]]  # (first, end) rows and columns of a part of the photo


def texture_photo(name: str) -> np.ndarray:
    if name not in TEXTURES:
        raise ValueError(f"unknown texture {name!r}; choose from {TEXTURES}")
    return getattr(skdata, name)().astype(np.float32)


def regions(shape: tuple[int, int], layout: str, crop: int, share: float = TRAIN_SHARE) -> dict[str, list[Region]]:
    """The parts of a photo of `shape` that each role's crops of `crop` px come from (see the
    module's doc), by role: "train" and each split's tests ("selection", "report"), and with
    "checker" the other HELD_OUT roles and "shifted" (a role the grid is too small for has no
    parts)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {LAYOUTS}")
    height, width = shape
    rows = int(share * height)
    if layout == "below":
        below = [((rows, height), (0, width))]
        return {"train": [((0, rows), (0, width))], "selection": below, "report": below}
    gap = max(1, GAP * crop // 64)
    parts: dict[str, list[Region]] = {role: [] for role in ("train", *HELD_OUT)}
    for row, band in enumerate(cells(0, rows, crop, gap)):
        for column, span in enumerate(cells(0, width, crop, gap)):
            # Checkerboard colour 0 trains; the others' roles shift by one per row.
            role = "train" if (row + column) % 2 == 0 else HELD_OUT[(column // 2 + row) % len(HELD_OUT)]
            parts[role].append((band, span))
    parts["shifted"] = [((rows + gap, height), (0, width))] if height - rows - gap >= crop else []
    return parts


def cells(first: int, end: int, crop: int, gap: int) -> list[tuple[int, int]]:
    """As many (first, end) spans of at least `crop` + 1/8 crop as fit in [first, end) with
    `gap` between them, widened to fill it."""
    count = (end - first + gap) // (crop + crop // 8 + gap)
    if count == 0:
        return []
    size = (end - first - (count - 1) * gap) // count
    return [(first + i * (size + gap), first + i * (size + gap) + size) for i in range(count)]


def random_crop(photo: np.ndarray, size: int, parts: list[Region], rng: np.random.Generator) -> np.ndarray:
    """A `size` px crop inside one of `parts` (each as likely), at a uniformly random place there."""
    (first_row, end_row), (first_column, end_column) = parts[rng.integers(len(parts))]
    top = rng.integers(first_row, end_row - size + 1)
    left = rng.integers(first_column, end_column - size + 1)
    return photo[top : top + size, left : left + size].copy()


def whole(photo: np.ndarray) -> list[Region]:
    return [((0, photo.shape[0]), (0, photo.shape[1]))]


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


def add_defect(
    crop: np.ndarray, kind: str, rng: np.random.Generator, other: np.ndarray, scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
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
        patch = random_crop(other, size, whole(other), rng)
        out[mask] = patch[mask]
    else:
        raise ValueError(f"unknown defect {kind!r}; choose from {DEFECTS}")
    return np.clip(out, 0, 255), mask


def save_png(path: Path, array: np.ndarray) -> None:
    atomic_save_png(path, Image.fromarray(np.clip(array, 0, 255).round().astype(np.uint8)))


def make_texture_dataset(
    root: str | Path,
    texture: str = "brick",
    crop: int = 64,
    n_train: int = 240,
    n_test_good: int = 40,
    n_per_defect: int = 12,
    seed: int = 0,
    train_share: float = TRAIN_SHARE,
    small_defects: float = 0.0,
    layout: str = "checker",
    n_calibration: int = 0,
    split: str = "report",
) -> Path:
    """Write an MVTec-AD-layout category folder (train/good, test/<kind>, ground_truth/<kind>,
    and with `n_calibration` val/good: normals to calibrate on) under `root` and return it.
    Each role's crops come from its parts of the photo (`regions` of `layout`, from
    `train_share` of its rows); the tests from `split`'s. `small_defects` of the defects are
    drawn at a quarter of the usual size, as kinds of their own (`test/<kind>_small`)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    photo = texture_photo(texture)
    other = texture_photo(next(t for t in TEXTURES if t != texture))
    parts = regions(photo.shape, layout, crop, train_share)
    roles = ["train", split, *(["calibration"] if n_calibration else [])]
    for role in roles:
        if not parts.get(role):
            raise ValueError(
                f"crop {crop} leaves no {role} part of the {photo.shape[0]} px photo "
                f"({layout} layout, from {train_share:g} of its rows)"
            )
    for i in range(n_train):
        save_png(root / "train" / "good" / f"{i:03d}.png", random_crop(photo, crop, parts["train"], rng))
    for i in range(n_calibration):
        save_png(root / "val" / "good" / f"{i:03d}.png", random_crop(photo, crop, parts["calibration"], rng))
    for i in range(n_test_good):
        save_png(root / "test" / "good" / f"{i:03d}.png", random_crop(photo, crop, parts[split], rng))
    for kind in DEFECTS:
        for i in range(n_per_defect):
            small = bool(small_defects) and rng.random() < small_defects
            image, mask = add_defect(
                random_crop(photo, crop, parts[split], rng), kind, rng, other, 0.25 if small else 1.0
            )
            folder = f"{kind}_small" if small else kind  # its own kind in per-kind metrics
            save_png(root / "test" / folder / f"{i:03d}.png", image)
            save_png(root / "ground_truth" / folder / f"{i:03d}_mask.png", mask * 255.0)
    return root


def normal_crops(
    texture: str, crop: int, count: int, part: str, seed: int, train_share: float = TRAIN_SHARE
) -> np.ndarray:
    """`count` uint8 count x crop x crop normal crops of the "checker" layout's `part` (a role of
    `regions`: "fresh" for normals of the training distribution that no training or
    calibration crop touches, "shifted" for the rows below, a shifted domain), drawn by `seed`."""
    photo = texture_photo(texture)
    rng = np.random.default_rng(seed)
    parts = regions(photo.shape, "checker", crop, train_share)[part]
    if not parts:
        raise ValueError(f"crop {crop} leaves no {part} part of the {photo.shape[0]} px photo")
    return np.stack([random_crop(photo, crop, parts, rng) for _ in range(count)]).round().astype(np.uint8)

"""Which images are not independent of one another: the slices of one volume, of one DICOM
patient or series. The calibration split holds a group out whole (`calibration_split`):
neighbouring slices are nearly the same image, and with one on each side the calibration
normals are no longer fresh, and the threshold's promise no longer holds.

Where the files do not say (PNG or TIFF slices), images are their own groups; when images in
name order look like slices of a volume (each much closer to the next than to a random other),
a warning says so.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .base import SLICE_MARK, ImageSet
from .medical import is_dicom, read_dataset

# Images in name order look like slices when each differs from the next by less than this share
# of what it differs from a random other image. Measured (mean absolute difference, 200 pairs):
# axial slices of the Colin27 brain MRI 0.05 at 1 mm spacing, 0.13 at 3 mm, 0.21 at 5 mm;
# Fashion-MNIST training images 0.96; 64 px crops of skimage's grass photo 1.02.
SLICE_LIKE_RATIO = 0.5
SLICE_CHECK_PAIRS = 200  # pairs compared, at most
SLICE_CHECK_FROM = 8  # fewer images are not checked


def image_groups(images: ImageSet) -> np.ndarray:
    """One group number per image: the slices of a volume share their volume's; DICOM images
    share their patient's (PatientID) where the set holds several patients, else their series'
    (SeriesInstanceUID); every other image has its own (with a warning when they look like
    slices)."""
    groups = np.arange(len(images))
    for number, rows in enumerate(images.volume_rows().values()):
        groups[rows] = len(images) + number
    alone = np.flatnonzero(groups < len(images))
    dicom = [i for i in alone if _is_dicom_file(images.paths[i])]
    keys = _dicom_keys([images.paths[i] for i in dicom])
    if keys is not None:
        _, numbers = np.unique(keys, return_inverse=True)
        groups[dicom] = 2 * len(images) + numbers
    elif looks_like_slices(images, alone):
        warnings.warn(
            f"{len(alone)} images in name order look like slices of volumes (each much like the "
            f"next), and nothing in their files says which belong together: calibration normals "
            f"are held out image by image, with neighbouring slices on both sides, so fewer fresh "
            f"normals may be flagged than promised; give a validation split of other patients",
            stacklevel=3,
        )
    return groups


def _is_dicom_file(path: str) -> bool:
    return SLICE_MARK not in path and Path(path).is_file() and is_dicom(path)


def _dicom_keys(paths: list[str]) -> list[str] | None:
    """Each DICOM file's patient where the files name two or more patients, else its series
    where they name two or more series; None when neither splits them."""
    if len(paths) < 2:
        return None
    headers = [
        read_dataset(path, stop_before_pixels=True, specific_tags=["PatientID", "SeriesInstanceUID"]) for path in paths
    ]
    for tag in ("PatientID", "SeriesInstanceUID"):
        keys = [str(header.get(tag, "") or "") for header in headers]
        if all(keys) and len(set(keys)) > 1:
            return keys
    return None


def looks_like_slices(images: ImageSet, rows: np.ndarray) -> bool:
    """Whether `rows` of `images`, in the order of their paths, look like consecutive slices:
    each differs from the next far less than from a random other (SLICE_LIKE_RATIO)."""
    if len(rows) < SLICE_CHECK_FROM:
        return False
    ordered = rows[np.argsort([images.paths[i] for i in rows], kind="stable")]
    starts = np.linspace(0, len(ordered) - 2, min(SLICE_CHECK_PAIRS, len(ordered) - 1)).astype(int)
    others = np.random.default_rng(0).permutation(len(ordered))[: len(starts)]
    others = np.where(np.abs(others - starts) <= 1, (others + len(ordered) // 2) % len(ordered), others)

    def difference(first: np.ndarray, second: np.ndarray) -> float:
        pairs = zip(images.images[ordered[first]], images.images[ordered[second]])
        return float(np.mean([np.abs(a.astype(np.int16) - b).mean() for a, b in pairs]))

    random_pairs = difference(starts, others)
    return random_pairs > 0 and difference(starts, starts + 1) < SLICE_LIKE_RATIO * random_pairs

"""Lung CT volumes with lesion masks, in the layout of the public "COVID-19 CT Lung and
Infection Segmentation Dataset":

    ct_scans/          one volume per patient: .nii / .nii.gz, or a folder of DICOM slices
    infection_mask/    the lesion mask of each volume, matched by name (or metadata.csv)
    lung_mask/         optional: slices without lung are left out and only the lung is scored
                       (without it, data.lung_threshold finds the lung: lungs.py)

Axial slices without lesion are normal, slices with lesion anomalous with the lesion as pixel
truth. Train and test are split by volume (patient), never by slice: training volumes give
only their normal slices, test volumes all of theirs.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from .base import SLICE_MARK, ImageSet, Splits
from .cache import cached_splits
from .checks import BadFiles, file_list
from .images import empty_set, fit_images, fit_masks
from .lungs import segment_lung
from .medical import Geometry, is_grey_levels, is_nifti, read_scan, read_volume, volume_to_uint8

SCANS, LESIONS, LUNGS = "ct_scans", "infection_mask", "lung_mask"
METADATA = "metadata.csv"  # the Kaggle copy names scans and masks differently and maps them here
METADATA_SCAN = "ct_scan"  # its column of scans; the mask columns are named like the folders


@dataclass(frozen=True)
class Volume:
    name: str
    scan: Path
    lesion: Path
    lung: Path | None


def is_ct_dataset(root: Path) -> bool:
    return (root / SCANS).is_dir()


def load_ct(root: Path, size: int | None, channels: int, options: DataConfig) -> Splits:
    scans = _volume_files(root / SCANS)
    if not scans:
        raise DataError(f"{root / SCANS}: no CT volumes (.nii, .nii.gz or DICOM series folders)")
    bad = BadFiles(options.on_bad_file)
    volumes = pair_masks(root, scans, bad)
    return split_volumes(root, "ct", volumes, list(scans), size, channels, options, bad)


def split_volumes(
    root: Path,
    layout: str,
    volumes: list[Volume],
    names: list[str],
    size: int | None,
    channels: int,
    options: DataConfig,
    bad: BadFiles,
) -> Splits:
    """Read `volumes` into a train split (the normal slices of the training patients) and a
    test split (every slice of the test patients): in memory, or with `data.cache_dir`
    through the slice cache (decoded once, memory-mapped). The split is drawn on `names`,
    every volume present, so a volume skipped as bad never moves the others."""
    test_names = split_by_volume(names, options.test_fraction, options.split_seed)

    def read(add) -> None:
        for volume in volumes:
            split = "test" if volume.name in test_names else "train"
            slices = bad.attempt(split, volume.scan, partial(read_slices, volume, size, channels, options))
            if slices is None:
                continue
            if split == "train":
                slices = replace(slices.subset(np.flatnonzero(slices.labels == 0)), masks=None, has_mask=None)
            add(split, slices)

    splits = gather_volumes(root, layout, size, channels, options, bad, read)
    if not len(splits.train):
        raise DataError(f"{root}: no normal (lesion-free) slices in the training volumes")
    described = (
        f"split by patient (data.test_fraction={options.test_fraction}, data.split_seed="
        f"{options.split_seed}): test volumes {file_list(sorted(test_names))}"
    )
    for images in (splits.train, splits.test):
        if images is not None:
            images.notes.append(described)
    return splits


def gather_volumes(
    root: Path,
    layout: str,
    size: int | None,
    channels: int,
    options: DataConfig,
    bad: BadFiles,
    read: Callable[[Callable[[str, ImageSet], None]], None],
) -> Splits:
    """The train and test splits that `read(add)` passes to `add(split, slices)`, volume by
    volume: in memory, or with `data.cache_dir` through the slice cache (decoded once,
    memory-mapped); then `bad`'s files are settled."""

    def settle(splits: Splits) -> None:
        bad.settle({"train": splits.train, "test": splits.test})

    if options.cache_dir is not None:
        return cached_splits(root, layout, size, channels, options, read, settle)
    pieces: dict[str, list[ImageSet]] = {"train": [], "test": []}
    read(lambda split, slices: pieces[split].append(slices))
    splits = Splits(**{split: _concat(sets, size, channels) for split, sets in pieces.items()})
    settle(splits)
    return splits


def pair_masks(root: Path, scans: dict[str, Path], bad: BadFiles) -> list[Volume]:
    """Each scan with its masks; scans without a lesion mask and masks without a scan are
    bad files."""
    if not (root / LESIONS).is_dir():
        raise DataError(f"{root}: missing folder {LESIONS}/ (the lesion masks)")
    lesions = _volume_files(root / LESIONS)
    lungs = _volume_files(root / LUNGS) if (root / LUNGS).is_dir() else {}
    renamed = _metadata_names(root)
    volumes = []
    for name, scan in scans.items():
        lesion = lesions.pop(renamed.get((LESIONS, name), name), None)
        lung = lungs.pop(renamed.get((LUNGS, name), name), None)
        if lesion is None:
            bad.add("test", scan, f"no lesion mask in {LESIONS}/")
        else:
            volumes.append(Volume(name, scan, lesion, lung))
    for mask in [*lesions.values(), *lungs.values()]:
        bad.add("test", mask, "mask without a CT scan")
    return volumes


def split_by_volume(names: list[str], test_fraction: float, seed: int) -> set[str]:
    """A seeded random `test_fraction` of the volumes (at least one, never all)."""
    if not 0 < test_fraction < 1:
        raise DataError(f"data.test_fraction must be between 0 and 1, got {test_fraction}")
    if len(names) < 2:
        raise DataError(f"{len(names)} CT volume(s): the split by patient needs at least 2")
    count = min(max(round(len(names) * test_fraction), 1), len(names) - 1)
    order = np.random.default_rng(seed).permutation(sorted(names))
    return set(order[:count].tolist())


def read_slices(volume: Volume, size: int | None, channels: int, options: DataConfig) -> ImageSet:
    """All usable axial slices of one volume, labelled by its lesion mask."""
    scan, geometry = read_scan(volume.scan)
    lesion = _read_mask(volume.lesion, scan.shape)
    keep = np.arange(len(scan))
    lung = None
    if volume.lung is not None:
        lung = _read_mask(volume.lung, scan.shape)
        if not lung.any():
            raise DataError(f"its lung mask {volume.lung.name} is empty")
    elif options.lung_threshold is not None:
        lung = lung_by_threshold(scan, options.lung_threshold)
    if lung is not None:
        keep = np.flatnonzero(lung.any(axis=(1, 2)))
    grey, in_hu = volume_to_uint8(scan, options.hu_window)
    slices = slices_to_set(grey[keep], keep, volume.scan, geometry, size, channels)
    if lung is not None:
        slices.lung = fit_masks(lung[keep], size)
    slices.labels = np.asarray(lesion[keep].any(axis=(1, 2)), np.int64)
    slices.kinds = ["lesion" if label else "good" for label in slices.labels]
    slices.masks = fit_masks(lesion[keep], size)
    slices.has_mask = np.ones(len(keep), bool)
    if not in_hu:
        slices.notes.append(
            f"{volume.scan.name}: values in 0..255 (or 0..1), not HU: "
            f"used as grey levels (0..1 scaled to 0..255), without the HU window"
        )
    return slices


def volume_slices(
    path: Path, size: int | None, channels: int, hu_window: tuple[float, float], lung_threshold: float | None = None
) -> ImageSet:
    """Every axial slice of one volume, unlabelled (for scoring); with `lung_threshold`, with
    the lung found by it (`lungs.segment_lung`)."""
    scan, geometry = read_scan(path)
    grey, _ = volume_to_uint8(scan, hu_window)
    slices = slices_to_set(grey, np.arange(len(grey)), path, geometry, size, channels)
    if lung_threshold is not None:
        slices.lung = fit_masks(lung_by_threshold(scan, lung_threshold), size)
    return slices


def lung_by_threshold(scan: np.ndarray, threshold: float) -> np.ndarray:
    """The lung of a scan in HU without a lung mask (data.lung_threshold)."""
    if is_grey_levels(scan):
        raise DataError("values in 0..255, not HU: data.lung_threshold needs HU")
    lung = segment_lung(scan, threshold)
    if not lung.any():
        raise DataError(f"no lung found (no air inside the body below data.lung_threshold={threshold:g} HU)")
    return lung


def slices_to_set(
    grey: np.ndarray, z: np.ndarray, source: Path, geometry: Geometry, size: int | None, channels: int
) -> ImageSet:
    """uint8 slices Z x H x W -> an unlabelled ImageSet, paths `source#z=<index>`."""
    return ImageSet(
        images=fit_images(grey[..., None], size, channels),
        labels=np.full(len(z), -1, np.int64),
        paths=[f"{source}{SLICE_MARK}{i}" for i in z.tolist()],
        kinds=["unknown"] * len(z),
        sizes=np.tile(grey.shape[1:], (len(z), 1)),
        volumes={str(source): geometry},
    )


def _read_mask(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    mask = read_volume(path) > 0
    if mask.shape != shape:
        raise DataError(f"its mask {path.name} has shape {mask.shape}, the scan {shape}")
    return mask


def _volume_files(folder: Path) -> dict[str, Path]:
    """Volumes in `folder` by name: NIfTI files and DICOM series folders."""
    volumes: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if not (path.is_dir() or is_nifti(path)):
            raise DataError(f"{folder}: {path.name} is neither a NIfTI file nor a DICOM series folder")
        volumes.setdefault(volume_name(path), []).append(path)
    duplicates = [" and ".join(p.name for p in paths) for paths in volumes.values() if len(paths) > 1]
    if duplicates:
        raise DataError(f"{folder}: duplicate volume names: {file_list(duplicates)}")
    return {name: paths[0] for name, paths in volumes.items()}


def volume_name(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _metadata_names(root: Path) -> dict[tuple[str, str], str]:
    """(mask folder, scan name) -> mask name, from metadata.csv when there is one."""
    if not (root / METADATA).is_file():
        return {}
    with open(root / METADATA, newline="") as file:
        rows = list(csv.DictReader(file))
    return {
        (folder, volume_name(Path(row[METADATA_SCAN]))): volume_name(Path(row[folder]))
        for row in rows
        for folder in (LESIONS, LUNGS)
        if row.get(METADATA_SCAN) and row.get(folder)
    }


def _concat(sets: list[ImageSet], size: int | None, channels: int) -> ImageSet:
    return ImageSet.concat(sets) if sets else empty_set(size, channels)

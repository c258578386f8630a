"""Data sources: each reads one layout into the common in-memory form (`base.ImageSet`;
volume sets memory-mapped from the slice cache, `cache`, with `data.cache_dir`).

`load_dataset` finds the layout from what is on disk, reads and checks every file, and only
then returns, so bad input stops a run before any training.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from ..config import DataConfig
from ..errors import DataError, reading_files
from . import cache
from .base import ImageSet, Splits
from .bmad import is_bmad_dataset, load_bmad
from .checks import BadFiles, fit_batch, held_out
from .ct import is_ct_dataset, load_ct, volume_slices
from .folder import find_folder_dataset, load_folder, mvtec_categories
from .idx import has_idx, load_idx
from .images import Entry, fit_image, fit_mask, load_files, read_image, read_mask
from .medical import is_dicom_series, is_nifti
from .mood import is_mood_dataset, load_mood
from .msd import is_msd_dataset, load_msd

__all__ = [
    "DataError",
    "ImageSet",
    "Splits",
    "fit_batch",
    "fit_image",
    "held_out",
    "fit_mask",
    "load_dataset",
    "load_unlabelled",
    "mvtec_categories",
    "read_image",
    "read_mask",
]

LAYOUTS = (
    "train/ (+ test/, val/, masks/ or ground_truth/), an MVTec AD category or root, a BMAD set "
    "(train/good/, valid/ and test/ with good/ and Ungood/), "
    "MNIST-style IDX files, ct_scans/ + infection_mask/, a Medical Segmentation Decathlon "
    "task (dataset.json + imagesTr/ + labelsTr/), or a MOOD region (<region>_train/ + toy/ + toy_label/)"
)


def __getattr__(name: str):
    if name in ("to_tensor", "to_uint8"):  # PyTorch's side of the data (nn.tensors), on first use only
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@reading_files()
def load_dataset(
    path: str | Path, image_size: int | None = 64, channels: int = 1, options: DataConfig | None = None
) -> Splits:
    """Read a dataset folder into train / test / val splits of images at `image_size` (the
    working resolution; None: each image's own size)."""
    options = options or DataConfig()
    _check_shape(image_size, channels)
    root = Path(path)
    if not root.is_dir():
        raise DataError(
            f"{root}: {'not a folder' if root.exists() else 'no such folder'}; a dataset is a folder with {LAYOUTS}"
        )
    if is_ct_dataset(root):
        return load_ct(root, image_size, channels, options)
    if is_msd_dataset(root):
        return load_msd(root, image_size, channels, options)
    if is_mood_dataset(root):
        return load_mood(root, image_size, channels, options)
    if has_idx(root):
        return load_idx(root, image_size, channels, options)
    folder = find_folder_dataset(root, options.category)
    if folder is None:
        raise DataError(f"{root}: no known dataset layout; expected {LAYOUTS}")
    if is_bmad_dataset(folder):
        return load_bmad(folder, image_size, channels, options)
    return load_folder(folder, image_size, channels, options)


@reading_files()
def load_unlabelled(
    paths: list[str], image_size: int | None, channels: int, options: DataConfig | None = None
) -> ImageSet:
    """Images to score without labels (labels -1, kinds "unknown"): image or DICOM files,
    folders of them (searched recursively, so a DICOM series gives its slice files) and
    NIfTI volumes and DICOM series folders (every axial slice of each). Image files come
    first, then each volume's slices."""
    options = options or DataConfig()
    _check_shape(image_size, channels)
    files: list[Path] = []
    volumes: list[Path] = []
    for path in paths:
        for file in _files_under(Path(path)):
            (volumes if is_nifti(file) or file.is_dir() else files).append(file)
    if not files and not volumes:
        raise DataError(f"no files to score in {', '.join(map(str, paths))}")
    bad = BadFiles(options.on_bad_file)
    entries = [Entry(file, label=-1, kind="unknown") for file in files]
    sets = [load_files(entries, image_size, channels, "images", bad, False, options.hu_window)]
    sets += _volume_sets(volumes, image_size, channels, options, bad)
    # One set (only volumes, or only images) is used as it is: slices mapped from the cache stay on disk.
    sets = [s for s in sets if len(s)] or sets[:1]
    images = sets[0] if len(sets) == 1 else ImageSet.concat(sets)
    bad.settle({"images": images})
    if not len(images):
        raise DataError(f"none of the files in {', '.join(map(str, paths))} could be read")
    return images


def _volume_sets(
    volumes: list[Path], image_size: int | None, channels: int, options: DataConfig, bad: BadFiles
) -> list[ImageSet]:
    """Every slice of each volume: decoded here, or with `data.cache_dir` memory-mapped from
    the slice cache (`cache.cached_volumes`: decoded once per list of volumes)."""

    def reader(problems: BadFiles):
        def read(add) -> None:
            for volume in volumes:
                slices = problems.attempt(
                    "images",
                    volume,
                    partial(volume_slices, volume, image_size, channels, options.hu_window, options.lung_threshold),
                )
                if slices is not None:
                    add("test", slices)

        return read

    if options.cache_dir is None or not volumes:
        found: list[ImageSet] = []
        reader(bad)(lambda _, slices: found.append(slices))
        return found
    # A build's bad volumes are settled into the cached notes (or raise, leaving no cache).
    build = BadFiles(options.on_bad_file)
    return [
        cache.cached_volumes(
            volumes, image_size, channels, options, reader(build), lambda splits: build.settle({"images": splits.test})
        )
    ]


def _files_under(path: Path) -> list[Path]:
    """Files under `path`, with each DICOM series folder in place of its files."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if not path.is_dir():
        return [path]
    series = [folder for folder in [path, *path.rglob("*")] if folder.is_dir() and is_dicom_series(folder)]
    files = (p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".") and p.parent not in series)
    return sorted([*files, *series])


def _check_shape(image_size: int | None, channels: int) -> None:
    if (image_size is not None and image_size < 1) or channels not in (1, 3):
        raise DataError(
            f"images must be at least 1 pixel with 1 or 3 channels, got size {image_size}, channels {channels}"
        )

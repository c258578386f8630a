"""The MOOD challenge's data layout, as its organisers lay it out (one folder per region,
e.g. brain/ or abdom/):

    <region>_train/     normal volumes (.nii.gz): every slice is a normal training image
    toy/                test volumes
    toy_label/pixel/    their voxel labels, named as the volumes (any non-zero voxel: anomalous)

toy_label/sample/ (the case labels) is not read: a case is anomalous when its voxel label has
an anomalous voxel, which is what `test`'s per-volume figures use. MOOD's volumes are
normalised to 0..1 and read as such (`medical.volume_to_uint8`). There is no validation split:
`data.val_fraction` of the training slices are held out to calibrate on.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from .base import Splits
from .checks import BadFiles, file_list
from .ct import Volume, gather_volumes, read_slices, volume_name, volume_slices
from .medical import is_nifti

TRAIN_SUFFIX, TEST, LABELS = "_train", "toy", Path("toy_label") / "pixel"


def is_mood_dataset(root: Path) -> bool:
    """A `*_train/` folder of NIfTI volumes."""
    return any(_volumes(folder) for folder in _train_folders(root))


def load_mood(root: Path, size: int | None, channels: int, options: DataConfig) -> Splits:
    folders = [folder for folder in _train_folders(root) if _volumes(folder)]
    if len(folders) > 1:
        raise DataError(f"{root}: several training folders ({file_list(f.name for f in folders)}); keep one")
    train = _volumes(folders[0])
    bad = BadFiles(options.on_bad_file)
    test = _test_volumes(root, bad)

    def read(add) -> None:
        for path in train:
            slices = bad.attempt(
                "train", path, partial(volume_slices, path, size, channels, options.hu_window, options.lung_threshold)
            )
            if slices is not None:
                add("train", replace(slices, labels=np.zeros(len(slices), np.int64), kinds=["good"] * len(slices)))
        for volume in test:
            slices = bad.attempt("test", volume.scan, partial(read_slices, volume, size, channels, options))
            if slices is not None:
                add("test", slices)

    splits = gather_volumes(root, "mood", size, channels, options, bad, read)
    if not len(splits.train):
        raise DataError(f"{folders[0]}: no readable training volumes")
    return splits if test else replace(splits, test=None)


def _test_volumes(root: Path, bad: BadFiles) -> list[Volume]:
    """toy/'s volumes with their voxel labels; one without a label, or a label without a
    volume, is a bad file."""
    if not (root / TEST).is_dir():
        return []
    labels = {path.name: path for path in _volumes(root / LABELS)}
    volumes = []
    for path in _volumes(root / TEST):
        label = labels.pop(path.name, None)
        if label is None:
            bad.add("test", path, f"no voxel label in {LABELS.as_posix()}/")
        else:
            volumes.append(Volume(volume_name(path), path, label, None))
    for label in labels.values():
        bad.add("test", label, f"voxel label without a volume in {TEST}/")
    return volumes


def _train_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.endswith(TRAIN_SUFFIX))


def _volumes(folder: Path) -> list[Path]:
    """The NIfTI files in `folder` (none where it is missing), sorted; hidden files left out."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and is_nifti(p) and not p.name.startswith("."))

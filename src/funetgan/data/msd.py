"""The Medical Segmentation Decathlon layout (e.g. Task06_Lung, lung tumours), as published:

    dataset.json   "training": [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}, ...]
    imagesTr/      labelled CT volumes (NIfTI)
    labelsTr/      their labels: 0 background, any other value tumour
    imagesTs/      unlabelled volumes (not read here: score them with `funetgan predict`)

The labelled volumes are split by patient exactly as the lung CT layout (ct.py): training
patients give their tumour-free slices, test patients all of theirs.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..config import DataConfig
from ..errors import DataError
from .base import Splits
from .checks import BadFiles
from .ct import Volume, split_volumes, volume_name
from .medical import is_nifti

INDEX, IMAGES, LABELS = "dataset.json", "imagesTr", "labelsTr"


def is_msd_dataset(root: Path) -> bool:
    return (root / INDEX).is_file() and (root / IMAGES).is_dir()


def load_msd(root: Path, size: int | None, channels: int, options: DataConfig) -> Splits:
    bad = BadFiles(options.on_bad_file)
    listed = _training_entries(root)
    volumes = []
    for image, label in listed:
        if not image.is_file():
            bad.add("test", image, f"listed in {INDEX} but missing")
        elif not label.is_file():
            bad.add("test", image, f"its label {label.name} is listed in {INDEX} but missing")
        else:
            volumes.append(Volume(volume_name(image), image, label, None))
    known = {path.resolve() for pair in listed for path in pair}
    for folder in (IMAGES, LABELS):
        for path in _nifti_files(root / folder):
            if path.resolve() not in known:
                bad.add("test", path, f"not listed in {INDEX}")
    names = [volume_name(image) for image, _ in listed]
    return split_volumes(root, "msd", volumes, names, size, channels, options, bad)


def _training_entries(root: Path) -> list[tuple[Path, Path]]:
    """(image, label) paths of dataset.json's "training" list."""
    index = root / INDEX
    try:
        entries = json.loads(index.read_text()).get("training")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as err:
        raise DataError(f"{index}: not a readable dataset index ({type(err).__name__})") from None
    if not isinstance(entries, list) or not entries:
        raise DataError(f'{index}: no "training" list of image/label pairs')
    pairs = []
    for i, entry in enumerate(entries):
        if not (isinstance(entry, dict) and all(isinstance(entry.get(key), str) for key in ("image", "label"))):
            raise DataError(f"{index}: training entry {i} is not an image/label pair: {str(entry)[:80]}")
        pairs.append((root / entry["image"], root / entry["label"]))
    return pairs


def _nifti_files(folder: Path) -> list[Path]:
    # The published archives hold macOS "._name" companions of every file: hidden, skipped.
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if is_nifti(p) and not p.name.startswith("."))

"""The BMAD layout (Benchmarks for Medical Anomaly Detection: BraTS2021 slices, liver CT,
retinal OCT and RESC, chest X-ray, histopathology), as published and as anomalib reads it:

    train/good/                     normal training images (or train/good/img/)
    valid/{good,Ungood}/img/        the validation split, with pixel truth in .../label/
                                    (a mask per Ungood image, named as it), or the
                                    images directly in {good,Ungood}/ (image-level sets)
    test/{good,Ungood}/...          the test split, laid out like valid/

`valid/` is the calibration split: thresholds are F1-optimal on it (labelled, with masks
where it has them) and the normal levels come from its good images; `test/` is for metrics
only. Normal images have empty truth: good/label/ is not read.
"""

from __future__ import annotations

from pathlib import Path

from ..config import DataConfig
from ..errors import DataError
from .base import ImageSet, Splits
from .checks import BadFiles, file_list
from .folder import image_files
from .images import Entry, load_files

SPLITS = {"train": "train", "valid": "val", "test": "test"}  # BMAD's folder -> funetgan's split
NORMAL, ANOMALOUS = "good", "Ungood"
IMAGES, LABELS = "img", "label"


def is_bmad_dataset(root: Path) -> bool:
    """train/good/ with valid/ or test/Ungood/ (an MVTec AD category has neither)."""
    return (root / "train" / NORMAL).is_dir() and ((root / "valid").is_dir() or (root / "test" / ANOMALOUS).is_dir())


def load_bmad(root: Path, size: int | None, channels: int, options: DataConfig) -> Splits:
    bad = BadFiles(options.on_bad_file)
    entries = {"train": [Entry(path) for path in _images(root / "train" / NORMAL)]}
    for folder in ("valid", "test"):
        if folder == "valid" or (root / folder).exists():
            entries[SPLITS[folder]] = _labelled(root / folder, bad)
    if not entries["train"]:
        raise DataError(f"{root / 'train' / NORMAL}: no training images")

    def load(split: str) -> ImageSet:
        with_masks = any(entry.mask is not None for entry in entries[split])
        return load_files(entries[split], size, channels, split, bad, with_masks, options.hu_window)

    val = load("val")  # valid/ is always read (`entries`)
    splits = Splits(train=load("train"), val=val, test=load("test") if "test" in entries else None)
    bad.settle({"train": splits.train, "val": splits.val, "test": splits.test})
    if not len(splits.train):
        raise DataError(f"{root / 'train' / NORMAL}: no readable training images")
    if not (val.labels == 0).any():
        raise DataError(f"{root / 'valid' / NORMAL}: no readable normal validation images to calibrate on")
    return splits


def _labelled(split: Path, bad: BadFiles) -> list[Entry]:
    """The entries of valid/ or test/: its good/ and Ungood/ images, masks paired by name."""
    if not split.is_dir():
        raise DataError(f"{split}: missing folder (BMAD: {{train,valid,test}}/{{{NORMAL},{ANOMALOUS}}}/)")
    found = sorted(p.name for p in split.iterdir() if not p.name.startswith("."))
    if not set(found) <= {NORMAL, ANOMALOUS} or NORMAL not in found:
        raise DataError(f"{split}: expected folders {NORMAL}/ and {ANOMALOUS}/, found {file_list(found) or 'nothing'}")
    entries = []
    for kind in (NORMAL, ANOMALOUS):
        anomalous = kind == ANOMALOUS
        masks = _masks(split / kind) if anomalous else None  # None: no pixel truth to pair
        for path in _images(split / kind):
            mask = None if masks is None else masks.pop(path.stem, None)
            if masks is not None and mask is None:
                bad.add(SPLITS[split.name], path, f"no mask in {kind}/{LABELS}/")
                continue
            entries.append(Entry(path, int(anomalous), kind, mask))
        for mask in (masks or {}).values():
            bad.add(SPLITS[split.name], mask, "mask without an image")
    return entries


def _images(kind: Path) -> list[Path]:
    """A kind folder's images: in its img/ sub-folder, or directly in it; never both."""
    if not kind.exists():
        return []
    files = [p for p in kind.iterdir() if p.is_file() and not p.name.startswith(".")]
    if (kind / IMAGES).is_dir():
        if files:
            raise DataError(f"{kind}: images both in {IMAGES}/ and beside it ({file_list(p.name for p in files)})")
        return image_files(kind / IMAGES)
    if (kind / LABELS).is_dir():
        raise DataError(f"{kind}: a {LABELS}/ folder without an {IMAGES}/ folder beside it")
    return image_files(kind)


def _masks(kind: Path) -> dict[str, Path] | None:
    """Ungood/label/'s masks by name; None for an image-level set (no label/ folder)."""
    if not (kind / LABELS).is_dir():
        return None
    return {path.stem: path for path in image_files(kind / LABELS)}

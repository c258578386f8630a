"""Folders of image files: MVTec AD categories and the generic layout.

    train/            normal images (MVTec AD: train/good/)
    test/<kind>/      good/ or normal/ for normal images, any other name is a defect type
    val/<kind>/       optional labelled validation split, laid out like test/
    ground_truth/ or masks/
                      pixel truth named after the image (`name.png` or `name_mask.png`),
                      in a <kind>/ sub-folder (MVTec AD) or all in one folder

Every image goes through `read_image`, so folders of DICOM files work too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from .base import ImageSet, Splits
from .checks import BadFiles, file_list
from .images import Entry, load_files

NORMAL_FOLDERS = ("good", "normal")
MASK_FOLDERS = ("ground_truth", "masks")
MASK_SUFFIX = "_mask"


def is_mvtec_category(path: Path) -> bool:
    return (path / "train" / "good").is_dir()


def mvtec_categories(root: str | Path) -> list[str]:
    """Names of the MVTec AD categories under a dataset root, sorted."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if d.is_dir() and is_mvtec_category(d))


def find_folder_dataset(path: Path, category: str | None) -> Path | None:
    """The folder holding train/: `path` itself, or its `category` when `path` is an MVTec AD
    root; None when `path` is neither."""
    if (path / "train").is_dir():
        return path
    categories = mvtec_categories(path)
    if not categories:
        return None
    if category is None:
        raise DataError(f"{path} is an MVTec AD root: set data.category to one of {', '.join(categories)}")
    if category not in categories:
        raise DataError(f"{path}: no MVTec AD category {category!r} (found {', '.join(categories)})")
    return path / category


def load_folder(root: Path, size: int | None, channels: int, options: DataConfig) -> Splits:
    train_dir = root / "train" / "good" if is_mvtec_category(root) else root / "train"
    train_entries = [Entry(path) for path in image_files(train_dir)]
    if not train_entries:
        raise DataError(f"{train_dir}: no training images")
    masks = MaskIndex.find(root)
    labelled = {name: _labelled_entries(root / name, masks) for name in ("test", "val") if (root / name).is_dir()}
    bad = BadFiles(options.on_bad_file)
    if masks is not None:
        masks.check_matches()
        for path in masks.unused():
            bad.add("test", path, "mask without an image")

    def load(split: str, entries: list[Entry], with_masks: bool) -> ImageSet:
        return load_files(entries, size, channels, split, bad, with_masks, options.hu_window)

    splits = Splits(
        train=load("train", train_entries, False),
        **{name: load(name, entries, masks is not None) for name, entries in labelled.items()},
    )
    bad.settle({"train": splits.train, "test": splits.test, "val": splits.val})
    if not len(splits.train):
        raise DataError(f"{train_dir}: no readable training images")
    for images in (splits.test, splits.val):
        if images is not None:
            images.notes.extend(_truth_notes(images))
    return splits


def image_files(folder: Path) -> list[Path]:
    """The files directly in `folder` (hidden ones left out), sorted; raises on a missing
    folder or two files with one name (a.png and a.jpg: which one is meant?)."""
    if not folder.is_dir():
        raise DataError(f"{folder}: missing folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    stems: dict[str, list[str]] = {}
    for path in files:
        stems.setdefault(path.stem, []).append(path.name)
    duplicates = [" and ".join(names) for names in stems.values() if len(names) > 1]
    if duplicates:
        raise DataError(f"{folder}: duplicate image names: {file_list(duplicates)}")
    return files


def _labelled_entries(folder: Path, masks: MaskIndex | None) -> list[Entry]:
    kinds = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    stray = [p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    if stray or not kinds:
        raise DataError(
            f"{folder}: expected only sub-folders good/ (or normal/) and one per "
            f"defect type{', found files ' + file_list(stray) if stray else ''}"
        )
    entries = []
    for kind_dir in kinds:
        normal = kind_dir.name in NORMAL_FOLDERS
        for path in image_files(kind_dir):
            mask = masks.claim(kind_dir.name, path) if masks is not None else None
            entries.append(Entry(path, 0 if normal else 1, "good" if normal else kind_dir.name, mask))
    return entries


def _truth_notes(images: ImageSet) -> list[str]:
    if images.masks is None:
        return ["no ground_truth/ or masks/ folder: no pixel-level truth"]
    missing = int(np.sum((images.labels == 1) & ~images.filled_masks()[1]))
    if not missing:
        return []
    return [f"{missing} anomalous image(s) without a mask: pixel metrics use only images with masks"]


class MaskIndex:
    """Mask files keyed by (kind folder or None, image name without suffix), each claimed by
    the images it matches."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.files: dict[tuple[str | None, str], Path] = {}
        self.claims: dict[Path, list[Path]] = {}
        kinds = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
        for kind_dir in [folder, *kinds]:
            kind = None if kind_dir == folder else kind_dir.name
            for path in image_files(kind_dir):
                key = (kind, path.stem.removesuffix(MASK_SUFFIX))
                if key in self.files:
                    raise DataError(f"{kind_dir}: two masks for image {key[1]}: {self.files[key].name} and {path.name}")
                self.files[key] = path

    @classmethod
    def find(cls, root: Path) -> MaskIndex | None:
        folders = [root / name for name in MASK_FOLDERS if (root / name).is_dir()]
        if len(folders) > 1:
            raise DataError(f"{root}: both ground_truth/ and masks/ exist; keep one")
        return cls(folders[0]) if folders else None

    def claim(self, kind: str, image: Path) -> Path | None:
        mask = self.files.get((kind, image.stem)) or self.files.get((None, image.stem))
        if mask is not None:
            self.claims.setdefault(mask, []).append(image)
        return mask

    def check_matches(self) -> None:
        shared = [
            f"{mask.name} ({' and '.join(str(i) for i in images)})"
            for mask, images in self.claims.items()
            if len(images) > 1
        ]
        if shared:
            raise DataError(
                f"{self.folder}: masks matching several images (put masks in <kind>/ sub-folders): {file_list(shared)}"
            )

    def unused(self) -> list[Path]:
        return [path for path in self.files.values() if path not in self.claims]

"""The in-memory form every data source produces.

Images are kept as uint8 at the working resolution (the model's size unless
`data.resolution` says otherwise; decoded only once); they become
float tensors in [-1, 1] per batch, on the training device (`nn.tensors`). No PyTorch here:
reading data for the ONNX runtime path must not need it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .medical import Geometry

SLICE_MARK = "#z="  # paths of volume slices: "<volume file or folder>#z=<slice index>"
# Working-size pixels of images handled at a time where a whole set's maps need not fit in
# memory (scoring, calibration, the metrics' histograms): 16 MiB per float32 map array.
CHUNK_PIXELS = 1 << 22


def row_chunks(rows: np.ndarray, image_size: tuple[int, int]) -> list[np.ndarray]:
    """`rows` in runs of at most CHUNK_PIXELS pixels of images of `image_size` (height,
    width), one image at the least."""
    step = max(1, CHUNK_PIXELS // max(int(np.prod(image_size)), 1))
    return [rows[start : start + step] for start in range(0, len(rows), step)]


@dataclass
class ImageSet:
    images: np.ndarray  # N x H x W x C uint8 at the working resolution (config.working_size)
    labels: np.ndarray  # N int64: 0 normal, 1 anomalous
    paths: list[str]  # where each image came from (file, or file#slice for volumes)
    kinds: list[str]  # "good" for normal images, else the defect type / class name
    sizes: np.ndarray  # N x 2 int: original (height, width), for outputs at that size
    masks: np.ndarray | None = None  # N x H x W bool pixel truth, or None: no pixel truth
    has_mask: np.ndarray | None = None  # N bool: which rows of `masks` are real truth
    notes: list[str] = field(default_factory=list)  # warnings for the user (skipped files, ...)
    # Slices of volumes: each volume's geometry by its source path (the part of `paths`
    # before "#z="), and where known the lung, N x S x S bool (the region that is scored).
    volumes: dict[str, Geometry] = field(default_factory=dict)
    lung: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError("ImageSet.images must be an N x H x W x C uint8 array")
        if not (len(self.labels) == len(self.paths) == len(self.kinds) == len(self.sizes) == n):
            raise ValueError("ImageSet fields must all have one entry per image")
        if self.masks is not None:
            if self.masks.shape != self.images.shape[:3]:
                raise ValueError("ImageSet.masks must be N x H x W, matching the images")
            if self.has_mask is None:
                self.has_mask = np.ones(n, dtype=bool)
        if self.lung is not None and self.lung.shape != self.images.shape[:3]:
            raise ValueError("ImageSet.lung must be N x S x S, matching the images")

    def __len__(self) -> int:
        return len(self.images)

    def volume_rows(self) -> dict[str, np.ndarray]:
        """The rows of each volume's slices, by source path, in slice order."""
        rows: dict[str, list[tuple[int, int]]] = {}
        for i, path in enumerate(self.paths):
            source, mark, z = path.rpartition(SLICE_MARK)
            if mark and source in self.volumes:
                rows.setdefault(source, []).append((int(z), i))
        return {source: np.array([i for _, i in sorted(pairs)]) for source, pairs in rows.items()}

    def subset(self, index) -> ImageSet:
        index = np.asarray(index)
        pick = lambda seq: [seq[i] for i in index]  # noqa: E731
        paths = pick(self.paths)
        sources = {path.rpartition(SLICE_MARK)[0] for path in paths}
        return ImageSet(
            images=self.images[index],
            labels=self.labels[index],
            paths=paths,
            kinds=pick(self.kinds),
            sizes=self.sizes[index],
            masks=None if self.masks is None else self.masks[index],
            has_mask=None if self.has_mask is None else self.has_mask[index],
            notes=list(self.notes),
            volumes={s: g for s, g in self.volumes.items() if s in sources},
            lung=None if self.lung is None else self.lung[index],
        )

    def filled_masks(self) -> tuple[np.ndarray, np.ndarray]:
        """(masks, has_mask), empty where the set has none: images without a mask have no
        pixel truth. How sets with and without masks join (`concat`, the slice cache)."""
        if self.masks is None:
            return np.zeros(self.images.shape[:3], bool), np.zeros(len(self), bool)
        assert self.has_mask is not None  # set with the masks (__post_init__)
        return self.masks, self.has_mask

    def filled_lung(self) -> np.ndarray:
        """The lung, or every pixel where the set has none: images without a lung are scored whole."""
        return self.lung if self.lung is not None else np.ones(self.images.shape[:3], bool)

    @staticmethod
    def concat(sets: list[ImageSet]) -> ImageSet:
        sets = [s for s in sets if len(s)] or sets[:1]  # an empty set's image size may be a placeholder
        masks = has_mask = None
        if any(s.masks is not None for s in sets):
            masks, has_mask = (np.concatenate(part) for part in zip(*(s.filled_masks() for s in sets)))
        return ImageSet(
            images=np.concatenate([s.images for s in sets]),
            labels=np.concatenate([s.labels for s in sets]),
            paths=[p for s in sets for p in s.paths],
            kinds=[k for s in sets for k in s.kinds],
            sizes=np.concatenate([s.sizes for s in sets]),
            masks=masks,
            has_mask=has_mask,
            notes=[n for s in sets for n in s.notes],
            volumes={k: g for s in sets for k, g in s.volumes.items()},
            lung=None if all(s.lung is None for s in sets) else np.concatenate([s.filled_lung() for s in sets]),
        )


@dataclass
class Splits:
    """What a data source yields. `val` is None when the source has no validation split; the
    model then holds out `data.val_fraction` of the training normals for calibration."""

    train: ImageSet  # normal images only
    test: ImageSet | None = None
    val: ImageSet | None = None


def __getattr__(name: str):
    # to_tensor / to_uint8 live with PyTorch in nn.tensors; imported from here on first use only.
    if name in ("to_tensor", "to_uint8"):
        from ..nn import tensors

        return getattr(tensors, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

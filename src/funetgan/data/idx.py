"""MNIST-style IDX files (MNIST, Fashion-MNIST) in the one-class protocol: the training
images of class `normal_class` are the normal set; the whole test split is scored, every
other class being an anomaly."""

from __future__ import annotations

import gzip
import io
import math
import zlib
from pathlib import Path

import numpy as np

from ..bounds.memory import max_inflated, physical_memory
from ..config import DataConfig
from ..errors import DataError
from .base import ImageSet, Splits
from .images import fit_images

FASHION_CLASSES = (
    "tshirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
UNSIGNED_BYTE = 0x08


def find_idx(root: Path, split: str) -> tuple[Path, Path] | None:
    """(images, labels) files of `split` ("train" or "t10k"), plain or gzipped."""
    found = []
    for name in (f"{split}-images-idx3-ubyte", f"{split}-labels-idx1-ubyte"):
        files = [root / name, root / f"{name}.gz"]
        found.append(next((f for f in files if f.is_file()), None))
    images, labels = found
    if images is None and labels is None:
        return None
    if images is None or labels is None:
        raise DataError(f"{root}: {split} IDX images and labels must both be present")
    return images, labels


def has_idx(root: Path) -> bool:
    return any(root.glob("*-images-idx3-ubyte*"))


def read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes -> array of the shape its header gives. Reads no more
    than the header promises (and one byte to tell a longer file): a small gzipped file may
    inflate to gigabytes, and is refused without being inflated."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as file:
            shape = _header(path, file)
            promised = math.prod(shape)
            if promised > min(max_inflated(path), physical_memory()):
                raise DataError(
                    f"{path}: header says {shape}, {promised} values, more than the file can hold "
                    f"or this machine's memory (truncated, or a damaged header?)"
                )
            data = file.read(promised + 1)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: unreadable IDX file ({err})") from None
    if len(data) != promised:
        more = "more" if len(data) > promised else f"{len(data)}"
        raise DataError(f"{path}: header says {shape} but holds {more} values (truncated or damaged?)")
    return np.frombuffer(data, np.uint8).reshape(shape)


def _header(path: Path, file: io.BufferedIOBase) -> tuple[int, ...]:
    """The shape in an IDX header of unsigned bytes."""
    magic = file.read(4)
    if len(magic) < 4 or magic[:2] != b"\0\0" or magic[2] != UNSIGNED_BYTE:
        raise DataError(f"{path}: not an IDX file of unsigned bytes")
    dimensions = file.read(4 * magic[3])
    if len(dimensions) < 4 * magic[3]:
        raise DataError(f"{path}: IDX header cut short (truncated?)")
    return tuple(int(d) for d in np.frombuffer(dimensions, ">u4"))


def load_idx(root: Path, size: int | None, channels: int, options: DataConfig) -> Splits:
    normal = options.normal_class
    if normal is None:
        raise DataError(f"{root}: one-class IDX data needs data.normal_class (the class taken as normal, e.g. 0)")
    train_files = find_idx(root, "train")
    if train_files is None:
        raise DataError(f"{root}: no train-images-idx3-ubyte[.gz] / train-labels-idx1-ubyte[.gz]")
    images, labels = read_pair(*train_files)
    if normal not in labels:
        raise DataError(
            f"{root}: data.normal_class={normal} not among the training labels {sorted(set(labels.tolist()))}"
        )
    names = FASHION_CLASSES if "fashion" in root.resolve().name.lower() else None
    normals = np.flatnonzero(labels == normal)
    splits = Splits(train=image_set(images, labels, normals, normal, names, train_files[0], size, channels))
    test_files = find_idx(root, "t10k")
    if test_files is not None:
        images, labels = read_pair(*test_files)
        every = np.arange(len(labels))
        splits.test = image_set(images, labels, every, normal, names, test_files[0], size, channels)
    return splits


def read_pair(images_file: Path, labels_file: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_idx(images_file), read_idx(labels_file)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(
            f"{images_file}, {labels_file}: expected N images and N labels, "
            f"got shapes {images.shape} and {labels.shape}"
        )
    return images, labels.astype(np.int64)


def image_set(
    images: np.ndarray,
    labels: np.ndarray,
    index: np.ndarray,
    normal: int,
    names: tuple[str, ...] | None,
    source: Path,
    size: int | None,
    channels: int,
) -> ImageSet:
    """The images at `index` of one IDX split."""
    images, labels = images[index], labels[index]
    anomalous = labels != normal
    kinds = [names[c] if names else str(c) for c in labels.tolist()]
    return ImageSet(
        images=fit_images(images[..., None], size, channels),
        labels=anomalous.astype(np.int64),
        paths=[f"{source}#{i}" for i in index.tolist()],
        kinds=[kind if a else "good" for kind, a in zip(kinds, anomalous)],
        sizes=np.tile(images.shape[1:3], (len(images), 1)),
    )

"""Problems with input files, reported in one line before any training starts."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import TypeVar

import numpy as np
from PIL import UnidentifiedImageError

from ..errors import DataError, MissingExtra
from ..scoring.tiling import patches_per_image
from .base import ImageSet

MAX_LISTED = 10
T = TypeVar("T")


def file_list(items: Iterable[str]) -> str:
    """'a, b, c' with at most MAX_LISTED items, then '... and N more'."""
    items = list(items)
    listed = ", ".join(str(item) for item in items[:MAX_LISTED])
    more = len(items) - MAX_LISTED
    return f"{listed}, ... and {more} more" if more > 0 else listed


def describe(err: Exception) -> str:
    """A short reason for a file that failed to decode."""
    if isinstance(err, UnidentifiedImageError):
        return "not an image, or corrupt"
    if isinstance(err, DataError):
        return str(err)
    if isinstance(err, OSError) and err.strerror:
        return f"unreadable: {err.strerror}"
    return " ".join(f"unreadable: {type(err).__name__}: {err}".split())[:120]  # one line


class BadFiles:
    """Collects per-file problems (unreadable, not an image, mask mismatch, ...) while a
    dataset is read, then applies `data.on_bad_file`: raise listing them, or skip them with
    a note on their split and one warning."""

    def __init__(self, policy: str):
        if policy not in ("error", "skip"):
            raise DataError(f"data.on_bad_file must be 'error' or 'skip', got {policy!r}")
        self.policy = policy
        self.found: list[tuple[str, str, str]] = []  # (split, file, problem)

    def add(self, split: str, file: object, problem: str) -> None:
        self.found.append((split, str(file), problem))

    def attempt(self, split: str, file: object, read: Callable[[], T]) -> T | None:
        """`read()`, or None with the failure recorded against `file`."""
        try:
            return read()
        except MissingExtra:
            raise
        except Exception as err:  # any decoder failure is a problem with that one file
            self.add(split, file, describe(err))
            return None

    def settle(self, splits: dict[str, ImageSet | None]) -> None:
        if not self.found:
            return
        self.found.sort()  # files may fail on worker threads, in any order
        described = [f"{file} ({problem})" for _, file, problem in self.found]
        if self.policy == "error":
            raise DataError(f"{len(self.found)} bad file(s) (data.on_bad_file=skip skips them): {file_list(described)}")
        for name, images in splits.items():
            mine = [d for (split, _, _), d in zip(self.found, described) if split == name]
            if mine and images is not None:
                images.notes.append(f"skipped {len(mine)} bad file(s): {file_list(mine)}")
        warnings.warn(f"skipped {len(self.found)} bad file(s); they are listed in the data notes", stacklevel=3)


def held_out(n_train: int, val_fraction: float) -> int:
    """How many training normals are held out for calibration when there is no validation split."""
    return max(1, round(val_fraction * n_train))


def fit_batch(
    train: ImageSet, rows: np.ndarray | None, batch_size: int, world_size: int = 1, patch: int | None = None
) -> tuple[int, str | None]:
    """The batch to train with and, when it is not `batch_size`, a note saying why (the one
    rule; the CLI applies it before writing anything). `batch_size` is the global batch, split
    evenly across `world_size` processes, as other trainers mean it: it is rounded down to a
    multiple of the processes (one image each at the least) and lowered to what the training
    images `rows` of `train` (None: all; the rest are held out for validation) fill, so small
    sets train instead of being refused. Images larger than the model's `patch` count once per
    patch they hold (`batches.BatchSource` draws that many patches from each per epoch). Raises
    only when a process would get no image at all."""
    count = len(train) if rows is None else len(rows)
    height, width = train.images.shape[1:3]
    draws = patches_per_image(height, width, patch) if patch else 1
    per_process = count * draws // world_size  # what one process draws in an epoch
    kept = "" if rows is None else f" after holding out {len(train) - count} for validation"
    images = f"only {count} training image(s)" + (f" ({count * draws} patches)" if draws > 1 else "") + kept
    if per_process < 1:
        fewer = f", fewer than the {world_size} processes" if world_size > 1 else ""
        raise DataError(f"{images}{fewer}: add images" + (" or use fewer processes" if fewer else ""))
    share = max(1, min(batch_size // world_size, per_process))
    fitted = share * world_size
    if fitted == batch_size:
        return fitted, None
    if share < batch_size // world_size:
        why = images + (f", {per_process} per process on {world_size} processes" if world_size > 1 else "")
    elif batch_size < world_size:
        why = f"at least one image for each of the {world_size} processes"
    else:
        why = f"an equal share ({share}) for each of the {world_size} processes"
    return fitted, f"batch_size {batch_size} {'raised' if fitted > batch_size else 'lowered'} to {fitted}: {why}"

"""A slice cache for volume sets (lung CT, MSD): the uint8 slices at the working size, with
their masks, in memory-mapped files, so a set of hundreds of volumes is decoded once and
trained and tested on without being held in memory (`data.cache_dir`).

One folder per dataset and pixel-changing settings, `CACHE_DIR/<key>/`:

    index.json             paths, labels, kinds, sizes, notes, volume geometry, row counts,
                           and the source fingerprint (every file's path, size and mtime)
    <split>.<array>.u8     train/test images, masks, has_mask, lung: raw C-order arrays

A build decodes one volume at a time (memory: one volume) into a temporary folder that is
renamed into place only when complete: an interrupted build leaves no cache. A build holds
`CACHE_DIR/.<key>.lock` (`flock`), so processes that start together build the cache once. A
changed, added or removed source file changes the fingerprint, and the next load rebuilds.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from ..files import WriteError, atomic_write_text
from ..runlock import waiting_lock
from .base import ImageSet, Splits
from .medical import Geometry

VERSION = 1  # bump when the layout or the slice decoding changes
SPLITS = ("train", "test")
ARRAYS = {"images": np.uint8, "masks": np.bool_, "has_mask": np.bool_, "lung": np.bool_}
INDEX = "index.json"

# read(add): decodes the volumes, calling add(split, slices) once per volume.
Reader = Callable[[Callable[[str, ImageSet], None]], None]


def cached_splits(
    root: Path,
    layout: str,
    size: int | None,
    channels: int,
    options: DataConfig,
    read: Reader,
    settle: Callable[[Splits], None],
) -> Splits:
    """The splits of the volume set at `root`, from the cache when it is current, else
    decoded by `read`, written to the cache and mapped from there. `settle(splits)` runs
    after a build, before the index is written (it adds notes, or raises for bad files)."""
    resolved = root.resolve()
    key = _key(str(resolved), resolved.name, layout, size, channels, options)
    return _cached(_cache_folder(options), key, [root], read, settle, [size or 0, size or 0, channels])


def cached_volumes(
    sources: list[Path],
    size: int | None,
    channels: int,
    options: DataConfig,
    read: Reader,
    settle: Callable[[Splits], None],
) -> ImageSet:
    """`cached_splits` for a list of volume files and DICOM series folders (the volumes
    `predict` scores): one cache folder per list, its slices in the "test" split."""
    resolved = [source.resolve() for source in sources]
    name = resolved[0].name + (f"+{len(sources) - 1}" if len(sources) > 1 else "")
    key = _key([str(source) for source in resolved], name, "volumes", size, channels, options)
    test = _cached(_cache_folder(options), key, sources, read, settle, [size or 0, size or 0, channels]).test
    assert test is not None  # a cache holds both splits (`SPLITS`)
    return test


def _cache_folder(options: DataConfig) -> Path:
    assert options.cache_dir is not None  # the caller's choice: the cache only with data.cache_dir
    return Path(options.cache_dir)


def _cached(
    cache: Path, key: str, sources: list[Path], read: Reader, settle: Callable[[Splits], None], empty_shape: list[int]
) -> Splits:
    """The cache `key`, built first when it is missing or stale. Processes that start together
    (torchrun's ranks, jobs sharing a cache) build it once: the build holds the cache's lock,
    and the others wait for it, then map what it built. A current cache is opened without the
    lock (a read-only one serves too): a build replaces only a stale or damaged one, which an
    unlocked open rejects."""
    folder = cache / key
    fingerprint = source_fingerprint(sources, cache)
    splits = _open(folder, fingerprint)
    if splits is None:
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise WriteError(cache, err) from None
        with waiting_lock(cache / f".{key}.lock"):
            splits = _open(folder, fingerprint)  # built while this process waited for the lock
            if splits is None:
                _build(folder, fingerprint, read, settle, empty_shape)
                splits = _open(folder, fingerprint)
    if splits is None:  # changed again while it was built, or unreadable
        names = ", ".join(str(source) for source in sources)
        raise DataError(f"{folder}: the slice cache just built cannot be read back; is {names} being changed?")
    return splits


def source_fingerprint(sources: list[Path], cache: Path) -> str:
    """A digest of every file of `sources` (files, or folders: every file under them but
    not in `cache`, which may lie inside): relative path, size, modification time."""
    digest = hashlib.sha256()
    cache = cache.resolve()
    for source in sources:
        files = sorted(source.rglob("*")) if source.is_dir() else [source]
        for path in files:
            if path.is_file() and not path.resolve().is_relative_to(cache):
                stat = path.stat()
                name = path.relative_to(source) if source.is_dir() else path.name
                digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _key(source: str | list[str], name: str, layout: str, size: int | None, channels: int, options: DataConfig) -> str:
    """The cache folder's name: the data (`source`) and every setting that changes the slices."""
    settings = [
        VERSION,
        source,
        layout,
        size,
        channels,
        list(options.hu_window),
        options.test_fraction,
        options.split_seed,
        options.on_bad_file,
    ]
    if options.lung_threshold is not None:  # appended only when set: caches built without it stay valid
        settings.append(options.lung_threshold)
    digest = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]
    return f"{name}-{digest}"


def _open(folder: Path, fingerprint: str) -> Splits | None:
    """The cached splits, or None when the cache is missing, stale or damaged (then rebuilt)."""
    try:
        index = json.loads((folder / INDEX).read_text())
        if index.get("version") != VERSION or index.get("fingerprint") != fingerprint:
            return None
        return Splits(**{split: _set(folder, split, index[split]) for split in SPLITS})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _set(folder: Path, split: str, entry: dict) -> ImageSet:
    n, shape = len(entry["paths"]), tuple(entry["shape"])

    def array(name: str) -> np.ndarray:
        full = (n, *shape) if name == "images" else (n, *shape[:2]) if name != "has_mask" else (n,)
        if n == 0:  # an empty file cannot be mapped
            return np.zeros(full, ARRAYS[name])
        # Copy-on-write: writable for torch, never written back to the cache.
        return np.memmap(folder / f"{split}.{name}.u8", ARRAYS[name], "c", shape=full)

    def optional(name: str) -> np.ndarray | None:
        return array(name) if name in entry["arrays"] else None

    return ImageSet(
        images=array("images"),
        labels=np.array(entry["labels"], np.int64),
        paths=entry["paths"],
        kinds=entry["kinds"],
        sizes=np.array(entry["sizes"], np.int64).reshape(n, 2),
        masks=optional("masks"),
        has_mask=optional("has_mask"),
        notes=entry["notes"],
        lung=optional("lung"),
        volumes={source: Geometry(np.array(g["affine"]), tuple(g["shape"])) for source, g in entry["volumes"].items()},
    )


def _build(
    folder: Path, fingerprint: str, read: Reader, settle: Callable[[Splits], None], empty_shape: list[int]
) -> None:
    """Decode into a temporary folder beside `folder`, then rename it into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    building = folder.with_name(f".{folder.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    building.mkdir()
    try:
        writers = {split: _SplitWriter(building, split) for split in SPLITS}
        read(lambda split, slices: writers[split].add(slices))
        entries = {split: writer.close(empty_shape) for split, writer in writers.items()}
        splits = Splits(**{split: _set(building, split, entry) for split, entry in entries.items()})
        settle(splits)  # notes about skipped files go into the index with the rest
        for split, entry in entries.items():
            entry["notes"] = getattr(splits, split).notes
        atomic_write_text(building / INDEX, json.dumps({"version": VERSION, "fingerprint": fingerprint, **entries}))
        _replace(building, folder)
    except OSError as err:
        shutil.rmtree(building, ignore_errors=True)
        raise err if isinstance(err, WriteError) else WriteError(building, err) from None
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise


def _replace(building: Path, folder: Path) -> None:
    """Put the complete `building` folder at `folder` (under the cache's lock); a stale cache
    there is removed (processes still mapping its files keep reading them until they close)."""
    if folder.exists():
        stale = folder.with_name(f".{folder.name}.{secrets.token_hex(4)}.stale")
        folder.rename(stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        building.rename(folder)
    except OSError:
        if not folder.exists():
            raise
        shutil.rmtree(building, ignore_errors=True)  # built meanwhile by a process a lockless file system let in


class _SplitWriter:
    """Appends each volume's slices to one split's array files."""

    def __init__(self, folder: Path, split: str):
        self.folder, self.split = folder, split
        # Open until `close`: one volume at a time is appended to each.
        self.files = {name: open(folder / f"{split}.{name}.u8", "wb") for name in ARRAYS}  # noqa: SIM115
        self.entry: dict = {
            "paths": [],
            "labels": [],
            "kinds": [],
            "sizes": [],
            "volumes": {},
            "notes": [],
            "shape": None,
        }
        self.present = {"masks": False, "lung": False}

    def add(self, slices: ImageSet) -> None:
        shape = list(slices.images.shape[1:])
        if self.entry["shape"] is None:
            self.entry["shape"] = shape
        elif shape != self.entry["shape"]:
            raise DataError(
                f"{slices.paths[0]}: slices of {shape[:2]} pixels, others of "
                f"{self.entry['shape'][:2]} (set data.resolution)"
            )
        masks, has_mask = slices.filled_masks()  # joined as ImageSet.concat joins sets
        lung = slices.filled_lung()
        self.present["masks"] |= slices.masks is not None
        self.present["lung"] |= slices.lung is not None
        for name, values in (("images", slices.images), ("masks", masks), ("has_mask", has_mask), ("lung", lung)):
            self.files[name].write(np.ascontiguousarray(values, ARRAYS[name]).tobytes())
        self.entry["paths"] += slices.paths
        self.entry["labels"] += slices.labels.tolist()
        self.entry["kinds"] += slices.kinds
        self.entry["sizes"] += slices.sizes.tolist()
        self.entry["notes"] += slices.notes
        self.entry["volumes"].update(
            {
                source: {"affine": g.affine.tolist(), "shape": [int(v) for v in g.shape]}
                for source, g in slices.volumes.items()
            }
        )

    def close(self, empty_shape: list[int]) -> dict:
        for handle in self.files.values():
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        entry = self.entry
        entry["shape"] = entry["shape"] or empty_shape
        arrays = ["images"] + [name for name, present in self.present.items() if present]
        entry["arrays"] = arrays + (["has_mask"] if self.present["masks"] else [])
        for name in set(ARRAYS) - set(entry["arrays"]):
            (self.folder / f"{self.split}.{name}.u8").unlink()
        return entry

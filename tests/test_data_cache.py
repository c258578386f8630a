"""The slice cache of volume sets (data/cache.py): built once, memory-mapped, the same
splits as decoding into memory, rebuilt when a source file changes, never half-written."""

import os
from pathlib import Path

import numpy as np
import pytest

from funetgan.config import DataConfig
from funetgan.data import ct, load_dataset
from funetgan.errors import DataError

pytest.importorskip("nibabel")


@pytest.fixture
def data(tmp_path, ct_dataset, save_nifti):
    root = ct_dataset(tmp_path / "ct", volumes=4, slices=4, lesion_from=2)
    lung = np.zeros((8, 8, 4), np.uint8)
    lung[1:7, 1:7, 1:] = 1  # slice 0 has no lung: left out
    for v in range(4):
        save_nifti(root / "lung_mask" / f"case{v}.nii.gz", lung)
    return root


def options(tmp_path, **kwargs):
    return DataConfig(cache_dir=str(tmp_path / "cache"), test_fraction=0.5, split_seed=3, **kwargs)


def cache_folders(tmp_path):
    """The cache's folders (built, being built or stale), its lock files aside."""
    return sorted(p.name for p in (tmp_path / "cache").iterdir() if p.is_dir())


def test_cached_splits_equal_the_in_memory_ones_and_are_memory_mapped(data, tmp_path):
    memory = load_dataset(data, 8, 1, DataConfig(test_fraction=0.5, split_seed=3))
    cached = load_dataset(data, 8, 1, options(tmp_path))
    for split in ("train", "test"):
        a, b = getattr(memory, split), getattr(cached, split)
        assert isinstance(b.images, np.memmap) and isinstance(b.lung, np.memmap)
        for field in ("images", "labels", "sizes", "lung"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
        assert a.paths == b.paths and a.kinds == b.kinds and a.notes == b.notes
        assert a.volumes.keys() == b.volumes.keys()
        for source, geometry in a.volumes.items():
            np.testing.assert_array_equal(geometry.affine, b.volumes[source].affine)
            assert geometry.shape == b.volumes[source].shape
    assert cached.train.masks is None and len(cached.train) == 2  # slice 1 of 2 training volumes
    np.testing.assert_array_equal(memory.test.masks, cached.test.masks)
    assert cached.test.has_mask.all() and cached.test.labels.tolist() == [0, 1, 1] * 2


def test_a_second_load_decodes_nothing(data, tmp_path, monkeypatch):
    first = load_dataset(data, 8, 1, options(tmp_path))

    def fail(*args):
        raise AssertionError("decoded again")

    monkeypatch.setattr(ct, "read_scan", fail)
    again = load_dataset(data, 8, 1, options(tmp_path))
    np.testing.assert_array_equal(first.test.images, again.test.images)
    assert len(cache_folders(tmp_path)) == 1
    # a setting that changes the slices is another cache
    monkeypatch.undo()
    load_dataset(data, 8, 1, options(tmp_path, hu_window=(-900.0, 300.0)))
    assert len(cache_folders(tmp_path)) == 2


def test_a_changed_source_file_rebuilds(data, tmp_path, save_nifti):
    before = load_dataset(data, 8, 1, options(tmp_path)).test
    scan = np.full((8, 8, 4), 400, np.int16)  # every test scan white now
    for source in before.volumes:
        save_nifti(Path(source), scan)
        os.utime(source, ns=(0, 0))  # a different mtime, even on a coarse clock
    after = load_dataset(data, 8, 1, options(tmp_path)).test
    assert (after.images == 255).all() and not (before.images == 255).all()
    assert len(cache_folders(tmp_path)) == 1  # replaced, not added


def test_an_interrupted_build_leaves_no_cache(data, tmp_path, monkeypatch):
    real = ct.read_scan
    calls = []

    def interrupted(path):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(path)

    monkeypatch.setattr(ct, "read_scan", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_dataset(data, 8, 1, options(tmp_path))
    assert cache_folders(tmp_path) == []
    monkeypatch.undo()
    assert len(load_dataset(data, 8, 1, options(tmp_path)).test) == 6


def test_bad_files_stop_the_build_or_are_noted_in_the_cache(data, tmp_path):
    (data / "ct_scans" / "case1.nii.gz").write_bytes(b"not a volume")
    with pytest.raises(DataError, match="case1"):
        load_dataset(data, 8, 1, options(tmp_path))
    assert cache_folders(tmp_path) == []
    with pytest.warns(UserWarning):
        first = load_dataset(data, 8, 1, options(tmp_path, on_bad_file="skip"))
    again = load_dataset(data, 8, 1, options(tmp_path, on_bad_file="skip"))
    assert any("case1" in note for note in again.test.notes + again.train.notes)
    assert first.train.notes == again.train.notes and first.test.notes == again.test.notes


def test_a_cache_inside_the_dataset_is_not_part_of_its_fingerprint(data, monkeypatch):
    settings = DataConfig(cache_dir=str(data / "cache"), test_fraction=0.5, split_seed=3)
    load_dataset(data, 8, 1, settings)
    monkeypatch.setattr(ct, "read_scan", lambda path: pytest.fail("decoded again"))
    load_dataset(data, 8, 1, settings)


def test_a_damaged_cache_is_rebuilt(data, tmp_path):
    expected = np.array(load_dataset(data, 8, 1, options(tmp_path)).test.images)  # a copy: the file is cut
    (name,) = cache_folders(tmp_path)
    folder = tmp_path / "cache" / name
    (folder / "test.images.u8").write_bytes(b"\0")  # shorter than the index says
    np.testing.assert_array_equal(load_dataset(data, 8, 1, options(tmp_path)).test.images, expected)


LOAD = """
import hashlib, os, sys, time
from funetgan.config import DataConfig
from funetgan.data import ct, load_dataset

real = ct.read_scan

def slow(path):  # a slow decoder, so that every process arrives while the first still builds
    with open(sys.argv[2], "a") as log:
        log.write(f"{os.getpid()}\\n")
    time.sleep(0.2)
    return real(path)

ct.read_scan = slow
splits = load_dataset(sys.argv[1], 8, 1, DataConfig(cache_dir=sys.argv[3], test_fraction=0.5, split_seed=3))
print(hashlib.sha256(splits.train.images.tobytes() + splits.test.images.tobytes()).hexdigest())
"""


def test_processes_starting_together_build_the_cache_once_and_all_map_it(data, tmp_path):
    """As torchrun's ranks do: one builds (under a lock), the others wait and map what it built."""
    import subprocess
    import sys

    log, cache = tmp_path / "decoded.txt", tmp_path / "cache"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", LOAD, str(data), str(log), str(cache)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [process.communicate(timeout=120) for process in processes]
    assert all(process.returncode == 0 for process in processes), [err[-2000:] for _, err in results]
    assert len({out for out, _ in results}) == 1  # the same slices everywhere
    decoders = log.read_text().split()
    assert len(decoders) == 4 and len(set(decoders)) == 1  # 4 volumes, decoded by one process
    assert len(cache_folders(tmp_path)) == 1  # no build folder left behind

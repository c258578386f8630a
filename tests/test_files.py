"""Atomic, durable writes and the errors they give."""

import os

import pytest

from funetgan import files
from funetgan.files import atomic_write_text


def test_atomic_write_never_touches_the_process_umask(tmp_path, monkeypatch):
    """Reading the umask means setting it (to 0, briefly): not thread-safe."""
    old = os.umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", lambda *_: pytest.fail("os.umask called"))
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        monkeypatch.undo()
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "a.txt").read_text() == "x"


def test_data_and_folder_are_flushed_around_the_rename(tmp_path, monkeypatch):
    """A power cut leaves the old file or the new one: the data reaches the disk before the
    rename, and the folder entry after it."""
    events = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(
        os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))), fsync(fd))
    )
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(b))), replace(a, b)))
    atomic_write_text(tmp_path / "a.txt", "x")
    (kind, first), second, third = events
    assert kind == "fsync" and first.startswith(str(tmp_path / ".a.txt."))
    assert second == ("replace", str(tmp_path / "a.txt")) and third == ("fsync", str(tmp_path))


def _fail_with(number):
    def write(tmp):
        tmp.write_text("partial")
        raise OSError(number, os.strerror(number))

    return write


@pytest.mark.parametrize("number, words", [(28, "No space left on device"), (13, "Permission denied")])
def test_a_failed_write_names_the_file_and_keeps_the_old_one(tmp_path, number, words):
    atomic_write_text(tmp_path / "a.txt", "old")
    with pytest.raises(files.WriteError, match=rf"^{tmp_path / 'a.txt'}: cannot write \({words}\)$"):
        files.atomic_write(tmp_path / "a.txt", _fail_with(number))
    assert (tmp_path / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]  # no temporary file left


def test_a_failed_append_names_the_file(tmp_path):
    with pytest.raises(files.WriteError, match=r"missing/log.jsonl: cannot write \(No such file or directory\)"):
        files.append_line(tmp_path / "missing" / "log.jsonl", "{}")


def test_a_full_disk_during_a_checkpoint_is_one_line_and_leaves_no_file(tmp_path, tmpfs):
    import torch

    from funetgan.training import checkpoint

    small_filesystem = tmpfs(tmp_path / "small", "size=64k")
    checkpoint.save(small_filesystem / "c.safetensors", {"w": torch.zeros(10)}, {"step": 1})
    with pytest.raises(files.WriteError, match=r"c.safetensors: cannot write \(No space left on device\)$"):
        checkpoint.save(small_filesystem / "c.safetensors", {"w": torch.zeros(100_000)}, {"step": 2})
    assert checkpoint.load(small_filesystem / "c.safetensors")[1] == {"step": 1}  # the earlier one, intact
    assert [p.name for p in small_filesystem.iterdir()] == ["c.safetensors"]


def test_safe_names_are_unique_case_insensitively_and_file_system_safe():
    from funetgan.files import safe_names

    assert safe_names(["a b/c", "A_b_c", "", "..x.."], "image") == ["a_b_c", "A_b_c-2", "image", "x"]

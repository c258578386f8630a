"""Atomic, durable file writes: a crash, Ctrl-C or power cut leaves the previous file or the
new one, never a half-written or empty one; a failed write names the file."""

from __future__ import annotations

import errno
import os
import re
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import FunetganError

# What a run folder holds (the model and its trainer write them, the CLI guards them; no PyTorch
# needed to name them).
MODEL_FILE = "model.safetensors"
CHECKPOINT_FILE = "checkpoint.safetensors"
LOG_FILE = "log.jsonl"  # training's losses, one JSON line per log step


class WriteError(FunetganError, OSError):
    """A file could not be written (no space, permission denied, read-only folder, ...); the
    message names the file and the reason in one line. Expected: a full disk is the user's to fix."""

    def __init__(self, path: Path, err: OSError):
        super().__init__(f"{path}: cannot write ({reason(err)})")


def reason(err: OSError) -> str:
    """The operating system's words for a failed write."""
    return err.strerror or " ".join(str(err).split())


def os_error(err: Exception) -> OSError:
    """An OSError for a library's I/O error reported as text with "os error N" in it
    (safetensors), so that it is reported like any other."""
    code = re.search(r"os error (\d+)", str(err))
    number = int(code.group(1)) if code else errno.EIO
    return OSError(number, os.strerror(number))


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> None:
    """Call `write(tmp_path)` on a temporary file in the same folder, flush it to disk, rename
    it onto `path` and flush the folder, so that the rename itself survives a power cut.
    An OSError on the way is reported as a `WriteError`; `path` is untouched then."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _new_temporary(path)
    except OSError as err:
        raise WriteError(path, err) from None
    try:
        write(tmp)
        _fsync(tmp, os.O_RDONLY)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise WriteError(path, err) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno != errno.EINVAL:  # EINVAL: a file system that cannot sync folders
            raise WriteError(path, err) from None
    finally:
        os.close(fd)


def _new_temporary(path: Path) -> Path:
    """An empty new file beside `path`, created with mode 0o666 so the kernel applies the
    umask (mkstemp's files are owner-only, and reading the umask means setting it)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def atomic_save_png(path: str | Path, picture, compress_level: int = 6) -> None:
    """Save a PIL image as PNG, atomically. Level 1 is several times faster for bulk outputs."""
    atomic_write(path, lambda tmp: picture.save(tmp, format="PNG", compress_level=compress_level))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def append_line(path: str | Path, line: str) -> None:
    """Append one line to a log; a failure is a `WriteError` naming the file."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    except OSError as err:
        raise WriteError(Path(path), err) from None


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_names(raw: Iterable[str], fallback: str) -> list[str]:
    """File-system-safe versions of `raw` names (other characters become "_", at most 120),
    made unique also case-insensitively ("a", "A" -> "a", "A-2"); `fallback` for an empty one."""
    names, taken = [], set()
    for text in raw:
        name = _UNSAFE.sub("_", text).strip("._")[:120] or fallback
        unique, n = name, 1
        while unique.lower() in taken:
            n += 1
            unique = f"{name}-{n}"
        taken.add(unique.lower())
        names.append(unique)
    return names

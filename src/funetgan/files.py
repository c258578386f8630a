"""Atomic file writes: a crash or Ctrl-C never leaves a half-written result behind."""
from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)` on a temporary file in the same folder, then rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temporary(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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

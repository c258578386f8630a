"""Atomic file writes: a crash or Ctrl-C never leaves a half-written result behind."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

# What a run folder holds (model.py writes them, the CLI guards them; no PyTorch needed to name them).
MODEL_FILE = "model.safetensors"
CHECKPOINT_FILE = "checkpoint.safetensors"


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)` on a temporary file in the same folder, then rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes owner-only files; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save_png(path: str | Path, picture, compress_level: int = 6) -> None:
    """Save a PIL image as PNG, atomically. Level 1 is several times faster for bulk outputs."""
    atomic_write(path, lambda tmp: picture.save(tmp, format="PNG", compress_level=compress_level))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once: reading it means setting it, and threads writing files at the same time would
# otherwise see each other's temporary 0.
_UMASK = _umask()

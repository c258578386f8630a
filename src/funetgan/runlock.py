"""One writer per folder: `train` holds a lock on its run folder, `test` and `predict` on their
output folder, for as long as they write there. And one builder of a shared file
(`waiting_lock`: the slice cache), the other processes waiting for it.

The lock is `flock` on `FOLDER/.funetgan.lock`, which holds the holder's pid, host and start
time for the message a second process gets. The kernel releases a flock when its holder
dies, however it dies, so a lock left by a killed process is simply taken over. The file
itself stays (removing it would let two processes lock two different files).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path

from .errors import RunFolderError
from .files import WriteError

LOCK_FILE = ".funetgan.lock"


class FolderLocked(RunFolderError):
    """Another process holds the folder's lock."""


@contextlib.contextmanager
def folder_lock(folder: str | Path) -> Iterator[None]:
    """Hold `folder`'s lock (creating the folder) until the block ends; `FolderLocked`,
    naming the holder, when another process has it."""
    folder = Path(folder)
    path = folder / LOCK_FILE
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:  # a read-only or full file system: the user's to fix
        raise WriteError(folder, err) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderLocked(
                f"{folder} is in use by another funetgan process ({_holder(path)}); wait for it to finish or stop it"
            ) from None
        except OSError as err:  # a file system without locks (some network ones)
            warnings.warn(
                f"{path}: cannot lock ({err.strerror}); make sure no other process writes to {folder}", stacklevel=3
            )
        os.ftruncate(fd, 0)
        since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {since}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the lock


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "holder unknown"
    except OSError:
        return "holder unknown"


@contextlib.contextmanager
def waiting_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive `flock` on the file `path` (created) until the block ends, waiting
    first for any other holder: one process does a job (building the slice cache) while the
    others wait and then find it done."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as err:  # a file system without locks (some network ones)
            warnings.warn(
                f"{path}: cannot lock ({err.strerror}); processes sharing it may do the same work at once", stacklevel=3
            )
        yield
    finally:
        os.close(fd)  # releases the lock

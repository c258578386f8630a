"""The errors a user can fix, each reported by the CLI in one line (exit code 2).

Anything else raised is a bug: the CLI says so and shows its traceback. A plain ValueError,
OSError or KeyError is therefore never expected: code that meets a user's mistake raises one
of these classes, naming the file or setting and the problem. An OSError while reading the
user's own files is theirs to fix (`reading_files`); one anywhere else is a bug.

`runlock.FolderLocked` and `files.WriteError` derive from these beside the code that raises
them. Some classes also derive from the built-in error a library user would catch (a bad
setting is a ValueError, a failed write an OSError). No PyTorch here: the CLI imports this
module for every command.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class FunetganError(Exception):
    """Base of every expected error; the message names the file or setting and the problem."""


class DataError(FunetganError):
    """Bad or missing input data."""


class MissingExtra(DataError):
    """An optional package needed for this input or setting is not installed (never a bad file)."""


class SettingsError(FunetganError, ValueError):
    """A setting or argument that cannot work (out of range, not finite, conflicting)."""


class UsageError(SettingsError):
    """Command-line arguments that cannot work together (e.g. --set of a setting the run fixes)."""


class RunFolderError(FunetganError):
    """A run or output folder that cannot be used as asked (holds results, locked, damaged)."""


class TrainingDiverged(FunetganError):
    """Losses or weights became NaN or infinite; nothing non-finite was saved."""


class TrainingStopped(Exception):
    """SIGTERM or SIGINT stopped training at a step boundary, after a checkpoint. Not an
    error: the CLI says how to resume and exits with 128 + the signal's number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


@contextlib.contextmanager
def reading_files() -> Iterator[None]:
    """Within the block (or the decorated function), an OSError (a folder without permission,
    a file gone, an I/O error) is the user's data's problem and becomes a `DataError` naming
    the file; the project's own errors (a `files.WriteError` among them) pass unchanged."""
    try:
        yield
    except FunetganError:
        raise
    except OSError as err:
        reason = f"cannot read ({err.strerror or ' '.join(str(err).split())})"
        raise DataError(f"{err.filename}: {reason}" if err.filename else reason) from None

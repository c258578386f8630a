"""The errors a user can fix, each reported by the CLI in one line (exit code 2).

Anything else raised is a bug: the CLI says so and shows its traceback.
"""


class FunetganError(Exception):
    """Base of every expected error; the message names the file or setting and the problem."""


class DataError(FunetganError):
    """Bad or missing input data."""


class MissingExtra(DataError):
    """An optional package needed for this input or setting is not installed (never a bad file)."""


class SettingsError(FunetganError):
    """A setting or argument that cannot work (out of range, not finite, conflicting)."""


class RunFolderError(FunetganError):
    """A run or output folder that cannot be used as asked (holds results, locked, damaged)."""

"""User-facing errors.

Anything the user can fix (a bad config, a missing file, a column that is not there) raises a
subclass of :class:`MlsmithError`. The CLI prints its message and exits with ``exit_code``; no
traceback. Bugs in mlsmith itself stay ordinary exceptions so they *do* show a traceback.
"""

from __future__ import annotations

import errno
from pathlib import Path

# Defined beside the inference code, which travels inside every model package without the rest
# of mlsmith; one class each, so catching mlsmith.errors.DataError catches the package's too.
from mlsmith.runtime.errors import DataError, MissingExtraError, MlsmithError, did_you_mean

__all__ = [
    "ConfigError",
    "DataError",
    "Interrupted",
    "MissingExtraError",
    "MlsmithError",
    "PreflightError",
    "RunError",
    "WriteError",
    "describe_os_error",
    "did_you_mean",
]


class ConfigError(MlsmithError):
    """The configuration (file, key or value) is invalid."""


class RunError(MlsmithError):
    """A run directory is missing, incomplete, or does not match what was asked."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived: every path that cleans up after Ctrl-C cleans up after both.

    ``signum`` says which; the CLI exits with 128 + signum, as a shell reports a signal.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class WriteError(MlsmithError):
    """A file or folder mlsmith must write cannot be written (read-only, a file in the way...)."""

    def __init__(self, path: str | Path, error: OSError) -> None:
        self.path = Path(path)
        super().__init__(f"cannot write {self.path}: {describe_os_error(error)}")


def describe_os_error(error: OSError, *, with_path: bool = True) -> str:
    """What an OSError means for the user, in words, naming the path it was about when known."""
    reasons = {
        errno.ENOTDIR: "a part of that path is a file, not a folder",
        errno.EEXIST: "a file is in the way of a folder",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.EROFS: "the file system is read-only",
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EISDIR: "it is a folder",
    }
    reason = reasons.get(error.errno or 0) or error.strerror or str(error) or type(error).__name__
    where = f" ({error.filename})" if with_path and getattr(error, "filename", None) else ""
    return reason + where


class PreflightError(MlsmithError):
    """A pre-flight check failed: training would waste time or produce a misleading model."""

    exit_code = 1

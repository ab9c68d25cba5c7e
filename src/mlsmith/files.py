"""Atomic file writes: a crash mid-write leaves the previous file whole, never a torn one.

Every write goes to a hidden temporary file beside its target, named after the writing host and
process, and replaces the target in one rename. A process killed mid-write (``kill -9``, a power
cut) leaves only that temporary file; the next write into the same directory removes the ones
whose process is gone, so they never pile up.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlsmith.errors import WriteError

_UMASK = os.umask(0)
os.umask(_UMASK)

# A short stable id of this machine: a PID only identifies a process on the host that made it
# (an output folder may be shared over NFS between machines).
HOST_ID = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]
_TEMPORARY = re.compile(r"^\..+\.(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-[0-9a-f]{6}\.tmp$")
_swept: set[Path] = set()


def temporary_path(target: Path) -> Path:
    """A fresh hidden path beside ``target`` that names this host and process."""
    name = f".{target.name}.{HOST_ID}-{os.getpid()}-{secrets.token_hex(3)}.tmp"
    return target.parent / name


def sweep_stale_temporaries(directory: Path) -> list[Path]:
    """Remove temporary files in ``directory`` left by dead processes of this host.

    Done once per directory per process: what a live process is writing is never touched, and
    files of other hosts are left alone (their PIDs mean nothing here). A temporary folder (what
    a Spark job writes its part files into) goes with its contents. Returns what was removed.
    """
    directory = directory.resolve()
    if directory in _swept:
        return []
    _swept.add(directory)
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return []
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match is None or match["host"] != HOST_ID or _process_alive(int(match["pid"])):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            continue  # another process swept it first, or it is not ours to remove
    return removed


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    The temporary file is flushed to disk before the rename and the directory after it, so after
    a power cut or a ``kill -9`` the destination holds either the old content or the new, never
    a mix. A destination that cannot be written (a read-only place, a file where a folder
    should be) is a :class:`WriteError` naming it.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_temporaries(target.parent)
        tmp = temporary_path(target)
    except OSError as exc:
        raise WriteError(target, exc) from None
    # Created inside the try: a signal landing right after the file appears still removes it.
    try:
        try:
            # O_EXCL: the name is ours alone; 0o666 & ~umask as a plain open() would create it.
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~_UMASK))
        except OSError as exc:
            raise WriteError(target, exc) from None
        yield tmp
        try:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            raise WriteError(target, exc) from None
        fsync_directory(target.parent)
    finally:
        tmp.unlink(missing_ok=True)


def fsync_directory(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename itself is done
    finally:
        os.close(fd)


def write_text(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | Path, data: Any) -> None:
    """Write strict JSON (NaN is not allowed: callers turn it into null first)."""
    write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def read_json(path: str | Path) -> Any:
    """Parse the JSON file at ``path``."""
    return json.loads(Path(path).read_text())


@contextmanager
def exclusive_lock(path: Path, timeout: float = 60.0) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created if needed) across processes.

    The kernel releases it when the holder exits, ``kill -9`` included, so a dead process never
    leaves it held. Raises TimeoutError after ``timeout`` seconds of waiting.
    """
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{path} stayed locked for {timeout:.0f} s") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True

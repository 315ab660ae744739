"""Local file writes that survive a crash or power loss, and their errors as one sentence.

`replace_file` writes a temporary file beside the target, fsyncs it and renames it over the
target, so readers see the old content or the new, never a mix. The temporary name starts
with a dot: no image path can (see layout.py), so it can never clobber an image.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from pathlib import Path

from .errors import DestinationError, DiskFullError


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def replace_file(path: Path, data: bytes) -> None:
    """Atomically give ``path`` the content ``data`` (the folder's fsync is the caller's)."""
    temporary = path.with_name(f".{path.name}.tmp-{secrets.token_hex(8)}")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        temporary.replace(path)
    except OSError as error:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise destination_error(f"cannot write {path}", error) from None


def fsync_directory(path: Path) -> None:
    """Make renames and new names inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def destination_error(what: str, error: OSError) -> DestinationError:
    reason = error.strerror or str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(
            f"{what}: {reason}; partial files are kept for resume, free some space and run again"
        )
    return DestinationError(f"{what}: {reason}")

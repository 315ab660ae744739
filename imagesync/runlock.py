"""The run lock: two runs on one destination never overlap, and the loser says who holds it.

An ``flock`` on a file the caller opened (never through a link): exclusive for a sync, shared
for verify. The kernel drops it when the process ends, however it ends, so a crash never leaves
a stale lock. The holder writes its pid, host and start time into the file for the message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from .durable import destination_error, write_all
from .errors import LockedError


@contextlib.contextmanager
def hold(fd: int, *, shared: bool, name: str, path: Path) -> Iterator[None]:
    """Lock ``fd`` (the lock file ``path`` of destination ``name``) until the block ends; closes it."""
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(f"another imagesync run{_read_holder(fd)} holds the lock on {name}; "
                              "try later") from None
        if not shared:
            _write_holder(fd, path)
        yield
    finally:
        os.close(fd)


def _write_holder(fd: int, path: Path) -> None:
    started = datetime.now(UTC).astimezone().isoformat(timespec="seconds")
    try:
        os.ftruncate(fd, 0)
        write_all(fd, f"pid {os.getpid()} on {socket.gethostname()} since {started}\n".encode())
    except OSError as error:
        raise destination_error(f"cannot write the lock file {path}", error) from None


def _read_holder(fd: int) -> str:
    """`` (pid N on HOST since TIME)`` from the lock file, or nothing when it says nothing useful."""
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""
    return f" ({text})" if text.startswith("pid ") and "\n" not in text else ""

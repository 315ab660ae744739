"""Write images without flooding the page cache, so the final fsync has little left to do.

Plain buffered writes of a 100 GB image fill the page cache with dirty pages (evicting whatever
the backup host keeps cached) and leave all the writing to the fsync before the rename. Here,
each write starts its own writeback at once (``sync_file_range(SYNC_FILE_RANGE_WRITE)``), and
a region the copy no longer needs is waited for and dropped from the cache
(``posix_fadvise(DONTNEED)``). Both are hints: where they fail (another OS, a filesystem that
does not support them) writing goes on as plain buffered writes, with the same fsync.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os

_WAIT_BEFORE, _WRITE, _WAIT_AFTER = 1, 2, 4


def _load_sync_file_range() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


_SYNC_FILE_RANGE = _load_sync_file_range()


class WriteBehind:
    """Writeback and cache dropping for one file descriptor; called from its writer thread."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._released = 0

    def wrote(self, offset: int, length: int) -> None:
        """``length`` bytes at ``offset`` were written: start putting them on disk now."""
        if _SYNC_FILE_RANGE is not None and length:
            _SYNC_FILE_RANGE(self._fd, offset, length, _WRITE)

    def release(self, upto: int) -> None:
        """Everything before ``upto`` is written and no longer read: wait for it, drop it from the cache."""
        if upto <= self._released:
            return
        start, length = self._released, upto - self._released
        if _SYNC_FILE_RANGE is not None:
            _SYNC_FILE_RANGE(self._fd, start, length, _WAIT_BEFORE | _WRITE | _WAIT_AFTER)
        with contextlib.suppress(OSError):
            os.posix_fadvise(self._fd, start, length, os.POSIX_FADV_DONTNEED)
        self._released = upto

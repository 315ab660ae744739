"""Local file writes that survive a crash or power loss, never through a link; errors as one sentence.

`Folder` is a directory opened once: every name inside it is used relative to its file
descriptor and never followed if it is a symbolic link (``O_NOFOLLOW``; subfolders with
``O_DIRECTORY | O_NOFOLLOW``), so a link planted inside the destination cannot redirect a write
outside it. `Folder.replace` writes a temporary file beside the target, fsyncs it and renames
it over the target (a rename replaces a link itself, never what it points to), so readers see
the old content or the new, never a mix. Temporary names start with a dot: no image path can
(see layout.py), so they can never clobber an image.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path

from .errors import DestinationError, DiskFullError

_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def fsync_directory(path: Path) -> None:
    """Make renames and new names inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Folder:
    """A directory held open by its file descriptor; names inside it are never followed as links."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    @classmethod
    def open_root(cls, path: Path, *, create: bool) -> Folder:
        """The destination folder itself (a link there is the user's own choice, so it is followed)."""
        if create and not path.is_dir():
            _make_folders(path)
        return cls(os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), path)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Folder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- folders ---

    def descend(self, names: Iterable[str], *, create: bool) -> Folder:
        """The subfolder ``names`` below this one; each step refuses a link. The caller closes it."""
        current = Folder(os.dup(self.fd), self.path)
        try:
            for name in names:
                child = current.subfolder(name, create=create)
                current.close()
                current = child
        except BaseException:
            current.close()
            raise
        return current

    def subfolder(self, name: str, *, create: bool) -> Folder:
        if create:
            try:
                os.mkdir(name, 0o755, dir_fd=self.fd)
                os.fsync(self.fd)  # the new name is durable in its parent
            except FileExistsError:
                pass
        try:
            return Folder(os.open(name, _FOLDER_FLAGS, dir_fd=self.fd), self.path / name)
        except OSError as error:
            raise _refuse_link(self, name, error) from None

    # --- files ---

    def open(self, name: str, flags: int, mode: int = 0o644) -> int:
        """``os.open`` of ``name`` in this folder, never through a link."""
        try:
            return os.open(name, flags | _NOFOLLOW, mode, dir_fd=self.fd)
        except OSError as error:
            raise _refuse_link(self, name, error) from None

    def open_regular(self, name: str, flags: int) -> int:
        """Open an existing regular file (a link, folder or device raises `OSError` ELOOP/EISDIR/...)."""
        fd = self.open(name, flags | os.O_NONBLOCK)  # a FIFO planted there must not block the open
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, "not a regular file", str(self.path / name))
        return fd

    def create_new(self, name: str) -> int:
        """A new, empty file under ``name`` to write and read back; whatever was there (a link too)
        is removed first."""
        self.unlink(name)
        return self.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL)

    def lstat(self, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def read(self, name: str) -> bytes | None:
        """The content of the regular file ``name``; None when there is none."""
        try:
            fd = self.open_regular(name, os.O_RDONLY)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as file:
            return file.read()

    def replace(self, name: str, data: bytes) -> None:
        """Atomically give ``name`` the content ``data``, durable when this returns."""
        temporary = f".{name}.tmp-{secrets.token_hex(8)}"
        try:
            fd = self.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            try:
                write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            self.rename(temporary, name)
            self.fsync()
        except OSError as error:
            with contextlib.suppress(OSError):
                self.unlink(temporary)
            raise destination_error(f"cannot write {self.path / name}", error) from None

    def rename(self, source: str, target: str) -> None:
        os.rename(source, target, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def unlink(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.fd)

    def names(self) -> list[str]:
        return os.listdir(self.fd)  # noqa: PTH208 - a directory fd, which Path cannot take

    def fsync(self) -> None:
        os.fsync(self.fd)


def _make_folders(path: Path) -> None:
    """``mkdir -p`` that also makes each new folder durable in its parent."""
    missing = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            folder.mkdir(0o755)
        fsync_directory(folder.parent)


def _refuse_link(folder: Folder, name: str, error: OSError) -> OSError:
    """ELOOP (or ENOTDIR on a link to a folder) becomes an error that says why."""
    if error.errno in (errno.ELOOP, errno.ENOTDIR):
        found = folder.lstat(name)
        if found is not None and stat.S_ISLNK(found.st_mode):
            return OSError(errno.ELOOP, "it is a symbolic link, and imagesync never follows links "
                           "inside the destination; remove it", str(folder.path / name))
    return error


def destination_error(what: str, error: OSError) -> DestinationError:
    reason = error.strerror or str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(
            f"{what}: {reason}; partial files are kept for resume, free some space and run again"
        )
    return DestinationError(f"{what}: {reason}")

"""A local directory as destination: partial files beside their state, fsync, atomic rename, never a link.

An image is written to ``<final>.imagesync-part``; ``<final>.imagesync-state`` records which
source object (URL without query, ETag, size, CRC-64) those bytes belong to, so a later run
resumes only from bytes of the same object. Only a complete, verified file is renamed to its
final name, after an fsync, so no reader ever sees a half image there. Every name inside the
destination is opened relative to its folder's descriptor and never followed as a link (see
`durable.Folder`): a planted link is refused, replaced or removed, never written through.
Every method blocks: callers run them in a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path, PurePosixPath

from .. import killpoints, runlock
from ..checksum import Buffer, Digest, digest_fd
from ..destination import (
    JOURNAL_NAME,
    LOCK_NAME,
    MANIFEST_NAME,
    PARTIAL_SUFFIX,
    STATE_SUFFIX,
    SUMS_NAME,
    Mirrored,
    PartialState,
)
from ..durable import Folder, destination_error, write_all
from ..errors import ConfigError, DestinationError
from ..layout import resolve_inside
from ..writeback import WriteBehind

log = logging.getLogger("imagesync")

WRITE_BEHIND_WINDOW = 32 << 20  # bytes written but still cached, at most, behind the end
DIRECT_ALIGN = 4096  # direct I/O writes whole blocks from aligned memory at aligned offsets
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


class LocalDestination:
    """A directory on this host (relative paths were resolved against the config file)."""

    def __init__(self, root: Path, *, refuse_unsafe_permissions: bool = False) -> None:
        self.root = root
        self.name = str(root)
        self._refuse_unsafe = refuse_unsafe_permissions
        self._folder: Folder | None = None

    def prepare(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"destination.url {self.root} is not a directory")
        try:
            self._folder = Folder.open_root(self.root, create=True)
        except OSError as error:
            raise ConfigError(f"cannot create the destination {self.root}: {error.strerror}") from None
        if not os.access(self.root, os.W_OK):
            raise ConfigError(f"the destination {self.root} is not writable by this user")
        self._check_permissions(self._folder.fd, self.root)

    def close(self) -> None:
        if self._folder is not None:
            self._folder.close()
            self._folder = None

    @contextlib.contextmanager
    def lock(self, *, shared: bool = False) -> Iterator[None]:
        """Hold the destination's lock for the whole run (the kernel releases it on exit).

        A sync takes it exclusively; `verify` takes it shared, so it never reads a file that a
        sync is replacing. On a read-only mirror verify goes on without it, and says so.
        """
        folder = self._root()
        try:
            fd = folder.open(LOCK_NAME, os.O_RDWR | os.O_CREAT)
        except OSError as error:
            if not (shared and error.errno in _READ_ONLY):
                where = self.root / LOCK_NAME
                raise destination_error(f"cannot create the lock file {where}", error) from None
            try:
                fd = folder.open_regular(LOCK_NAME, os.O_RDONLY)
            except OSError:
                log.warning("the destination %s is read-only: verifying without the run lock", self.root)
                yield
                return
        with runlock.hold(fd, shared=shared, name=str(self.root), path=self.root / LOCK_NAME):
            yield

    def free_bytes(self) -> int:
        """Free space where the destination is, or would be created."""
        probe = self.root
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            return shutil.disk_usage(probe).free
        except OSError as error:
            raise destination_error(f"cannot tell the free space of {probe}", error) from None

    def stat(self, path: PurePosixPath) -> Mirrored | None:
        """A regular file under the final name; a link or anything else there is never trusted."""
        full = resolve_inside(self.root, path)
        try:
            with self._folder_of(path, create=False) as folder:
                found = folder.lstat(path.name)
        except FileNotFoundError:
            return None
        except OSError as error:
            raise destination_error(f"cannot read {full}", error) from None
        if found is None or not stat.S_ISREG(found.st_mode):
            return None
        return Mirrored(size=found.st_size)

    def digest(self, path: PurePosixPath) -> Digest | None:
        """Hash the regular file under the final name; None when it is not there."""
        full = resolve_inside(self.root, path)
        try:
            with self._folder_of(path, create=False) as folder:
                fd = folder.open_regular(path.name, os.O_RDONLY)
            return digest_fd(fd)
        except FileNotFoundError:
            return None
        except OSError as error:
            raise destination_error(f"cannot read {full}", error) from None

    def keep_aside(self, path: PurePosixPath, aside: PurePosixPath) -> None:
        """A hard link: the old copy never leaves its final name before the new one takes it."""
        resolve_inside(self.root, aside)
        try:
            with self._folder_of(path, create=False) as source, self._folder_of(aside, create=True) as target:
                target.unlink(aside.name)
                os.link(path.name, aside.name, src_dir_fd=source.fd, dst_dir_fd=target.fd,
                        follow_symlinks=False)
                target.fsync()
        except OSError as error:
            raise destination_error(f"cannot keep the replaced copy as {self.root / aside}", error) from None

    def remove(self, path: PurePosixPath) -> None:
        resolve_inside(self.root, path)
        try:
            with self._folder_of(path, create=False) as folder:
                folder.unlink(path.name)
                folder.fsync()
        except FileNotFoundError:
            pass
        except OSError as error:
            raise destination_error(f"cannot remove {self.root / path}", error) from None

    def partial(self, path: PurePosixPath) -> LocalPartial:
        resolve_inside(self.root, path)  # refuses a hostile path before anything is touched
        return LocalPartial(self, path)

    def manifest_store(self) -> LocalManifestStore | None:
        if self._folder is None and not self.root.is_dir():
            return None
        return LocalManifestStore(self._root(), self.root)

    # --- inside ---

    def _root(self) -> Folder:
        if self._folder is None:
            try:
                self._folder = Folder.open_root(self.root, create=False)
            except OSError as error:
                raise destination_error(f"cannot open the destination {self.root}", error) from None
        return self._folder

    def _folder_of(self, path: PurePosixPath, *, create: bool) -> Folder:
        """The folder holding ``path``, each step checked: never a link, warned if others can write."""
        if self._folder is None and not create and not self.root.exists():
            raise FileNotFoundError(errno.ENOENT, "no destination yet", str(self.root))
        folder = self._root().descend(path.parts[:-1], create=create)
        if create and len(path.parts) > 1:
            self._check_permissions(folder.fd, folder.path)
        return folder

    def _check_permissions(self, fd: int, where: Path) -> None:
        mode = os.fstat(fd).st_mode
        if mode & (stat.S_IWGRP | stat.S_IWOTH) and not mode & stat.S_ISVTX:
            who = "every user" if mode & stat.S_IWOTH else "its group"
            message = (f"{where} is writable by {who}, who could swap mirrored images; "
                       f"run: chmod go-w {where}")
            if self._refuse_unsafe:
                raise ConfigError(f"{message} (destination.refuse_unsafe_permissions is set)")
            log.warning("%s", message)


class LocalPartial:
    """The partial file of one image and its state file, in the image's folder."""

    def __init__(self, destination: LocalDestination, path: PurePosixPath) -> None:
        self._destination = destination
        self._path = path
        self.final = resolve_inside(destination.root, path)
        self._name = path.name
        self._part = path.name + PARTIAL_SUFFIX
        self._state = path.name + STATE_SUFFIX
        self._folder: Folder | None = None
        self._fd: int | None = None
        self._behind: WriteBehind | None = None
        self._direct: int | None = None  # the same file opened O_DIRECT, where the filesystem allows
        self._position = 0  # where `write` appends
        self._size = 0  # the object's, from the state: what the file must hold at commit

    def read_state(self) -> tuple[PartialState | None, int]:
        try:
            with self._destination._folder_of(self._path, create=False) as folder:
                raw = folder.read(self._state)
                found = folder.lstat(self._part)
            if raw is None or found is None or not stat.S_ISREG(found.st_mode):
                return None, 0
            # Resume on a block boundary, where direct I/O can go on (a few bytes come again).
            return PartialState(**json.loads(raw)), found.st_size - found.st_size % DIRECT_ALIGN
        except (OSError, ValueError, TypeError):
            return None, 0

    def digest_kept(self, size: int) -> Digest:
        with self._destination._folder_of(self._path, create=False) as folder:
            fd = folder.open_regular(self._part, os.O_RDONLY)
        return digest_fd(fd, size)

    def begin(self, state: PartialState, *, keep_bytes: int) -> None:
        """Start writing after the first ``keep_bytes`` bytes; whatever else is there is cut."""
        self.close()
        where = self.final.with_name(self._part)
        try:
            self._folder = folder = self._destination._folder_of(self._path, create=True)
            for leftover in folder.names():  # a crash while the state was being replaced
                if leftover.startswith(f".{self._state}.tmp-"):
                    folder.unlink(leftover)
            if keep_bytes:
                self._fd = fd = folder.open_regular(self._part, os.O_RDWR)
            else:  # O_EXCL after removing what is there: never a planted link
                self._fd = fd = folder.create_new(self._part)
            os.ftruncate(fd, keep_bytes)
            self._position = keep_bytes
            self._size = state.size
            self._behind = WriteBehind(fd)
            self._direct = _open_direct(folder, self._part, fd)
            # The cut must be durable before the state names a new object: else a crash could
            # leave the old object's bytes under the new object's state.
            os.fsync(fd)
        except OSError as error:
            self.close()
            raise destination_error(f"cannot write {where}", error) from None
        folder.replace(self._state, json.dumps(asdict(state)).encode())
        killpoints.reached("state-written")

    def write(self, data: Buffer) -> None:
        """Append: whole blocks from an aligned buffer go straight to disk (``O_DIRECT``: no
        page cache to evict or flush later); anything else is a buffered write whose writeback
        starts at once, out of the cache a window behind the end."""
        assert self._fd is not None and self._behind is not None, "begin() first"
        view = memoryview(data).cast("B")
        try:
            if self._direct is not None and not (self._position % DIRECT_ALIGN or len(view) % DIRECT_ALIGN):
                try:
                    _pwrite_all(self._direct, view, self._position)
                    self._position += len(view)
                    return
                except OSError as error:
                    if error.errno != errno.EINVAL:  # an unaligned buffer, or a filesystem that says no
                        raise
                    self._close_direct()
            _pwrite_all(self._fd, view, self._position)
            self._behind.wrote(self._position, len(view))
            self._position += len(view)
            self._behind.release(self._position - WRITE_BEHIND_WINDOW)
        except OSError as error:
            raise destination_error(f"cannot write {self.final.with_name(self._part)}", error) from None

    def _close_direct(self) -> None:
        if self._direct is not None:
            os.close(self._direct)
            self._direct = None

    def write_at(self, offset: int, data: Buffer) -> None:
        assert self._fd is not None and self._behind is not None, "begin() first"
        view = memoryview(data)
        try:
            done = 0
            while done < view.nbytes:
                done += os.pwrite(self._fd, view[done:], offset + done)
            self._behind.wrote(offset, done)
        except OSError as error:
            raise destination_error(f"cannot write {self.final.with_name(self._part)}", error) from None

    def read_at(self, offset: int, size: int) -> bytes:
        """Read back bytes written (to hash them in order); they are then dropped from the cache."""
        assert self._fd is not None and self._behind is not None, "begin() first"
        try:
            data = os.pread(self._fd, size, offset)
        except OSError as error:
            raise destination_error(f"cannot read {self.final.with_name(self._part)}", error) from None
        self._behind.release(offset + len(data))
        return data

    def checkpoint(self, state: PartialState) -> None:
        assert self._fd is not None and self._folder is not None, "begin() first"
        try:
            os.fdatasync(self._fd)  # the bytes first: the state must never claim what is not on disk
        except OSError as error:
            raise destination_error(f"cannot write {self.final.with_name(self._part)}", error) from None
        self._folder.replace(self._state, json.dumps(asdict(state)).encode())

    def commit(self) -> None:
        """fsync, then rename over the final name (replacing an old copy only now), then forget the state."""
        assert self._fd is not None and self._folder is not None, "begin() first"
        folder = self._folder
        try:
            os.fsync(self._fd)
            if (on_disk := os.fstat(self._fd).st_size) != self._size:  # bytes hashed but never written
                raise DestinationError(f"cannot commit {self.final}: the file holds {on_disk} bytes, "
                                       f"not the object's {self._size}; run again to resume it")
            os.close(self._fd)
            self._fd = None
            folder.rename(self._part, self._name)  # replaces a link at the final name, never its target
            folder.fsync()
            folder.unlink(self._state)
        except OSError as error:
            raise destination_error(f"cannot write {self.final}", error) from None
        finally:
            self.close()

    def discard(self) -> None:
        self.close()
        try:
            with self._destination._folder_of(self._path, create=False) as folder:
                folder.unlink(self._part)
                folder.unlink(self._state)
        except FileNotFoundError:
            pass
        except OSError as error:
            raise destination_error(f"cannot remove {self.final.with_name(self._part)}", error) from None

    def close(self) -> None:
        self._close_direct()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._behind = None
        if self._folder is not None:
            self._folder.close()
            self._folder = None


class LocalManifestStore:
    """manifest.json, SHA256SUMS and manifest.journal at the top of the destination."""

    def __init__(self, folder: Folder, root: Path) -> None:
        self._folder = folder
        self.where = str(root / MANIFEST_NAME)
        self._journal_path = root / JOURNAL_NAME
        self.journal_where = str(self._journal_path)
        self._fd: int | None = None
        self._size = 0

    def read_manifest(self) -> bytes | None:
        return self._read(MANIFEST_NAME)

    def read_journal(self) -> bytes | None:
        return self._read(JOURNAL_NAME)

    def append_journal(self, line: bytes) -> None:
        try:
            if self._fd is None:
                created = self._folder.lstat(JOURNAL_NAME) is None
                self._fd = self._folder.open(JOURNAL_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
                self._size = os.fstat(self._fd).st_size
                if created:
                    self._folder.fsync()
            write_all(self._fd, line)
            os.fsync(self._fd)
        except OSError as error:
            if self._fd is not None:  # cut a half-written line, so the next one stays whole
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._size)
            raise destination_error(f"cannot append to {self._journal_path}", error) from None
        self._size += len(line)

    def publish(self, manifest: bytes, sums: bytes) -> None:
        for name in _leftover_temporaries(self._folder):
            with contextlib.suppress(OSError):
                self._folder.unlink(name)
        self._folder.replace(MANIFEST_NAME, manifest)
        self._folder.replace(SUMS_NAME, sums)

    def clear_journal(self) -> None:
        try:
            if self._fd is None:
                self.remove_journal()
            else:
                os.ftruncate(self._fd, 0)
                os.fsync(self._fd)
                self._size = 0
        except OSError as error:
            raise destination_error(f"cannot empty {self._journal_path}", error) from None

    def remove_journal(self) -> None:
        try:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._folder.unlink(JOURNAL_NAME)
            self._folder.fsync()
        except OSError as error:
            raise destination_error(f"cannot remove {self._journal_path}", error) from None

    def _read(self, name: str) -> bytes | None:
        try:
            return self._folder.read(name)
        except OSError as error:
            raise destination_error(f"cannot read {self._folder.path / name}", error) from None


def _leftover_temporaries(folder: Folder) -> list[str]:
    """Temporary files a crash left behind during a compaction."""
    try:
        names = folder.names()
    except OSError:
        return []
    return [n for n in names if n.startswith((f".{MANIFEST_NAME}.tmp-", f".{SUMS_NAME}.tmp-"))]


def _open_direct(folder: Folder, name: str, fd: int) -> int | None:
    """A second, ``O_DIRECT`` descriptor of the file ``fd`` has open (never another file swapped
    in under its name); None where direct I/O is not had."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return None
    try:
        direct = folder.open(name, os.O_WRONLY | flag)
    except OSError:
        return None
    same, opened = os.fstat(direct), os.fstat(fd)
    if (same.st_dev, same.st_ino) != (opened.st_dev, opened.st_ino):
        os.close(direct)
        return None
    return direct


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)

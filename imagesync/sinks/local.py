"""A local directory as destination: partial files beside their state, fsync, atomic rename.

An image is written to ``<final>.imagesync-part``; ``<final>.imagesync-state`` records which
source object (URL without query, ETag, size, CRC-64) those bytes belong to, so a later run
resumes only from bytes of the same object. Only a complete, verified file is renamed to its
final name, after an fsync, so no reader ever sees a half image there. Every method blocks:
callers run them in a worker thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

from ..checksum import Buffer
from ..durable import destination_error, fsync_directory, replace_file, write_all
from ..errors import DestinationError, LockedError
from ..layout import PARTIAL_SUFFIX, STATE_SUFFIX, resolve_inside

LOCK_NAME = ".imagesync.lock"


@dataclass(frozen=True, slots=True, kw_only=True)
class PartialState:
    """Which object the bytes of a partial file come from."""

    source_url: str
    etag: str
    size: int
    crc64ecma: str


class LocalSink:
    def __init__(self, root: Path) -> None:
        self.root = root

    def prepare(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise DestinationError(f"cannot create destination {self.root}: {error.strerror}") from None

    @contextlib.contextmanager
    def lock(self, *, shared: bool = False) -> Iterator[None]:
        """Hold the destination's lock for the whole run (the kernel releases it on exit).

        A sync takes it exclusively; `verify` takes it shared, so it never reads a file that a
        sync is replacing.
        """
        path = self.root / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise DestinationError(f"cannot create the lock file {path}: {error.strerror}") from None
        try:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LockedError(f"another imagesync run holds the lock on {self.root}; try later") from None
            if not shared:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            yield
        finally:
            os.close(fd)

    def free_bytes(self) -> int:
        """Free space where the destination is, or would be created."""
        probe = self.root
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        return shutil.disk_usage(probe).free

    def final_size(self, relative: PurePosixPath) -> int | None:
        path = resolve_inside(self.root, relative)
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return None
        except OSError as error:
            raise destination_error(f"cannot read {path}", error) from None

    def partial(self, relative: PurePosixPath) -> PartialFile:
        return PartialFile(resolve_inside(self.root, relative))


class PartialFile:
    """The partial file of one image, opened for appending."""

    def __init__(self, final: Path) -> None:
        self.final = final
        self.part = final.with_name(final.name + PARTIAL_SUFFIX)
        self.state_path = final.with_name(final.name + STATE_SUFFIX)
        self._fd: int | None = None

    def read_state(self) -> tuple[PartialState | None, int]:
        """The recorded state and the partial's size; ``(None, 0)`` when there is nothing usable."""
        try:
            state = PartialState(**json.loads(self.state_path.read_text(encoding="utf-8")))
            return state, self.part.stat().st_size
        except (OSError, ValueError, TypeError):
            return None, 0

    def begin(self, state: PartialState, *, keep_bytes: int) -> None:
        """Open for writing after the first ``keep_bytes`` bytes (0 starts afresh)."""
        self.close()
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            self._fd = fd = os.open(self.part, os.O_WRONLY | os.O_CREAT, 0o644)
            os.ftruncate(fd, keep_bytes)
            os.lseek(fd, keep_bytes, os.SEEK_SET)
            # The cut must be durable before the state names a new object: else a crash could
            # leave the old object's bytes under the new object's state.
            os.fsync(fd)
        except OSError as error:
            raise destination_error(f"cannot write {self.part}", error) from None
        replace_file(self.state_path, json.dumps(asdict(state)).encode())

    def write(self, data: Buffer) -> None:
        assert self._fd is not None, "begin() first"
        try:
            write_all(self._fd, data)
        except OSError as error:
            raise destination_error(f"cannot write {self.part}", error) from None

    def commit(self) -> None:
        """fsync, then rename over the final name (replacing an old copy only now), then forget the state."""
        assert self._fd is not None, "begin() first"
        try:
            os.fsync(self._fd)
            self.close()
            self.part.replace(self.final)
            fsync_directory(self.final.parent)
            self.state_path.unlink(missing_ok=True)
        except OSError as error:
            raise destination_error(f"cannot write {self.final}", error) from None

    def discard(self) -> None:
        self.close()
        self.part.unlink(missing_ok=True)
        self.state_path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

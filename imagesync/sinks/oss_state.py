"""The local state of an ``oss://`` destination: run lock, manifest journal and upload records.

An OSS destination keeps on this host, in ``destination.state_dir`` (default
``$XDG_STATE_HOME/imagesync``, else ``~/.local/state/imagesync``), one folder per bucket and
prefix holding:

    .imagesync.lock          flock'ed for the run (exclusive for sync, shared for verify)
    manifest.journal         records not yet in the bucket's manifest.json (as a local mirror)
    uploads/<hash>.upload    one per multipart upload in progress: a header line (key, upload
                             id, part size, the source object) written atomically, then one
                             line per verified part (number, size, ETag, CRC-64) appended and
                             fsynced as it is uploaded, so a restart resumes after it

A torn last line (a crash mid-append) is ignored: that part is simply uploaded again.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .. import runlock
from ..destination import LOCK_NAME, PartialState
from ..durable import Folder, destination_error, write_all

log = logging.getLogger("imagesync")

UPLOADS = "uploads"
UPLOAD_SUFFIX = ".upload"
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


def state_folder(state_dir: str, bucket: str, prefix: str) -> Path:
    """Where the state of ``oss://bucket/prefix`` lives (bucket names are globally unique)."""
    if state_dir:
        root = Path(state_dir)
    elif os.environ.get("XDG_STATE_HOME", "").startswith("/"):
        root = Path(os.environ["XDG_STATE_HOME"]) / "imagesync"
    else:
        root = Path.home() / ".local" / "state" / "imagesync"
    tag = hashlib.sha256(f"{bucket}/{prefix}".encode()).hexdigest()[:12]
    return root / f"oss-{bucket}-{tag}"


@dataclass(frozen=True, slots=True, kw_only=True)
class PartRecord:
    """A part OSS stored with the CRC-64 of the bytes sent."""

    number: int
    size: int
    etag: str
    crc64: int


@dataclass(frozen=True, slots=True, kw_only=True)
class UploadRecord:
    key: str
    upload_id: str
    part_size: int
    source: PartialState
    parts: tuple[PartRecord, ...] = field(default=())

    def header(self) -> bytes:
        document = {"key": self.key, "upload_id": self.upload_id, "part_size": self.part_size,
                    "source": asdict(self.source)}
        return (json.dumps(document, separators=(",", ":")) + "\n").encode()


def part_line(part: PartRecord) -> bytes:
    return (json.dumps(asdict(part), separators=(",", ":")) + "\n").encode()


class StateFolder:
    """The state folder of one destination; every method blocks."""

    def __init__(self, path: Path, name: str) -> None:
        self.path = path
        self._name = name  # the destination, for messages

    def open(self, *, create: bool) -> Folder:
        try:
            return Folder.open_root(self.path, create=create)
        except OSError as error:
            raise destination_error(f"cannot open the state folder {self.path}", error) from None

    @contextlib.contextmanager
    def lock(self, *, shared: bool) -> Iterator[None]:
        """Local's run lock, in the state folder: this host's runs on one destination never overlap."""
        try:
            with Folder.open_root(self.path, create=True) as folder:
                fd = folder.open(LOCK_NAME, os.O_RDWR | os.O_CREAT)
        except OSError as error:
            if not (shared and error.errno in _READ_ONLY):
                where = self.path / LOCK_NAME
                raise destination_error(f"cannot create the lock file {where}", error) from None
            log.warning("the state folder %s is read-only: verifying without the run lock", self.path)
            yield
            return
        with runlock.hold(fd, shared=shared, name=self._name, path=self.path / LOCK_NAME):
            yield

    # --- upload records ---

    def load(self, key: str) -> UploadRecord | None:
        """The record of the upload to ``key``; None when there is none or it cannot be read."""
        try:
            with self._uploads(create=False) as folder:
                raw = folder.read(_record_name(key))
        except OSError:
            return None
        return None if raw is None else _parse(raw, key)

    def records(self) -> list[UploadRecord]:
        try:
            with self._uploads(create=False) as folder:
                raws = [folder.read(name) for name in folder.names() if name.endswith(UPLOAD_SUFFIX)]
        except OSError:
            return []
        parsed = [_parse(raw, None) for raw in raws if raw is not None]
        return [record for record in parsed if record is not None]

    def age_s(self, key: str, now: float) -> float:
        """Seconds since the record of ``key`` last changed."""
        try:
            with self._uploads(create=False) as folder:
                found = folder.lstat(_record_name(key))
        except OSError:
            return 0.0
        return now - found.st_mtime if found is not None else 0.0

    def start(self, record: UploadRecord) -> None:
        """Replace the record of ``record.key`` atomically (header and the parts it lists)."""
        data = record.header() + b"".join(part_line(part) for part in record.parts)
        with self._uploads(create=True) as folder:
            folder.replace(_record_name(record.key), data)

    def append_part(self, key: str, part: PartRecord) -> None:
        """Add a verified part; durable when this returns."""
        where = self.path / UPLOADS / _record_name(key)
        try:
            with self._uploads(create=False) as folder:
                fd = folder.open(_record_name(key), os.O_WRONLY | os.O_APPEND)
            try:
                write_all(fd, part_line(part))
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as error:
            raise destination_error(f"cannot record an uploaded part in {where}", error) from None

    def remove(self, key: str) -> None:
        try:
            with self._uploads(create=False) as folder:
                folder.unlink(_record_name(key))
                folder.fsync()
        except FileNotFoundError:
            pass
        except OSError as error:
            where = self.path / UPLOADS / _record_name(key)
            raise destination_error(f"cannot remove {where}", error) from None

    def _uploads(self, *, create: bool) -> Folder:
        if not create and not self.path.is_dir():
            raise FileNotFoundError(errno.ENOENT, "no state folder yet", str(self.path))
        with self.open(create=create) as root:
            return root.descend([UPLOADS], create=create)


def _record_name(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32] + UPLOAD_SUFFIX


def _parse(raw: bytes, key: str | None) -> UploadRecord | None:
    """The record in ``raw``; None when its header is unusable (or names another key)."""
    header, *lines = raw.split(b"\n")
    try:
        document = json.loads(header)
        record = UploadRecord(key=str(document["key"]), upload_id=str(document["upload_id"]),
                              part_size=int(document["part_size"]),
                              source=PartialState(**document["source"]))
    except (ValueError, KeyError, TypeError):
        return None
    if key is not None and record.key != key:
        return None
    parts: dict[int, PartRecord] = {}
    for line in lines:
        try:
            part = PartRecord(**json.loads(line))
        except (ValueError, TypeError):
            continue  # a torn last line: that part is uploaded again
        parts[part.number] = part
    return replace(record, parts=tuple(parts[n] for n in sorted(parts)))

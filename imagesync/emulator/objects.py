"""Objects on disk: where ``bucket/key`` lives, and its size, ETag, CRC-64 and Last-Modified.

An object is the regular file ``<root>/buckets/<bucket>/<key>``. Its metadata is derived
from the file and recomputed whenever the file's identity, size or mtime changes, so tests
may rewrite objects behind the server's back. CRC-64/XZ values are cached in memory and in
sidecars under ``<root>/meta/`` so that a restart does not re-read gigabytes.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import json
import os
import re
import stat
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from fastcrc import crc64

CRC_CHUNK = 8 << 20
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")

StatKey = tuple[int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    """What OSS publishes about an object."""

    size: int
    mtime_ns: int
    crc64: int

    @property
    def etag(self) -> str:
        """Opaque, quoted, uppercase hex; changes whenever content or mtime changes."""
        digest = hashlib.sha256(f"{self.size}:{self.mtime_ns}:{self.crc64}".encode())
        return f'"{digest.hexdigest()[:32].upper()}"'

    @property
    def mtime_s(self) -> int:
        return self.mtime_ns // 1_000_000_000

    @property
    def last_modified(self) -> str:
        return email.utils.formatdate(self.mtime_s, usegmt=True)


def is_valid_bucket(bucket: str) -> bool:
    """OSS bucket naming: 3-63 of ``a-z 0-9 -``, no hyphen at either end."""
    return bool(_BUCKET_RE.match(bucket))


def bucket_path(root: Path, bucket: str) -> Path:
    return root / "buckets" / bucket


def key_path(root: Path, bucket: str, key: str) -> Path | None:
    """The file of ``bucket/key``, or None when the key cannot be a file under the bucket.

    Keys with empty, ``.`` or ``..`` segments, NUL or over 1023 bytes never exist here.
    """
    if not is_valid_bucket(bucket) or not key or "\x00" in key:
        return None
    if len(key.encode("utf-8", "surrogateescape")) > 1023:
        return None
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return None
    return bucket_path(root, bucket).joinpath(*parts)


def stat_key(st: os.stat_result) -> StatKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def crc64_of_file(fd: int, size: int) -> int:
    """CRC-64/XZ of the first ``size`` bytes of an open file, read in 8 MiB chunks."""
    crc = 0
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(CRC_CHUNK, size - offset), offset)
        if not chunk:
            break
        crc = crc64.xz(chunk, initial=crc)
        offset += len(chunk)
    return int(crc)


def _sidecar_path(root: Path, bucket: str, key: str) -> Path:
    name = hashlib.sha256(f"{bucket}/{key}".encode("utf-8", "surrogateescape")).hexdigest()
    return root / "meta" / f"{name}.json"


def write_atomically(root: Path, target: Path, data: bytes) -> None:
    tmp_dir = root / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=tmp_dir, prefix=".meta-")
    os.fchmod(fd, 0o644)  # mkstemp's 0600 is for secrets; these are plain data
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        target.parent.mkdir(parents=True, exist_ok=True)
        Path(tmp).replace(target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_sidecar(root: Path, bucket: str, key: str, st: os.stat_result, crc: int) -> None:
    record = {"bucket": bucket, "key": key, "stat": list(stat_key(st)), "crc64": crc}
    data = json.dumps(record, ensure_ascii=False).encode("utf-8", "surrogateescape")
    with contextlib.suppress(OSError):
        write_atomically(root, _sidecar_path(root, bucket, key), data)


def read_sidecar(root: Path, bucket: str, key: str, st: os.stat_result) -> int | None:
    """The cached CRC if the sidecar describes exactly this file, else None."""
    try:
        record = json.loads(_sidecar_path(root, bucket, key).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("stat") != list(stat_key(st)):
        return None
    crc = record.get("crc64")
    return crc if isinstance(crc, int) else None


def store_object(root: Path, bucket: str, key: str, blocks: Iterable[bytes | memoryview]) -> ObjectMeta:
    """Write an object atomically (temp file, rename) and record its CRC in a sidecar.

    The new file always gets a newer mtime than the one it replaces, so its ETag changes
    even when both writes fall in the same clock tick.
    """
    target = key_path(root, bucket, key)
    if target is None:
        raise ValueError(f"object key {key!r} in bucket {bucket!r} cannot be stored on disk")
    tmp_dir = root / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=tmp_dir, prefix=".object-")
    os.fchmod(fd, 0o644)
    crc = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for block in blocks:
                out.write(block)
                crc = crc64.xz(block, initial=crc)
        try:
            previous_mtime = target.stat().st_mtime_ns
        except OSError:
            previous_mtime = -1
        target.parent.mkdir(parents=True, exist_ok=True)
        Path(tmp).replace(target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    st = target.stat()
    if st.st_mtime_ns <= previous_mtime:
        os.utime(target, ns=(st.st_atime_ns, previous_mtime + 1000))
        st = target.stat()
    write_sidecar(root, bucket, key, st, int(crc))
    return ObjectMeta(size=st.st_size, mtime_ns=st.st_mtime_ns, crc64=int(crc))


@dataclass(frozen=True, slots=True)
class OpenObject:
    """An object opened for reading: the file (owned by the caller) and its metadata."""

    file: BinaryIO
    meta: ObjectMeta


class ObjectStore:
    """Opens objects and keeps their metadata current, safe to share between threads."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], tuple[StatKey, ObjectMeta]] = {}
        self._key_locks: dict[tuple[str, str], threading.Lock] = {}

    def bucket_exists(self, bucket: str) -> bool:
        return is_valid_bucket(bucket) and bucket_path(self.root, bucket).is_dir()

    def open(self, bucket: str, key: str) -> OpenObject | None:
        """Open ``bucket/key`` for reading, or None when there is no such object."""
        path = key_path(self.root, bucket, key)
        if path is None:
            return None
        try:
            file = open(path, "rb", buffering=0)  # noqa: SIM115 - the caller closes it
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        try:
            st = os.fstat(file.fileno())
            if not stat.S_ISREG(st.st_mode):
                file.close()
                return None
            return OpenObject(file=file, meta=self._meta(bucket, key, file.fileno(), st))
        except BaseException:
            file.close()
            raise

    def _meta(self, bucket: str, key: str, fd: int, st: os.stat_result) -> ObjectMeta:
        ident = (bucket, key)
        current = stat_key(st)
        with self._lock:
            cached = self._cache.get(ident)
            key_lock = self._key_locks.setdefault(ident, threading.Lock())
        if cached and cached[0] == current:
            return cached[1]
        with key_lock:  # one thread hashes a changed object; the others wait for it
            with self._lock:
                cached = self._cache.get(ident)
            if cached and cached[0] == current:
                return cached[1]
            crc = read_sidecar(self.root, bucket, key, st)
            if crc is None:
                crc = crc64_of_file(fd, st.st_size)
                write_sidecar(self.root, bucket, key, st, crc)
            meta = ObjectMeta(size=st.st_size, mtime_ns=st.st_mtime_ns, crc64=crc)
            with self._lock:
                self._cache[ident] = (current, meta)
            return meta

"""Objects on disk: where ``bucket/key`` lives, and its size, ETag, CRC-64 and Last-Modified.

An object is the regular file ``<root>/buckets/<bucket>/<key>``. Its metadata is derived
from the file and recomputed whenever the file's identity, size or mtime changes, so tests
may rewrite objects behind the server's back. CRC-64/XZ values are cached in memory and,
for objects of 1 MiB or more, in sidecars under ``<root>/meta/`` so that a restart does not
re-read gigabytes. Written objects (PutObject, multipart) always have a sidecar: it holds
what cannot be derived from the bytes (their ETag, object type, whether a CRC is published).
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import hashlib
import json
import os
import re
import stat
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from fastcrc import crc64

CRC_CHUNK = 8 << 20
SIDECAR_MIN_SIZE = 1 << 20  # smaller sample objects are re-hashed instead
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")

StatKey = tuple[int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    """What OSS publishes about an object.

    Sample objects get a derived opaque ETag; written ones record theirs (``etag_value``:
    the MD5 for PutObject, ``<hex>-<parts>`` for multipart) with their ``object_type``.
    ``crc64`` is always the true CRC; ``crc_published`` says whether OSS would tell it
    (objects assembled from copied parts have none). ``md5`` is the base64 Content-MD5
    once known (always for PutObject objects, computed on demand for samples).
    """

    size: int
    mtime_ns: int
    crc64: int
    etag_value: str | None = None
    object_type: str = "Normal"
    crc_published: bool = True
    md5: str | None = None

    @property
    def etag(self) -> str:
        """Quoted, uppercase hex; changes whenever content or mtime changes."""
        if self.etag_value is not None:
            return self.etag_value
        digest = hashlib.sha256(f"{self.size}:{self.mtime_ns}:{self.crc64}".encode())
        return f'"{digest.hexdigest()[:32].upper()}"'

    @property
    def mtime_s(self) -> int:
        return self.mtime_ns // 1_000_000_000

    @property
    def last_modified(self) -> str:
        return email.utils.formatdate(self.mtime_s, usegmt=True)

    @property
    def last_modified_iso(self) -> str:
        """ISO-8601 as OSS XML writes it (always ``.000Z``; oss2 accepts nothing else)."""
        return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(self.mtime_s))

    def record(self) -> dict[str, Any]:
        """The sidecar fields besides bucket, key and stat."""
        fields: dict[str, Any] = {"crc64": self.crc64}
        if self.etag_value is not None:
            fields["etag"] = self.etag_value
        if self.object_type != "Normal":
            fields["type"] = self.object_type
        if not self.crc_published:
            fields["crc_published"] = False
        if self.md5 is not None:
            fields["md5"] = self.md5
        return fields

    @property
    def needs_sidecar(self) -> bool:
        """Small sample objects are cheap to re-hash; anything else is recorded."""
        return self.size >= SIDECAR_MIN_SIZE or len(self.record()) > 1

    @classmethod
    def from_record(cls, size: int, mtime_ns: int, record: dict[str, Any]) -> ObjectMeta | None:
        crc, etag, md5 = record.get("crc64"), record.get("etag"), record.get("md5")
        kind, published = record.get("type", "Normal"), record.get("crc_published", True)
        if not isinstance(crc, int) or not isinstance(kind, str) or not isinstance(published, bool):
            return None
        return cls(
            size=size, mtime_ns=mtime_ns, crc64=crc,
            etag_value=etag if isinstance(etag, str) else None,
            object_type=kind, crc_published=published, md5=md5 if isinstance(md5, str) else None,
        )


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


def write_sidecar(root: Path, bucket: str, key: str, st: os.stat_result, meta: ObjectMeta) -> None:
    record = {"bucket": bucket, "key": key, "stat": list(stat_key(st)), **meta.record()}
    data = json.dumps(record, ensure_ascii=False).encode("utf-8", "surrogateescape")
    with contextlib.suppress(OSError):
        write_atomically(root, _sidecar_path(root, bucket, key), data)


def read_sidecar(root: Path, bucket: str, key: str, st: os.stat_result) -> ObjectMeta | None:
    """The recorded metadata if the sidecar describes exactly this file, else None."""
    try:
        record = json.loads(_sidecar_path(root, bucket, key).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("stat") != list(stat_key(st)):
        return None
    return ObjectMeta.from_record(st.st_size, st.st_mtime_ns, record)


def remove_sidecar(root: Path, bucket: str, key: str) -> None:
    with contextlib.suppress(OSError):
        _sidecar_path(root, bucket, key).unlink()


def temp_file(root: Path, prefix: str = ".object-") -> tuple[int, Path]:
    """A new file (fd, path) under ``<root>/tmp``, mode 0644, for a later rename."""
    tmp_dir = root / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=tmp_dir, prefix=prefix)
    os.fchmod(fd, 0o644)  # mkstemp's 0600 is for secrets; these are plain data
    return fd, Path(tmp)


def install_file(root: Path, bucket: str, key: str, tmp: Path, meta: ObjectMeta) -> ObjectMeta:
    """Rename a finished temp file to ``bucket/key`` and record its metadata.

    The new file always gets a newer mtime than the one it replaces, so its ETag changes
    even when both writes fall in the same clock tick. ``meta`` gives everything but size
    and mtime, which are taken from the installed file.
    """
    target = key_path(root, bucket, key)
    if target is None:
        raise ValueError(f"object key {key!r} in bucket {bucket!r} cannot be stored on disk")
    try:
        previous_mtime = target.stat().st_mtime_ns
    except OSError:
        previous_mtime = -1
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp.replace(target)
    st = target.stat()
    if st.st_mtime_ns <= previous_mtime:
        os.utime(target, ns=(st.st_atime_ns, previous_mtime + 1000))
        st = target.stat()
    meta = replace(meta, size=st.st_size, mtime_ns=st.st_mtime_ns)
    if meta.needs_sidecar:
        write_sidecar(root, bucket, key, st, meta)
    else:
        remove_sidecar(root, bucket, key)
    return meta


def store_object(root: Path, bucket: str, key: str, blocks: Iterable[bytes | memoryview]) -> ObjectMeta:
    """Write a sample object atomically (temp file, rename), its CRC in a sidecar if big."""
    if key_path(root, bucket, key) is None:
        raise ValueError(f"object key {key!r} in bucket {bucket!r} cannot be stored on disk")
    fd, tmp = temp_file(root)
    crc = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for block in blocks:
                out.write(block)
                crc = crc64.xz(block, initial=crc)
        return install_file(root, bucket, key, tmp, ObjectMeta(size=0, mtime_ns=0, crc64=int(crc)))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def md5_of_file(fd: int, size: int) -> str:
    """Base64 of the binary MD5 of the first ``size`` bytes (a Content-MD5 value)."""
    digest = hashlib.md5()  # noqa: S324 - OSS's Content-MD5, not security
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(CRC_CHUNK, size - offset), offset)
        if not chunk:
            break
        digest.update(chunk)
        offset += len(chunk)
    return base64.b64encode(digest.digest()).decode()


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
        self.write_lock = threading.Lock()  # check-then-install (forbid-overwrite) and delete

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

    def exists(self, bucket: str, key: str) -> bool:
        path = key_path(self.root, bucket, key)
        return path is not None and path.is_file()

    def with_md5(self, bucket: str, key: str, opened: OpenObject) -> ObjectMeta:
        """The metadata with ``md5`` filled in (computed once, then cached and recorded)."""
        meta = opened.meta
        if meta.md5 is not None:
            return meta
        fd = opened.file.fileno()
        st = os.fstat(fd)
        meta = replace(meta, md5=md5_of_file(fd, st.st_size))
        write_sidecar(self.root, bucket, key, st, meta)
        with self._lock:
            self._cache[(bucket, key)] = (stat_key(st), meta)
        return meta

    def delete(self, bucket: str, key: str) -> bool:
        """Remove an object (and directories it leaves empty); False if there was none."""
        path = key_path(self.root, bucket, key)
        if path is None:
            return False
        with self.write_lock:
            try:
                path.unlink()
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return False
            remove_sidecar(self.root, bucket, key)
            top = bucket_path(self.root, bucket)
            parent = path.parent
            while parent != top:
                try:
                    parent.rmdir()
                except OSError:
                    break
                parent = parent.parent
        return True

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key of a bucket that starts with ``prefix``, in byte order."""
        top = bucket_path(self.root, bucket)
        found = []
        for directory, _dirs, files in os.walk(top):
            rel = os.path.relpath(directory, top)
            base = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            if not (base.startswith(prefix) or prefix.startswith(base)):
                _dirs.clear()
                continue
            found += [base + name for name in files if (base + name).startswith(prefix)]
        return sorted(found, key=lambda k: k.encode("utf-8", "surrogateescape"))

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
            meta = read_sidecar(self.root, bucket, key, st)
            if meta is None:
                crc = crc64_of_file(fd, st.st_size)
                meta = ObjectMeta(size=st.st_size, mtime_ns=st.st_mtime_ns, crc64=crc)
                if meta.needs_sidecar:
                    write_sidecar(self.root, bucket, key, st, meta)
            with self._lock:
                self._cache[ident] = (current, meta)
            return meta

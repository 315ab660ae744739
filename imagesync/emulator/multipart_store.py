"""Multipart uploads on disk, so they survive an emulator restart.

``<root>/uploads/<UploadId>/upload.json`` holds ``{bucket, key, initiated_ns}``; each part
is ``part-<N>`` (its bytes) and ``part-<N>.json`` (size, ETag, CRC-64, whether the CRC is
published, MD5, time). Part bodies are written to temp files first and renamed in under
the upload's lock, so a part is either all there or absent, and an upload completed or
aborted meanwhile turns the late part into NoSuchUpload.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .objects import write_atomically

_UPLOAD_ID_RE = re.compile(r"^[0-9A-F]{32}$")


@dataclass(frozen=True, slots=True)
class Upload:
    upload_id: str
    bucket: str
    key: str
    initiated_ns: int


@dataclass(frozen=True, slots=True)
class Part:
    number: int
    size: int
    etag: str  # quoted uppercase hex MD5 of the part
    crc64: int  # always the true CRC of the part
    crc_published: bool  # False for UploadPartCopy parts, as OSS reports none
    md5_hex: str
    modified_ns: int


class UploadStore:
    """The multipart uploads of one emulator root; safe to share between threads."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._locks: dict[str, threading.RLock] = {}

    def _dir(self, upload_id: str) -> Path | None:
        return self.root / "uploads" / upload_id if _UPLOAD_ID_RE.match(upload_id) else None

    def lock(self, upload_id: str) -> threading.RLock:
        with self._lock:
            return self._locks.setdefault(upload_id, threading.RLock())

    def create(self, bucket: str, key: str) -> Upload:
        upload = Upload(secrets.token_hex(16).upper(), bucket, key, time.time_ns())
        directory = self.root / "uploads" / upload.upload_id
        directory.mkdir(parents=True)
        record = {"bucket": bucket, "key": key, "initiated_ns": upload.initiated_ns}
        write_atomically(self.root, directory / "upload.json", json.dumps(record).encode())
        return upload

    def get(self, upload_id: str) -> Upload | None:
        directory = self._dir(upload_id)
        if directory is None:
            return None
        try:
            record = json.loads((directory / "upload.json").read_bytes())
            return Upload(upload_id, record["bucket"], record["key"], record["initiated_ns"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def uploads(self, bucket: str) -> list[Upload]:
        """The bucket's open uploads by key, then initiation time."""
        top = self.root / "uploads"
        found = [self.get(p.name) for p in top.iterdir()] if top.is_dir() else []
        mine = [u for u in found if u is not None and u.bucket == bucket]
        return sorted(mine, key=lambda u: (u.key.encode("utf-8", "surrogateescape"), u.initiated_ns))

    def commit_part(self, upload: Upload, part: Part, tmp: Path) -> bool:
        """Move a finished part file in; False (temp removed) if the upload is gone."""
        directory = self._dir(upload.upload_id)
        assert directory is not None
        with self.lock(upload.upload_id):
            if self.get(upload.upload_id) is None:
                tmp.unlink(missing_ok=True)
                return False
            tmp.replace(directory / f"part-{part.number}")
            record = json.dumps(asdict(part)).encode()
            write_atomically(self.root, directory / f"part-{part.number}.json", record)
            return True

    def parts(self, upload_id: str) -> list[Part]:
        """The parts uploaded so far, by part number."""
        directory = self._dir(upload_id)
        found = []
        if directory is not None and directory.is_dir():
            for path in directory.glob("part-*.json"):
                try:
                    found.append(Part(**json.loads(path.read_bytes())))
                except (OSError, ValueError, TypeError):
                    continue
        return sorted(found, key=lambda p: p.number)

    def part_path(self, upload_id: str, number: int) -> Path:
        directory = self._dir(upload_id)
        assert directory is not None
        return directory / f"part-{number}"

    def remove(self, upload_id: str) -> bool:
        """Forget an upload and its parts; False if there was none."""
        directory = self._dir(upload_id)
        if directory is None or not directory.is_dir():
            return False
        with self.lock(upload_id):
            gone = self.root / "tmp" / f".aborted-{upload_id}-{secrets.token_hex(4)}"
            gone.parent.mkdir(parents=True, exist_ok=True)
            try:
                directory.rename(gone)
            except FileNotFoundError:
                return False
        shutil.rmtree(gone, ignore_errors=True)
        return True

    def forget(self, which: str) -> int:
        """Remove one upload (by id) or every one (``"*"``); return how many went."""
        top = self.root / "uploads"
        ids = [p.name for p in top.iterdir()] if which == "*" and top.is_dir() else [which]
        return sum(self.remove(upload_id) for upload_id in ids)

"""Buckets and their regions (``<root>/buckets.json``), and who may write to them.

Every directory ``<root>/buckets/<name>`` is a bucket. Its region is recorded in
``buckets.json`` (``{"<name>": "<region>"}``) when it is created with a region
(``--dest-bucket NAME@REGION``); a bucket without a record is in the emulator's region.
The source bucket (``--bucket``) is always in ``--region``. The record survives restarts.

Requests are V4-signed for the region of the bucket they address, so several regions share
one port; UploadPartCopy between buckets of different regions is refused, as OSS does.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from .objects import bucket_path, is_valid_bucket, write_atomically

REGISTRY_FILE = "buckets.json"


def parse_bucket_spec(spec: str, default_region: str) -> tuple[str, str]:
    """``NAME[@REGION]`` -> (name, region); ValueError for a bad bucket name or region."""
    name, _, region = spec.partition("@")
    if not is_valid_bucket(name):
        raise ValueError(f"{name!r} is not a valid OSS bucket name (3-63 of a-z, 0-9, -)")
    region = region or default_region
    if not region or not all(c.isalnum() or c == "-" for c in region):
        raise ValueError(f"{region!r} is not a region id like cn-hangzhou")
    return name, region


class Buckets:
    """The region of each bucket; creation of buckets; safe to share between threads."""

    def __init__(self, root: Path, default_region: str) -> None:
        self.root = root
        self.default_region = default_region
        self._lock = threading.Lock()
        self._cache: tuple[tuple[int, int, int], dict[str, str]] | None = None

    def _path(self) -> Path:
        return self.root / REGISTRY_FILE

    def _load(self) -> dict[str, str]:
        """The recorded regions, re-read only when the file changes (every request asks)."""
        try:
            st = self._path().stat()
            ident = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            return {}
        cached = self._cache
        if cached is not None and cached[0] == ident:
            return cached[1]
        try:
            document = json.loads(self._path().read_bytes())
        except (OSError, ValueError):
            return {}
        if not isinstance(document, dict):
            return {}
        regions = {k: v for k, v in document.items() if isinstance(k, str) and isinstance(v, str)}
        self._cache = (ident, regions)
        return regions

    def regions(self) -> dict[str, str]:
        """Every existing bucket and its region."""
        recorded = self._load()
        top = self.root / "buckets"
        names = sorted(p.name for p in top.iterdir() if p.is_dir()) if top.is_dir() else []
        return {name: recorded.get(name, self.default_region) for name in names}

    def region(self, bucket: str) -> str:
        return self._load().get(bucket, self.default_region)

    def create(self, bucket: str, region: str) -> None:
        """Create (or re-home) a bucket in a region and record it."""
        bucket_path(self.root, bucket).mkdir(parents=True, exist_ok=True)
        with self._lock:
            recorded = dict(self._load())
            if recorded.get(bucket) != region:
                recorded[bucket] = region
                data = json.dumps(recorded, indent=1, sort_keys=True).encode()
                write_atomically(self.root, self._path(), data)

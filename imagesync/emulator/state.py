"""The state one running emulator shares between its handler threads."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from .buckets import Buckets
from .catalog import Catalog
from .faults import Faults
from .multipart_store import UploadStore
from .objects import ObjectStore
from .schedule import ExportSchedule

CLOCK_SKEW_S = 15 * 60


class NonceCache:
    """Signature nonces seen in the last 15 minutes (a replay is refused), bounded."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._capacity = capacity
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._lock = threading.Lock()

    def first_use(self, access_key_id: str, nonce: str, now: float) -> bool:
        """Record the nonce; False if it was already used."""
        ident = (access_key_id, nonce)
        with self._lock:
            while self._seen:
                oldest, seen_at = next(iter(self._seen.items()))
                if now - seen_at < 2 * CLOCK_SKEW_S and len(self._seen) < self._capacity:
                    break
                del self._seen[oldest]
            if ident in self._seen:
                return False
            self._seen[ident] = now
            return True


@dataclass(frozen=True, kw_only=True, slots=True)
class Emulator:
    """Configuration and live state of one emulator, shared by all requests."""

    root: Path
    base_url: str  # http://127.0.0.1:PORT
    access_key_id: str
    access_key_secret: str
    region: str
    public_read: bool
    catalog: Catalog
    objects: ObjectStore
    faults: Faults
    nonces: NonceCache
    buckets: Buckets
    uploads: UploadStore
    schedule: ExportSchedule
    readonly_keys: dict[str, str] = field(default_factory=dict)  # id -> secret, read only

    def secret_of(self, access_key_id: str) -> str | None:
        """The secret of a known AccessKey id (the main one or a read-only one)."""
        if access_key_id == self.access_key_id:
            return self.access_key_secret
        return self.readonly_keys.get(access_key_id)

    def may_write(self, access_key_id: str | None) -> bool:
        return access_key_id == self.access_key_id

    @property
    def host_id(self) -> str:
        return self.base_url.removeprefix("http://")

    def now(self) -> float:
        return time.time()

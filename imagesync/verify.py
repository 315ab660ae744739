"""Re-hash the mirror against its manifest: is every recorded file still there and intact?

Reads only; files are hashed in worker threads, a few at a time, so a large mirror is checked
at disk speed. Each entry ends as ``ok``, ``missing``, ``unreadable`` or ``corrupt`` (size, CRC-64 or
sha256 differs from what was recorded when it was mirrored and verified).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import PurePosixPath

import trio

from . import killpoints
from .destination import Destination, ManifestStore
from .errors import DestinationError
from .manifest import Manifest, ManifestEntry, ManifestWriter
from .progress import DEFAULT_INTERVAL_S, Ticker

log = logging.getLogger("imagesync")


class Result(StrEnum):
    OK = "ok"
    MISSING = "missing"
    CORRUPT = "corrupt"
    UNREADABLE = "unreadable"


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    image_id: str
    path: str
    result: Result
    reason: str = ""


async def verify_mirror(destination: Destination, concurrency: int, *, read: bool = False,
                        interval_s: float = DEFAULT_INTERVAL_S) -> list[Verdict]:
    """Check every recorded image and record the verdicts in the manifest (where it can be
    written), so the next sync fetches what is missing or corrupt again.

    ``read`` re-hashes bytes even where the destination tells the CRC-64 without reading (an
    OSS object's header).
    """
    with destination.lock(shared=True):  # never read a file a sync is replacing
        store = await trio.to_thread.run_sync(destination.manifest_store)
        manifest = await trio.to_thread.run_sync(Manifest.load, store)
        if store is None or (not manifest.entries and manifest.updated_at is None):
            raise DestinationError(f"{destination.name} has no manifest.json; nothing to verify")
        ticker = Ticker("verify", len(manifest.entries), interval_s=interval_s)
        verdicts = await _verify_entries(destination, manifest, concurrency, read, ticker)
        await trio.to_thread.run_sync(_record, manifest, store, verdicts, destination.name)
        return verdicts


def _record(manifest: Manifest, store: ManifestStore, verdicts: list[Verdict], where: str) -> None:
    problems = {v.image_id: v.result.value for v in verdicts if v.result is not Result.OK}
    try:
        writer = ManifestWriter(manifest, store)
        try:
            writer.record_verify(datetime.now(UTC), problems, len(verdicts))
        finally:
            writer.close()
    except DestinationError as error:
        log.warning("the verdicts could not be recorded in the manifest of %s (%s); the next sync "
                    "will not know what this verify found", where, error)


async def _verify_entries(destination: Destination, manifest: Manifest, concurrency: int,
                          read: bool, ticker: Ticker) -> list[Verdict]:
    limiter = trio.CapacityLimiter(concurrency)
    verdicts: dict[str, Verdict] = {}

    async def check(entry: ManifestEntry) -> None:
        verdicts[entry.image_id] = await trio.to_thread.run_sync(
            _check_entry, destination, entry, read, limiter=limiter, abandon_on_cancel=True)
        ticker.tick()
        killpoints.reached("verified-one")

    async with trio.open_nursery() as nursery:
        for entry in manifest.entries.values():
            nursery.start_soon(check, entry)
    return [verdicts[image_id] for image_id in sorted(verdicts)]


def _check_entry(destination: Destination, entry: ManifestEntry, read: bool) -> Verdict:
    def verdict(result: Result, reason: str = "") -> Verdict:
        return Verdict(image_id=entry.image_id, path=entry.path, result=result, reason=reason)

    path = PurePosixPath(entry.path)
    try:
        found = destination.stat(path)
        if found is None:
            return verdict(Result.MISSING, f"{entry.path} is not there (or is not a regular file)")
        if found.size != entry.size:
            return verdict(Result.CORRUPT,
                           f"{entry.path} has {found.size} bytes, the manifest records {entry.size}")
        if found.crc64ecma is not None and not read:
            if str(found.crc64ecma) != entry.crc64ecma:
                return verdict(Result.CORRUPT, f"{entry.path} has CRC-64 {found.crc64ecma}, "
                               f"the manifest records {entry.crc64ecma}")
            return verdict(Result.OK)
        digest = destination.digest(path)
    except DestinationError as error:
        return verdict(Result.UNREADABLE, str(error))
    if digest is None:
        return verdict(Result.MISSING, f"{entry.path} is not there")
    if str(digest.crc64) != entry.crc64ecma or (entry.sha256 is not None and digest.sha256 != entry.sha256):
        return verdict(Result.CORRUPT, f"{entry.path} no longer matches its recorded CRC-64 and sha256")
    return verdict(Result.OK)

"""Re-hash the mirror against its manifest: is every recorded file still there and intact?

Reads only; files are hashed in worker threads, a few at a time, so a large mirror is checked
at disk speed. Each entry ends as ``ok``, ``missing``, ``unreadable`` or ``corrupt`` (size, CRC-64 or
sha256 differs from what was recorded when it was mirrored and verified).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import trio

from .checksum import digest_file
from .errors import DestinationError
from .layout import resolve_inside
from .manifest import Manifest, ManifestEntry
from .sinks.local import LocalSink


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    image_id: str
    path: str
    result: str  # ok | missing | corrupt | unreadable
    reason: str = ""


async def verify_mirror(root: Path, concurrency: int) -> list[Verdict]:
    if not (root / "manifest.json").exists() and not (root / "manifest.journal").exists():
        raise DestinationError(f"{root} has no manifest.json; nothing to verify")
    with LocalSink(root).lock(shared=True):  # never read a file a sync is replacing
        return await _verify_entries(root, concurrency)


async def _verify_entries(root: Path, concurrency: int) -> list[Verdict]:
    manifest = await trio.to_thread.run_sync(Manifest.load, root)
    limiter = trio.CapacityLimiter(concurrency)
    verdicts: dict[str, Verdict] = {}

    async def check(entry: ManifestEntry) -> None:
        verdicts[entry.image_id] = await trio.to_thread.run_sync(_check_entry, root, entry, limiter=limiter)

    async with trio.open_nursery() as nursery:
        for entry in manifest.entries.values():
            nursery.start_soon(check, entry)
    return [verdicts[image_id] for image_id in sorted(verdicts)]


def _check_entry(root: Path, entry: ManifestEntry) -> Verdict:
    path = resolve_inside(root, PurePosixPath(entry.path))

    def verdict(result: str, reason: str = "") -> Verdict:
        return Verdict(image_id=entry.image_id, path=entry.path, result=result, reason=reason)

    try:
        size = path.stat().st_size
        if size != entry.size:
            return verdict("corrupt", f"{entry.path} has {size} bytes, the manifest records {entry.size}")
        digest = digest_file(path)
    except FileNotFoundError:
        return verdict("missing", f"{entry.path} is not there")
    except OSError as error:
        return verdict("unreadable", f"{entry.path}: {error.strerror or error}")
    if str(digest.crc64) != entry.crc64ecma or digest.sha256 != entry.sha256:
        return verdict("corrupt", f"{entry.path} no longer matches its recorded CRC-64 and sha256")
    return verdict("ok")

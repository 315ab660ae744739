"""Copy an object into the destination bucket inside OSS (UploadPartCopy): no byte crosses this host.

Only within one region (reference B.4). Parts are copied in parallel, a few at a time, each
with ``x-oss-copy-source-if-match: <source ETag>`` so a source re-exported meanwhile fails fast
(412) instead of yielding a mix. Complete publishes the object; it is then checked as far as OSS
lets us: the CRC-64 that Complete or a HEAD reports against the source's. Copied parts often
carry no CRC, and then the object is read back through CRC-64 and sha256 when
``destination.read_back`` is "auto" or "always"; with "never" the manifest says
``crc64-server-side`` and records no sha256 (none is ever invented). OSS has no rename, so a copy
that fails its check after Complete is deleted rather than left under its final key.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import trio

from ..checksum import Digest
from ..destination import ServerCopy
from ..errors import DestinationError, ImagesyncError, TransferError
from ..manifest import SIZE_ONLY, VERIFIED_CRC64, VERIFIED_SERVER_SIDE
from ..source import ObjectInfo, ObjectLocation
from .oss_client import OssClient, StoredPart, UploadGone
from .oss_upload import MAX_PARTS, MIB

log = logging.getLogger("imagesync")
T = TypeVar("T")

MIN_COPY_PART_BYTES = 64 * MIB
PARALLEL_PARTS = 8


def copy_part_size(size: int) -> int:
    needed = -(-size // MAX_PARTS)
    return max(MIN_COPY_PART_BYTES, -(-needed // MIB) * MIB)


class ServerSideCopy:
    """Copies into one destination; `run` copies, checks and publishes one object."""

    def __init__(self, client: OssClient, *, read_back: str, parallel: int = PARALLEL_PARTS) -> None:
        self._client = client
        self._read_back = read_back
        self._parallel = parallel

    async def run(self, source: ObjectLocation, info: ObjectInfo, key: str) -> ServerCopy:
        started = time.monotonic()
        if info.size == 0:
            await self._thread(self._client.put, key, b"")
            stored: StoredPart | None = StoredPart(etag="", crc64ecma=0)
        else:
            upload_id = await self._thread(self._client.initiate, key)
            try:
                parts = await self._copy_parts(source, info, key, upload_id)
                stored = await self._complete(key, upload_id, parts)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await self._thread(self._abort_quietly, key, upload_id)
                raise
        try:
            return await self._check(info, key, stored, started)
        except DestinationError as error:  # reading it back failed: this image only
            raise TransferError(str(error)) from None

    async def _copy_parts(self, source: ObjectLocation, info: ObjectInfo, key: str,
                          upload_id: str) -> list[tuple[int, str]]:
        size = copy_part_size(info.size)
        limiter = trio.CapacityLimiter(self._parallel)
        etags: dict[int, str] = {}
        failures: list[ImagesyncError] = []

        async def copy_one(number: int, first: int, last: int, cancel: trio.CancelScope) -> None:
            copy = partial(self._client.upload_part_copy, source.bucket, source.key, first, last,
                           if_match=info.etag, key=key, upload_id=upload_id, number=number)
            try:
                etags[number] = (await trio.to_thread.run_sync(copy, limiter=limiter)).etag
            except ImagesyncError as error:
                failures.append(error)
                cancel.cancel()

        async with trio.open_nursery() as nursery:
            for number, first in enumerate(range(0, info.size, size), 1):
                last = min(first + size, info.size) - 1
                nursery.start_soon(copy_one, number, first, last, nursery.cancel_scope)
        if failures:
            raise failures[0]
        return sorted(etags.items())

    async def _complete(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> StoredPart | None:
        try:
            return await self._thread(self._client.complete, key, upload_id, parts)
        except UploadGone:  # an earlier attempt may have completed before its answer was lost
            return None

    async def _check(self, info: ObjectInfo, key: str, stored: StoredPart | None,
                     started: float) -> ServerCopy:
        where = self._client.where(key)
        crc = stored.crc64ecma if stored is not None else None
        if crc is None:
            head = await self._thread(self._client.head, key, failure=TransferError)
            if head.size != info.size:
                await self._reject(key, f"{where} has {head.size} bytes after the copy, "
                                   f"the source {info.size}")
            crc = head.crc64ecma
        expected = info.crc64ecma
        if crc is not None and expected is not None and crc != expected:
            await self._reject(key, f"{where} has CRC-64 {crc} after the copy, the source {expected}")
        if self._read_back == "always" or expected is None or (self._read_back == "auto" and crc is None):
            digest: Digest = await self._thread(self._client.digest, key, failure=TransferError)
            if digest.size != info.size or (expected is not None and digest.crc64 != expected):
                await self._reject(key, f"{where} read back as {digest.size} bytes with CRC-64 "
                                   f"{digest.crc64}, the source has {info.size} bytes and CRC-64 {expected}")
            verified = VERIFIED_CRC64 if expected is not None else SIZE_ONLY
            return ServerCopy(crc64ecma=digest.crc64, sha256=digest.sha256, verified=verified,
                              seconds=time.monotonic() - started)
        assert expected is not None
        return ServerCopy(crc64ecma=expected, sha256=None, verified=VERIFIED_SERVER_SIDE,
                          seconds=time.monotonic() - started)

    async def _reject(self, key: str, reason: str) -> None:
        with trio.CancelScope(shield=True):
            await self._thread(self._client.delete, key)
        raise TransferError(f"{reason}; the copy was deleted")

    def _abort_quietly(self, key: str, upload_id: str) -> None:
        try:
            self._client.abort(key, upload_id)
        except UploadGone:
            pass
        except TransferError as error:
            log.warning("%s; the cleanup at the end of the run tries again", error)

    async def _thread(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await trio.to_thread.run_sync(partial(function, *args, **kwargs))


def copy_within_bucket(client: OssClient, source_key: str, target_key: str) -> None:
    """A second copy of an object of this bucket, made inside OSS part by part (blocking)."""
    head = client.head(source_key, failure=TransferError)
    if head.size == 0:
        client.put(target_key, b"")
        return
    upload_id = client.initiate(target_key)
    try:
        size = copy_part_size(head.size)
        parts = []
        for number, first in enumerate(range(0, head.size, size), 1):
            last = min(first + size, head.size) - 1
            stored = client.upload_part_copy(client.bucket, source_key, first, last,
                                             if_match=f'"{head.etag}"', key=target_key, upload_id=upload_id,
                                             number=number)
            parts.append((number, stored.etag))
        client.complete(target_key, upload_id, parts)
    except BaseException:
        with contextlib.suppress(TransferError):
            client.abort(target_key, upload_id)
        raise

"""One image streamed into an OSS multipart upload: parts checked by CRC-64, resumable, published by Complete.

`write` fills a part buffer; each full part is uploaded by a helper thread while the next one
fills (at most PARTS_IN_FLIGHT parts in flight: memory is a few parts per image, whatever its size), and OSS's
CRC-64 of each part must equal that of the bytes sent (a mismatch is uploaded again once). Each
verified part is recorded in the state folder (see `oss_state`), so a later run asks ListParts
which of them OSS still holds and goes on after the last contiguous one. `commit` completes the
upload only when the parts' combined CRC-64 is the source's: until then, whatever was under the
key (an older export) stays there untouched. An upload that fails for good is aborted.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace

from .. import killpoints
from ..checksum import Buffer, crc64
from ..crc64 import combine
from ..destination import PartialState
from ..errors import ImagesyncError, TransferError
from .oss_client import OssClient, StoredPart, UploadGone
from .oss_state import PartRecord, StateFolder, UploadRecord

log = logging.getLogger("imagesync")

MIB = 1 << 20
MIN_PART_BYTES = 8 * MIB
MAX_PARTS = 10_000
PARTS_IN_FLIGHT = 2  # memory per image: (PARTS_IN_FLIGHT + 1) parts


def part_size_for(size: int) -> int:
    """At least 8 MiB, and large enough (whole MiB) for the object to fit in 10,000 parts."""
    needed = -(-size // MAX_PARTS)
    return max(MIN_PART_BYTES, -(-needed // MIB) * MIB)


def combined_crc(parts: list[PartRecord]) -> int:
    crc = 0
    for part in parts:
        crc = combine(crc, part.crc64, part.size)
    return crc


def _same_source(a: PartialState, b: PartialState) -> bool:
    return (a.source_url, a.etag, a.size, a.crc64ecma) == (b.source_url, b.etag, b.size, b.crc64ecma)


def _same_etag(a: str, b: str) -> bool:
    return a.strip().strip('"').upper() == b.strip().strip('"').upper()


class OssPartial:
    """The multipart upload of one image (a `PartialCopy`); every method blocks."""

    def __init__(self, client: OssClient, state: StateFolder, key: str) -> None:
        self._client = client
        self._state = state
        self._key = key
        self._where = client.where(key)
        self._verified: tuple[UploadRecord, list[PartRecord]] | None = None  # from read_state
        self._record: UploadRecord | None = None  # the upload being written, after begin
        self._parts: list[PartRecord] = []  # stored and checked, appended as they finish
        self._next = 1  # the number of the part being filled
        self._buffer: bytearray | None = None
        self._free: list[bytearray] = []  # buffers of parts already stored
        self._filled = 0
        self._written = 0
        self._executor: ThreadPoolExecutor | None = None
        self._in_flight: deque[tuple[Future[None], bytearray]] = deque()
        self._failure: ImagesyncError | None = None

    # --- resume ---

    def read_state(self) -> tuple[PartialState | None, int]:
        """The source the recorded upload holds bytes of, and how many of them OSS still has."""
        record = self._state.load(self._key)
        if record is None:
            return None, 0
        kept = self._reconcile(record)
        if kept is None:
            return None, 0
        self._verified = (record, kept)
        return record.source, sum(part.size for part in kept)

    def digest_kept(self, size: int) -> None:
        return None  # an unfinished upload cannot be read back: the transfer re-reads the source

    def _reconcile(self, record: UploadRecord) -> list[PartRecord] | None:
        """The recorded parts from part 1 on that OSS lists with the same ETag and size."""
        try:
            listed = self._client.list_parts(self._key, record.upload_id)
        except UploadGone:
            self._state.remove(self._key)
            return None
        kept: list[PartRecord] = []
        total = 0
        for number, part in enumerate(record.parts, 1):
            found = listed.get(number)
            if part.number != number or found is None or not _same_etag(found[0], part.etag):
                break
            last = total + part.size == record.source.size
            if found[1] != part.size or (part.size != record.part_size and not last):
                break
            kept.append(part)
            total += part.size
        return kept

    def begin(self, state: PartialState, *, keep_bytes: int) -> None:
        self.close()
        self._failure = None
        if keep_bytes:
            record = self._resumed(state, keep_bytes)
        else:
            old = self._state.load(self._key)
            if old is not None:  # another source object's bytes, or a restart: no use now
                self._abort_quietly(old.upload_id)
            upload_id = self._client.initiate(self._key)
            record = UploadRecord(key=self._key, upload_id=upload_id, part_size=part_size_for(state.size),
                                  source=state)
        self._state.start(record)
        killpoints.reached("state-written")
        self._record = record
        self._parts = list(record.parts)
        self._next = len(record.parts) + 1
        self._written = keep_bytes
        self._executor = ThreadPoolExecutor(max_workers=PARTS_IN_FLIGHT, thread_name_prefix="imagesync-part")

    def _resumed(self, state: PartialState, keep_bytes: int) -> UploadRecord:
        """The recorded upload cut to its first ``keep_bytes`` bytes (parts beyond are dropped)."""
        if self._verified is None or not _same_source(self._verified[0].source, state):
            self.read_state()
        if self._verified is None or not _same_source(self._verified[0].source, state):
            raise TransferError(f"cannot resume the upload to {self._where}: its record is gone; "
                                "the next run starts it again")
        record, kept = self._verified
        parts: list[PartRecord] = []
        total = 0
        for part in kept:
            if total >= keep_bytes:
                break
            parts.append(part)
            total += part.size
        if total != keep_bytes:
            raise TransferError(f"cannot resume the upload to {self._where} at byte {keep_bytes}: "
                                "no part ends there")
        return replace(record, parts=tuple(parts))

    # --- writing ---

    def write(self, data: Buffer) -> None:
        if self._failure is not None:
            raise self._failure
        record = self._record
        assert record is not None, "begin() first"
        view = memoryview(data).cast("B")
        while len(view):
            if self._buffer is None:
                self._buffer = self._free.pop() if self._free else bytearray(record.part_size)
            take = min(len(view), record.part_size - self._filled)
            self._buffer[self._filled:self._filled + take] = view[:take]
            self._filled += take
            self._written += take
            view = view[take:]
            if self._filled == record.part_size or self._written >= record.source.size:
                self._submit()
        if self._written >= record.source.size:
            self._drain()  # the last byte is in: every part is stored and checked when this returns

    def _submit(self) -> None:
        """Hand the full buffer to a helper thread, once fewer than PARTS_IN_FLIGHT are on their way."""
        while len(self._in_flight) >= PARTS_IN_FLIGHT:
            self._wait_oldest()
        assert self._executor is not None and self._buffer is not None
        data = memoryview(self._buffer)[:self._filled]
        self._in_flight.append((self._executor.submit(self._upload, self._next, data), self._buffer))
        self._next += 1
        self._buffer = None
        self._filled = 0

    def _wait_oldest(self) -> None:
        future, buffer = self._in_flight.popleft()
        try:
            future.result()
        except ImagesyncError as error:
            self._settle()
            if self._failure is None:
                self._fail(error)
            assert self._failure is not None
            raise self._failure from None
        finally:
            self._free.append(buffer)

    def _settle(self) -> None:
        """Wait for the other parts in flight, whatever becomes of them (one failed already)."""
        while self._in_flight:
            future, buffer = self._in_flight.popleft()
            self._free.append(buffer)
            with contextlib.suppress(ImagesyncError):
                future.result()

    def _drain(self) -> None:
        """Wait for every part in flight; raises the first failure once none is left running."""
        while self._in_flight:
            self._wait_oldest()

    def _upload(self, number: int, data: memoryview) -> None:
        """Upload one part (in the helper thread); again once if OSS stored other bytes."""
        assert self._record is not None
        expected = crc64(data)
        stored: StoredPart | None = None
        for _ in range(2):
            stored = self._client.upload_part(self._key, self._record.upload_id, number, data)
            if stored.crc64ecma is None or stored.crc64ecma == expected:
                break
            log.warning("OSS stored part %d of %s with CRC-64 %d, the bytes sent have %d; uploading it again",
                        number, self._where, stored.crc64ecma, expected)
        else:
            got = stored.crc64ecma if stored else None
            raise TransferError(f"OSS stored part {number} of {self._where} with CRC-64 {got}, "
                                f"the bytes sent have {expected}, twice")
        part = PartRecord(number=number, size=len(data), etag=stored.etag, crc64=expected)
        self._state.append_part(self._key, part)
        self._parts.append(part)

    def _fail(self, error: ImagesyncError) -> None:
        """A part failed for good: abort the upload (a fatal error keeps it for the next run)."""
        if isinstance(error, TransferError) and self._record is not None:
            self._abort_quietly(self._record.upload_id)
            error = TransferError(f"{error}; the upload was aborted")
        self._failure = error

    # --- the end ---

    def commit(self) -> None:
        """Complete the upload once the parts' CRC-64 is the source's: the object appears (or
        replaces the old one) only now. An upload that cannot be completed is aborted."""
        record = self._record
        assert record is not None, "begin() first"
        try:
            if self._failure is not None:
                raise self._failure
            if self._filled:
                self._submit()
            self._drain()
            self._parts.sort(key=lambda part: part.number)
            if not self._parts:  # an empty object still needs one part
                assert self._executor is not None
                self._executor.submit(self._upload, 1, memoryview(b"")).result()
            self._complete(record)
        except TransferError as error:
            if self._failure is None:
                self._fail(error)
            raise TransferError(f"cannot publish {self._where}: {self._failure}") from None
        finally:
            self.close()
        self._state.remove(self._key)

    def _complete(self, record: UploadRecord) -> None:
        crc = combined_crc(self._parts)
        expected = record.source.crc64ecma
        if expected and int(expected) != crc:
            raise TransferError(f"the parts uploaded combine to CRC-64 {crc}, the source has {expected}")
        numbered = [(part.number, part.etag) for part in self._parts]
        try:
            stored = self._client.complete(self._key, record.upload_id, numbered)
            published = stored.crc64ecma
        except UploadGone:  # an earlier attempt may have completed before its answer was lost
            published = None
        if published is None:
            head = self._client.head(self._key)
            if head.size != self._written:
                raise TransferError(f"{self._where} has {head.size} bytes after Complete, "
                                    f"not {self._written}")
            published = head.crc64ecma
        if published is not None and published != crc:
            self._client.delete(self._key)
            raise TransferError(f"{self._where} has CRC-64 {published} after Complete, its parts {crc}; "
                                "the object was deleted")

    def discard(self) -> None:
        self.close()
        record = self._state.load(self._key)
        if record is not None:
            self._abort_quietly(record.upload_id)

    def close(self) -> None:
        """Wait for the part in flight (so it is recorded), then let go of the buffers."""
        with contextlib.suppress(ImagesyncError):  # recorded in self._failure
            self._drain()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._buffer = None
        self._free.clear()
        self._filled = 0

    def _abort_quietly(self, upload_id: str) -> None:
        """Abort an upload and forget its record; one that cannot be aborted now is left to the
        cleanup at the end of a sync (it then lists no record)."""
        try:
            self._client.abort(self._key, upload_id)
        except UploadGone:
            pass
        except TransferError as error:
            log.warning("%s; the cleanup at the end of the run tries again", error)
        self._state.remove(self._key)

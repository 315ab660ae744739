"""Copy one image: stream, hash, write, verify, commit; resume and retry on the way.

Bytes are received from the source's ranged GET straight into a batch buffer. Each full batch
is written in one worker thread and hashed (CRC-64 and sha256) in another, while the next batch
is received into a second buffer: one image keeps the network, a core and the disk busy at once,
and the event loop keeps serving the other transfers. The file is renamed to its final name
only after its size and CRC-64 match what OSS publishes. Failures are classified by what
happens next: resume (drops, 5xx), re-sign (expired URL), restart from zero (object changed,
checksum mismatch once), or give up on this image.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import outcome
import trio

from . import killpoints
from .bandwidth import BandwidthLimit
from .checksum import Digest
from .destination import PartialCopy, PartialState, SegmentedCopy
from .errors import ChecksumMismatchError, DestinationError, SourceChangedError
from .manifest import SIZE_ONLY, VERIFIED_CRC64, VERIFIED_MD5
from .retry import FailureBudget, RetryPolicy
from .segments import RangesIgnored, SegmentedDownload
from .source import ObjectInfo, ObjectSource, TransientError, UrlExpiredError

log = logging.getLogger("imagesync")

BATCH_BYTES = 8 << 20
READ_BYTES = 1 << 20  # per receive
ALIGN = 4096  # the block size direct I/O writes in
MAX_CHECKSUM_FAILURES = 2
MAX_RESIGNS = 3
T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class Segmenting:
    """``transfer.segments`` connections per image, for images larger than one piece."""

    connections: int
    piece_size: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Copied:
    """A verified copy now under its final name."""

    info: ObjectInfo
    sha256: str | None  # None only for a server-side copy that was not read back
    crc64ecma: int
    verified: str  # manifest.VERIFIED_CRC64, VERIFIED_MD5 or SIZE_ONLY
    bytes_transferred: int
    seconds: float


class ImageCopy:
    """The state of copying one object into one partial file."""

    def __init__(
        self,
        source: ObjectSource,
        partial: PartialCopy,
        info: ObjectInfo,
        *,
        retry: RetryPolicy,
        limiter: trio.CapacityLimiter,
        bandwidth: BandwidthLimit | None = None,
        segments: Segmenting | None = None,
        on_bytes: Callable[[int], None],
    ) -> None:
        self._source = source
        self._partial = partial
        self._info = info
        self._retry = retry
        self._limiter = limiter
        self._bandwidth = bandwidth
        self._segmenting = segments
        self._pieces: SegmentedDownload | None = None  # set by _begin when the image is segmented
        self._on_bytes = on_bytes
        self._digest = Digest()
        self._transferred = 0
        self._buffers: tuple[mmap.mmap, mmap.mmap] | None = None  # reused: fresh ones cost page faults
        self._changed = False  # the object changed under us: HEAD it again and start over
        self._flush: _Flush | None = None  # the batch being written and hashed while the next fills

    async def run(self, *, resume: bool) -> Copied:
        """Verified bytes in the partial copy, ready for `PartialCopy.commit` by the caller.

        On failure the partial copy is closed (kept for resume, or discarded when it is known bad).
        """
        try:
            return await self._run(resume=resume)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._thread(self._partial.close)
            raise

    async def _run(self, *, resume: bool) -> Copied:
        started = time.monotonic()
        await self._begin(resume=resume and self._can_resume)
        checksum_failures = resigns = 0
        failures = FailureBudget(self._retry, BATCH_BYTES)
        while True:
            try:
                if self._changed:
                    self._info = await self._source.head()
                    await self._begin(resume=False)
                    self._changed = False
                await self._stream()
                verified = self._verify()
                return Copied(info=self._info, sha256=self._digest.sha256, crc64ecma=self._digest.crc64,
                              verified=verified, bytes_transferred=self._transferred,
                              seconds=time.monotonic() - started)
            except ChecksumMismatchError as error:
                checksum_failures += 1
                if checksum_failures >= MAX_CHECKSUM_FAILURES:
                    await self._thread(self._partial.discard)
                    raise
                log.debug("%s; fetching it again from the start", error)
                await self._begin(resume=False)
            except UrlExpiredError:
                resigns += 1
                if resigns > MAX_RESIGNS:
                    raise
                log.debug("%s: the presigned URL expired; signing a new one",
                          self._source.location.public_url)
                self._source.resign()
            except RangesIgnored as error:
                log.debug("%s; downloading it over one connection", error)
                self._segmenting = None
                await self._begin(resume=False)
            except (TransientError, SourceChangedError) as error:
                log.debug("%s: %s; %s", self._source.location.public_url, error,
                          "starting over" if isinstance(error, SourceChangedError) else
                          f"resuming at byte {self._digest.size}")
                await failures.wait_or_give_up(error, self._digest.size)
                if isinstance(error, SourceChangedError):
                    self._changed = True
                elif not self._can_resume:  # no CRC to vouch for a resumed file: start over
                    await self._begin(resume=False)

    @property
    def _can_resume(self) -> bool:
        """Resuming is safe only when the object's CRC-64 will check the joined file."""
        return self._info.crc64ecma is not None

    async def _begin(self, *, resume: bool) -> None:
        """Open the partial file: keep and re-hash what a previous run left, or start at zero."""
        self._pieces = self._segmented()
        if self._pieces is not None:
            kept_bytes = await self._pieces.begin(resume=resume)
            if kept_bytes:
                log.debug("%s: resuming with %d bytes kept in pieces", self._source.location.public_url,
                          kept_bytes)
            return
        if self._buffers is None:  # page-aligned, as direct I/O wants
            self._buffers = (mmap.mmap(-1, BATCH_BYTES), mmap.mmap(-1, BATCH_BYTES))
        state = PartialState(source_url=self._source.location.public_url, etag=self._info.etag,
                             size=self._info.size, crc64ecma=str(self._info.crc64ecma or ""))
        keep = 0
        if resume:
            recorded, on_disk = await self._thread(self._partial.read_state)
            if recorded is not None and recorded.same_object(state) and on_disk <= self._info.size:
                keep = on_disk
        self._digest = Digest(md5=self._info.crc64ecma is None and self._info.content_md5 is not None)
        if keep:
            try:  # read-only, so a signal need not wait for it
                kept = await trio.to_thread.run_sync(
                    self._partial.digest_kept, keep, limiter=self._limiter, abandon_on_cancel=True)
                self._digest = kept if kept is not None else await self._rehash_from_source(keep)
            except (OSError, DestinationError):
                keep = 0  # an unreadable partial is no use: fetch it all again
        killpoints.reached("begin")
        await self._thread(self._partial.begin, state, keep_bytes=keep)

    def _segmented(self) -> SegmentedDownload | None:
        """A download in pieces over several connections, where it is asked for and pays."""
        segmenting, partial, info = self._segmenting, self._partial, self._info
        if (segmenting is None or segmenting.connections < 2 or info.size <= segmenting.piece_size
                or not isinstance(partial, SegmentedCopy)):
            return None
        return SegmentedDownload(self._source, partial, info, connections=segmenting.connections,
                                 piece_size=segmenting.piece_size, retry=self._retry, thread=self._thread,
                                 bandwidth=self._bandwidth, on_bytes=self._count)

    def _count(self, count: int) -> None:
        self._transferred += count
        self._on_bytes(count)

    async def _rehash_from_source(self, size: int) -> Digest:
        """Hash the first ``size`` bytes of the source again, writing nothing: for a destination
        that cannot read back what it kept (the bytes of an unfinished OSS upload)."""
        digest = Digest(md5=self._digest.md5_base64 is not None)
        buffer = memoryview(bytearray(READ_BYTES))
        async with self._source.open_range(0, self._info) as body:
            while digest.size < size and (count := await body.read_into(buffer[: size - digest.size])):
                await self._thread(digest.update, buffer[:count])
        if digest.size != size:
            raise TransientError(f"{self._source.location.public_url} ended before byte {size}")
        return digest

    async def _stream(self) -> None:
        """Append the rest of the object; on any error, what arrived so far is kept on disk."""
        if self._pieces is not None:
            await self._pieces.stream()
            self._digest = self._pieces.digest
            return
        if self._digest.size == self._info.size:
            return
        assert self._buffers is not None
        batch, spare = _Batch(self._buffers[0]), _Batch(self._buffers[1])
        try:
            async with self._source.open_range(self._digest.size, self._info) as body:
                if body.start != self._digest.size:  # the server sent the whole object instead
                    await self._begin(resume=False)
                while count := await body.read_into(batch.free()):
                    if self._bandwidth is not None:
                        await self._bandwidth.consume(count)
                    batch.filled += count
                    if batch.full:
                        await self._settle()
                        await self._start_flush(batch, batch.filled)
                        batch, spare = spare, batch
        finally:
            with trio.CancelScope(shield=True):
                await self._settle()  # if a write failed, this raises again: nothing follows it
                # Only the end of the object may leave the file at an unaligned length (direct
                # I/O writes whole blocks): after a drop, the last partial block is fetched again.
                complete = self._digest.size + batch.filled == self._info.size
                count = batch.filled if complete else batch.filled - batch.filled % ALIGN
                await self._start_flush(batch, count)
                await self._settle()
        killpoints.reached("body-complete")
        if self._digest.size != self._info.size:
            raise TransientError(
                f"{self._source.location.public_url} ended after {self._digest.size} "
                f"of {self._info.size} bytes"
            )

    # Ctrl-C is held off here: the flush is recorded if and only if its threads were started, so
    # the `finally` in _stream always waits for them and never writes the batch a second time.
    @trio.lowlevel.enable_ki_protection
    async def _start_flush(self, batch: _Batch, count: int) -> None:
        """Start hashing and writing the first ``count`` bytes of the batch (the rest, if any, is
        dropped); it is settled before the next one starts, so batches land in order."""
        assert self._flush is None, "settle the last flush first"
        if not count:
            return
        if self._digest.size + count > self._info.size:
            raise SourceChangedError(f"{self._source.location.public_url} sent more bytes than its size")
        data = batch.view()[:count]
        self._flush = _Flush(batch, count, (partial(self._partial.write, data),
                                            partial(self._digest.update, data)), self._limiter)
        await self._flush.start()

    async def _settle(self) -> None:
        """Wait for the flush in flight (a write cannot be interrupted) and count its bytes. A
        flush that failed stays, and raises each time: no later batch is written after the gap."""
        if self._flush is None:
            return
        await self._flush.wait()
        count, self._flush = self._flush.count, None
        self._count(count)
        killpoints.reached("batch-written")

    def _verify(self) -> str:
        """Check the bytes against what OSS publishes; returns how they were verified."""
        url = self._source.location.public_url
        expected_crc, expected_md5 = self._info.crc64ecma, self._info.content_md5
        if expected_crc is not None:
            if self._digest.crc64 != expected_crc:
                raise ChecksumMismatchError(f"{url}: CRC-64 of the bytes received is {self._digest.crc64}, "
                                            f"OSS publishes {expected_crc}; the copy was discarded")
            return VERIFIED_CRC64
        if expected_md5 is not None:
            if self._digest.md5_base64 != expected_md5:
                raise ChecksumMismatchError(f"{url}: MD5 of the bytes received is {self._digest.md5_base64}, "
                                            f"OSS publishes {expected_md5}; the copy was discarded")
            return VERIFIED_MD5
        return SIZE_ONLY

    async def _thread(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await trio.to_thread.run_sync(partial(function, *args, **kwargs), limiter=self._limiter)


class _Batch:
    """A preallocated, page-aligned buffer the body is received into: the bytes land where they
    are hashed and written from, and every batch but the last is a whole number of blocks, as
    direct I/O needs."""

    def __init__(self, buffer: mmap.mmap) -> None:
        self._view = memoryview(buffer)
        self.filled = 0

    def free(self) -> memoryview:
        """Where the next bytes go: at most `READ_BYTES` (the bandwidth limit and progress stay smooth)."""
        return self._view[self.filled: self.filled + READ_BYTES]

    @property
    def full(self) -> bool:
        return self.filled == len(self._view)

    def view(self) -> memoryview:
        return self._view[: self.filled]

    def clear(self) -> None:
        self.filled = 0


class _Flush:
    """One batch being written and hashed, each in its own worker thread, while the event loop
    receives the next batch into the other buffer: the write and the hash overlap, and both
    overlap the network. ``wait`` returns once both calls have, and the batch is free again."""

    def __init__(self, batch: _Batch, count: int, calls: tuple[Callable[[], None], ...],
                 limiter: trio.CapacityLimiter) -> None:
        self.count = count
        self._batch = batch
        self._calls = calls
        self._limiter = limiter
        self._results: list[outcome.Outcome[None] | None] = [None] * len(calls)
        self._done = trio.Event()

    async def start(self) -> None:
        token = trio.lowlevel.current_trio_token()
        with trio.CancelScope(shield=True):  # once one call runs, every one must, and be waited for
            for index, call in enumerate(self._calls):
                await self._limiter.acquire_on_behalf_of(call)
                try:
                    trio.lowlevel.start_thread_soon(call, partial(self._deliver, token, index))
                except Exception as error:  # no thread to run it (the process is out of them)
                    self._finish(index, outcome.Error(error))

    def _deliver(self, token: trio.lowlevel.TrioToken, index: int, result: outcome.Outcome[None]) -> None:
        with contextlib.suppress(trio.RunFinishedError):  # the run was torn down: nobody is waiting
            token.run_sync_soon(self._finish, index, result)  # from the worker thread to the event loop

    def _finish(self, index: int, result: outcome.Outcome[None]) -> None:
        self._limiter.release_on_behalf_of(self._calls[index])
        self._results[index] = result
        if None not in self._results:
            self._done.set()

    async def wait(self) -> None:
        with trio.CancelScope(shield=True):  # a thread cannot be stopped; its bytes must be counted
            await self._done.wait()
        self._batch.clear()
        # The write's error first: when both fail, a full disk is what matters.
        errors = [result.error for result in self._results if isinstance(result, outcome.Error)]
        if errors:
            raise errors[0]

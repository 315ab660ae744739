"""Download one image over several connections: pieces fetched in parallel, written at their offsets.

A single connection to OSS over the internet is limited in speed, so a large image is cut into
pieces of ``transfer.min_segment_size`` bytes and ``transfer.segments`` tasks take the next
piece in order (as aria2c does with ``-x``/``-s``): each is a ranged GET with ``If-Match``,
written at its offset with its own CRC-64. The image's CRC-64 is the combination of the pieces'
(crc64 combine) and must equal what OSS publishes. sha256 is computed front to back as the
contiguous prefix grows, by reading those bytes back (still in the page cache), which also checks
that what is on disk is what arrived. Every few dozen MiB the progress of every piece is
checkpointed in the state file, after the bytes are on disk, so a later run resumes each piece
where it stopped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import trio

from . import killpoints
from .bandwidth import BandwidthLimit
from .checksum import Digest
from .crc64 import combine, crc64
from .destination import PartialState, SegmentedCopy
from .errors import ChecksumMismatchError, SourceChangedError, TransferError, TransientError, UrlExpiredError
from .retry import FailureBudget, RetryPolicy
from .source import ObjectInfo, ObjectSource

log = logging.getLogger("imagesync")

PIECE_BATCH_BYTES = 2 << 20  # per connection: memory stays flat however many connections
READ_BACK_BYTES = 4 << 20
CHECKPOINT_BYTES = int(os.environ.get("IMAGESYNC_CHECKPOINT_BYTES", 64 << 20))  # tests lower it
MAX_RESIGNS = 3

Thread = Callable[..., Awaitable[Any]]


class RangesIgnored(TransferError):
    """The server answered a piece with the whole object: download it front to back instead."""


@dataclass(slots=True)
class _Piece:
    index: int
    start: int
    end: int
    # (bytes of the piece on disk, their CRC-64), replaced as one value so a checkpoint taken
    # while a writer thread runs never pairs a length with another length's CRC.
    progress: tuple[int, int] = (0, 0)

    @property
    def done(self) -> int:
        return self.progress[0]

    @property
    def complete(self) -> bool:
        return self.progress[0] == self.end - self.start


class SegmentedDownload:
    """The pieces of one object, fetched by ``connections`` tasks into one partial copy."""

    def __init__(self, source: ObjectSource, partial: SegmentedCopy, info: ObjectInfo, *,
                 connections: int, piece_size: int, retry: RetryPolicy, thread: Thread,
                 bandwidth: BandwidthLimit | None, on_bytes: Callable[[int], None]) -> None:
        self._source = source
        self._partial = partial
        self._info = info
        self._connections = connections
        self._piece_size = piece_size
        self._retry = retry
        self._thread = thread
        self._bandwidth = bandwidth
        self._on_bytes = on_bytes
        self._pieces: list[_Piece] = []
        self._hashed = 0
        self._hash_lock = trio.Lock()
        self._checkpoint_lock = trio.Lock()
        self._since_checkpoint = 0
        self._resigns = 0
        self.digest = Digest()
        self.transferred = 0

    async def begin(self, *, resume: bool) -> int:
        """Cut the object into pieces, taking over the progress a previous run checkpointed;
        returns the bytes kept."""
        info, size = self._info, self._info.size
        self._pieces = [_Piece(i, start, min(start + self._piece_size, size))
                        for i, start in enumerate(range(0, size, self._piece_size))] or [_Piece(0, 0, 0)]
        on_disk = 0
        if resume:
            recorded, on_disk = await self._thread(self._partial.read_state)
            if recorded is not None and recorded.same_object(self._state()):
                self._take_over(recorded, on_disk)
        kept = sum(piece.done for piece in self._pieces)
        await self._thread(self._partial.begin, self._state(), keep_bytes=on_disk if kept else 0)
        self.digest = Digest(md5=info.crc64ecma is None and info.content_md5 is not None)
        self._hashed = 0
        return kept

    def _take_over(self, recorded: PartialState, on_disk: int) -> None:
        for entry in recorded.pieces:
            if len(entry) != 3 or not all(type(value) is int for value in entry):
                continue  # a state file edited by hand: that piece starts over
            index, done, crc = entry
            if 0 <= index < len(self._pieces):
                piece = self._pieces[index]
                if 0 <= done <= piece.end - piece.start and piece.start + done <= on_disk:
                    piece.progress = (done, crc)

    def _state(self) -> PartialState:
        info = self._info
        return PartialState(
            source_url=self._source.location.public_url, etag=info.etag, size=info.size,
            crc64ecma=str(info.crc64ecma or ""), piece_size=self._piece_size,
            pieces=tuple((p.index, *p.progress) for p in self._pieces if p.done))

    async def stream(self) -> None:
        """Fetch every piece not complete yet, then check the pieces' combined CRC-64 against
        the bytes read back from disk (the caller checks it against OSS's)."""
        todo: Iterator[_Piece] = iter([piece for piece in self._pieces if not piece.complete])
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(self._connections):
                    nursery.start_soon(self._work, todo)
        except BaseExceptionGroup as group:
            raise _one_transfer_error(group) from None
        await self._hash_ready()
        received = 0
        for piece in self._pieces:
            received = combine(received, piece.progress[1], piece.done)
        if self._hashed != self._info.size or received != self.digest.crc64:
            raise ChecksumMismatchError(
                f"{self._source.location.public_url}: the bytes read back from disk (CRC-64 "
                f"{self.digest.crc64}) differ from those received ({received}); the copy was discarded")

    async def _work(self, todo: Iterator[_Piece]) -> None:
        buffer = bytearray(PIECE_BATCH_BYTES)
        for piece in todo:  # trio switches tasks only at awaits: next() is never shared mid-way
            await self._fetch(piece, buffer)
            await self._hash_ready()

    async def _fetch(self, piece: _Piece, buffer: bytearray) -> None:
        budget = FailureBudget(self._retry, PIECE_BATCH_BYTES)
        while not piece.complete:
            try:
                await self._stream_piece(piece, buffer)
            except UrlExpiredError:
                self._resigns += 1
                if self._resigns > MAX_RESIGNS:
                    raise
                self._source.resign()
            except TransientError as error:
                log.debug("piece %d of %s: %s; retrying from byte %d", piece.index,
                          self._source.location.public_url, error, piece.start + piece.done)
                await budget.wait_or_give_up(error, piece.done)

    async def _stream_piece(self, piece: _Piece, buffer: bytearray) -> None:
        view, filled = memoryview(buffer), 0
        offset = piece.start + piece.done
        try:
            async with self._source.open_range(offset, self._info, end=piece.end) as body:
                if body.start != offset:
                    raise RangesIgnored(f"{self._source.location.public_url} ignores ranged requests")
                while count := await body.read_into(view[filled:]):
                    if self._bandwidth is not None:
                        await self._bandwidth.consume(count)
                    filled += count
                    if filled == len(view):
                        # Emptied before the await: a cancellation during the write (or the
                        # checkpoint after it) must not let the `finally` write it again.
                        filled = 0
                        await self._write(piece, view)
        finally:
            with trio.CancelScope(shield=True):
                await self._write(piece, view[:filled])

    async def _write(self, piece: _Piece, data: memoryview) -> None:
        if not data:
            return
        await self._thread(self._write_piece, piece, data)
        self.transferred += len(data)
        self._on_bytes(len(data))
        killpoints.reached("batch-written")
        self._since_checkpoint += len(data)
        if self._since_checkpoint >= CHECKPOINT_BYTES and not self._checkpoint_lock.locked():
            async with self._checkpoint_lock:
                self._since_checkpoint = 0
                await self._thread(self._partial.checkpoint, self._state())

    def _write_piece(self, piece: _Piece, data: memoryview) -> None:
        done, crc = piece.progress
        self._partial.write_at(piece.start + done, data)
        piece.progress = (done + len(data), crc64(data, crc))

    async def _hash_ready(self) -> None:
        """Hash, in order, the bytes of the pieces complete from the front."""
        async with self._hash_lock:
            frontier = 0
            for piece in self._pieces:
                frontier = piece.start + piece.done
                if not piece.complete:
                    break
            while self._hashed < frontier:
                count = await self._thread(self._read_and_hash, self._hashed,
                                           min(READ_BACK_BYTES, frontier - self._hashed))
                self._hashed += count

    def _read_and_hash(self, offset: int, size: int) -> int:
        data = self._partial.read_at(offset, size)
        if len(data) != size:
            raise ChecksumMismatchError(
                f"{self._source.location.public_url}: the partial file is shorter than what was written")
        self.digest.update(data)
        return size


def _one_transfer_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """What the image copy acts on when pieces failed: the error that decides the most (a changed
    object or ignored ranges over a piece's drop); anything else (a cancellation) as it came."""
    matched, rest = group.split(TransferError)
    if rest is not None or matched is None:
        return group
    leaves: list[BaseException] = []
    pending: list[BaseException] = [matched]
    while pending:
        item = pending.pop()
        if isinstance(item, BaseExceptionGroup):
            pending.extend(item.exceptions)
        else:
            leaves.append(item)
    for kind in (SourceChangedError, RangesIgnored, ChecksumMismatchError, UrlExpiredError):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return leaves[0]

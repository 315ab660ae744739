"""What a destination must offer: the seam between the pipeline and where images are kept.

`plan`, `transfer`, `sync` and `verify` see only these protocols; `sinks/local.py` (a directory)
implements them, and every implementation passes ``tests/test_destination_conformance.py``. As
in rclone's ``Fs``/``Object`` split, a destination knows how to store bytes durably and
atomically; it knows nothing of ENS, plans or retries. Every method blocks: callers run them
in a worker thread.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .checksum import Buffer, Digest

if TYPE_CHECKING:  # only types: keeps this module free of the HTTP stack
    from .source import ObjectInfo, ObjectLocation

# The names a destination keeps for itself at its top (or on a file's name): layout.py never
# gives them to an image.
LOCK_NAME = ".imagesync.lock"
MANIFEST_NAME = "manifest.json"
SUMS_NAME = "SHA256SUMS"
JOURNAL_NAME = "manifest.journal"
REPLACED_FOLDER = "replaced"
PARTIAL_SUFFIX = ".imagesync-part"
STATE_SUFFIX = ".imagesync-state"
RESERVED_NAMES = frozenset({LOCK_NAME, MANIFEST_NAME, SUMS_NAME, JOURNAL_NAME, REPLACED_FOLDER})
RESERVED_SUFFIXES = (PARTIAL_SUFFIX, STATE_SUFFIX)


@dataclass(frozen=True, slots=True, kw_only=True)
class PartialState:
    """Which source object the bytes of a partial copy come from, and for a segmented
    download, how far each piece got: ``(index, bytes done, CRC-64 of those bytes)``."""

    source_url: str
    etag: str
    size: int
    crc64ecma: str
    piece_size: int = 0  # 0: written front to back, the partial's length is the progress
    pieces: tuple[tuple[int, int, int], ...] = ()

    def __post_init__(self) -> None:  # from JSON, lists become tuples again
        object.__setattr__(self, "pieces", tuple(tuple(piece) for piece in self.pieces))

    def same_object(self, other: PartialState) -> bool:
        return (self.source_url, self.etag, self.size, self.crc64ecma, self.piece_size) == (
            other.source_url, other.etag, other.size, other.crc64ecma, other.piece_size)


@dataclass(frozen=True, slots=True, kw_only=True)
class Mirrored:
    """What is under an image's final name."""

    size: int
    crc64ecma: int | None = None  # known without reading the bytes (an OSS object's header)


class PartialCopy(Protocol):
    """The copy of one image in progress: invisible under its final name until `commit`."""

    def read_state(self) -> tuple[PartialState | None, int]:
        """The recorded state and the bytes kept; ``(None, 0)`` when nothing usable is there."""
        ...

    def digest_kept(self, size: int) -> Digest | None:
        """CRC-64 and sha256 of the first ``size`` bytes kept (to resume the running hashes), or
        None where they cannot be read back (an OSS upload): the caller re-reads them from the source."""
        ...

    def begin(self, state: PartialState, *, keep_bytes: int) -> None:
        """Start writing after the first ``keep_bytes`` bytes (0: afresh) of the object ``state`` names."""
        ...

    def write(self, data: Buffer) -> None: ...

    def commit(self) -> None:
        """Make the copy durable and visible under its final name, replacing what was there."""
        ...

    def discard(self) -> None:
        """Forget the partial copy and its state."""
        ...

    def close(self) -> None:
        """Release what `begin` holds; the partial copy stays for a later resume."""
        ...


@runtime_checkable
class KeepsReplaced(Protocol):
    """A destination that can keep an image's earlier copy aside (destination.keep_replaced)."""

    def keep_aside(self, path: PurePosixPath, aside: PurePosixPath) -> None:
        """Make ``aside`` a second name for what is under ``path`` now (which stays in place)."""
        ...

    def remove(self, path: PurePosixPath) -> None:
        """Remove a copy kept aside (never following a link); gone already is fine."""
        ...


@runtime_checkable
class SegmentedCopy(PartialCopy, Protocol):
    """A partial copy that can be written in pieces, out of order, and read back."""

    def write_at(self, offset: int, data: Buffer) -> None: ...

    def read_at(self, offset: int, size: int) -> bytes: ...

    def checkpoint(self, state: PartialState) -> None:
        """Make every byte written so far durable, then record ``state`` (the pieces' progress)."""
        ...


class ManifestStore(Protocol):
    """Where the manifest lives: a journal of O(1) records and atomically published documents."""

    where: str  # the manifest's location, for messages
    journal_where: str  # the journal's

    def read_manifest(self) -> bytes | None: ...

    def read_journal(self) -> bytes | None: ...

    def append_journal(self, line: bytes) -> None:
        """Append one record; durable when this returns. A failed append leaves no torn line."""
        ...

    def publish(self, manifest: bytes, sums: bytes) -> None:
        """Replace manifest.json and then SHA256SUMS, each atomically and durably."""
        ...

    def clear_journal(self) -> None:
        """Empty the journal (its records are in a published manifest)."""
        ...

    def remove_journal(self) -> None: ...


class Destination(Protocol):
    """A place that keeps mirrored images under relative paths."""

    name: str  # the resolved destination, as users should see it

    def prepare(self) -> None:
        """Create the destination if needed and check it can be written (a sync run, not a dry run)."""
        ...

    def lock(self, *, shared: bool = False) -> AbstractContextManager[None]:
        """Hold the run lock: exclusive for a sync, shared for verify."""
        ...

    def free_bytes(self) -> int | None:
        """Room left, or None where it has no meaning."""
        ...

    def stat(self, path: PurePosixPath) -> Mirrored | None:
        """The image under its final name; None when nothing trustworthy is there."""
        ...

    def digest(self, path: PurePosixPath) -> Digest | None:
        """Hash the bytes under the final name; None when missing, `DestinationError` when unreadable."""
        ...

    def partial(self, path: PurePosixPath) -> PartialCopy: ...

    def manifest_store(self) -> ManifestStore | None:
        """Where the manifest is kept; None when the destination does not exist yet (a dry run)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerCopy:
    """An object copied inside OSS and published under its final key."""

    crc64ecma: int  # the source's, matched by the copy as far as OSS lets us check
    sha256: str | None  # only when the copy was read back
    verified: str  # manifest.VERIFIED_SERVER_SIDE, or VERIFIED_CRC64 when read back
    seconds: float


@runtime_checkable
class ServerSideCopier(Protocol):
    """A destination that can copy an object without its bytes crossing this host."""

    def server_side_copy_reason(self, source: ObjectLocation) -> str | None:
        """Why ``source`` can be copied server-side (e.g. "same region cn-hangzhou"); None if it cannot."""
        ...

    async def copy_server_side(self, source: ObjectLocation, info: ObjectInfo,
                               path: PurePosixPath) -> ServerCopy:
        """Copy, verify and publish under ``path`` (replacing what is there only once verified).

        Raises `TransferError` for this image; the copy is then aborted, never published.
        """
        ...

"""One suite every destination passes (as rclone's fstests): a local directory and an OSS bucket.

Each test drives the `Destination` protocol exactly as `transfer` and `sync` do, through the
real factory (`sync.open_destination`), and checks what a reader of the destination would see.
The OSS destination runs against the emulator over a real socket; its objects are read back with
oss2 itself. Nothing of imagesync is mocked.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import oss2
import pytest
from conftest import StartEmulator

from imagesync.checksum import crc64
from imagesync.config import Config, CredentialsConfig, DestinationConfig, TransferConfig
from imagesync.destination import Destination, PartialCopy, PartialState
from imagesync.errors import ImagesyncError, LockedError
from imagesync.sync import open_destination

MIB = 1 << 20
SIZE = 20 * MIB  # more than two OSS parts (8 MiB), not a multiple of one
CHUNK = 3 * MIB  # writes that straddle part boundaries
IMAGE = PurePosixPath("dir/m-conformance.qcow2")


@dataclass
class Backend:
    """How to open the destination under test, and what it leaves behind besides images."""

    name: str
    open: Callable[[], Destination]
    leftovers: Callable[[], list[str]]  # partial files, or open multipart uploads
    read_final: Callable[[], bytes | None]  # the image under its final name, read without imagesync


def _local(tmp_path: Path) -> Backend:
    root = tmp_path / "mirror"
    config = Config(destination=DestinationConfig(url=str(root)))

    def leftovers() -> list[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("*.imagesync-*")) if root.exists() else []

    def read_final() -> bytes | None:
        path = root / str(IMAGE)
        return path.read_bytes() if path.exists() else None

    return Backend("local", lambda: open_destination(config, None), leftovers, read_final)


def _oss(tmp_path: Path, start_emulator: StartEmulator) -> Backend:
    emulator = start_emulator(images=1, image_size="64KiB", dest_buckets=["dest"])
    config = Config(
        credentials=CredentialsConfig(access_key_id=emulator.access_key_id,
                                      access_key_secret=emulator.access_key_secret),
        destination=DestinationConfig(url="oss://dest/conformance", oss_endpoint=emulator.url,
                                      region="cn-hangzhou", state_dir=str(tmp_path / "state")),
        transfer=TransferConfig(retry_delay_s=0.05),
    )
    bucket = emulator.dest_bucket("dest")

    def leftovers() -> list[str]:
        return [u.key for u in oss2.MultipartUploadIterator(bucket, prefix="conformance/")]

    def read_final() -> bytes | None:
        try:
            return bytes(bucket.get_object(f"conformance/{IMAGE}").read())
        except oss2.exceptions.NoSuchKey:
            return None

    return Backend("oss", lambda: open_destination(config, None), leftovers, read_final)


@pytest.fixture(params=["local", "oss"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, start_emulator: StartEmulator) -> Backend:
    if request.param == "local":
        return _local(tmp_path)
    return _oss(tmp_path, start_emulator)


@contextlib.contextmanager
def opened(backend: Backend) -> Iterator[Destination]:
    destination = backend.open()
    try:
        destination.prepare()
        yield destination
    finally:
        destination.close()


def image(seed: int) -> tuple[bytes, PartialState]:
    data = os.urandom(SIZE) if seed < 0 else hashlib.sha256(str(seed).encode()).digest() * (SIZE // 32)
    state = PartialState(source_url=f"https://src.oss-cn-hangzhou.aliyuncs.com/{seed}.qcow2",
                         etag=f'"ETAG-{seed}"', size=len(data), crc64ecma=str(crc64(data)))
    return data, state


def write(partial: PartialCopy, data: bytes) -> None:
    for start in range(0, len(data), CHUNK):
        partial.write(data[start:start + CHUNK])


def begun(destination: Destination, state: PartialState) -> PartialCopy:
    """A new partial copy of IMAGE, started from zero."""
    partial = destination.partial(IMAGE)
    partial.begin(state, keep_bytes=0)
    return partial


def mirror(destination: Destination, data: bytes, state: PartialState) -> None:
    partial = begun(destination, state)
    write(partial, data)
    partial.commit()


def test_partial_then_resume_then_commit(backend: Backend) -> None:
    data, state = image(1)
    with opened(backend) as destination:
        partial = begun(destination, state)
        write(partial, data[:13 * MIB])
        partial.close()
        assert backend.read_final() is None  # nothing under the final name before commit
    with opened(backend) as destination:
        partial = destination.partial(IMAGE)
        recorded, kept = partial.read_state()
        assert recorded == state
        assert 0 < kept <= 13 * MIB
        kept_digest = partial.digest_kept(kept)
        if kept_digest is not None:  # a local file reads back; an OSS upload does not
            assert kept_digest.sha256 == hashlib.sha256(data[:kept]).hexdigest()
        partial.begin(state, keep_bytes=kept)
        write(partial, data[kept:])
        partial.commit()
        assert partial.read_state() == (None, 0)
    assert backend.read_final() == data
    assert backend.leftovers() == []


def test_commit_refuses_fewer_bytes_than_the_object(backend: Backend) -> None:
    """The last guard against a lost write: what was hashed but never landed is never published."""
    data, state = image(2)
    with opened(backend) as destination:
        partial = begun(destination, state)
        write(partial, data[:5 * MIB])
        with pytest.raises(ImagesyncError):
            partial.commit()
    assert backend.read_final() is None


def test_crash_between_steps_leaves_a_resumable_partial(backend: Backend) -> None:
    data, state = image(2)
    abandoned = backend.open()
    abandoned.prepare()
    partial = abandoned.partial(IMAGE)
    partial.begin(state, keep_bytes=0)
    write(partial, data[:17 * MIB])
    # crash: no close, no commit; a new process opens the destination again
    with opened(backend) as destination:
        again = destination.partial(IMAGE)
        recorded, kept = again.read_state()
        assert kept <= 17 * MIB
        again.begin(state, keep_bytes=kept if recorded == state else 0)
        write(again, data[kept if recorded == state else 0:])
        again.commit()
    assert backend.read_final() == data
    partial.close()  # let the abandoned one's threads go (a dead process's would just vanish)
    abandoned.close()


def test_replace_keeps_the_old_copy_until_commit(backend: Backend) -> None:
    old, old_state = image(3)
    new, new_state = image(4)
    with opened(backend) as destination:
        mirror(destination, old, old_state)
        partial = begun(destination, new_state)
        write(partial, new)  # every byte written, not committed yet
        assert backend.read_final() == old
        digest = destination.digest(IMAGE)
        assert digest is not None and digest.sha256 == hashlib.sha256(old).hexdigest()
        partial.commit()
    assert backend.read_final() == new
    assert backend.leftovers() == []


def test_discard_forgets_the_partial(backend: Backend) -> None:
    data, state = image(5)
    with opened(backend) as destination:
        partial = begun(destination, state)
        write(partial, data[:10 * MIB])
        partial.discard()
        assert destination.partial(IMAGE).read_state() == (None, 0)
        assert destination.stat(IMAGE) is None
    assert backend.leftovers() == []
    assert backend.read_final() is None


def test_manifest_store_round_trip(backend: Backend) -> None:
    with opened(backend) as destination:
        store = destination.manifest_store()
        assert store is not None
        assert store.read_manifest() is None and not store.read_journal()
        store.publish(b'{"version": 1, "images": []}\n', b"")
        store.append_journal(b'{"op":"record"}\n')
        store.append_journal(b'{"op":"mark"}\n')
    with opened(backend) as destination:
        store = destination.manifest_store()
        assert store is not None
        assert store.read_manifest() == b'{"version": 1, "images": []}\n'
        assert store.read_journal() == b'{"op":"record"}\n{"op":"mark"}\n'
        store.clear_journal()
        assert not store.read_journal()
        store.append_journal(b"x\n")
        store.remove_journal()
        assert store.read_journal() is None
        store.publish(b"second\n", b"sums\n")
        assert store.read_manifest() == b"second\n"
        assert "manifest.json" in store.where


def test_lock_contention(backend: Backend) -> None:
    with opened(backend) as first, opened(backend) as second:
        with first.lock():
            with pytest.raises(LockedError, match=r"another imagesync run \(pid \d+ on .*\) holds the lock"):
                second.lock().__enter__()
            with pytest.raises(LockedError):
                second.lock(shared=True).__enter__()
        with first.lock(shared=True), second.lock(shared=True):
            pass  # verify runs side by side


def test_stat_and_digest_of_a_committed_image(backend: Backend) -> None:
    data, state = image(-1)
    with opened(backend) as destination:
        mirror(destination, data, state)
        found = destination.stat(IMAGE)
        assert found is not None and found.size == SIZE
        assert found.crc64ecma in (None, crc64(data))  # OSS tells it from a HEAD
        digest = destination.digest(IMAGE)
        assert digest is not None
        assert (digest.size, digest.crc64, digest.sha256) == (SIZE, crc64(data), hashlib.sha256(data).hexdigest())


def test_a_missing_image_is_none(backend: Backend) -> None:
    with opened(backend) as destination:
        missing = PurePosixPath("no/such.qcow2")
        assert destination.stat(missing) is None
        assert destination.digest(missing) is None
        assert destination.partial(missing).read_state() == (None, 0)

"""An OSS bucket as destination (``oss://bucket/prefix``): multipart uploads, server-side copies.

Images become objects under ``<prefix>/<path>``; ``manifest.json`` and ``SHA256SUMS`` sit beside
them, each replaced by one PUT. An image streamed from another region goes through a multipart
upload (`oss_upload`), one in the same region is copied inside OSS (`oss_copy`); either way the
object appears under its key only when CompleteMultipartUpload publishes it, after its parts
were checked. What must survive a crash on this host - the run lock, the manifest journal and the
record of every upload in progress - lives in a local state folder (`oss_state`). oss2 is called
and its errors translated only in `oss_client`. Every method blocks, except `copy_server_side`.

Modules: oss (this: the destination), oss_client (the oss2 boundary), oss_state (local state),
oss_upload (streamed multipart uploads), oss_copy (UploadPartCopy).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import PurePosixPath
from urllib.parse import urlsplit

import oss2

from ..checksum import Digest
from ..config import Config
from ..credentials import Credentials, resolve_credentials
from ..destination import JOURNAL_NAME, MANIFEST_NAME, SUMS_NAME, Mirrored, ServerCopy
from ..durable import Folder
from ..endpoints import region_from_oss_host
from ..errors import ConfigError, ImagesyncError
from ..retry import RetryPolicy
from ..source import ObjectInfo, ObjectLocation
from .local import LocalManifestStore
from .oss_client import KeyMissing, OssClient, UploadGone
from .oss_copy import PARALLEL_PARTS, ServerSideCopy, copy_within_bucket
from .oss_state import StateFolder, UploadRecord, state_folder
from .oss_upload import OssPartial

log = logging.getLogger("imagesync")

PROBE_NAME = ".imagesync-write-check"
STALE_AFTER_S = 7 * 86400  # an upload record no run has looked at for this long: its image is gone


def open_oss_destination(config: Config, credentials: Credentials | None) -> OssDestination:
    """The destination ``destination.url = "oss://bucket/prefix"`` names; credentials from
    ``[destination.credentials]`` when any key is set there, else the source's."""
    destination = config.destination
    bucket, prefix = _split_url(destination.url)
    endpoint = destination.oss_endpoint
    if not endpoint:
        raise ConfigError(f"destination.oss_endpoint is missing; {destination.url} needs the OSS endpoint "
                          "of its bucket, like https://oss-cn-hangzhou.aliyuncs.com")
    region = destination.region or region_from_oss_host((urlsplit(endpoint).hostname or "").lower())
    if not region:
        raise ConfigError(f"destination.region is missing and destination.oss_endpoint = {endpoint!r} "
                          "names no region; set destination.region (like cn-hangzhou)")
    if not destination.credentials.is_empty:
        credentials = resolve_credentials(destination.credentials)
    elif credentials is None:
        credentials = resolve_credentials(config.credentials)
    transfer = config.transfer
    retry = RetryPolicy(max_attempts=transfer.max_attempts, base_delay_s=transfer.retry_delay_s,
                        max_delay_s=transfer.retry_max_delay_s)
    client = OssClient(endpoint=endpoint, bucket=bucket, prefix=prefix, region=region,
                       credentials=credentials, retry=retry,
                       pool_size=transfer.concurrency * (PARALLEL_PARTS + 2) + 4,
                       timeout_s=transfer.read_timeout_s)
    state = StateFolder(state_folder(destination.state_dir, bucket, prefix), client.name)
    return OssDestination(client, state, read_back=destination.read_back)


def _split_url(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    bucket, prefix = parts.netloc, parts.path.strip("/")
    if not oss2.is_valid_bucket_name(bucket):
        raise ConfigError(f"destination.url = {url!r} is not valid; {bucket!r} is not an OSS bucket name "
                          "(3-63 lowercase letters, digits and hyphens)")
    segments = prefix.split("/") if prefix else []
    if parts.query or parts.fragment or any(
            s in ("", ".", "..") or not s.isprintable() for s in segments):
        raise ConfigError(f"destination.url = {url!r} is not valid; expected oss://bucket/prefix with "
                          "a plain prefix (no empty, . or .. parts, no query)")
    return bucket, prefix


class OssDestination:
    """``oss://bucket/prefix``: a `Destination`, a `ServerSideCopier` and `KeepsReplaced`."""

    def __init__(self, client: OssClient, state: StateFolder, *, read_back: str = "auto") -> None:
        self.name = client.name
        self.region = client.region
        self._client = client
        self._state = state
        self._copier = ServerSideCopy(client, read_back=read_back)
        self._prepared = False
        self._seen: set[str] = set()  # keys this run planned or copied
        self._seen_lock = threading.Lock()
        self._store: OssManifestStore | None = None

    def prepare(self) -> None:
        """Check credentials, bucket and write permission now, so they fail before any transfer."""
        self._client.check_access(self._client.key(PROBE_NAME))
        self._state.open(create=True).close()
        self._prepared = True

    def lock(self, *, shared: bool = False) -> contextlib.AbstractContextManager[None]:
        return self._state.lock(shared=shared)

    def free_bytes(self) -> None:
        return None

    def stat(self, path: PurePosixPath) -> Mirrored | None:
        try:
            head = self._client.head(self._key(path))
        except KeyMissing:
            return None
        return Mirrored(size=head.size, crc64ecma=head.crc64ecma)

    def digest(self, path: PurePosixPath) -> Digest | None:
        try:
            return self._client.digest(self._key(path))
        except KeyMissing:
            return None

    def keep_aside(self, path: PurePosixPath, aside: PurePosixPath) -> None:
        """A copy made inside OSS (no rename there); the object under ``path`` stays in place."""
        copy_within_bucket(self._client, self._key(path), self._key(aside))

    def remove(self, path: PurePosixPath) -> None:
        self._client.delete(self._key(path))

    def partial(self, path: PurePosixPath) -> OssPartial:
        return OssPartial(self._client, self._state, self._key(path))

    def manifest_store(self) -> OssManifestStore:
        if self._store is None:
            self._store = OssManifestStore(self._client, self._state)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._prepared:  # a sync ran (not a dry run, not verify)
            self._prepared = False
            self.clean_up()

    # --- server-side copy ---

    def server_side_copy_reason(self, source: ObjectLocation) -> str | None:
        return f"same region {self.region}" if source.region == self.region else None

    async def copy_server_side(self, source: ObjectLocation, info: ObjectInfo,
                               path: PurePosixPath) -> ServerCopy:
        return await self._copier.run(source, info, self._key(path))

    # --- cleanup ---

    def clean_up(self) -> None:
        """Abort the multipart uploads under the prefix that no later run needs: recorded ones
        whose image is done (the object is already that source) or gone (no run looked at it for
        a week), and unrecorded ones (a failed copy, a crash before the record was written)."""
        try:
            now = time.time()
            live = set()
            for record in self._state.records():
                if self._still_needed(record, now):
                    live.add(record.upload_id)
                else:
                    OssPartial(self._client, self._state, record.key).discard()
            for key, upload_id in self._client.list_uploads():
                if upload_id not in live:
                    with contextlib.suppress(UploadGone):
                        self._client.abort(key, upload_id)
        except ImagesyncError as error:
            log.warning("could not clean up the unfinished uploads under %s: %s", self.name, error)

    def _still_needed(self, record: UploadRecord, now: float) -> bool:
        try:
            head = self._client.head(record.key)
            done = head.size == record.source.size and str(head.crc64ecma) == record.source.crc64ecma
        except KeyMissing:
            done = False
        with self._seen_lock:
            seen = record.key in self._seen
        return not done and (seen or self._state.age_s(record.key, now) < STALE_AFTER_S)

    def _key(self, path: PurePosixPath) -> str:
        key = self._client.key(str(path))
        with self._seen_lock:
            self._seen.add(key)
        return key


class OssManifestStore:
    """manifest.json and SHA256SUMS in the bucket (one PUT each); the journal in the state folder."""

    def __init__(self, client: OssClient, state: StateFolder) -> None:
        self._client = client
        self._state = state
        self._manifest_key = client.key(MANIFEST_NAME)
        self._sums_key = client.key(SUMS_NAME)
        self.where = client.where(self._manifest_key)
        self.journal_where = str(state.path / JOURNAL_NAME)
        self._folder: Folder | None = None
        self._journal: LocalManifestStore | None = None

    def read_manifest(self) -> bytes | None:
        try:
            return self._client.get(self._manifest_key)
        except KeyMissing:
            return None

    def read_journal(self) -> bytes | None:
        journal = self._journal_store(create=False)
        return journal.read_journal() if journal is not None else None

    def append_journal(self, line: bytes) -> None:
        journal = self._journal_store(create=True)
        assert journal is not None
        journal.append_journal(line)

    def publish(self, manifest: bytes, sums: bytes) -> None:
        self._client.put(self._manifest_key, manifest)
        self._client.put(self._sums_key, sums)

    def clear_journal(self) -> None:
        journal = self._journal_store(create=False)
        if journal is not None:
            journal.clear_journal()

    def remove_journal(self) -> None:
        journal = self._journal_store(create=False)
        if journal is not None:
            journal.remove_journal()

    def close(self) -> None:
        if self._folder is not None:
            self._folder.close()
            self._folder = None
            self._journal = None

    def _journal_store(self, *, create: bool) -> LocalManifestStore | None:
        """The journal half of a local manifest store, in the state folder (None if there is none)."""
        if self._journal is None:
            if not create and not self._state.path.is_dir():
                return None
            self._folder = self._state.open(create=create)
            self._journal = LocalManifestStore(self._folder, self._state.path)
        return self._journal

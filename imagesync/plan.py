"""Decide, per image, what a run does: download, resume, replace, skip, or report why not.

The source's identity (ETag, size, CRC-64) comes from a HEAD per object, run concurrently and
bounded; it is compared with the manifest, the file under its final name and any partial
file. Planning reads the destination and never writes to it, so a dry run is just a plan.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import PurePosixPath

import trio

from . import killpoints
from .config import FilterConfig
from .destination import Destination, Mirrored, PartialState, ServerSideCopier
from .ens import ExportedImage
from .errors import DestinationError, TransferError
from .layout import assign_paths
from .manifest import Manifest, ManifestEntry
from .retry import RetryPolicy
from .source import ObjectInfo, ObjectSource, TransientError

log = logging.getLogger("imagesync")

EXPORTED = "Exported"


class Action(StrEnum):
    DOWNLOAD = "download"
    RESUME = "resume"
    REPLACE = "replace"
    ADOPT = "adopt"  # a file is there with no record: keep it if its CRC-64 matches
    SKIP = "skip"
    FAIL = "fail"


TRANSFER_ACTIONS = (Action.DOWNLOAD, Action.RESUME, Action.REPLACE, Action.ADOPT)


@dataclass(frozen=True, slots=True, kw_only=True)
class PlannedImage:
    image: ExportedImage
    path: PurePosixPath
    action: Action
    reason: str
    info: ObjectInfo | None = None
    partial_bytes: int = 0
    source: ObjectSource | None = None
    # Hash the file under the final name first: kept if it is already the object (a disk seeded
    # by hand, or a crash between the rename of a download or replacement and its record).
    check_existing: bool = False
    server_side: str | None = None  # why the destination copies it itself, when it does

    @property
    def route(self) -> str:
        """How the bytes travel, for the plan: "server-side copy (why)" or "stream"."""
        if self.action in (Action.SKIP, Action.FAIL):
            return "-"
        return f"server-side copy ({self.server_side})" if self.server_side else "stream"

    @property
    def bytes_to_transfer(self) -> int:
        if self.info is None or self.action in (Action.SKIP, Action.FAIL):
            return 0
        return self.info.size - self.partial_bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Selection:
    """The listing split by what the run will do with each image."""

    selected: list[ExportedImage]
    not_exported: list[ExportedImage] = field(default_factory=list)
    filtered_out: list[ExportedImage] = field(default_factory=list)
    unknown_ids: list[str] = field(default_factory=list)  # asked for by id, not listed at all
    unavailable: list[ExportedImage] = field(default_factory=list)  # asked for by id, not exported


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    items: list[PlannedImage]
    selection: Selection
    missing: list[ManifestEntry]  # mirrored earlier, no longer listed by the API
    free_bytes: int | None  # None where the destination has no such limit
    paths: Mapping[str, PurePosixPath] = field(default_factory=dict)  # image_id -> path, waiting ones too

    @property
    def transfers(self) -> list[PlannedImage]:
        return [item for item in self.items if item.action in TRANSFER_ACTIONS]

    @property
    def bytes_to_transfer(self) -> int:
        return sum(item.bytes_to_transfer for item in self.items)

    @property
    def fits(self) -> bool:
        return self.free_bytes is None or self.bytes_to_transfer <= self.free_bytes


def select(images: Sequence[ExportedImage], filters: FilterConfig) -> Selection:
    """Keep exported images that pass the filters; account for every other one."""
    wanted_ids = set(filters.image_ids)
    selected, not_exported, filtered_out = [], [], []
    for image in images:
        if (wanted_ids and image.image_id not in wanted_ids) or not _name_passes(image.image_name, filters):
            filtered_out.append(image)
        elif image.status != EXPORTED or not image.url:
            not_exported.append(image)
        else:
            selected.append(image)
    listed = {image.image_id for image in images}
    unknown = sorted(wanted_ids - listed)
    unavailable = [image for image in not_exported if image.image_id in wanted_ids]
    return Selection(selected=selected, not_exported=not_exported, filtered_out=filtered_out,
                     unknown_ids=unknown, unavailable=unavailable)


def _name_passes(name: str, filters: FilterConfig) -> bool:
    included = any(fnmatch.fnmatchcase(name, pattern) for pattern in filters.include)
    return included and not any(fnmatch.fnmatchcase(name, pattern) for pattern in filters.exclude)


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanOptions:
    template: str
    concurrency: int  # HEADs at once
    retry: RetryPolicy
    server_side_copy: bool = True  # let a destination that can copy inside OSS do so
    checksum: bool = False  # re-hash mirrored files before deciding to skip them


async def make_plan(
    images: Sequence[ExportedImage],
    selection: Selection,
    *,
    manifest: Manifest,
    destination: Destination,
    make_source: Callable[[ExportedImage], ObjectSource],
    options: PlanOptions,
    later: Sequence[ExportedImage] = (),
) -> Plan:
    """The plan for the selected images; ``later`` (images still exporting, for --wait) get
    their paths now, so one that turns up during the run cannot take another's."""
    paths = assign_paths(options.template, [*selection.selected, *later],
                         {i: e.path for i, e in manifest.entries.items()})
    ordered = await plan_images(selection.selected, paths, manifest=manifest, destination=destination,
                                make_source=make_source, options=options)
    listed = {image.image_id for image in images}
    missing = [entry for image_id, entry in sorted(manifest.entries.items()) if image_id not in listed]
    free = await trio.to_thread.run_sync(destination.free_bytes)
    return Plan(items=ordered, selection=selection, missing=missing, free_bytes=free, paths=paths)


LISTING_MIN_IMAGES = 20  # fewer than this in a bucket: a HEAD each is as quick as listing it


async def plan_images(
    images: Sequence[ExportedImage],
    paths: Mapping[str, PurePosixPath],
    *,
    manifest: Manifest,
    destination: Destination,
    make_source: Callable[[ExportedImage], ObjectSource],
    options: PlanOptions,
) -> list[PlannedImage]:
    """Plan each image, in the order given.

    The destination is looked at once for all of them, and the source objects' identity (ETag,
    size) comes from listing their buckets, 1,000 objects a request; a HEAD is made only where
    listing is not allowed, or where the decision needs the object's CRC-64 (resume, adopt).
    """
    sources: dict[str, ObjectSource | TransferError] = {}
    for image in images:
        try:
            sources[image.image_id] = make_source(image)
        except TransferError as error:
            sources[image.image_id] = error
    wanted = {image.image_id: paths[image.image_id] for image in images}
    found = await trio.to_thread.run_sync(_look_up, destination, wanted)
    listed = await _list_sources([s for s in sources.values() if isinstance(s, ObjectSource)])
    items: dict[str, PlannedImage] = {}
    limiter = trio.CapacityLimiter(options.concurrency)

    async def plan_one(image: ExportedImage) -> None:
        async with limiter:
            source = sources[image.image_id]
            item = await _plan_image(image, paths[image.image_id], manifest.get(image.image_id), source,
                                     found[image.image_id], listed, destination, options)
            if (options.server_side_copy and item.source is not None
                    and isinstance(destination, ServerSideCopier)):
                reason = destination.server_side_copy_reason(item.source.location)
                # OSS has no rename: a server-side copy is published before it can be read back,
                # so a replacement streams, to be verified before it takes the old copy's place.
                if reason and item.action is not Action.REPLACE:
                    item = dataclasses.replace(item, server_side=reason, partial_bytes=0)
            items[image.image_id] = item

    async with trio.open_nursery() as nursery:
        for image in images:
            nursery.start_soon(plan_one, image)
    return [items[image.image_id] for image in images]


_Found = tuple[Mirrored | None, PartialState | None, int] | DestinationError


def _look_up(destination: Destination, paths: Mapping[str, PurePosixPath]) -> dict[str, _Found]:
    """What the destination holds for each image: one thread call for all of them."""
    found: dict[str, _Found] = {}
    for image_id, path in paths.items():
        try:
            found[image_id] = (destination.stat(path), *destination.partial(path).read_state())
        except DestinationError as error:
            found[image_id] = error
    return found


async def _list_sources(sources: Sequence[ObjectSource]) -> dict[tuple[str, str, str], ObjectInfo]:
    """(endpoint, bucket, key) -> ETag and size, for buckets with enough images to be worth listing."""
    by_bucket: dict[tuple[str, str], list[ObjectSource]] = {}
    for source in sources:
        by_bucket.setdefault((source.location.endpoint, source.location.bucket), []).append(source)
    listed: dict[tuple[str, str, str], ObjectInfo] = {}
    for (endpoint, bucket), group in by_bucket.items():
        if len(group) < LISTING_MIN_IMAGES:
            continue
        keys = [source.location.key for source in group]
        prefix = os.path.commonprefix(keys)  # noqa: RUF071 - object keys, not paths
        objects = await trio.to_thread.run_sync(group[0].list_bucket, prefix, abandon_on_cancel=True)
        if objects is None:
            log.debug("cannot list oss://%s/%s; reading each object's identity with a HEAD", bucket, prefix)
            continue
        listed.update(((endpoint, bucket, key), info) for key, info in objects.items())
    return listed


async def _plan_image(
    image: ExportedImage,
    path: PurePosixPath,
    entry: ManifestEntry | None,
    source: ObjectSource | TransferError,
    found: _Found,
    listed: Mapping[tuple[str, str, str], ObjectInfo],
    destination: Destination,
    options: PlanOptions,
) -> PlannedImage:
    try:
        if isinstance(source, TransferError):
            raise source
        if isinstance(found, DestinationError):
            raise found
        mirrored, state, on_disk = found
        location = source.location
        info = listed.get((location.endpoint, location.bucket, location.key))
        if info is None:
            info = await _head(source, options.retry)
        action, reason, partial_bytes = _decide(entry, info, mirrored, state, on_disk, location.public_url)
        if not info.complete and action is not Action.SKIP and (mirrored or state):
            # Resuming or adopting hangs on the object's CRC-64, which only a HEAD tells.
            info = await _head(source, options.retry)
            action, reason, partial_bytes = _decide(entry, info, mirrored, state, on_disk,
                                                    location.public_url)
        if action is Action.SKIP and options.checksum and entry is not None:
            action, reason = await _rehash(destination, path, entry)
    except (TransferError, DestinationError) as error:
        return PlannedImage(image=image, path=path, action=Action.FAIL, reason=str(error))
    known_bad = entry is not None and entry.verify_problem is not None
    check_existing = (action in (Action.ADOPT, Action.REPLACE) and mirrored is not None and not known_bad
                      and mirrored.size == info.size and info.crc64ecma is not None)
    return PlannedImage(image=image, path=path, action=action, reason=reason, info=info,
                        partial_bytes=partial_bytes, source=source, check_existing=check_existing)


def _decide(entry: ManifestEntry | None, info: ObjectInfo, mirrored: Mirrored | None,
            state: PartialState | None, on_disk: int, public_url: str) -> tuple[Action, str, int]:
    final_size = mirrored.size if mirrored else None
    unchanged = entry is not None and entry.source_etag == info.etag and entry.size == info.size
    if unchanged and final_size == info.size and entry is not None and entry.verify_problem is None:
        return Action.SKIP, "mirrored, source unchanged", 0
    resumable = state is not None and (state.source_url, state.etag, state.size) == (
        public_url, info.etag, info.size)
    # Without a published CRC-64 nothing would vouch for a file joined from two sessions.
    if resumable and 0 < on_disk <= info.size and info.crc64ecma is not None:
        return Action.RESUME, f"{on_disk} of {info.size} bytes already on disk", on_disk
    if entry is None and final_size == info.size and info.crc64ecma is not None:
        return Action.ADOPT, "a file of this size is there but not recorded; kept if its CRC-64 matches", 0
    if entry is not None and final_size is not None and not unchanged:
        return Action.REPLACE, f"source changed (ETag {entry.source_etag} -> {info.etag})", 0
    if entry is not None and entry.verify_problem is not None:
        return Action.REPLACE, f"imagesync verify found it {entry.verify_problem}: fetching it again", 0
    if entry is not None:
        return Action.DOWNLOAD, "the mirrored copy is missing or has the wrong size", 0
    return Action.DOWNLOAD, "not mirrored yet", 0


async def _rehash(destination: Destination, path: PurePosixPath, entry: ManifestEntry) -> tuple[Action, str]:
    """--checksum: read the mirrored copy again before trusting it."""
    digest = await trio.to_thread.run_sync(destination.digest, path, abandon_on_cancel=True)
    if digest is not None and str(digest.crc64) == entry.crc64ecma and (
            entry.sha256 is None or digest.sha256 == entry.sha256):
        return Action.SKIP, "mirrored, source unchanged, re-hashed: intact"
    return Action.REPLACE, "re-hashed: the mirrored copy no longer matches its recorded checksums"


async def head(source: ObjectSource, retry: RetryPolicy) -> ObjectInfo:
    """The object's full identity (ETag, size, CRC-64), retrying transient failures."""
    return await _head(source, retry)


async def _head(source: ObjectSource, retry: RetryPolicy) -> ObjectInfo:
    for attempt in range(1, retry.max_attempts + 1):
        try:
            killpoints.reached("plan-head")
            return await source.head()
        except TransientError:
            if attempt == retry.max_attempts:
                raise
            await trio.sleep(retry.delay_s(attempt))
    raise AssertionError("unreachable")

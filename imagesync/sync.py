"""The orchestrator: lock, list, plan, one nursery of transfers, manifest, summary.

Listing feeds N workers through a memory channel of buffer 0; one reporter task owns the
manifest writer, the counters and the progress display, so nothing needs a lock. A failed image
becomes an outcome and the others go on; a fatal error (listing, disk full, a signal) cancels
the nursery and partial files stay for the next run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import partial
from pathlib import Path, PurePosixPath
from typing import cast

import httpx
import trio

from . import killpoints
from .bandwidth import BandwidthLimit
from .config import Config
from .credentials import Credentials
from .destination import (
    REPLACED_FOLDER,
    Destination,
    KeepsReplaced,
    ManifestStore,
    PartialCopy,
    ServerSideCopier,
)
from .ens import ExportedImage, open_ens_client
from .errors import (
    EXIT_IMAGE_FAILED,
    EXIT_OK,
    EXIT_SIGTERM,
    DestinationError,
    Interrupted,
    TransferError,
)
from .manifest import SIZE_ONLY, VERIFIED_CRC64, Manifest, ManifestEntry, ManifestWriter, ReplacedCopy
from .plan import Action, Plan, PlannedImage, PlanOptions, Selection, head, make_plan, plan_images, select
from .progress import Progress, format_bytes, make_progress, make_status, plural
from .retry import RetryPolicy
from .sinks.local import LocalDestination
from .source import ObjectSource, locate
from .transfer import Copied, ImageCopy, Segmenting
from .waiting import EXPORT_ERROR, EXPORTING, GaveUp, still_exporting, wait_for_exports
from .wire import Connections, proxied


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    dry_run: bool = False
    progress: str = "auto"  # auto | always | never
    quiet: bool = False
    wait: bool = False  # poll while selected images are exporting; mirror each as it turns Exported
    checksum: bool = False  # re-hash mirrored files before deciding to skip them
    ignore_free_space: bool = False


class Result(StrEnum):
    MIRRORED = "mirrored"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What became of one image: data for the summary, nothing to act on."""

    image_id: str
    image_name: str
    path: str
    action: Action
    result: Result
    bytes_transferred: int = 0
    seconds: float = 0.0
    reason: str = ""
    verified: str = ""  # how a mirrored image was verified (manifest.VERIFICATIONS)
    size: int = 0  # of the whole image
    resumed_at: int = 0  # bytes a previous run had already written


@dataclass(frozen=True, slots=True, kw_only=True)
class _Finished:
    """A worker's result for the reporter: the outcome, and what to commit and record for it."""

    outcome: Outcome
    entry: ManifestEntry | None = None
    partial: PartialCopy | None = None  # None: the file is already in place (adopted)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    plan: Plan
    outcomes: list[Outcome]
    wall_s: float
    dry_run: bool
    destination: str

    @property
    def exit_code(self) -> int:
        failed = any(o.result is Result.FAILED for o in self.outcomes)
        return EXIT_IMAGE_FAILED if failed else EXIT_OK


async def run_sync(config: Config, credentials: Credentials, options: RunOptions) -> RunResult:
    started = time.monotonic()
    with contextlib.closing(open_destination(config, credentials)) as destination:
        if not options.dry_run:
            await trio.to_thread.run_sync(destination.prepare)
        with nullcontext() if options.dry_run else destination.lock():
            killpoints.reached("locked")
            async with (open_ens_client(config.ens, credentials) as ens,
                        _open_source_client(config) as (http, wire)):
                status = make_status(options.progress, options.quiet)  # at a terminal: not a blank screen
                images = await ens.list_images(on_page=status.listing)
                killpoints.reached("listed")
                store = await trio.to_thread.run_sync(destination.manifest_store)
                manifest = await trio.to_thread.run_sync(Manifest.load, store)
                planner = _Planner(config, credentials, destination, manifest, http, wire, options)
                selection = select(images, config.filter)
                waiting = still_exporting(selection.not_exported) if options.wait else []
                status.show(f"planning {plural(len(selection.selected), 'image')}…")
                plan = await planner.plan(images, selection, waiting)
                status.clear()
                if options.dry_run:
                    outcomes = _planned_failures(plan, options)
                else:
                    assert store is not None
                    _check_room(plan, destination.name, options)
                    waiter = None if not waiting else partial(
                        wait_for_exports, waiting, list_images=ens.list_images,
                        plan_images=planner.plan_more, config=config.wait)
                    outcomes = await _transfer_all(config, options, destination, store, manifest, plan,
                                                   waiter)
    return RunResult(plan=plan, outcomes=outcomes, wall_s=time.monotonic() - started,
                     dry_run=options.dry_run, destination=destination.name)


def open_destination(config: Config, credentials: Credentials | None) -> Destination:
    """The destination ``destination.url`` names (an OSS one needs the source's credentials
    unless ``[destination.credentials]`` gives its own)."""
    if config.destination.url.startswith("oss://"):
        from .sinks.oss import open_oss_destination  # oss2's import cost only for OSS mirrors

        return open_oss_destination(config, credentials)
    return LocalDestination(Path(config.destination.url).expanduser(),
                            refuse_unsafe_permissions=config.destination.refuse_unsafe_permissions)


@asynccontextmanager
async def _open_source_client(
    config: Config,
) -> AsyncIterator[tuple[httpx.AsyncClient, Connections | None]]:
    """httpx for HEADs, and `wire` for the image GETs unless a proxy is configured (httpx then)."""
    transfer = config.transfer
    timeout = httpx.Timeout(transfer.read_timeout_s, connect=transfer.connect_timeout_s)
    limits = httpx.Limits(max_connections=transfer.concurrency * (transfer.segments + 1) + 2)
    wire = None if proxied() else Connections(connect_timeout_s=transfer.connect_timeout_s,
                                              read_timeout_s=transfer.read_timeout_s)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as http:
        try:
            yield http, wire
        finally:
            if wire is not None:
                with trio.CancelScope(shield=True):
                    await wire.aclose()


class _Planner:
    """Plans the first listing, and later images that finish exporting during a --wait."""

    def __init__(self, config: Config, credentials: Credentials, destination: Destination,
                 manifest: Manifest, http: httpx.AsyncClient, wire: Connections | None,
                 options: RunOptions) -> None:
        self._config = config
        self._signer = credentials if config.source.sign else None
        self._http = http
        self._wire = wire
        self._destination = destination
        self._manifest = manifest
        self._options = PlanOptions(
            template=config.destination.path_template, concurrency=config.transfer.concurrency * 2,
            retry=_retry_policy(config), server_side_copy=config.destination.server_side_copy == "auto",
            checksum=options.checksum)
        self._paths: Mapping[str, PurePosixPath] = {}

    def _source(self, image: ExportedImage) -> ObjectSource:
        location = locate(image.url, self._config.source)
        return ObjectSource(self._http, location, self._signer, self._config.source.presign_expires_s,
                            wire=self._wire)

    async def plan(self, images: list[ExportedImage], selection: Selection,
                   later: list[ExportedImage]) -> Plan:
        plan = await make_plan(images, selection, manifest=self._manifest, destination=self._destination,
                               make_source=self._source, options=self._options, later=later)
        self._paths = plan.paths
        return plan

    async def plan_more(self, images: Sequence[ExportedImage]) -> list[PlannedImage]:
        return await plan_images(images, self._paths, manifest=self._manifest, destination=self._destination,
                                 make_source=self._source, options=self._options)


ROOM_MARGIN = 0.01  # of the bytes to write, and at least:
MIN_ROOM_MARGIN = 4 << 20


def _check_room(plan: Plan, where: str, options: RunOptions) -> None:
    """Refuse to start a plan that cannot fit (a full disk halfway helps nobody)."""
    if options.ignore_free_space or plan.free_bytes is None:
        return
    needed = plan.bytes_to_transfer
    margin = max(int(needed * ROOM_MARGIN), MIN_ROOM_MARGIN) if needed else 0
    if needed + margin > plan.free_bytes:
        raise DestinationError(
            f"the plan writes {format_bytes(needed)} (plus a {format_bytes(margin)} margin) but {where} "
            f"has {format_bytes(plan.free_bytes)} free; nothing was transferred: free some space, "
            "or pass --ignore-free-space")


def _retry_policy(config: Config) -> RetryPolicy:
    return RetryPolicy(max_attempts=config.transfer.max_attempts, base_delay_s=config.transfer.retry_delay_s,
                       max_delay_s=config.transfer.retry_max_delay_s)


def _planned_failures(plan: Plan, options: RunOptions) -> list[Outcome]:
    """Images that fail before any transfer: unknown ids, objects that cannot be read, and with
    --wait, exports that failed."""
    failures = [Outcome(image_id=i, image_name="", path="", action=Action.FAIL, result=Result.FAILED,
                        reason=f"image {i} is not listed by the API") for i in plan.selection.unknown_ids]
    unavailable = [i for i in plan.selection.unavailable if not (options.wait and i.status == EXPORTING)]
    if options.wait:
        unavailable += [i for i in plan.selection.not_exported
                        if i.status == EXPORT_ERROR and i not in unavailable]
    failures += [_failed(image, f"image {image.image_id} is {image.status}, not exported")
                 for image in unavailable]
    for item in plan.items:
        if item.action is Action.FAIL:
            failures.append(_outcome(item, Result.FAILED, reason=item.reason))
    return failures


Waiter = Callable[..., Awaitable[None]]  # wait_for_exports with all but ``ready`` bound


async def _transfer_all(config: Config, options: RunOptions, destination: Destination,
                        store: ManifestStore, manifest: Manifest, plan: Plan,
                        waiter: Waiter | None) -> list[Outcome]:
    writer = await trio.to_thread.run_sync(ManifestWriter, manifest, store)
    relisted = [image_id for image_id in (i.image.image_id for i in plan.items)
                if (entry := manifest.get(image_id)) and entry.missing_since]
    await trio.to_thread.run_sync(writer.mark_missing, [e.image_id for e in plan.missing], _utc_now())
    await trio.to_thread.run_sync(writer.mark_present, relisted)
    killpoints.reached("marked")
    progress = make_progress(options.progress, plan.bytes_to_transfer, options.quiet,
                             interval_s=config.run.progress_interval_s)
    outcomes = _planned_failures(plan, options)
    for failure in outcomes:
        progress.finish(failure.image_id, _outcome_line(failure), ok=False)
    workers = _Workers(config, destination, progress)
    try:
        async with trio.open_nursery() as nursery:
            watcher = await nursery.start(_watch_sigterm)
            jobs_send, jobs_receive = trio.open_memory_channel[PlannedImage](0)
            results_send, results_receive = trio.open_memory_channel[_Finished](0)
            with jobs_receive, results_send:
                nursery.start_soon(_feed, plan, jobs_send.clone(), results_send.clone())
                if waiter is not None:
                    nursery.start_soon(_feed_when_exported, waiter, jobs_send.clone(), results_send.clone())
                jobs_send.close()
                for _ in range(config.transfer.concurrency):
                    nursery.start_soon(workers.run, jobs_receive.clone(), results_send.clone())
            committer = _Committer(destination, writer, config.destination.keep_replaced)
            await _report(results_receive, committer, progress, outcomes)
            # Only the watcher is stopped: cancelling the nursery could turn a worker's last
            # error (a full disk) into a Cancelled that the nursery then swallows.
            watcher.cancel()
    except BaseException:
        # Every record is already in the fsynced journal; compacting now is a courtesy that
        # must not hide why the run stopped (often the same full disk).
        with trio.CancelScope(shield=True), contextlib.suppress(DestinationError):
            await trio.to_thread.run_sync(writer.close)
        raise
    finally:
        progress.close()
    await trio.to_thread.run_sync(writer.close)
    return outcomes


async def _watch_sigterm(
    *, task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED,
) -> None:
    with trio.CancelScope() as scope, trio.open_signal_receiver(signal.SIGTERM) as signals:
        task_status.started(scope)
        async for _ in signals:
            raise Interrupted("terminated by SIGTERM; partial files are kept for the next run", EXIT_SIGTERM)


async def _feed(plan: Plan, jobs: trio.MemorySendChannel[PlannedImage],
                results: trio.MemorySendChannel[_Finished]) -> None:
    with jobs, results:  # closed without a checkpoint, where a cancel could hide an error
        for item in plan.items:
            if item.action is not Action.FAIL:  # those are among the planned failures already
                await _hand_over(item, jobs, results)


async def _hand_over(item: PlannedImage, jobs: trio.MemorySendChannel[PlannedImage],
                     results: trio.MemorySendChannel[_Finished]) -> None:
    if item.action is Action.SKIP:
        await results.send(_Finished(outcome=_outcome(item, Result.SKIPPED, reason=item.reason)))
    elif item.action is Action.FAIL:
        await results.send(_Finished(outcome=_outcome(item, Result.FAILED, reason=item.reason)))
    else:
        await jobs.send(item)


async def _feed_when_exported(waiter: Waiter, jobs: trio.MemorySendChannel[PlannedImage],
                              results: trio.MemorySendChannel[_Finished]) -> None:
    """--wait: images that finish exporting join the queue as they do."""
    ready_send, ready_receive = trio.open_memory_channel[PlannedImage | GaveUp](0)
    with jobs, results:  # closed without a checkpoint, where a cancel could hide an error
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(waiter, ready=ready_send))
            with ready_receive:
                async for item in ready_receive:
                    if isinstance(item, GaveUp):
                        await results.send(_Finished(outcome=_failed(item.image, item.reason)))
                    else:
                        await _hand_over(item, jobs, results)


async def _report(results: trio.MemoryReceiveChannel[_Finished], committer: _Committer,
                  progress: Progress, outcomes: list[Outcome]) -> None:
    with results:
        async for finished in results:
            outcome = finished.outcome
            if finished.entry is not None:
                # Rename and journal record in one uninterruptible thread call: a signal can
                # never leave a verified file under its final name without its manifest entry.
                try:
                    await trio.to_thread.run_sync(committer.commit_and_record, finished)
                except TransferError as error:  # an OSS upload that could not be completed
                    outcome = dataclasses.replace(outcome, result=Result.FAILED, reason=str(error),
                                                  verified="")
            outcomes.append(outcome)
            if outcome.result is not Result.SKIPPED:
                ok = outcome.result is not Result.FAILED
                progress.finish(outcome.image_id, _outcome_line(outcome), ok=ok)


class _Workers:
    """What every worker shares: config, destination, display and the thread limiter."""

    def __init__(self, config: Config, destination: Destination, progress: Progress) -> None:
        self._destination = destination
        self._progress = progress
        self._retry = _retry_policy(config)
        # per connection a hashing and a writing thread, plus one for commits
        self._limiter = trio.CapacityLimiter(2 * config.transfer.concurrency * config.transfer.segments + 1)
        self._bandwidth = BandwidthLimit(config.transfer.max_bandwidth_bytes_per_s)
        self._segmenting = Segmenting(connections=config.transfer.segments,
                                      piece_size=config.transfer.min_segment_bytes)

    async def run(self, jobs: trio.MemoryReceiveChannel[PlannedImage],
                  results: trio.MemorySendChannel[_Finished]) -> None:
        with jobs, results:  # closed without a checkpoint, where a cancel could hide an error
            async for item in jobs:
                await results.send(await self._mirror(item))

    async def _mirror(self, item: PlannedImage) -> _Finished:
        assert item.source is not None and item.info is not None
        image_id = item.image.image_id
        if not item.info.complete:  # known from a bucket listing: the CRC-64 needs a HEAD
            try:
                item = dataclasses.replace(item, info=await head(item.source, self._retry))
            except TransferError as error:
                return _Finished(outcome=_outcome(item, Result.FAILED, reason=str(error)))
        assert item.source is not None and item.info is not None
        self._progress.start(image_id, item.image.image_name, item.info.size, item.partial_bytes)
        if item.check_existing:
            adopted = await self._adopt(item)
            if adopted is not None:
                return adopted
        if item.server_side is not None:
            return await self._copy_server_side(item)
        partial = self._destination.partial(item.path)
        copy = ImageCopy(item.source, partial, item.info, retry=self._retry, limiter=self._limiter,
                         bandwidth=self._bandwidth, segments=self._segmenting,
                         on_bytes=self._advance(image_id))
        try:
            copied = await copy.run(resume=item.action is Action.RESUME)
        except TransferError as error:
            return _Finished(outcome=_outcome(item, Result.FAILED, reason=str(error)))
        return _Finished(outcome=_outcome(item, Result.MIRRORED, reason=item.reason, copied=copied),
                         entry=_entry(item, copied), partial=partial)

    async def _copy_server_side(self, item: PlannedImage) -> _Finished:
        assert item.source is not None and item.info is not None
        assert isinstance(self._destination, ServerSideCopier)
        try:
            copy = await self._destination.copy_server_side(item.source.location, item.info, item.path)
        except TransferError as error:
            return _Finished(outcome=_outcome(item, Result.FAILED, reason=str(error)))
        copied = Copied(info=item.info, sha256=copy.sha256, crc64ecma=copy.crc64ecma, verified=copy.verified,
                        bytes_transferred=0, seconds=copy.seconds)
        self._progress.advance(item.image.image_id, item.info.size)
        outcome = _outcome(item, Result.MIRRORED, copied=copied, reason=item.route)
        return _Finished(outcome=outcome, entry=_entry(item, copied))  # Complete published it

    async def _adopt(self, item: PlannedImage) -> _Finished | None:
        """Keep a file that is already there (a pre-seeded disk, a crash before its record) if
        it hashes to the object's CRC-64; otherwise it is replaced once a new copy verifies."""
        assert item.info is not None
        started = time.monotonic()
        killpoints.reached("adopt")
        try:
            mirrored = await trio.to_thread.run_sync(self._destination.stat, item.path)
            known = mirrored.crc64ecma if mirrored is not None else None
            if known is not None and known != item.info.crc64ecma:
                return None  # the destination tells the CRC-64 without reading: no need to hash
            digest = await trio.to_thread.run_sync(self._destination.digest, item.path,
                                                   limiter=self._limiter, abandon_on_cancel=True)
        except DestinationError:
            return None
        if digest is None or digest.crc64 != item.info.crc64ecma or digest.size != item.info.size:
            return None
        copied = Copied(info=item.info, sha256=digest.sha256, crc64ecma=digest.crc64, verified=VERIFIED_CRC64,
                        bytes_transferred=0, seconds=time.monotonic() - started)
        outcome = _outcome(item, Result.MIRRORED, copied=copied,
                           reason="kept the file already there: its CRC-64 matches the object")
        return _Finished(outcome=outcome, entry=_entry(item, copied))

    def _advance(self, image_id: str) -> Callable[[int], None]:
        return lambda count: self._progress.advance(image_id, count)


class _Committer:
    """Puts verified copies under their final names and records them: the reporter's hands."""

    def __init__(self, destination: Destination, writer: ManifestWriter, keep_replaced: int) -> None:
        self._destination = destination
        self._writer = writer
        self._keep = keep_replaced if isinstance(destination, KeepsReplaced) else 0

    def commit_and_record(self, finished: _Finished) -> None:
        """Blocking, and run as one thread call: a signal can never fall between the rename and
        the record."""
        entry = finished.entry
        assert entry is not None
        old = self._writer.entries.get(entry.image_id)
        pruned: tuple[ReplacedCopy, ...] = ()
        if old is not None:
            entry, pruned = self._keep_aside(entry, old, new_bytes=finished.partial is not None)
        if finished.partial is not None:  # an adopted file is already in place
            killpoints.reached("before-rename")
            finished.partial.commit()
            killpoints.reached("after-rename")
        self._writer.record(entry)
        killpoints.reached("recorded")
        for copy in pruned:
            cast(KeepsReplaced, self._destination).remove(PurePosixPath(copy.path))

    def _keep_aside(self, entry: ManifestEntry, old: ManifestEntry,
                    new_bytes: bool) -> tuple[ManifestEntry, tuple[ReplacedCopy, ...]]:
        """The new entry carrying the copies kept aside, and those now beyond keep_replaced."""
        copies = old.replaced
        replacing = (new_bytes and self._keep and old.source_etag != entry.source_etag
                     and old.path == entry.path and old.verify_problem is None
                     and self._destination.stat(PurePosixPath(old.path)) is not None)
        if replacing:
            aside = _aside_path(old, taken={PurePosixPath(copy.path) for copy in copies})
            cast(KeepsReplaced, self._destination).keep_aside(PurePosixPath(old.path), aside)
            copies = (ReplacedCopy(path=str(aside), mirrored_at=old.mirrored_at, source_etag=old.source_etag,
                                   sha256=old.sha256), *copies)
        if not self._keep:  # not keeping: earlier copies stay as they are, none is added
            return dataclasses.replace(entry, replaced=copies), ()
        return dataclasses.replace(entry, replaced=copies[: self._keep]), copies[self._keep :]


def _aside_path(old: ManifestEntry, taken: set[PurePosixPath]) -> PurePosixPath:
    """``replaced/<path>.<mirrored_at>``, numbered when copies kept earlier have that name (two
    replacements within one second): a kept copy is never written over by the next."""
    aside = base = PurePosixPath(REPLACED_FOLDER, f"{old.path}.{old.mirrored_at}")
    number = 1
    while aside in taken:
        number += 1
        aside = base.with_name(f"{base.name}.{number}")
    return aside


def _outcome(item: PlannedImage, result: Result, *, reason: str, copied: Copied | None = None) -> Outcome:
    return Outcome(
        image_id=item.image.image_id, image_name=item.image.image_name, path=str(item.path),
        action=item.action, result=result, reason=reason,
        bytes_transferred=copied.bytes_transferred if copied else 0,
        seconds=copied.seconds if copied else 0.0, verified=copied.verified if copied else "",
        size=item.info.size if item.info else 0,
        resumed_at=item.partial_bytes if item.action is Action.RESUME else 0,
    )


def _entry(item: PlannedImage, copied: Copied) -> ManifestEntry:
    image = item.image
    return ManifestEntry(
        image_id=image.image_id, image_name=image.image_name, architecture=image.architecture,
        platform=image.platform, creation_time=image.creation_time, source_url=image.public_url,
        source_etag=copied.info.etag, size=copied.info.size, crc64ecma=str(copied.crc64ecma),
        sha256=copied.sha256, verified=copied.verified, path=str(item.path), mirrored_at=_utc_now(),
    )


def _outcome_line(outcome: Outcome) -> str:
    if outcome.result is Result.FAILED:
        return f"failed {outcome.image_id}: {outcome.reason}"
    if not outcome.bytes_transferred and outcome.action in (Action.ADOPT, Action.REPLACE):
        return f"kept {outcome.image_id} -> {outcome.path}: {outcome.reason}"
    if outcome.reason.startswith("server-side copy"):
        return (f"done {outcome.image_id} -> {outcome.path}: {format_bytes(outcome.size)} by "
                f"{outcome.reason} in {outcome.seconds:.1f} s, verified ({outcome.verified})")
    rate = outcome.bytes_transferred / outcome.seconds / 2**20 if outcome.seconds else 0.0
    checked = ("size only: OSS publishes no checksum for it" if outcome.verified == SIZE_ONLY
               else f"verified ({outcome.verified})")
    amount = format_bytes(outcome.bytes_transferred)
    if outcome.bytes_transferred != outcome.size:
        amount += f" of {format_bytes(outcome.size)}"
    if outcome.resumed_at:
        amount += f", resumed at {format_bytes(outcome.resumed_at)}"
    return (f"done {outcome.image_id} -> {outcome.path}: {amount} in {outcome.seconds:.1f} s "
            f"({rate:.0f} MiB/s), {checked}")


def _failed(image: ExportedImage, reason: str) -> Outcome:
    return Outcome(image_id=image.image_id, image_name=image.image_name, path="", action=Action.FAIL,
                   result=Result.FAILED, reason=reason)


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

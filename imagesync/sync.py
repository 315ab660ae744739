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
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import trio

from .checksum import digest_file
from .config import Config
from .credentials import Credentials
from .ens import ExportedImage, open_ens_client
from .errors import (
    EXIT_IMAGE_FAILED,
    EXIT_OK,
    EXIT_SIGTERM,
    ConfigError,
    DestinationError,
    Interrupted,
    TransferError,
)
from .manifest import Manifest, ManifestEntry, ManifestWriter
from .plan import Action, Plan, PlannedImage, make_plan, select
from .progress import Progress, format_bytes, make_progress
from .retry import RetryPolicy
from .sinks.local import LocalSink
from .source import ObjectSource, locate
from .transfer import Copied, ImageCopy


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    dry_run: bool = False
    progress: str = "auto"  # auto | always | never
    quiet: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    image_id: str
    image_name: str
    path: str
    action: str
    result: str  # mirrored | skipped | failed
    bytes_transferred: int = 0
    seconds: float = 0.0
    reason: str = ""
    entry: ManifestEntry | None = dataclasses.field(default=None, repr=False)
    commit: Callable[[], None] | None = dataclasses.field(default=None, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    plan: Plan
    outcomes: list[Outcome]
    wall_s: float
    dry_run: bool

    @property
    def exit_code(self) -> int:
        failed = any(o.result == "failed" for o in self.outcomes)
        return EXIT_IMAGE_FAILED if failed else EXIT_OK


async def run_sync(config: Config, credentials: Credentials, options: RunOptions) -> RunResult:
    started = time.monotonic()
    sink = _open_sink(config)
    if not options.dry_run:
        await trio.to_thread.run_sync(sink.prepare)
    with nullcontext() if options.dry_run else sink.lock():
        async with open_ens_client(config.ens, credentials) as ens:
            images = await ens.list_images()
        manifest = await trio.to_thread.run_sync(Manifest.load, sink.root)
        async with _open_source_client(config) as http:
            plan = await _plan(config, credentials, sink, manifest, http, images)
            if options.dry_run:
                outcomes = _planned_failures(plan)
            else:
                outcomes = await _transfer_all(config, options, sink, manifest, plan)
    return RunResult(plan=plan, outcomes=outcomes, wall_s=time.monotonic() - started, dry_run=options.dry_run)


def _open_sink(config: Config) -> LocalSink:
    if config.destination.url.startswith("oss://"):
        raise ConfigError("destination.url: oss:// destinations are not supported yet; use a local directory")
    return LocalSink(Path(config.destination.url).expanduser())


@asynccontextmanager
async def _open_source_client(config: Config) -> AsyncIterator[httpx.AsyncClient]:
    transfer = config.transfer
    timeout = httpx.Timeout(transfer.read_timeout_s, connect=transfer.connect_timeout_s)
    limits = httpx.Limits(max_connections=transfer.concurrency * 2 + 2)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as http:
        yield http


async def _plan(config: Config, credentials: Credentials, sink: LocalSink, manifest: Manifest,
                http: httpx.AsyncClient, images: list[ExportedImage]) -> Plan:
    selection = select(images, config.filter)
    signer = credentials if config.source.sign else None

    def make_source(image: ExportedImage) -> ObjectSource:
        location = locate(image.url, config.source)
        return ObjectSource(http, location, signer, config.source.presign_expires_s)

    return await make_plan(images, selection, manifest=manifest, sink=sink,
                           template=config.destination.path_template, make_source=make_source,
                           concurrency=config.transfer.concurrency * 2,
                           retry=RetryPolicy(max_attempts=config.transfer.max_attempts))


def _planned_failures(plan: Plan) -> list[Outcome]:
    """Images that fail before any transfer: unknown ids and objects that cannot be read."""
    failures = [Outcome(image_id=i, image_name="", path="", action="fail", result="failed",
                        reason=f"image {i} is not listed by the API") for i in plan.selection.unknown_ids]
    failures += [Outcome(image_id=i.image_id, image_name=i.image_name, path="", action="fail",
                         result="failed", reason=f"image {i.image_id} is {i.status}, not exported")
                 for i in plan.selection.unavailable]
    for item in plan.items:
        if item.action is Action.FAIL:
            failures.append(_outcome(item, "failed", reason=item.reason))
    return failures


async def _transfer_all(config: Config, options: RunOptions, sink: LocalSink, manifest: Manifest,
                        plan: Plan) -> list[Outcome]:
    writer = await trio.to_thread.run_sync(ManifestWriter, manifest, sink.root)
    relisted = [image_id for image_id in (i.image.image_id for i in plan.items)
                if (entry := manifest.get(image_id)) and entry.missing_since]
    await trio.to_thread.run_sync(writer.mark_missing, [e.image_id for e in plan.missing], _utc_now())
    await trio.to_thread.run_sync(writer.mark_present, relisted)
    progress = make_progress(options.progress, plan.bytes_to_transfer, options.quiet)
    outcomes = _planned_failures(plan)
    for failure in outcomes:
        progress.finish(failure.image_id, _outcome_line(failure), ok=False)
    workers = _Workers(config, sink, progress)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_sigterm)
            jobs_send, jobs_receive = trio.open_memory_channel[PlannedImage](0)
            results_send, results_receive = trio.open_memory_channel[Outcome](0)
            async with jobs_receive, results_send:
                nursery.start_soon(_feed, plan, jobs_send, results_send.clone())
                for _ in range(config.transfer.concurrency):
                    nursery.start_soon(workers.run, jobs_receive.clone(), results_send.clone())
            await _report(results_receive, writer, progress, outcomes)
            nursery.cancel_scope.cancel()  # only the signal watcher is left
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


async def _watch_sigterm() -> None:
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            raise Interrupted("terminated by SIGTERM; partial files are kept for the next run", EXIT_SIGTERM)


async def _feed(plan: Plan, jobs: trio.MemorySendChannel[PlannedImage],
                results: trio.MemorySendChannel[Outcome]) -> None:
    async with jobs, results:
        for item in plan.items:
            if item.action is Action.SKIP:
                await results.send(_outcome(item, "skipped", reason=item.reason))
            elif item.action is not Action.FAIL:
                await jobs.send(item)


async def _report(results: trio.MemoryReceiveChannel[Outcome], writer: ManifestWriter,
                  progress: Progress, outcomes: list[Outcome]) -> None:
    async with results:
        async for outcome in results:
            if outcome.entry is not None:
                # Rename and journal record in one uninterruptible thread call: a signal can
                # never leave a verified file under its final name without its manifest entry.
                await trio.to_thread.run_sync(_commit_and_record, outcome, writer)
            outcomes.append(outcome)
            if outcome.result != "skipped":
                progress.finish(outcome.image_id, _outcome_line(outcome), ok=outcome.result != "failed")


class _Workers:
    """What every worker shares: config, destination, display and the thread limiter."""

    def __init__(self, config: Config, sink: LocalSink, progress: Progress) -> None:
        self._sink = sink
        self._progress = progress
        self._retry = RetryPolicy(max_attempts=config.transfer.max_attempts,
                                  base_delay_s=config.transfer.retry_delay_s,
                                  max_delay_s=config.transfer.retry_max_delay_s)
        self._limiter = trio.CapacityLimiter(config.transfer.concurrency + 1)

    async def run(self, jobs: trio.MemoryReceiveChannel[PlannedImage],
                  results: trio.MemorySendChannel[Outcome]) -> None:
        async with jobs, results:
            async for item in jobs:
                await results.send(await self._mirror(item))

    async def _mirror(self, item: PlannedImage) -> Outcome:
        assert item.source is not None and item.info is not None
        image_id = item.image.image_id
        self._progress.start(image_id, item.image.image_name, item.info.size, item.partial_bytes)
        partial = self._sink.partial(item.path)
        if item.action is Action.ADOPT:
            adopted = await self._adopt(item, partial.final)
            if adopted is not None:
                return adopted
        copy = ImageCopy(item.source, partial, item.info, retry=self._retry,
                         limiter=self._limiter, on_bytes=self._advance(image_id))
        try:
            copied = await copy.run(resume=item.action is Action.RESUME)
        except TransferError as error:
            return _outcome(item, "failed", reason=str(error))
        return _outcome(item, "mirrored", reason=item.reason, copied=copied,
                        entry=_entry(item, copied), commit=partial.commit)

    async def _adopt(self, item: PlannedImage, final: Path) -> Outcome | None:
        """Keep a file that is already there (a pre-seeded disk, a crash before its record) if
        it hashes to the object's CRC-64; otherwise it is replaced once a new copy verifies."""
        assert item.info is not None
        started = time.monotonic()
        try:
            digest = await trio.to_thread.run_sync(digest_file, final, limiter=self._limiter,
                                                   abandon_on_cancel=True)
        except OSError:
            return None
        if digest.crc64 != item.info.crc64ecma or digest.size != item.info.size:
            return None
        copied = Copied(info=item.info, sha256=digest.sha256, crc64ecma=digest.crc64,
                        bytes_transferred=0, seconds=time.monotonic() - started)
        return _outcome(item, "mirrored", reason="kept the file already there: its CRC-64 matches",
                        copied=copied, entry=_entry(item, copied))

    def _advance(self, image_id: str) -> Callable[[int], None]:
        return lambda count: self._progress.advance(image_id, count)


def _commit_and_record(outcome: Outcome, writer: ManifestWriter) -> None:
    assert outcome.entry is not None
    if outcome.commit is not None:  # an adopted file is already in place
        outcome.commit()
    writer.record(outcome.entry)


def _outcome(item: PlannedImage, result: str, *, reason: str, copied: Copied | None = None,
             entry: ManifestEntry | None = None, commit: Callable[[], None] | None = None) -> Outcome:
    return Outcome(
        image_id=item.image.image_id, image_name=item.image.image_name, path=str(item.path),
        action=item.action.value, result=result, reason=reason, entry=entry, commit=commit,
        bytes_transferred=copied.bytes_transferred if copied else 0,
        seconds=copied.seconds if copied else 0.0,
    )


def _entry(item: PlannedImage, copied: Copied) -> ManifestEntry:
    image = item.image
    return ManifestEntry(
        image_id=image.image_id, image_name=image.image_name, architecture=image.architecture,
        platform=image.platform, creation_time=image.creation_time, source_url=image.public_url,
        source_etag=copied.info.etag, size=copied.info.size, crc64ecma=str(copied.crc64ecma),
        sha256=copied.sha256, path=str(item.path), mirrored_at=_utc_now(),
    )


def _outcome_line(outcome: Outcome) -> str:
    if outcome.result == "failed":
        return f"failed {outcome.image_id}: {outcome.reason}"
    if outcome.action == "adopt" and not outcome.bytes_transferred:
        return f"kept {outcome.image_id} -> {outcome.path}: {outcome.reason}"
    rate = outcome.bytes_transferred / outcome.seconds / 1e6 if outcome.seconds else 0.0
    return (f"done {outcome.image_id} -> {outcome.path}: {format_bytes(outcome.bytes_transferred)} "
            f"in {outcome.seconds:.1f} s ({rate:.0f} MB/s), verified")


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

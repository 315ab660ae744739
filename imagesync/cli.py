"""The command line: parse arguments, run a command, turn every error into a sentence and an exit code."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import trio

from . import __version__, emulator, metrics
from .config import DEFAULT_CONFIG_PATH, Config, load_config, with_overrides
from .credentials import resolve_credentials
from .ens import ExportedImage, open_ens_client
from .errors import EXIT_IMAGE_FAILED, EXIT_LOCKED, EXIT_SIGINT, ImagesyncError, Interrupted
from .progress import make_status, printable
from .summary import plan_json, plan_lines, summary_json, summary_lines
from .sync import Result as SyncResult
from .sync import RunOptions, RunResult, open_destination, run_sync
from .verify import Result as VerifyResult
from .verify import verify_mirror

log = logging.getLogger("imagesync")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(getattr(args, "quiet", False), getattr(args, "verbose", False))
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except BrokenPipeError:
        return _closed_stdout()
    except (Exception, KeyboardInterrupt, BaseExceptionGroup) as raised:
        error = _first_imagesync_error(raised)
        if error is None:  # a bug: one line for cron, the traceback with -v
            if getattr(args, "verbose", False):
                raise
            log.error("internal error (%r); please report it, and run with -v for the details", raised)
            return EXIT_IMAGE_FAILED
    log.error("%s", error)
    return error.exit_code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagesync",
        description="Mirror exported Alibaba Cloud ENS images to local disk or another OSS bucket, "
        "verified and resumable.",
    )
    parser.add_argument("--version", action="version", version=f"imagesync {__version__}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    syncing = commands.add_parser(
        "sync", help="mirror every exported image to the destination",
        description="List exported images, plan, and mirror them: resumable, verified against OSS's "
        "CRC-64, written atomically, recorded in manifest.json and SHA256SUMS.",
    )
    _add_common(syncing)
    syncing.add_argument("--dry-run", action="store_true",
                         help="print the plan (actions, sizes, totals, room) and write nothing")
    syncing.add_argument("--image-id", action="append", default=[], metavar="ID",
                         help="mirror only this image (repeatable)")
    syncing.add_argument("--concurrency", type=int, metavar="N", help="images transferred at once")
    syncing.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                         help="progress bars: auto (when stderr is a terminal), always or never")
    syncing.add_argument("--wait", action="store_true",
                         help="keep polling while selected images are exporting; mirror each as it turns "
                         "Exported ([wait] interval_s, timeout_s)")
    syncing.add_argument("--checksum", action="store_true",
                         help="re-hash every mirrored file before deciding to skip it")
    syncing.add_argument("--bwlimit", metavar="RATE",
                         help="cap the bandwidth of all transfers together, e.g. 200MB/s or 50MiB/s "
                         "(overrides transfer.max_bandwidth)")
    syncing.add_argument("--ignore-free-space", action="store_true",
                         help="start even when the plan does not fit in the destination's free space")
    syncing.set_defaults(handler=_sync_command)

    verifying = commands.add_parser(
        "verify", help="re-hash the mirror against the manifest",
        description="Re-hash every file the manifest lists (size, CRC-64, sha256) and record what was "
        "found, so the next sync fetches missing or corrupt images again.",
    )
    _add_common(verifying)
    verifying.add_argument("--repair", action="store_true",
                           help="then fetch again what is missing or corrupt (exit 0 when all ended healed)")
    verifying.add_argument("--read", action="store_true",
                           help="on an oss:// mirror, re-hash the bytes instead of comparing HEAD's CRC-64")
    verifying.set_defaults(handler=_verify_command)

    example = commands.add_parser(
        "example-config", help="print the annotated example config",
        description="Print the annotated example config (every key with its default) on stdout.",
    )
    example.set_defaults(handler=_example_config_command)

    listing = commands.add_parser(
        "list", help="list every image the API reports, in any status",
        description="List every image DescribeExportImageInfo reports, in any export status.",
    )
    _add_common(listing)
    listing.set_defaults(handler=_list_command)

    emulated = commands.add_parser(
        "emulator", help="serve a local ENS + OSS emulator for demos and tests",
        description="Serve a local ENS + OSS stand-in on 127.0.0.1 over a folder of sample images.",
    )
    emulator.add_arguments(emulated)
    emulated.set_defaults(handler=emulator.run)
    return parser


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG_PATH, metavar="FILE",
                        help="config file (default: ./sync.toml)")
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    parser.add_argument("-v", "--verbose", action="store_true", help="print debugging detail")


def _configure_logging(quiet: bool, verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_STDERR)
    _STDERR.timestamps = not sys.stderr.isatty()
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)


class _LineFormatter(logging.Formatter):
    """The one boundary every stderr line crosses: escaped (server text never drives the
    terminal), one line, and with an ISO-8601 timestamp when nobody is watching live."""

    timestamps = False

    def format(self, record: logging.LogRecord) -> str:
        return self.line(f"imagesync: {record.getMessage()}")

    def line(self, text: str) -> str:
        if self.timestamps:
            return f"{datetime.now().astimezone().isoformat(timespec='seconds')} {printable(text)}"
        return printable(text)


_STDERR = _LineFormatter()


def _print_lines(lines: Sequence[str], *, to_stderr: bool = False) -> None:
    """Human output, escaped line by line (and timestamped on stderr without a terminal)."""
    for line in lines:
        if to_stderr:
            print(_STDERR.line(line), file=sys.stderr)
        else:
            print(printable(line))


def _closed_stdout() -> int:
    """Whoever read our output stopped (``imagesync list | head -1``): end quietly, as cat does."""
    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 141  # 128 + SIGPIPE, what a shell reports for cat


def _first_imagesync_error(raised: BaseException) -> ImagesyncError | None:
    """The error to report from a (possibly grouped) failure; None when it is not ours."""
    if isinstance(raised, ImagesyncError):
        return raised
    if isinstance(raised, KeyboardInterrupt) or (
        isinstance(raised, BaseExceptionGroup) and raised.subgroup(KeyboardInterrupt) is not None
    ):
        return Interrupted("interrupted; partial files are kept for the next run", EXIT_SIGINT)
    if isinstance(raised, BaseExceptionGroup):
        matched, _ = raised.split(ImagesyncError)
        if matched is not None:
            leaf: BaseException = matched
            while isinstance(leaf, BaseExceptionGroup):
                leaf = leaf.exceptions[0]
            return leaf  # type: ignore[return-value]
    return None


# --- sync -----------------------------------------------------------------------------


def _sync_command(args: argparse.Namespace) -> int:
    config = with_overrides(load_config(args.config), concurrency=args.concurrency,
                            image_ids=tuple(args.image_id), bwlimit=args.bwlimit)
    options = RunOptions(dry_run=args.dry_run, progress=args.progress, quiet=args.quiet, wait=args.wait,
                         checksum=args.checksum, ignore_free_space=args.ignore_free_space)
    if args.dry_run or not config.run.metrics_file:
        return _sync_and_report(args, config, options)
    started = time.time()
    result: RunResult | None = None
    code = EXIT_IMAGE_FAILED
    try:
        result = _run(config, options)
        code = _report_sync(args, result)
        return code
    except ImagesyncError as error:
        code = error.exit_code
        raise
    except (KeyboardInterrupt, BaseExceptionGroup) as raised:
        first = _first_imagesync_error(raised)
        code = first.exit_code if first is not None else EXIT_IMAGE_FAILED
        raise
    finally:
        if code != EXIT_LOCKED:  # the run holding the lock owns the figures
            _write_run_metrics(config, started, code, result)


def _run(config: Config, options: RunOptions) -> RunResult:
    credentials = resolve_credentials(config.credentials)
    return trio.run(run_sync, config, credentials, options)


def _sync_and_report(args: argparse.Namespace, config: Config, options: RunOptions) -> int:
    return _report_sync(args, _run(config, options))


def _write_run_metrics(config: Config, started: float, code: int, result: RunResult | None) -> None:
    counts = Counter(o.result for o in result.outcomes) if result else Counter()
    metrics.write_run_metrics(Path(config.run.metrics_file), metrics.RunMetrics(
        start=started, end=time.time(), exit_code=code, mirrored=counts[SyncResult.MIRRORED],
        skipped=counts[SyncResult.SKIPPED], failed=counts[SyncResult.FAILED],
        bytes_transferred=sum(o.bytes_transferred for o in result.outcomes) if result else 0))


def _report_sync(args: argparse.Namespace, result: RunResult) -> int:
    document = plan_json(result) if result.dry_run else summary_json(result)
    if args.json:
        print(json.dumps(document, indent=2))
    lines = plan_lines(result) if result.dry_run else summary_lines(result)
    if result.dry_run and not args.json:
        _print_lines(lines)
    elif not (args.quiet and result.exit_code == 0):
        _print_lines(lines, to_stderr=True)
    return result.exit_code


# --- verify ---------------------------------------------------------------------------


def _verify_command(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    on_oss = config.destination.url.startswith("oss://")
    credentials = resolve_credentials(config.credentials) if on_oss else None
    with contextlib.closing(open_destination(config, credentials)) as destination:
        verdicts = trio.run(partial(verify_mirror, destination, config.transfer.concurrency, read=args.read,
                                    interval_s=config.run.progress_interval_s))
    bad = [v for v in verdicts if v.result is not VerifyResult.OK]
    if config.run.metrics_file:
        metrics.write_verify_metrics(Path(config.run.metrics_file), at=time.time(), problems=len(bad))
    if args.json:
        print(json.dumps([dataclasses.asdict(v) for v in verdicts], indent=2))
    for verdict in bad:
        log.error("%s %s: %s", verdict.result, verdict.image_id, verdict.reason)
    if not args.quiet or bad:
        (log.error if bad and not args.repair else log.info)(
            "%d of %d mirrored images verified", len(verdicts) - len(bad), len(verdicts))
    if not bad or not args.repair:
        return EXIT_IMAGE_FAILED if bad else 0
    log.info("repairing %d image%s: fetching again", len(bad), "" if len(bad) == 1 else "s")
    repair = with_overrides(config, image_ids=tuple(v.image_id for v in bad))
    result = _run(repair, RunOptions(progress="never", quiet=args.quiet))
    if not (args.quiet and result.exit_code == 0):
        _print_lines(summary_lines(result), to_stderr=True)
    return result.exit_code


# --- example-config -------------------------------------------------------------------


def _example_config_command(args: argparse.Namespace) -> int:
    sys.stdout.write(resources.files("imagesync").joinpath("sync.example.toml").read_text(encoding="utf-8"))
    return 0


# --- list -----------------------------------------------------------------------------


def _list_command(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    credentials = resolve_credentials(config.credentials)

    async def fetch() -> list[ExportedImage]:
        async with open_ens_client(config.ens, credentials) as client:
            with make_status("auto", args.quiet) as status:
                return await client.list_images(on_page=status.listing)

    images = trio.run(fetch)
    if args.json:
        print(json.dumps([_image_json(image) for image in images], indent=2))
    else:
        _print_table(images)
    return 0


def _image_json(image: ExportedImage) -> dict[str, Any]:
    return {
        "image_id": image.image_id,
        "image_name": image.image_name,
        "status": image.status,
        "platform": image.platform,
        "architecture": image.architecture,
        "creation_time": image.creation_time,
        "url": image.public_url,
    }


def _print_table(images: list[ExportedImage]) -> None:
    headings = ("ID", "NAME", "STATUS", "PLATFORM", "ARCH", "CREATED", "URL")
    rows = [
        tuple(printable(cell) for cell in (i.image_id, i.image_name, i.status, i.platform,
                                           i.architecture, i.creation_time, i.public_url or "-"))
        for i in images
    ]
    widths = [max([len(h)] + [len(r[n]) for r in rows]) for n, h in enumerate(headings)]
    for row in [headings, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    counts = Counter(image.status for image in images)
    summary = ", ".join(f"{count} {printable(status)}" for status, count in sorted(counts.items()))
    print(f"\n{len(images)} images: {summary}" if images else "no images")


if __name__ == "__main__":
    sys.exit(main())

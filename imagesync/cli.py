"""The command line: parse arguments, run a command, turn every error into a sentence and an exit code."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from . import __version__, emulator
from .config import DEFAULT_CONFIG_PATH, Config, load_config
from .credentials import resolve_credentials
from .ens import ExportedImage, open_ens_client
from .errors import EXIT_SIGINT, ImagesyncError

log = logging.getLogger("imagesync")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(getattr(args, "quiet", False), getattr(args, "verbose", False))
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        log.error("interrupted")
        return EXIT_SIGINT
    except (ImagesyncError, BaseExceptionGroup) as raised:
        error = _first_imagesync_error(raised)
        log.error("%s", error)
        return error.exit_code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagesync",
        description="Mirror exported Alibaba Cloud ENS images to local disk, verified and resumable.",
    )
    parser.add_argument("--version", action="version", version=f"imagesync {__version__}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

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
    handler.setFormatter(logging.Formatter("imagesync: %(message)s"))
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)


def _first_imagesync_error(raised: BaseException) -> ImagesyncError:
    """The error to report from a (possibly grouped) failure; anything else is re-raised."""
    if isinstance(raised, ImagesyncError):
        return raised
    if isinstance(raised, BaseExceptionGroup):
        matched, _ = raised.split(ImagesyncError)
        if matched is not None:
            leaf: BaseException = matched
            while isinstance(leaf, BaseExceptionGroup):
                leaf = leaf.exceptions[0]
            return leaf  # type: ignore[return-value]
    raise raised


def _load(args: argparse.Namespace) -> Config:
    return load_config(args.config)


# --- list -----------------------------------------------------------------------------


def _list_command(args: argparse.Namespace) -> int:
    config = _load(args)
    credentials = resolve_credentials(config.credentials)

    async def fetch() -> list[ExportedImage]:
        async with open_ens_client(config.ens, credentials) as client:
            return await client.list_images()

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
        (i.image_id, _printable(i.image_name), i.status, i.platform, i.architecture,
         i.creation_time, i.public_url or "-")
        for i in images
    ]
    widths = [max([len(h)] + [len(r[n]) for r in rows]) for n, h in enumerate(headings)]
    for row in [headings, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    counts = Counter(image.status for image in images)
    summary = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
    print(f"\n{len(images)} images: {summary}" if images else "no images")


def _printable(text: str) -> str:
    """A name from the API, with control characters shown escaped, never interpreted."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


if __name__ == "__main__":
    sys.exit(main())

"""Start an emulator: prepare the data root, listen, print the config, serve until a signal."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from .buckets import Buckets
from .catalog import Catalog, catalog_path, create_sample_catalog
from .faults import Faults, FaultState
from .multipart_store import UploadStore
from .objects import ObjectStore
from .options import Options, client_config, render_toml
from .schedule import ExportSchedule
from .server import EmulatorHTTPServer, Handler
from .state import Emulator, NonceCache

HOST = "127.0.0.1"


class _Stop(BaseException):
    """Raised by the SIGTERM/SIGINT handler to leave ``serve_forever``.

    A BaseException, like KeyboardInterrupt, so that socketserver's ``except Exception``
    around request handling cannot swallow it.
    """


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signum)


def _error(message: str) -> None:
    print(f"imagesync emulator: error: {message}", file=sys.stderr)


def prepare_root(options: Options) -> None:
    """Create the layout and buckets; on a root without catalog, generate the samples."""
    buckets = Buckets(options.root, options.region)
    buckets.create(options.bucket, options.region)
    for name, region in options.dest_buckets:
        buckets.create(name, region)
    if catalog_path(options.root).exists():
        return
    started = time.monotonic()
    create_sample_catalog(
        options.root, options.images, options.image_sizes, bucket=options.bucket
    )
    if options.images:
        total = sum(options.image_sizes[i % len(options.image_sizes)] for i in range(options.images))
        print(
            f"imagesync emulator: generated {options.images} sample images "
            f"({total / 2**20:.1f} MiB) in {options.root} in {time.monotonic() - started:.1f} s",
            file=sys.stderr,
        )


def write_config_file(path: Path, text: str) -> None:
    """Write the config with mode 0600 (it holds the secret)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    path.chmod(0o600)


def build_emulator(options: Options, port: int) -> Emulator:
    baseline = FaultState(latency_ms=options.latency_ms, bandwidth_bps=options.bandwidth_bps)
    return Emulator(
        root=options.root,
        base_url=f"http://{HOST}:{port}",
        access_key_id=options.access_key_id,
        access_key_secret=options.access_key_secret,
        region=options.region,
        public_read=options.public_read,
        catalog=Catalog(options.root),
        objects=ObjectStore(options.root),
        faults=Faults(baseline),
        nonces=NonceCache(),
        buckets=Buckets(options.root, options.region),
        uploads=UploadStore(options.root),
        schedule=ExportSchedule(),
        readonly_keys=dict(options.readonly_keys),
    )


def _config_text(options: Options, url: str) -> str:
    return render_toml(
        client_config(
            url=url,
            access_key_id=options.access_key_id,
            access_key_secret=options.access_key_secret,
            region=options.region,
            public_read=options.public_read,
            destination=options.destination,
            destination_region=_destination_region(options),
        )
    )


def _destination_region(options: Options) -> str:
    """The region of the bucket an ``oss://`` destination names, as the emulator records it."""
    bucket = options.destination_bucket
    return Buckets(options.root, options.region).region(bucket) if bucket else ""


def _serve(server: EmulatorHTTPServer, banner: str) -> None:
    """Print the banner and serve until SIGINT/SIGTERM."""
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(banner, end="", flush=True)
        server.serve_forever(poll_interval=0.5)
    except (_Stop, KeyboardInterrupt):
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run(args: argparse.Namespace) -> int:
    """``imagesync emulator``: serve until SIGINT/SIGTERM, then exit 0."""
    try:
        options = Options.from_args(args)
    except ValueError as exc:
        _error(str(exc))
        return 2
    try:
        prepare_root(options)
    except OSError as exc:
        _error(f"cannot prepare {options.root}: {exc}")
        return 1
    try:
        server = EmulatorHTTPServer((HOST, options.port), Handler)
    except OSError as exc:
        _error(f"cannot listen on {HOST}:{options.port}: {exc.strerror or exc}")
        return 1
    with server:
        server.emulator = build_emulator(options, server.server_address[1])
        server.verbose = options.verbose
        config = _config_text(options, server.emulator.base_url)
        if options.config_out is not None:
            try:
                write_config_file(options.config_out, config)
            except OSError as exc:
                _error(f"cannot write {options.config_out}: {exc}")
                return 1
        _serve(server, f"imagesync emulator listening on {server.emulator.base_url}\n\n{config}")
    return 0

#!/usr/bin/env python3
"""Measure the bandwidth cap end to end: does ``imagesync sync --bwlimit RATE`` hold RATE?

    .venv/bin/python scripts/bench_bwlimit.py                      # 20MiB/s for about 30 s
    .venv/bin/python scripts/bench_bwlimit.py --rate 50MiB/s --seconds 20 --images 4
    .venv/bin/python scripts/bench_bwlimit.py --library            # the limiter alone, see below

It starts the emulator with images sized so that the whole transfer takes about ``--seconds``
at the cap, runs ``imagesync sync -c FILE --bwlimit RATE --json``, and samples the bytes on
disk under the mirror (the emulator's ``body_bytes_sent`` counts a whole body before sendfile
sends it) to get the rate over the middle 90% of the transfer: what the cap governs, with
start-up, listing and the last fsync left out. It prints that rate, the whole run's average, and
the deviation from the cap; exit status 1 when the deviation exceeds ``--tolerance`` (default
10%) or the sync fails. While the command line has no ``--bwlimit`` yet, it says so and exits 0, unless
``--library`` asks for the limiter alone: N httpx streams from the emulator sharing one
`imagesync.bandwidth.BandwidthLimit`, on the real clock.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

from imagesync.bandwidth import BandwidthLimit, format_rate
from imagesync.emulator import catalog
from imagesync.units import parse_rate

LISTENING = "imagesync emulator listening on "
MiB = 2**20


@dataclass(frozen=True, kw_only=True, slots=True)
class Measurement:
    steady_bytes: int  # bytes between the first sample with data and the last one
    steady_s: float
    total_bytes: int
    wall_s: float

    @property
    def steady_rate(self) -> float:
        return self.steady_bytes / self.steady_s if self.steady_s > 0 else 0.0

    @property
    def wall_rate(self) -> float:
        return self.total_bytes / self.wall_s if self.wall_s > 0 else 0.0


def cli_has_bwlimit() -> bool:
    result = subprocess.run(
        [sys.executable, "-m", "imagesync", "sync", "--help"], capture_output=True, text=True, check=False
    )
    return "--bwlimit" in result.stdout


def start_emulator(root: Path, config: Path, mirror: Path, images: int, size: int,
                   public: bool) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "imagesync.emulator", "--port", "0", "--root", str(root),
               "--images", str(images), "--image-size", str(size), "--config-out", str(config),
               "--destination", str(mirror)]
    process = subprocess.Popen([*command, *(["--public-read"] if public else [])],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith(LISTENING):
        process.terminate()
        raise SystemExit(f"emulator did not start: {line!r}")
    return process, line.removeprefix(LISTENING).strip()


def bytes_on_disk(folder: Path) -> int:
    """Sizes of the regular files under ``folder``, partial files included."""
    total = 0
    for directory, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # renamed or removed meanwhile
                info = (Path(directory) / name).lstat()
                total += info.st_size if stat.S_ISREG(info.st_mode) else 0
    return total


def measure_cli(config: Path, mirror: Path, rate_text: str, total: int, interval: float) -> Measurement:
    """Run the sync, sampling the bytes in the mirror until it exits."""
    samples: list[tuple[float, int]] = []
    started = time.monotonic()
    sync = subprocess.Popen(
        [sys.executable, "-m", "imagesync", "sync", "-c", str(config), "--bwlimit", rate_text,
         "--json", "--progress", "never"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    while sync.poll() is None:
        samples.append((time.monotonic(), bytes_on_disk(mirror)))
        time.sleep(interval)
    wall = time.monotonic() - started
    stdout, stderr = sync.communicate()
    if sync.returncode != 0:
        raise SystemExit(f"sync failed (exit {sync.returncode}): {stderr.strip()}")
    transferred = int(json.loads(stdout).get("bytes_transferred", total))
    return middle(samples, total, wall, transferred)


def middle(samples: list[tuple[float, int]], total: int, wall: float, transferred: int) -> Measurement:
    """The rate between the samples where 5% and 95% of ``total`` had arrived."""
    low = next(((t, b) for t, b in samples if b >= 0.05 * total), None)
    high = next(((t, b) for t, b in samples if b >= 0.95 * total), None)
    if low is None or high is None or high[0] <= low[0]:
        raise SystemExit(f"too few samples to measure ({len(samples)} over {wall:.1f} s): "
                         "use a longer --seconds or a shorter --interval")
    return Measurement(steady_bytes=high[1] - low[1], steady_s=high[0] - low[0],
                       total_bytes=transferred, wall_s=wall)


async def measure_library(root: Path, url: str, rate: int) -> Measurement:
    """Stream every object at once through one shared limit; the real clock times it."""
    urls = [f"{url}/{e['Bucket']}/{e['Key']}" for e in catalog.load_entries(root)
            if e.get("ImageExportStatus") == "Exported"]
    limit = BandwidthLimit(rate)
    received = 0

    async def fetch(client: httpx.AsyncClient, object_url: str) -> None:
        nonlocal received
        async with client.stream("GET", object_url, headers={"Accept-Encoding": "identity"}) as reply:
            reply.raise_for_status()
            async for chunk in reply.aiter_raw():
                await limit.consume(len(chunk))
                received += len(chunk)

    started = time.monotonic()
    async with httpx.AsyncClient(trust_env=False, timeout=60) as client, trio.open_nursery() as nursery:
        for object_url in urls:
            nursery.start_soon(fetch, client, object_url)
    wall = time.monotonic() - started
    return Measurement(steady_bytes=received, steady_s=wall, total_bytes=received, wall_s=wall)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", default="20MiB/s", help="the cap to test (default 20MiB/s)")
    parser.add_argument("--seconds", type=float, default=30, help="how long the transfer should take at the cap")
    parser.add_argument("--images", type=int, default=2, help="images transferred at once (default 2)")
    parser.add_argument("--tolerance", type=float, default=0.10, help="allowed deviation (default 0.10)")
    parser.add_argument("--interval", type=float, default=0.1, help="sampling period in seconds")
    parser.add_argument("--library", action="store_true", help="measure the limiter in process, without the CLI")
    parser.add_argument("--workdir", type=Path, help="where to put the emulator data and mirror")
    args = parser.parse_args()
    rate = parse_rate(args.rate)
    if rate == 0:
        parser.error("--rate must be a cap, not 0")
    if not args.library and not cli_has_bwlimit():
        print("skipped: `imagesync sync --help` has no --bwlimit yet; nothing to measure end to end "
              "(--library measures the limiter alone)")
        return 0
    size = max(MiB, int(rate * args.seconds / args.images) // MiB * MiB)
    with tempfile.TemporaryDirectory(prefix="imagesync-bwlimit-", dir=args.workdir) as work:
        workdir = Path(work)
        started = time.monotonic()
        emulator, url = start_emulator(workdir / "emulator", workdir / "sync.toml", workdir / "mirror",
                                       args.images, size, public=args.library)
        print(f"emulator ready in {time.monotonic() - started:.1f} s at {url}: "
              f"{args.images} images of {size // MiB} MiB", flush=True)
        try:
            if args.library:
                result = trio.run(measure_library, workdir / "emulator", url, rate)
            else:
                result = measure_cli(workdir / "sync.toml", workdir / "mirror", args.rate, args.images * size,
                                     args.interval)
        finally:
            emulator.terminate()
            emulator.wait(timeout=30)
    deviation = result.steady_rate / rate - 1
    print(f"cap {format_rate(rate)}; {'limiter alone' if args.library else 'imagesync sync --bwlimit'}")
    print(f"  transferred {result.total_bytes / MiB:.0f} MiB in {result.wall_s:.1f} s "
          f"(whole run average {format_rate(result.wall_rate)})")
    window = "all of it" if args.library else "middle 90%"
    print(f"  {window}: {result.steady_bytes / MiB:.0f} MiB in {result.steady_s:.1f} s "
          f"= {format_rate(result.steady_rate)}, deviation {deviation:+.1%} (tolerance ±{args.tolerance:.0%})")
    if abs(deviation) > args.tolerance:
        print("FAIL: the achieved rate is outside the tolerance")
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Benchmark listing: `imagesync list --json` over N images (default 10,000 = 200 pages of 50).

    .venv/bin/python scripts/bench_list.py --images 10000
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="imagesync-bench-list-"))
    emulator = subprocess.Popen(
        [sys.executable, "-m", "imagesync.emulator", "--root", str(workdir / "emulator"), "--port", "0",
         "--images", str(args.images), "--image-size", "4KiB", "--config-out", str(workdir / "sync.toml"),
         "--destination", str(workdir / "mirror")],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert emulator.stdout is not None
        print(emulator.stdout.readline().strip(), flush=True)
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            result = subprocess.run([sys.executable, "-m", "imagesync", "list", "-c", str(workdir / "sync.toml"),
                                     "--json"], capture_output=True, text=True, check=True)
            times.append(time.perf_counter() - started)
            count = len(json.loads(result.stdout))
        print(f"listed {count} images; wall seconds per run: {[round(t, 2) for t in times]}, "
              f"median {statistics.median(times):.2f} s")
    finally:
        emulator.terminate()
        emulator.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

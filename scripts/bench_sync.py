#!/usr/bin/env python3
"""Benchmark a full sync against the emulator: throughput, CPU, peak RSS and event-loop lag.

    .venv/bin/python scripts/bench_sync.py --images 4 --size 2GiB

Run 1 is the real command line in a subprocess (peak RSS and CPU come from its rusage).
Run 2 runs the same sync in this process beside a task that sleeps 5 ms at a time and records
how late it wakes: the event loop's worst stall while transfers hash and write.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from imagesync.config import load_config
from imagesync.credentials import resolve_credentials
from imagesync.sync import RunOptions, run_sync


def start_emulator(root: Path, images: int, size: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "imagesync.emulator", "--root", str(root), "--port", "0",
         "--images", str(images), "--image-size", size],
        stdout=subprocess.PIPE, text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if "listening on" not in line:
        raise SystemExit(f"emulator did not start: {line!r}")
    return process, line.rsplit(" ", 1)[1].strip()


def write_config(path: Path, url: str, mirror: Path, concurrency: int) -> Path:
    path.write_text(
        f'[ens]\nendpoint = "{url}"\n'
        '[credentials]\naccess_key_id = "emulator-ak"\naccess_key_secret = "emulator-secret"\n'
        '[source]\nregion = "cn-hangzhou"\nallow_hosts = ["127.0.0.1"]\n'
        f'[destination]\nurl = "{mirror}"\n[transfer]\nconcurrency = {concurrency}\n'
    )
    path.chmod(0o600)
    return path


def run_subprocess(config: Path) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "imagesync", "sync", "-c", str(config), "--json"],
                            capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"sync failed ({result.returncode}): {result.stderr}")
    summary = json.loads(result.stdout)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    gib = summary["bytes_transferred"] / 2**30
    return {"wall_s": wall, "gib": gib, "mib_per_s": gib * 1024 / wall, "cpu_s_per_gib": cpu / gib,
            "peak_rss_mib": after.ru_maxrss / 1024}


async def run_with_lag_monitor(config_path: Path) -> dict[str, float]:
    config = load_config(config_path)
    credentials = resolve_credentials(config.credentials)
    lags: list[float] = []

    async def monitor() -> None:
        while True:
            asked = trio.current_time()
            await trio.sleep(0.005)
            lags.append(trio.current_time() - asked - 0.005)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(monitor)
        started = time.perf_counter()
        result = await run_sync(config, credentials, RunOptions(progress="never", quiet=True))
        wall = time.perf_counter() - started
        nursery.cancel_scope.cancel()
    assert result.exit_code == 0
    lags.sort()
    total = sum(o.bytes_transferred for o in result.outcomes) / 2**30
    return {"wall_s": wall, "mib_per_s": total * 1024 / wall, "loop_lag_max_ms": lags[-1] * 1000,
            "loop_lag_p99_ms": lags[int(len(lags) * 0.99)] * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--size", default="2GiB", help="size of each image (default 2GiB)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3, help="command-line runs (default 3)")
    parser.add_argument("--workdir", type=Path, help="where to put the emulator data and mirror")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="imagesync-bench-", dir=args.workdir))
    try:
        started = time.perf_counter()
        emulator, url = start_emulator(workdir / "emulator", args.images, args.size)
        print(f"emulator ready in {time.perf_counter() - started:.1f} s at {url}", flush=True)
        try:
            mirror = workdir / "mirror"
            config = write_config(workdir / "sync.toml", url, mirror, args.concurrency)
            for run in range(1, args.runs + 1):
                os.sync()  # start each run with no dirty pages from the previous one
                cli = run_subprocess(config)
                print(f"command line #{run}:", json.dumps({k: round(v, 2) for k, v in cli.items()}), flush=True)
                shutil.rmtree(mirror)
            os.sync()
            lag = trio.run(run_with_lag_monitor, config)
            print("in process:  ", json.dumps({k: round(v, 2) for k, v in lag.items()}), flush=True)
        finally:
            emulator.terminate()
            emulator.wait()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

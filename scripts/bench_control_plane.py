#!/usr/bin/env python3
"""The control plane at scale: list and plan, and a run with nothing to do, over 10,000 images.

    scripts/bench control-plane                       # 10,000 images (200 pages of 50), 3 runs each
    scripts/bench control-plane --images 2000 --runs 1

Against the emulator (`--images N --image-size 4KiB`, ENS signatures checked, objects V4-signed),
whose generated root is cached in WORKDIR/emulator-N (generating 10,000 objects takes a while):

  plan       `imagesync sync --dry-run --json` into an empty destination       target < 5 s
  fill       the first `imagesync sync` (N tiny transfers; reported, no target)
  no-change  `imagesync sync` again over the filled mirror                     target < 30 s
  plan-full  `imagesync sync --dry-run --json` over the filled mirror

Each is the median of --runs, wall time of the whole command (interpreter start included),
with CPU seconds and peak RSS from wait4. Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import bench_peers
from bench_peers import child_env, launch

TARGETS = {"plan": 5.0, "no-change": 30.0}


def start_emulator(root: Path, images: int, size: str, config: Path, mirror: Path) -> tuple[subprocess.Popen[str], str]:
    fresh = not (root / "catalog.json").exists()
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "imagesync.emulator", "--root", str(root), "--port", "0", "--images", str(images),
         "--image-size", size, "--config-out", str(config), "--destination", str(mirror)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True, env=child_env(),
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if "listening on" not in line:
        process.kill()
        raise SystemExit(f"the emulator did not start: {line!r}")
    what = "generated" if fresh else "reused"
    print(f"emulator: {what} {root} ({images} images of {size}) in {time.perf_counter() - started:.1f} s; "
          f"{line.strip()}", flush=True)
    return process, line.rsplit(" ", 1)[1].strip()


def timed(name: str, argv: list[str], runs: int, logs: Path, check: Any = None,
          before: Any = None) -> dict[str, Any]:
    samples = []
    for run in range(runs):
        if before is not None:
            before()
        log = logs / f"{name}-{run}.out"
        usage = launch(argv, log)
        if check is not None:
            check(json.loads(log.read_text()))
        samples.append(usage)
        print(f"  {name:10} run {run + 1}: {usage['wall_s']:6.2f} s, cpu {usage['user_s'] + usage['sys_s']:6.2f} s, "
              f"peak RSS {usage['maxrss_kib'] / 1024:.0f} MiB", flush=True)
    result = {
        "wall_s": statistics.median(s["wall_s"] for s in samples),
        "cpu_s": statistics.median(s["user_s"] + s["sys_s"] for s in samples),
        "peak_rss_mib": max(s["maxrss_kib"] for s in samples) / 1024,
        "runs_s": [round(s["wall_s"], 2) for s in samples],
    }
    if name in TARGETS:
        result["target_s"] = TARGETS[name]
        result["meets_target"] = result["wall_s"] < TARGETS[name]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench control-plane", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000, help="Exported images (default 10,000)")
    parser.add_argument("--image-size", default="4KiB", help="size of each (default 4KiB)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each measurement (default 3)")
    parser.add_argument("--concurrency", type=int, help="transfer.concurrency (default: the printed config's)")
    parser.add_argument("--workdir", type=Path,
                        default=Path(os.environ.get("IMAGESYNC_BENCH_DIR", bench_peers.TOP.parent / "imagesync-bench")),
                        help="emulator root cache and mirror (default $IMAGESYNC_BENCH_DIR, else %(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the generated emulator root for next time")
    parser.add_argument("--source", type=Path, metavar="DIR", help="run imagesync from this checkout (see scripts/bench)")
    parser.add_argument("--json-out", type=Path, help="also write the results as JSON to this file")
    args = parser.parse_args()
    if args.source is not None:
        bench_peers.SOURCE = args.source.resolve()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    json_out = args.json_out.resolve() if args.json_out else None
    os.chdir(workdir)  # `python -m` puts the working directory first on sys.path
    root = workdir / f"emulator-{args.images}x{args.image_size}"
    run_dir = workdir / "control-plane"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    mirror = run_dir / "mirror"
    config = run_dir / "sync.toml"
    emulator, _ = start_emulator(root, args.images, args.image_size, config, mirror)
    results: dict[str, Any] = {"images": args.images, "image_size": args.image_size, "runs": args.runs,
                               "imagesync": str(bench_peers.SOURCE or bench_peers.TOP)}
    try:
        if args.concurrency:
            text = config.read_text().replace("concurrency = 4", f"concurrency = {args.concurrency}")
            config.write_text(text)
        imagesync = [sys.executable, "-m", "imagesync", "sync", "-c", str(config), "--json", "--progress", "never"]

        def empty_mirror() -> None:
            shutil.rmtree(mirror, ignore_errors=True)

        def planned_all(plan: dict[str, Any]) -> None:
            if plan["totals"]["images_to_transfer"] != args.images:
                raise RuntimeError(f"planned {plan['totals']['images_to_transfer']} transfers, not {args.images}")

        def planned_none(plan: dict[str, Any]) -> None:
            if plan["totals"]["images_to_transfer"] != 0:
                raise RuntimeError(f"planned {plan['totals']['images_to_transfer']} transfers over a full mirror")

        def mirrored_all(summary: dict[str, Any]) -> None:
            if summary["counts"]["mirrored"] != args.images:
                raise RuntimeError(f"mirrored {summary['counts']}, expected {args.images}")

        def nothing_done(summary: dict[str, Any]) -> None:
            if summary["bytes_transferred"] != 0 or summary["counts"]["failed"]:
                raise RuntimeError(f"a no-change run did something: {summary['counts']}")

        results["plan"] = timed("plan", [*imagesync, "--dry-run"], args.runs, run_dir, planned_all, empty_mirror)
        empty_mirror()
        results["fill"] = timed("fill", imagesync, 1, run_dir, mirrored_all)
        results["no-change"] = timed("no-change", imagesync, args.runs, run_dir, nothing_done)
        results["plan-full"] = timed("plan-full", [*imagesync, "--dry-run"], args.runs, run_dir, planned_none)
    finally:
        emulator.terminate()
        emulator.wait()
        shutil.rmtree(run_dir, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\n{args.images} images ({args.images // 50} pages of 50), median of {args.runs}:")
    print(f"{'measurement':12} {'wall s':>8} {'CPU s':>7} {'RSS MiB':>8} {'target':>8}")
    for name in ("plan", "fill", "no-change", "plan-full"):
        r = results[name]
        target = f"< {r['target_s']:.0f} s {'ok' if r['meets_target'] else 'MISSED'}" if "target_s" in r else ""
        print(f"{name:12} {r['wall_s']:8.2f} {r['cpu_s']:7.2f} {r['peak_rss_mib']:8.0f} {target:>8}")
    if json_out:
        json_out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"results written to {json_out}")
    return 0 if all(results[n].get("meets_target", True) for n in TARGETS) else 1


if __name__ == "__main__":
    sys.exit(main())

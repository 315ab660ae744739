#!/usr/bin/env python3
"""Benchmark mirroring into OSS buckets on the emulator: a streamed upload and a server-side copy.

    .venv/bin/python scripts/bench_oss.py [--size 2GiB] [--concurrency 4]

The emulator serves one image from its source bucket (cn-hangzhou) and two destination buckets:
``far`` (cn-beijing: the image is streamed, GET then UploadPart) and ``near`` (cn-hangzhou: copied
inside OSS by UploadPartCopy, ``read_back = "never"``). Each ``imagesync sync`` runs as a real
subprocess; its peak RSS and CPU come from os.wait4 on that process alone, and the bytes that
crossed the client from the emulator's statistics. Budget: peak RSS under 200 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

RSS_BUDGET_MB = 200


def start_emulator(root: Path, size: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "imagesync.emulator", "--root", str(root), "--port", "0", "--images", "1",
         "--image-size", size, "--dest-bucket", "near@cn-hangzhou", "--dest-bucket", "far@cn-beijing"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert process.stdout is not None
    for _ in range(5):
        line = process.stdout.readline()
        if "listening on" in line:
            return process, line.rsplit(" ", 1)[1].strip()
    process.kill()
    raise SystemExit(f"emulator did not start: {line!r}")


def write_config(path: Path, url: str, bucket: str, region: str, state: Path, concurrency: int) -> Path:
    path.write_text(
        f'[ens]\nendpoint = "{url}"\n'
        '[credentials]\naccess_key_id = "emulator-ak"\naccess_key_secret = "emulator-secret"\n'
        '[source]\nregion = "cn-hangzhou"\nallow_hosts = ["127.0.0.1"]\n'
        f'[destination]\nurl = "oss://{bucket}/mirror"\noss_endpoint = "{url}"\nregion = "{region}"\n'
        f'state_dir = "{state}"\nread_back = "never"\n'
        f"[transfer]\nconcurrency = {concurrency}\n"
    )
    path.chmod(0o600)
    return path


def control(url: str, method: str, name: str) -> dict[str, Any]:
    with httpx.Client(trust_env=False, timeout=30) as client:
        response = client.request(method, f"{url}/_emulator/{name}", json={} if method == "POST" else None)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def run_sync(config: Path) -> dict[str, Any]:
    """One ``imagesync sync`` subprocess: its summary, wall time, CPU and peak RSS (os.wait4)."""
    out, err = config.with_suffix(".out"), config.with_suffix(".err")
    started = time.perf_counter()
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "imagesync", "sync", "-c", str(config), "--json"],
                                   stdout=stdout, stderr=stderr)
    _, status, usage = os.wait4(process.pid, 0)  # this child's own rusage, reaped here
    process.returncode = code = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"sync failed ({code}): {err.read_text()}")
    return {"summary": json.loads(out.read_text()), "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_mb": usage.ru_maxrss / 1024}


def compare_clients(url: str, total: int = 256 << 20, part: int = 8 << 20) -> dict[str, float]:
    """UploadPart throughput of oss2 (requests, in a thread) against oss2's V4 signer with httpx
    sending, one part after another, as one image's upload does: MiB/s, median of 3."""
    import oss2
    from oss2 import http as oss2_http

    auth = oss2.ProviderAuthV4(oss2.credentials.StaticCredentialsProvider("emulator-ak", "emulator-secret"))
    bucket = oss2.Bucket(auth, url, "far", region="cn-beijing", enable_crc=False)
    data = os.urandom(part)

    def with_oss2(key: str, upload_id: str, number: int) -> None:
        bucket.upload_part(key, upload_id, number, data)

    client = httpx.Client(trust_env=False, timeout=60)

    def with_httpx(key: str, upload_id: str, number: int) -> None:
        request = oss2_http.Request("PUT", f"{url}/far/{key}", data=data, region="cn-beijing", product="oss",
                                    params={"uploadId": upload_id, "partNumber": str(number)})
        auth._sign_request(request, "far", key)
        headers = {k: v for k, v in request.headers.items() if v is not None}
        client.put(request.url, params=request.params, headers=headers, content=data).raise_for_status()

    rates: dict[str, float] = {}
    for name, send in (("oss2_threads", with_oss2), ("oss2_sign_httpx_send", with_httpx)):
        runs = []
        for run in range(3):
            key = f"compare/{name}-{run}"
            upload_id = bucket.init_multipart_upload(key).upload_id
            started = time.perf_counter()
            for number in range(1, total // part + 1):
                send(key, upload_id, number)
            runs.append(total / 2**20 / (time.perf_counter() - started))
            bucket.abort_multipart_upload(key, upload_id)
        rates[name] = round(sorted(runs)[1], 1)
    client.close()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="2GiB", help="image size (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--compare-clients", action="store_true",
                        help="also measure UploadPart of 256 MiB with oss2 against oss2-signed httpx")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-oss-"))
    emulator, url = start_emulator(work / "emulator", args.size)
    try:
        size = sum(p.stat().st_size for p in (work / "emulator").rglob("*.qcow2"))
        report = {"image_bytes": size}
        for name, bucket, region in (("stream", "far", "cn-beijing"), ("server_side_copy", "near", "cn-hangzhou")):
            config = write_config(work / f"{name}.toml", url, bucket, region, work / "state", args.concurrency)
            control(url, "POST", "reset")
            run = run_sync(config)
            stats = control(url, "GET", "stats")
            image_bytes_out = sum(n for key, n in stats["bytes_by_key"].items() if key.endswith(".qcow2"))
            report[name] = {
                "wall_s": round(run["wall_s"], 2),  # the whole command: start, plan, copy, Complete
                "copy_s": round(max(i["seconds"] for i in run["summary"]["images"]), 2),
                "mib_per_s": round(size / 2**20 / run["wall_s"], 1),
                "cpu_s_per_gib": round(run["cpu_s"] / (size / 2**30), 2),
                "peak_rss_mb": round(run["peak_rss_mb"], 1),
                "image_bytes_read_by_client": image_bytes_out,
                "bytes_uploaded_by_client": stats["body_bytes_received"],
                "bytes_copied_inside_oss": stats["bytes_copied"],
                "operations": stats["oss_operations"],
                "verified": {i["verified"] for i in run["summary"]["images"]}.pop(),
            }
        report["rss_within_budget"] = all(report[n]["peak_rss_mb"] < RSS_BUDGET_MB  # type: ignore[index]
                                          for n in ("stream", "server_side_copy"))
        if args.compare_clients:
            report["upload_part_mib_per_s"] = compare_clients(url)
        print(json.dumps(report, indent=2))
    finally:
        emulator.terminate()
        emulator.wait()
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

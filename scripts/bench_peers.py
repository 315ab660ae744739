#!/usr/bin/env python3
"""imagesync against the tools users would otherwise script, over loopback nginx (sendfile).

    scripts/bench                                  # every scenario, 3 rounds, full size
    scripts/bench --scale 0.25 --scenario big      # a quick look
    scripts/bench --scenario wan --rounds 1 --json-out wan.json

Scenarios (sizes are multiplied by --scale):

  big   6 images x 768 MiB, concurrency 4
  many  120 images x 8 MiB, concurrency 4
  wan   1 image x 3 GiB, nginx `limit_rate 20m` per connection (a long, thin link):
        imagesync with 1 segment and, when the config has `transfer.segments`, with 8;
        aria2c -x8 -s8 with sha-256; rclone with 8 multi-thread streams; curl

A deterministic corpus (qcow2 header, then incompressible bytes) is generated once into
WORKDIR/corpus and reused; nginx, started here with a private config on 127.0.0.1, serves it
with sendfile, Range, ETag and the `x-oss-hash-crc64ecma` header OSS sends. The imagesync
emulator serves only the ENS listing, whose ExportedImageURLs point at nginx (read unsigned).

Tools run round-robin (each round runs every tool once), each into a fresh, empty
destination under WORKDIR/dest (deleting the previous files also drops them from the page
cache; the corpus stays cached), started once the disk has been idle for a second (the last
run's writeback and the discards of its deleted files are not charged to the next). Reported per tool, median over rounds: wall time, MiB/s,
CPU seconds per GiB (user+sys of the tool and its children, from wait4), peak RSS, nginx
CPU per GiB, how much of the copied bytes are left in the page cache (fincore), and the
ratio of imagesync's throughput to the tool's. `dd` rows (conv=fsync, oflag=direct) and
`curl > /dev/null` are the limits of the disk and of the loopback.

--tls serves the corpus over HTTPS instead (a throwaway CA made with trustme; imagesync trusts
it through SSL_CERT_FILE, rclone and curl through their CA options, aria2c does not check): what
real OSS endpoints speak. nginx then encrypts in user space on the same cores, so every tool's
figure falls; compare the ratios.

A missing peer is skipped with a note; --install apt-get installs nginx, aria2, rclone and
curl first (needs root). Nothing is contacted but 127.0.0.1. WORKDIR is deleted at the end
unless --keep (keep it to reuse the corpus next time).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import grp
import hashlib
import json
import mmap
import os
import platform
import pwd
import random
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastcrc

TOP = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
MIB = 1 << 20
GIB = 1 << 30
BLOCK = MIB
POOL_BYTES = 64 * MIB
GENERATOR = "imagesync-bench-corpus-v1"
BUCKET = "bench-exports"
RUN_TIMEOUT_S = 3600.0
SOURCE: Path | None = None  # --source: run imagesync (and the emulator) from this checkout
TLS: TlsFiles | None = None  # --tls: the CA the tools trust, and nginx's certificate

# Runs one tool and writes its wait4 figures as JSON. A child's peak RSS starts at its parent's
# at fork (and a vfork'd exec inherits the parent's high-water mark), so the tool is forked from
# this small, fresh interpreter, never from the benchmark process with its 64 MiB pool.
LAUNCHER = '''
import json, os, sys, time
def rss_kib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
out, argv = sys.argv[1], sys.argv[2:]
base = rss_kib()
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - started
with open(out, "w") as file:
    json.dump({"wall_s": wall, "exit": os.waitstatus_to_exitcode(status), "user_s": usage.ru_utime,
               "sys_s": usage.ru_stime, "maxrss_kib": usage.ru_maxrss, "launcher_rss_kib": base}, file)
'''
APT_PACKAGES = {"nginx": "nginx", "aria2c": "aria2", "rclone": "rclone", "curl": "curl"}


# --- scenarios ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    files: int
    size: int
    concurrency: int
    wan: bool = False
    limit_rate: str = ""

    def scaled(self, scale: float) -> Scenario:
        size = max(MIB, int(self.size * scale) // MIB * MIB)
        return dataclasses.replace(self, size=size)

    @property
    def total(self) -> int:
        return self.files * self.size

    def describe(self) -> str:
        text = f"{self.files} x {self.size / MIB:g} MiB, concurrency {self.concurrency}"
        return text + (f", nginx limit_rate {self.limit_rate} per connection" if self.limit_rate else "")


SCENARIOS = {
    "big": Scenario("big", 6, 768 * MIB, 4),
    "many": Scenario("many", 120, 8 * MIB, 4),
    "wan": Scenario("wan", 1, 3 * GIB, 1, wan=True, limit_rate="20m"),
}


# --- the corpus --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CorpusFile:
    image_id: str
    key: str
    size: int
    crc64: int
    sha256: str


@dataclass(slots=True)
class Corpus:
    root: Path  # nginx document root: ROOT/BUCKET/KEY
    files: list[CorpusFile]

    def path(self, item: CorpusFile) -> Path:
        return self.root / BUCKET / item.key

    @property
    def total(self) -> int:
        return sum(item.size for item in self.files)


_POOL: bytes | None = None


def _pool() -> bytes:
    """64 MiB of seeded random bytes (+1 MiB so any window fits): made once, about 0.3 s."""
    global _POOL
    if _POOL is None:
        _POOL = random.Random(GENERATOR).randbytes(POOL_BYTES + BLOCK)
    return _POOL


def _samples() -> Any:
    """imagesync.emulator.samples, imported from --source when given."""
    if SOURCE is not None and str(SOURCE) not in sys.path:
        sys.path.insert(0, str(SOURCE))
    import imagesync.emulator.samples as samples

    return samples


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    if SOURCE is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SOURCE), env.get("PYTHONPATH", "")]))
        env["PYTHONSAFEPATH"] = "1"  # else `-m` puts the working directory, maybe a checkout, first
    if TLS is not None:
        env["SSL_CERT_FILE"] = str(TLS.ca)
    return env


@dataclass(frozen=True, slots=True)
class TlsFiles:
    ca: Path
    cert_chain: Path
    key: Path


def make_tls_files(folder: Path) -> TlsFiles:
    """A throwaway CA and a certificate for 127.0.0.1 (trustme, from the test extras)."""
    try:
        import trustme
    except ImportError:
        raise SystemExit("scripts/bench --tls needs trustme: pip install -e '.[test]'") from None
    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    files = TlsFiles(ca=folder / "ca.pem", cert_chain=folder / "server.pem", key=folder / "server.key")
    ca.cert_pem.write_to_path(str(files.ca))
    server.private_key_pem.write_to_path(str(files.key))
    files.cert_chain.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    return files


def corpus_blocks(image_id: str, size: int) -> Iterator[memoryview]:
    """The file's bytes in 1 MiB blocks: each a seeded 4 KiB-aligned window of the pool behind
    a 16-byte tag (image and block number), so no two blocks are alike and gzip finds nothing
    to compress; block 0 starts with a qcow2 v3 header and its zeroed tables. Deterministic."""
    pool = memoryview(_pool())
    tag = hashlib.sha256(f"{GENERATOR}:{image_id}".encode()).digest()[:8]
    seed = int.from_bytes(tag, "big")
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    for index in range(-(-size // BLOCK)):
        start = ((seed + index * 0x9E3779B97F4A7C15) % POOL_BYTES) & ~4095
        buf[:] = pool[start:start + BLOCK]
        buf[:16] = tag + index.to_bytes(8, "big")
        if index == 0:
            header = _samples().qcow2_header(size)
            head = min(size, 3 * 65536)
            buf[:head] = header + bytes(head - len(header))
        yield view[: min(BLOCK, size - index * BLOCK)]


def _write_file(path: Path, image_id: str, size: int) -> tuple[int, str]:
    crc: int | None = None
    sha = hashlib.sha256()
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for block in corpus_blocks(image_id, size):
            crc = fastcrc.crc64.xz(block) if crc is None else fastcrc.crc64.xz(block, initial=crc)
            sha.update(block)
            view = block
            while view:
                view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    temporary.replace(path)
    return int(crc or 0), sha.hexdigest()


def build_corpus(workdir: Path, scenario: Scenario) -> Corpus:
    """Generate (or reuse) the scenario's corpus under WORKDIR/corpus/NAME-COUNTxSIZE."""
    root = workdir / "corpus" / f"{scenario.name}-{scenario.files}x{scenario.size // MIB}MiB"
    meta_path = root / "corpus.json"
    entries = [_samples().sample_entry(i, status="Exported", namespace=f"bench-{scenario.name}:")
               for i in range(scenario.files)]
    ids = [str(e["ImageId"]) for e in entries]
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        meta = json.loads(meta_path.read_text())
        if meta["generator"] == GENERATOR:
            files = [CorpusFile(**item) for item in meta["files"]]
            corpus = Corpus(root, files)
            if ([f.image_id for f in files] == ids
                    and all(corpus.path(f).stat().st_size == f.size == scenario.size for f in files)):
                note(f"corpus: reusing {root} ({len(files)} files, {corpus.total / GIB:.2f} GiB)")
                return corpus
    shutil.rmtree(root, ignore_errors=True)
    (root / BUCKET).mkdir(parents=True)
    started = time.perf_counter()
    _pool()

    def make(image_id: str) -> CorpusFile:
        key = f"{image_id}.qcow2"
        crc, sha = _write_file(root / BUCKET / key, image_id, scenario.size)
        return CorpusFile(image_id=image_id, key=key, size=scenario.size, crc64=crc, sha256=sha)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        files = list(pool.map(make, ids))
    meta_path.write_text(json.dumps({"generator": GENERATOR, "files": [dataclasses.asdict(f) for f in files]},
                                    indent=1))
    corpus = Corpus(root, files)
    elapsed = time.perf_counter() - started
    note(f"corpus: generated {len(files)} files, {corpus.total / GIB:.2f} GiB in {elapsed:.1f} s "
         f"({corpus.total / MIB / elapsed:.0f} MiB/s) into {root}")
    return corpus


# --- page cache --------------------------------------------------------------------------


def cached_bytes(paths: Sequence[Path]) -> int | None:
    """Bytes of these files in the page cache: fincore (util-linux), else mmap + mincore."""
    paths = [p for p in paths if p.exists()]
    if not paths:
        return 0
    if shutil.which("fincore"):
        result = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "-o", "RES", *map(str, paths)],
                                capture_output=True, text=True, check=False)
        if result.returncode == 0:
            return sum(int(line) for line in result.stdout.split())
    try:
        return sum(_mincore(p) for p in paths)
    except OSError:
        return None


def _mincore(path: Path) -> int:
    size = path.stat().st_size
    if not size:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    page = mmap.PAGESIZE
    pages = -(-size // page)
    # a private (copy-on-write) mapping is writable for ctypes; untouched, it shows the page cache
    with open(path, "rb") as file, mmap.mmap(file.fileno(), size, access=mmap.ACCESS_COPY) as mapped:
        address = ctypes.c_char.from_buffer(mapped)
        vector = (ctypes.c_ubyte * pages)()
        try:
            if libc.mincore(ctypes.byref(address), ctypes.c_size_t(size), vector) != 0:
                raise OSError(ctypes.get_errno(), "mincore")
        finally:
            del address
        return sum(v & 1 for v in vector) * page


def warm(corpus: Corpus) -> None:
    """Read the corpus once so every tool is served from the page cache."""
    buffer = bytearray(8 * MIB)
    for item in corpus.files:
        with open(corpus.path(item), "rb", buffering=0) as file:
            while file.readinto(buffer):
                pass
    cached = cached_bytes([corpus.path(f) for f in corpus.files])
    if cached is not None:
        note(f"corpus in page cache: {cached / corpus.total:.0%} of {corpus.total / GIB:.2f} GiB")


# --- nginx -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def nginx_config(prefix: Path, corpus: Corpus, port: int, limit_rate: str, tls: TlsFiles | None) -> str:
    user = ""
    if os.geteuid() == 0:  # workers would otherwise drop to nobody, who may not read the corpus
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};\n"
    crc_map = "\n".join(f'    "/{BUCKET}/{f.key}" "{f.crc64}";' for f in corpus.files)
    temp = "\n".join(f"  {name}_temp_path {prefix / 'tmp' / name};"
                     for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    rate = f"      limit_rate {limit_rate};\n" if limit_rate else ""
    listen = f"127.0.0.1:{port}"
    if tls is not None:
        listen += (f" ssl;\n    ssl_certificate {tls.cert_chain};\n    ssl_certificate_key {tls.key};\n"
                   "    ssl_protocols TLSv1.2 TLSv1.3")
    return f"""# generated by scripts/bench_peers.py
{user}worker_processes auto;
pid {prefix / 'nginx.pid'};
error_log {prefix / 'error.log'} warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  default_type application/octet-stream;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  etag on;
  keepalive_requests 100000;
  map_hash_bucket_size 128;
{temp}
  map $uri $oss_crc64 {{
    default "";
{crc_map}
  }}
  server {{
    listen {listen};
    root {corpus.root};
    autoindex on;
    location / {{
      add_header x-oss-hash-crc64ecma $oss_crc64;
{rate}    }}
  }}
}}
"""


class Nginx:
    def __init__(self, prefix: Path, corpus: Corpus, limit_rate: str, tls: TlsFiles | None) -> None:
        self.prefix = prefix
        self.port = free_port()
        shutil.rmtree(prefix, ignore_errors=True)
        (prefix / "tmp").mkdir(parents=True)
        conf = prefix / "nginx.conf"
        conf.write_text(nginx_config(prefix, corpus, self.port, limit_rate, tls))
        command = ["nginx", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log"),
                   "-g", "daemon off;"]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                break
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (prefix / "error.log").read_text() if (prefix / "error.log").exists() else ""
                raise SystemExit(f"nginx did not start:\n{log}")
            time.sleep(0.05)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"

    def workers(self) -> list[int]:
        try:
            text = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text()
            return [int(pid) for pid in text.split()]
        except OSError:
            return []

    def cpu_s(self) -> float:
        """CPU seconds used so far by the master and its workers."""
        total = 0
        for pid in [self.process.pid, *self.workers()]:
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# --- the ENS listing (the imagesync emulator, with ExportedImageURLs pointing at nginx) ---


class Listing:
    def __init__(self, root: Path, scenario: Scenario, corpus: Corpus, nginx_url: str) -> None:
        shutil.rmtree(root, ignore_errors=True)
        (root / "buckets").mkdir(parents=True)
        entries = []
        for index, item in enumerate(corpus.files):
            entry = _samples().sample_entry(index, status="Exported", namespace=f"bench-{scenario.name}:")
            assert entry["ImageId"] == item.image_id
            entry["ExportedImageURL"] = f"{nginx_url}/{BUCKET}/{item.key}"
            entries.append(entry)
        (root / "catalog.json").write_text(json.dumps({"images": entries}))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "imagesync.emulator", "--root", str(root), "--port", "0", "--images", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True,
            start_new_session=True, env=child_env(),
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if "listening on" not in line:
            raise SystemExit(f"the emulator did not start: {line!r}")
        self.url = line.rsplit(" ", 1)[1].strip()
        threading.Thread(target=self.process.stdout.read, daemon=True).start()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()


def imagesync_config(path: Path, ens_url: str, dest: Path, concurrency: int, segments: int | None) -> Path:
    text = (f'[ens]\nendpoint = "{ens_url}"\n'
            '[credentials]\naccess_key_id = "emulator-ak"\naccess_key_secret = "emulator-secret"\n'
            '[source]\nsign = false\nregion = "cn-hangzhou"\nallow_hosts = ["127.0.0.1"]\n'
            f'[destination]\nurl = "{dest}"\n'
            f'[transfer]\nconcurrency = {concurrency}\n')
    if segments is not None:
        text += f"segments = {segments}\n"
    path.write_text(text)
    path.chmod(0o600)
    return path


def config_accepts(path: Path) -> tuple[bool, str]:
    """Does this imagesync load the config? (A dry load, in a subprocess: the code may change.)"""
    result = subprocess.run(
        [sys.executable, "-c", "import sys, pathlib\nfrom imagesync.config import load_config\n"
         "load_config(pathlib.Path(sys.argv[1]))", str(path)],
        capture_output=True, text=True, check=False, env=child_env())
    return result.returncode == 0, result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""


# --- tools -------------------------------------------------------------------------------


@dataclass(slots=True)
class Context:
    scenario: Scenario
    corpus: Corpus
    workdir: Path
    dest: Path
    nginx: Nginx
    listing: Listing
    segments_ok: bool

    def url(self, item: CorpusFile) -> str:
        return f"{self.nginx.url}/{BUCKET}/{item.key}"


@dataclass(slots=True)
class Tool:
    name: str
    verifies: str
    command: Callable[[Context], list[str]]
    kind: str = "tool"  # "imagesync", "tool" or "limit"
    writes: bool = True  # leaves the corpus files in the destination
    needs: tuple[str, ...] = ()
    check_json: bool = False
    note: str = ""


def _sh(script: str) -> list[str]:
    return ["bash", "-c", "set -euo pipefail\n" + script]


def _q(path: Path | str) -> str:
    return shlex.quote(str(path))


def _imagesync(segments: int | None) -> Callable[[Context], list[str]]:
    def command(ctx: Context) -> list[str]:
        name = "sync.toml" if segments is None else f"sync-{segments}seg.toml"
        config = imagesync_config(ctx.workdir / name, ctx.listing.url, ctx.dest, ctx.scenario.concurrency,
                                  segments)
        return [sys.executable, "-m", "imagesync", "sync", "-c", str(config), "--json", "--progress", "never"]
    return command


def _aria2_input(ctx: Context, checksum: bool) -> Path:
    path = ctx.workdir / ("aria2-sha256.txt" if checksum else "aria2.txt")
    lines = []
    for item in ctx.corpus.files:
        lines += [ctx.url(item), f"  dir={ctx.dest}", f"  out={item.key}"]
        if checksum:
            lines.append(f"  checksum=sha-256={item.sha256}")
    path.write_text("\n".join(lines) + "\n")
    return path


ARIA2_COMMON = ["--file-allocation=falloc", "--allow-overwrite=true", "--auto-file-renaming=false",
                "--console-log-level=warn", "--summary-interval=0", "--download-result=hide",
                "--check-certificate=false", "--no-conf"]


def _aria2_j(checksum: bool) -> Callable[[Context], list[str]]:
    def command(ctx: Context) -> list[str]:
        return ["aria2c", "-i", str(_aria2_input(ctx, checksum)), "-j", str(ctx.scenario.concurrency),
                *ARIA2_COMMON]
    return command


def _aria2_split(ctx: Context) -> list[str]:
    return ["aria2c", "-i", str(_aria2_input(ctx, True)), "-j", "1", "-x8", "-s8", *ARIA2_COMMON]


def _rclone(streams: int | None, durable: bool) -> Callable[[Context], list[str]]:
    def command(ctx: Context) -> list[str]:
        argv = ["rclone", "copy", ":http:", str(ctx.dest), "--http-url", f"{ctx.nginx.url}/{BUCKET}/",
                "--transfers", str(ctx.scenario.concurrency), "--config", str(ctx.workdir / "rclone.conf"), "-q"]
        if TLS is not None:
            argv += ["--ca-cert", str(TLS.ca)]
        if streams is not None:
            argv += ["--multi-thread-streams", str(streams), "--multi-thread-cutoff", "1M"]
        if not durable:
            return argv
        return _sh(" ".join(map(_q, argv)) + f"\nsync -f {_q(ctx.dest)}")
    return command


def _curl_args(ctx: Context, to_null: bool) -> list[str]:
    argv = ["curl", "-sS", "--fail"] + (["--cacert", str(TLS.ca)] if TLS is not None else [])
    if ctx.scenario.concurrency > 1 and len(ctx.corpus.files) > 1:
        argv += ["-Z", "--parallel-max", str(ctx.scenario.concurrency)]
    for item in ctx.corpus.files:
        argv += ["-o", "/dev/null" if to_null else str(ctx.dest / item.key), ctx.url(item)]
    return argv


def _curl(to_null: bool = False) -> Callable[[Context], list[str]]:
    return lambda ctx: _curl_args(ctx, to_null)


def _curl_sha256(ctx: Context) -> list[str]:
    sums = ctx.workdir / "SHA256SUMS"
    sums.write_text("".join(f"{f.sha256}  {f.key}\n" for f in ctx.corpus.files))
    argv = _curl_args(ctx, False)
    # the argument list of `many` is long: pass it through a file rather than the script text
    args_file = ctx.workdir / "curl-args"
    args_file.write_text("\0".join(argv[1:]))
    return _sh(f"xargs -0 -a {_q(args_file)} curl\ncd {_q(ctx.dest)}\nsha256sum -c --quiet {_q(sums)}")


def _dd(flags: str) -> Callable[[Context], list[str]]:
    def command(ctx: Context) -> list[str]:
        pairs = ctx.workdir / "dd-pairs"
        pairs.write_text("".join(f"{ctx.corpus.path(f)}\0{ctx.dest / f.key}\0" for f in ctx.corpus.files))
        inner = f'exec dd if="$0" of="$1" bs=4M {flags} status=none'
        return _sh(f"xargs -0 -a {_q(pairs)} -n 2 -P {ctx.scenario.concurrency} sh -c {_q(inner)}")
    return command


def tools_for(scenario: Scenario) -> list[Tool]:
    n = scenario.concurrency
    if scenario.wan:
        return [
            Tool("imagesync (1 segment)", "crc64+sha256, fsync", _imagesync(None), kind="imagesync",
                 check_json=True),
            Tool("imagesync segments=8", "crc64+sha256, fsync", _imagesync(8), kind="imagesync",
                 check_json=True, needs=("segments",)),
            Tool("aria2c -x8 -s8 sha-256", "sha256", _aria2_split, needs=("aria2c",)),
            Tool("rclone copy, 8 streams", "nothing", _rclone(8, False), needs=("rclone",)),
            Tool("curl (1 connection)", "nothing", _curl(), needs=("curl",)),
        ]
    return [
        Tool("imagesync", "crc64+sha256, fsync", _imagesync(None), kind="imagesync", check_json=True),
        Tool(f"aria2c -j{n} sha-256", "sha256", _aria2_j(True), needs=("aria2c",)),
        Tool(f"aria2c -j{n}", "nothing", _aria2_j(False), needs=("aria2c",)),
        Tool(f"rclone copy --transfers {n}", "nothing", _rclone(None, False), needs=("rclone",)),
        Tool("rclone, then sync -f", "nothing, durable", _rclone(None, True), needs=("rclone",)),
        Tool(f"curl -Z --parallel-max {n}", "nothing", _curl(), needs=("curl",)),
        Tool(f"curl -P{n}, then sha256sum -c", "sha256 after", _curl_sha256, needs=("curl", "sha256sum")),
        Tool(f"curl -P{n} > /dev/null", "(loopback limit)", _curl(True), kind="limit", writes=False,
             needs=("curl",)),
        Tool(f"dd conv=fsync x{n}", "(disk limit)", _dd("conv=fsync"), kind="limit", needs=("dd",)),
        Tool(f"dd oflag=direct x{n}", "(disk limit)", _dd("oflag=direct conv=fsync"), kind="limit",
             needs=("dd",)),
    ]


# --- one run -----------------------------------------------------------------------------


@dataclass(slots=True)
class Sample:
    wall_s: float
    cpu_s: float
    peak_rss_mib: float
    nginx_cpu_s: float
    cached_bytes: int | None
    launcher_rss_mib: float


@dataclass(slots=True)
class Row:
    tool: Tool
    samples: list[Sample] = field(default_factory=list)
    error: str = ""
    skipped: str = ""


def launch(argv: Sequence[str], log: Path, timeout_s: float = RUN_TIMEOUT_S) -> dict[str, Any]:
    """Run ``argv`` through the launcher, stdout to ``log`` and stderr beside it; its wait4 figures
    (wall_s, user_s, sys_s, maxrss_kib, launcher_rss_kib). RuntimeError unless it exits 0."""
    figures = log.with_suffix(".rusage")
    figures.unlink(missing_ok=True)
    launcher = [sys.executable, "-I", "-S", "-c", LAUNCHER, str(figures), *argv]
    with open(log, "wb") as out, open(log.with_suffix(".err"), "wb") as err:
        process = subprocess.Popen(launcher, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                   start_new_session=True, env=child_env())
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise RuntimeError(f"timed out after {timeout_s:.0f} s") from None
    try:
        usage: dict[str, Any] = json.loads(figures.read_text())
    except (OSError, ValueError):
        raise RuntimeError(f"the launcher failed (exit {process.returncode})") from None
    if usage["exit"] != 0:
        tail = log.with_suffix(".err").read_text(errors="replace")[-600:]
        raise RuntimeError(f"exit {usage['exit']}: {tail.strip()}")
    return usage


def disk_activity() -> tuple[int, ...]:
    """Requests completed and in flight on every disk (not partitions, loops or ram disks)."""
    counts: list[int] = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/diskstats").read_text().splitlines():
            fields = line.split()
            name = fields[2]
            if name.startswith(("loop", "ram", "zram")) or Path(f"/sys/block/{name}").exists() is False:
                continue
            counts += [int(fields[3]), int(fields[7]), int(fields[11]), *map(int, fields[14:16])]
    return tuple(counts)


def settle_disk(quiet_s: float = 1.0, limit_s: float = 20.0) -> None:
    """Wait until the disks have been idle for ``quiet_s``: the last run's writeback and the
    discards of its deleted files (ext4 ``discard``) must not be charged to the next tool."""
    deadline = time.monotonic() + limit_s
    last, quiet_since = disk_activity(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = disk_activity()
        if now != last:
            last, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return


def run_once(tool: Tool, ctx: Context, log: Path) -> Sample:
    shutil.rmtree(ctx.dest, ignore_errors=True)
    ctx.dest.mkdir(parents=True)
    argv = tool.command(ctx)
    os.sync()  # no dirty pages left over from the last run
    settle_disk()
    nginx_before = ctx.nginx.cpu_s()
    usage = launch(argv, log)
    nginx_cpu = ctx.nginx.cpu_s() - nginx_before
    outputs = [ctx.dest / f.key for f in ctx.corpus.files]
    if tool.writes:
        wrong = [p.name for p, f in zip(outputs, ctx.corpus.files, strict=True)
                 if not p.exists() or p.stat().st_size != f.size]
        if wrong:
            raise RuntimeError(f"missing or wrong size: {', '.join(wrong[:3])}")
    if tool.check_json:
        summary = json.loads(log.read_text())
        if summary.get("bytes_transferred") != ctx.corpus.total:
            raise RuntimeError(f"imagesync transferred {summary.get('bytes_transferred')} bytes, "
                               f"expected {ctx.corpus.total}")
    cached = cached_bytes(outputs) if tool.writes else None
    shutil.rmtree(ctx.dest, ignore_errors=True)
    return Sample(wall_s=usage["wall_s"], cpu_s=usage["user_s"] + usage["sys_s"],
                  peak_rss_mib=usage["maxrss_kib"] / 1024, nginx_cpu_s=nginx_cpu, cached_bytes=cached,
                  launcher_rss_mib=usage["launcher_rss_kib"] / 1024)


def summarize(row: Row, total: int) -> dict[str, Any]:
    if not row.samples:
        return {}
    gib = total / GIB
    wall = statistics.median(s.wall_s for s in row.samples)
    cached = [s.cached_bytes for s in row.samples if s.cached_bytes is not None]
    return {
        "wall_s": wall,
        "mib_per_s": total / MIB / wall,
        "cpu_s_per_gib": statistics.median(s.cpu_s for s in row.samples) / gib,
        "peak_rss_mib": statistics.median(s.peak_rss_mib for s in row.samples),
        "nginx_cpu_s_per_gib": statistics.median(s.nginx_cpu_s for s in row.samples) / gib,
        "cached_fraction": statistics.median(cached) / total if cached else None,
        "runs_mib_per_s": [round(total / MIB / s.wall_s, 1) for s in row.samples],
    }


# --- a scenario --------------------------------------------------------------------------


def available(need: str, segments_ok: bool) -> bool:
    if need == "segments":
        return segments_ok
    return shutil.which(need) is not None


def _over() -> str:
    return " over HTTPS" if TLS is not None else ""


def run_scenario(scenario: Scenario, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    print(f"\n== {scenario.name}: {scenario.describe()}{_over()}; {args.rounds} round(s)", flush=True)
    corpus = build_corpus(workdir, scenario)
    warm(corpus)
    run_dir = workdir / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    dest = workdir / "dest"
    nginx = Nginx(workdir / "nginx", corpus, scenario.limit_rate, TLS)
    listing = None
    try:
        listing = Listing(workdir / "ens", scenario, corpus, nginx.url)
        probe = imagesync_config(run_dir / "probe.toml", listing.url, dest, scenario.concurrency, 8)
        segments_ok, why = config_accepts(probe)
        ctx = Context(scenario, corpus, run_dir, dest, nginx, listing, segments_ok)
        rows = []
        for tool in tools_for(scenario):
            row = Row(tool)
            if args.tools and not any(t.lower() in tool.name.lower() for t in args.tools):
                continue
            missing = [n for n in tool.needs if not available(n, segments_ok)]
            if missing == ["segments"]:
                row.skipped = f"this imagesync has no transfer.segments ({why})"
            elif missing:
                row.skipped = f"{', '.join(missing)} not installed (scripts/bench --install)"
            rows.append(row)
        for number in range(1, args.rounds + 1):
            for row in rows:
                if row.skipped or row.error:
                    continue
                try:
                    sample = run_once(row.tool, ctx, run_dir / f"{len(row.samples)}.log")
                except (RuntimeError, ValueError, OSError) as error:
                    row.error = str(error)
                    print(f"  round {number}: {row.tool.name}: FAILED {error}", flush=True)
                    continue
                row.samples.append(sample)
                print(f"  round {number}: {row.tool.name:32} {sample.wall_s:7.2f} s "
                      f"{corpus.total / MIB / sample.wall_s:8.0f} MiB/s  cpu {sample.cpu_s:6.2f} s", flush=True)
        if args.profile and scenario.name in args.profile_scenarios:
            profile(ctx, args, run_dir)
    finally:
        if listing is not None:
            listing.stop()
        nginx.stop()
    result = report(scenario, corpus, rows)
    if not args.keep_corpus:
        shutil.rmtree(corpus.root, ignore_errors=True)
    return result


def report(scenario: Scenario, corpus: Corpus, rows: list[Row]) -> dict[str, Any]:
    summaries = {row.tool.name: summarize(row, corpus.total) for row in rows}
    if scenario.wan:  # compare the best imagesync setting
        candidates = [r for r in rows if r.tool.kind == "imagesync" and r.samples]
        reference = max(candidates, key=lambda r: summaries[r.tool.name]["mib_per_s"], default=None)
    else:
        reference = next((r for r in rows if r.tool.kind == "imagesync" and r.samples), None)
    ref_rate = summaries[reference.tool.name]["mib_per_s"] if reference else None
    print(f"\n{scenario.name}: {scenario.describe()}{_over()}, {corpus.total / GIB:.2f} GiB; "
          f"median of {max((len(r.samples) for r in rows), default=0)}; ratio = "
          f"{reference.tool.name if reference else 'imagesync'} MiB/s / tool MiB/s")
    header = (f"{'tool':34} {'verifies':20} {'wall s':>7} {'MiB/s':>7} {'CPU s/GiB':>9} {'RSS MiB':>8} "
              f"{'nginx s/GiB':>11} {'cached':>6} {'ratio':>6}")
    base = [sample.launcher_rss_mib for row in rows for sample in row.samples]
    if base:
        print(f"(peak RSS counts from the launcher's {max(base):.0f} MiB at fork; nginx CPU is not in CPU s/GiB; "
              "cached = share of the copy left in the page cache)")
    print(header)
    print("-" * len(header))
    out_rows = []
    for row in rows:
        s = summaries[row.tool.name]
        entry: dict[str, Any] = {"tool": row.tool.name, "verifies": row.tool.verifies, "kind": row.tool.kind}
        if row.skipped or (row.error and not s):
            why = row.skipped or f"failed: {row.error}"
            print(f"{row.tool.name:34} {row.tool.verifies:20} skipped: {why[:160]}")
            entry["skipped" if row.skipped else "error"] = why
            out_rows.append(entry)
            continue
        ratio = ref_rate / s["mib_per_s"] if ref_rate and row is not reference else None
        cached = f"{s['cached_fraction']:.0%}" if s["cached_fraction"] is not None else "-"
        print(f"{row.tool.name:34} {row.tool.verifies:20} {s['wall_s']:7.2f} {s['mib_per_s']:7.0f} "
              f"{s['cpu_s_per_gib']:9.2f} {s['peak_rss_mib']:8.0f} {s['nginx_cpu_s_per_gib']:11.2f} "
              f"{cached:>6} {f'{ratio:.2f}' if ratio else '-':>6}")
        entry.update({k: (round(v, 3) if isinstance(v, float) else v) for k, v in s.items()})
        entry["ratio_imagesync_over_tool"] = round(ratio, 3) if ratio else None
        if row.error:
            entry["error"] = row.error
        out_rows.append(entry)
    return {"scenario": dataclasses.asdict(scenario), "total_bytes": corpus.total, "rows": out_rows,
            "reference": reference.tool.name if reference else None}


# --- profile -----------------------------------------------------------------------------


def find_py_spy() -> str | None:
    for candidate in (shutil.which("py-spy"), str(VENV_BIN / "py-spy"), "/work/tools/pyspy/bin/py-spy"):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def profile(ctx: Context, args: argparse.Namespace, run_dir: Path) -> None:
    """One more imagesync run under py-spy (raw collapsed stacks), then the top frames as text."""
    spy = find_py_spy()
    if spy is None:
        print("  profile: py-spy not found (pip install py-spy), skipped", flush=True)
        return
    shutil.rmtree(ctx.dest, ignore_errors=True)
    argv = _imagesync(None)(ctx)
    out = Path(args.profile)
    os.sync()
    command = [spy, "record", "--nonblocking", "--rate", "200", "--format", "raw", "-o", str(out), "--", *argv]
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=child_env())
    shutil.rmtree(ctx.dest, ignore_errors=True)
    if result.returncode != 0 or not out.exists():
        print(f"  profile: py-spy failed: {result.stderr.strip()[-400:]}", flush=True)
        return
    print(f"\nprofile of one imagesync run ({ctx.scenario.name}), py-spy raw stacks in {out}:")
    print_profile(out)


def print_profile(path: Path, top: int = 18) -> None:
    self_counts: dict[str, int] = {}
    incl_counts: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] + ")"
                  if " (" in f else f for f in stack.split(";")]
        self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + count
        for frame in set(frames):
            incl_counts[frame] = incl_counts.get(frame, 0) + count
    if not total:
        return
    print(f"  {total} samples (all threads, idle excluded)\n  self time:")
    for frame, count in sorted(self_counts.items(), key=lambda kv: -kv[1])[:top]:
        print(f"    {count / total:6.1%}  {frame}")
    print("  inclusive:")
    for frame, count in sorted(incl_counts.items(), key=lambda kv: -kv[1])[:top]:
        print(f"    {count / total:6.1%}  {frame}")


# --- main --------------------------------------------------------------------------------


def note(text: str) -> None:
    print(f"  {text}", flush=True)


def install(missing: list[str]) -> None:
    packages = sorted({APT_PACKAGES[m] for m in missing if m in APT_PACKAGES})
    if not packages:
        return
    print(f"installing {' '.join(packages)} with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", *packages], check=True, env=env)


def machine(workdir: Path) -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    fs = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,SOURCE,OPTIONS", "-T", str(workdir)], capture_output=True,
                        text=True, check=False).stdout.strip()
    versions = {}
    for tool, flag in (("nginx", "-v"), ("aria2c", "--version"), ("rclone", "version"), ("curl", "--version")):
        if shutil.which(tool):
            text = subprocess.run([tool, flag], capture_output=True, text=True, check=False)
            versions[tool] = (text.stdout or text.stderr).splitlines()[0].strip()
    version = subprocess.run([sys.executable, "-c", "import imagesync; print(imagesync.__version__, imagesync.__file__)"],
                             capture_output=True, text=True, check=False, env=child_env()).stdout.strip()
    return {"cpu": model, "cores": os.cpu_count(), "kernel": platform.release(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 1),
            "filesystem": fs, "imagesync": version, "python": platform.python_version(),
            "git": f"--source {SOURCE}" if SOURCE else subprocess.run(
                ["git", "-C", str(TOP), "describe", "--always", "--dirty"],
                capture_output=True, text=True, check=False).stdout.strip(),
            "tools": versions}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", action="append", choices=[*SCENARIOS, "all"],
                        help="big, many, wan or all (repeatable; default all)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply file sizes (e.g. 0.25 for a quick run)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each runs every tool once (default 3)")
    parser.add_argument("--tools", type=lambda s: [t for t in s.split(",") if t],
                        help="only tools whose name contains one of these comma-separated words")
    parser.add_argument("--workdir", type=Path,
                        default=Path(os.environ.get("IMAGESYNC_BENCH_DIR", TOP.parent / "imagesync-bench")),
                        help="corpus cache and destination (default $IMAGESYNC_BENCH_DIR, else "
                        "imagesync-bench beside the checkout: %(default)s); "
                        "the destination's filesystem is what is measured")
    parser.add_argument("--keep", action="store_true", help="keep the workdir (and the corpus for next time)")
    parser.add_argument("--json-out", type=Path, help="also write the results as JSON to this file")
    parser.add_argument("--install", action="store_true",
                        help="apt-get install missing nginx, aria2, rclone, curl first (needs root)")
    parser.add_argument("--source", type=Path, metavar="DIR",
                        help="run imagesync from this checkout (a directory holding the imagesync package, "
                        "e.g. `git archive HEAD imagesync | tar -x -C DIR`) instead of this one")
    parser.add_argument("--tls", action="store_true",
                        help="serve the corpus over HTTPS (a throwaway CA), as real OSS endpoints do")
    parser.add_argument("--profile", metavar="FILE",
                        help="after the rounds, profile one imagesync run with py-spy into FILE (raw stacks)"
                        " and print its top frames")
    parser.add_argument("--profile-scenario", dest="profile_scenarios", action="append",
                        help="scenario to profile (default: the first one run)")
    args = parser.parse_args(argv)
    names = args.scenario or ["all"]
    args.scenarios = list(SCENARIOS) if "all" in names else list(dict.fromkeys(names))
    args.profile_scenarios = args.profile_scenarios or args.scenarios[:1]
    if args.rounds < 1 or args.scale <= 0:
        parser.error("--rounds must be 1 or more and --scale above 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    global SOURCE, TLS
    args = parse_args(argv)
    args.keep_corpus = args.keep
    if args.source is not None:
        SOURCE = args.source.resolve()
        if not (SOURCE / "imagesync" / "__init__.py").exists():
            print(f"scripts/bench: {SOURCE} holds no imagesync package", file=sys.stderr)
            return 2
    missing = [name for name in ("nginx", "aria2c", "rclone", "curl") if shutil.which(name) is None]
    if missing and args.install:
        install(missing)
        missing = [name for name in missing if shutil.which(name) is None]
    if "nginx" in missing:
        print("scripts/bench: nginx is needed to serve the corpus; install it or pass --install", file=sys.stderr)
        return 2
    if missing:
        print(f"note: {', '.join(missing)} not installed: those rows are skipped (--install installs them)")
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if args.json_out:
        args.json_out = args.json_out.resolve()
    if args.profile:
        args.profile = str(Path(args.profile).resolve())
    os.chdir(workdir)  # `python -m` puts the working directory first on sys.path: not the checkout
    if args.tls:
        TLS = make_tls_files(workdir / "tls")
    info = machine(workdir)
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB, kernel {info['kernel']}; "
          f"workdir {workdir} on {info['filesystem']}; imagesync {info['imagesync']} ({info['git']})")
    free = shutil.disk_usage(workdir).free
    need = max(SCENARIOS[name].scaled(args.scale).total for name in args.scenarios) * 2
    if free < need * 1.1:
        print(f"scripts/bench: {workdir} has {free / GIB:.1f} GiB free; this needs about {need / GIB:.1f} GiB "
              "(corpus + copy); use --scale or --workdir", file=sys.stderr)
        return 2
    results: dict[str, Any] = {"machine": info, "scale": args.scale, "rounds": args.rounds, "tls": args.tls,
                               "scenarios": {},
                               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        for name in args.scenarios:
            results["scenarios"][name] = run_scenario(SCENARIOS[name].scaled(args.scale), args, workdir)
            if args.json_out:
                args.json_out.write_text(json.dumps(results, indent=1) + "\n")
    finally:
        for sub in ("dest", "run", "nginx", "ens", "tls"):
            shutil.rmtree(workdir / sub, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(workdir / "corpus", ignore_errors=True)
            with contextlib.suppress(OSError):
                workdir.rmdir()
    if args.json_out:
        print(f"\nresults written to {args.json_out}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)

"""The emulator as a program (options, printed config, signals) and its pure parts."""

from __future__ import annotations

import signal
import socket
import struct
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from conftest import EmulatorHandle, StartEmulator
from fastcrc import crc64
from hypothesis import given
from hypothesis import strategies as st

from imagesync.emulator import catalog, http_rules, samples
from imagesync.emulator.objects import ObjectStore, key_path
from imagesync.emulator.options import parse_size

EMULATOR = [sys.executable, "-m", "imagesync.emulator"]


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*EMULATOR, "--port", "0", *args], stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def read_config(process: subprocess.Popen[str]) -> tuple[str, str]:
    """The first line and the TOML that follows it (up to the [transfer] table)."""
    assert process.stdout is not None
    first = process.stdout.readline()
    lines = []
    while not (lines and lines[-1].startswith("concurrency")):
        lines.append(process.stdout.readline())
    return first, "".join(lines)


# --- the program ---------------------------------------------------------------------------


def test_help_describes_every_option() -> None:
    result = subprocess.run([*EMULATOR, "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    for option in ("--root", "--port", "--images", "--image-size", "--bucket", "--region",
                   "--access-key-id", "--access-key-secret", "--public-read", "--config-out",
                   "--destination", "--latency-ms", "--bandwidth"):
        assert option in result.stdout


@pytest.mark.parametrize(
    "args", [["--image-size", "12 parsecs"], ["--port", "70000"], ["--images", "-1"], ["--bandwidth", "x"]]
)
def test_bad_options_exit_2(args: list[str], tmp_path: Path) -> None:
    result = subprocess.run(
        [*EMULATOR, "--root", str(tmp_path), *args], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_prints_a_ready_config_and_stops_quietly(tmp_path: Path, sig: signal.Signals) -> None:
    out = tmp_path / "sync.toml"
    process = start("--root", str(tmp_path / "data"), "--images", "1", "--image-size", "64KiB",
                    "--public-read", "--config-out", str(out), "--destination", "/srv/mirror")
    first, text = read_config(process)
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=10)
    assert process.returncode == 0 and stdout == "" and "Traceback" not in stderr
    port = int(first.strip().rsplit(":", 1)[1])
    assert first == f"imagesync emulator listening on http://127.0.0.1:{port}\n"
    config = tomllib.loads(text)
    assert config == {
        "ens": {"endpoint": f"http://127.0.0.1:{port}"},
        "credentials": {"access_key_id": "emulator-ak", "access_key_secret": "emulator-secret"},
        "source": {"sign": False, "region": "cn-hangzhou", "allow_hosts": ["127.0.0.1"]},
        "destination": {"url": "/srv/mirror"},
        "transfer": {"concurrency": 4},
    }
    assert tomllib.loads(out.read_text()) == config
    assert out.stat().st_mode & 0o777 == 0o600


def test_stops_promptly_with_busy_and_idle_connections(tmp_path: Path) -> None:
    process = start("--root", str(tmp_path), "--images", "1", "--image-size", "4MiB",
                    "--public-read", "--bandwidth", "64KiB")
    first, _ = read_config(process)
    port = int(first.strip().rsplit(":", 1)[1])
    key = catalog.load_entries(tmp_path)[0]["Key"]
    idle, busy = socket.create_connection(("127.0.0.1", port)), socket.create_connection(("127.0.0.1", port))
    with idle, busy:
        idle.sendall(b"GET /_emulator/health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert idle.recv(1000).startswith(b"HTTP/1.1 200")  # and the connection stays open
        busy.sendall(f"GET /ens-exports/{key} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert busy.recv(1000).startswith(b"HTTP/1.1 200")  # a slow body is on its way
        started = time.monotonic()
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0 and "Traceback" not in stderr
    assert time.monotonic() - started < 3


def test_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*EMULATOR, "--root", str(tmp_path), "--images", "0", "--port", str(port)],
            capture_output=True, text=True, timeout=30,
        )
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "error" in result.stderr


def test_handle_config_and_catalog(emulator: EmulatorHandle, tmp_path: Path) -> None:
    path = emulator.write_config(tmp_path / "c.toml", tmp_path / "m", transfer={"concurrency": 1},
                                 source={"allow_hosts": None})
    config = tomllib.loads(path.read_text())
    assert config["transfer"] == {"concurrency": 1} and "allow_hosts" not in config["source"]
    assert config["destination"]["url"] == str(tmp_path / "m") and config["source"]["sign"] is True
    assert path.stat().st_mode & 0o777 == 0o600
    statuses = [e["ImageExportStatus"] for e in emulator.catalog()]
    assert statuses == ["Exported"] * 3 + ["Exporting", "ExportError", "Unexported"]


# --- sample images -------------------------------------------------------------------------


def test_generated_images_are_qcow2_and_distinct(start_emulator: StartEmulator) -> None:
    emulator = start_emulator(images=3, image_size="512KiB,1MiB,3MiB")
    blobs = [emulator.object_path(e["ImageId"]).read_bytes() for e in emulator.exported()]
    assert [len(b) for b in blobs] == [512 << 10, 1 << 20, 3 << 20]
    for blob in blobs:
        magic, version, _, _, cluster_bits, virtual_size = struct.unpack(">4sIQIIQ", blob[:32])
        assert (magic, version, cluster_bits) == (b"QFI\xfb", 3, 16)
        assert virtual_size >= len(blob)
        assert struct.unpack(">I", blob[100:104])[0] == 104  # header_length
    tails = {blob[-4096:] for blob in blobs}
    assert len(tails) == 3
    blocks = [blobs[2][i : i + (1 << 20)] for i in range(0, 3 << 20, 1 << 20)]
    assert len(set(blocks)) == 3


def test_samples_are_deterministic_and_small_sizes_work() -> None:
    assert samples.sample_bytes("m-a", 300_000) == samples.sample_bytes("m-a", 300_000)
    assert samples.sample_bytes("m-a", 300_000) != samples.sample_bytes("m-b", 300_000)
    for size in (0, 1, 50, 112, 4096, 200_000):
        data = samples.sample_bytes("m-a", size)
        assert len(data) == size
        assert data[:4] == b"QFI\xfb"[:size]


def test_store_and_helpers(tmp_path: Path) -> None:
    entries = catalog.create_sample_catalog(tmp_path, 2, [100_000])
    image_id = entries[0]["ImageId"]
    path = catalog.object_path(tmp_path, image_id)
    store = ObjectStore(tmp_path)
    opened = store.open("ens-exports", entries[0]["Key"])
    assert opened is not None
    opened.file.close()
    assert opened.meta.crc64 == crc64.xz(path.read_bytes())
    meta = catalog.rewrite_object(tmp_path, image_id, seed="again")
    assert meta.etag != opened.meta.etag
    assert catalog.rewrite_object(tmp_path, image_id, seed="again").crc64 == meta.crc64
    assert key_path(tmp_path, "ens-exports", "../escape") is None
    assert key_path(tmp_path, "ens-exports", "a//b") is None
    with pytest.raises(ValueError, match="cannot be stored"):
        catalog.add_image(tmp_path, image_id="m-x", key="../../x")
    catalog.update_image(tmp_path, image_id, ImageName="renamed")
    catalog.remove_image(tmp_path, entries[1]["ImageId"], delete_object=True)
    assert [e["ImageName"] for e in catalog.load_entries(tmp_path)][:1] == ["renamed"]
    assert len(catalog.load_entries(tmp_path)) == 4


# --- pure parts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [("4096", 4096), ("512KiB", 512 << 10), ("64MiB", 64 << 20), ("2GiB", 2 << 30),
     ("1.5MiB", 3 << 19), ("50MiB/s", 50 << 20), ("1MB", 10**6), ("10k", 10240)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


def reference_range(first: int | None, last: int | None, size: int, standard: bool) -> object:
    """Straight from the OSS documentation's cases, written independently."""
    if first is None:  # suffix
        assert last is not None
        if last == 0 or size == 0:
            return "416" if standard else None
        return (max(0, size - last), size - 1) if (standard or last <= size) else None
    if last is not None and last < first:
        return None
    if first >= size:
        return "416" if standard else None
    end = size - 1 if last is None else last
    if end >= size:
        return (first, size - 1) if standard or last is None else None
    return (first, end)


@given(
    first=st.none() | st.integers(0, 3000),
    last=st.none() | st.integers(0, 3000),
    size=st.integers(0, 2000),
    standard=st.booleans(),
)
def test_parse_range_matches_the_documented_rules(
    first: int | None, last: int | None, size: int, standard: bool
) -> None:
    header = f"bytes={'' if first is None else first}-{'' if last is None else last}"
    try:
        got: object = http_rules.parse_range(header, size, standard=standard)
    except http_rules.RangeNotSatisfiable:
        got = "416"
    expected = None if first is None and last is None else reference_range(first, last, size, standard)
    assert got == expected

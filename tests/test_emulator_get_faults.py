"""Object-GET faults of the emulator, each observed on the wire."""

from __future__ import annotations

import base64
import gzip
import hashlib
import signal
import socket
import threading
import time

import httpx
import oss2
import pytest
from conftest import EmulatorHandle, StartEmulator
from fastcrc import crc64
from test_emulator_faults import data_of, raw_get, url_of


@pytest.fixture
def public(start_emulator: StartEmulator) -> EmulatorHandle:
    """Two 1 MiB images readable without signatures."""
    return start_emulator(images=2, extra_args=["--public-read"])


def get(url: str, **headers: str) -> httpx.Response:
    return httpx.get(url, headers={"Accept-Encoding": "identity", **headers}, trust_env=False)


def test_ignore_range_answers_the_whole_object(public: EmulatorHandle) -> None:
    data = data_of(public)
    public.faults(ignore_range=1)
    whole = get(url_of(public), Range="bytes=10-19")
    assert whole.status_code == 200 and whole.content == data and "content-range" not in whole.headers
    assert whole.headers["etag"] == get(url_of(public)).headers["etag"]
    ranged = get(url_of(public), Range="bytes=10-19")
    assert ranged.status_code == 206 and ranged.content == data[10:20]
    public.faults(ignore_range=1)
    assert get(url_of(public)).status_code == 200  # an unranged GET does not use it up
    assert get(url_of(public), Range="bytes=0-0").status_code == 200
    assert public.stats()["faults_injected"]["ignore_range"] == 2


def test_bad_content_range_shifts_the_start(public: EmulatorHandle) -> None:
    data = data_of(public)
    public.faults(bad_content_range=1)
    bad = get(url_of(public), Range="bytes=100-199")
    assert bad.status_code == 206 and bad.content == data[100:200]
    assert bad.headers["content-range"] == f"bytes 101-199/{len(data)}"
    assert get(url_of(public), Range="bytes=100-199").headers["content-range"] == f"bytes 100-199/{len(data)}"


def test_change_etag_after_bytes_re_exports_mid_download(public: EmulatorHandle) -> None:
    data = data_of(public)
    first = get(url_of(public), Range="bytes=0-99")
    old_etag, old_crc = first.headers["etag"], first.headers["x-oss-hash-crc64ecma"]
    public.faults(change_etag_after_bytes=1000)
    part = get(url_of(public), Range="bytes=100-599", **{"If-Match": old_etag})
    assert part.status_code == 206 and part.content == data[100:600]  # 500 of the 1000
    inflight = get(url_of(public), Range="bytes=600-2999", **{"If-Match": old_etag})
    assert inflight.status_code == 206 and inflight.content == data[600:3000]  # goes on with old bytes
    later = get(url_of(public), Range="bytes=3000-3999", **{"If-Match": old_etag})
    assert later.status_code == 412 and b"PreconditionFailed" in later.content
    head = httpx.head(url_of(public), trust_env=False)
    assert head.headers["etag"] != old_etag and head.headers["x-oss-hash-crc64ecma"] != old_crc
    new = get(url_of(public)).content
    assert len(new) == len(data) and new != data
    assert head.headers["x-oss-hash-crc64ecma"] == str(crc64.xz(new))
    assert public.faults()["change_etag_after_bytes"] is None
    assert public.stats()["faults_injected"]["change_etag_after_bytes"] == 1


def test_gzip_body_ignores_accept_encoding(public: EmulatorHandle) -> None:
    data = data_of(public)
    public.faults(gzip_body=1)
    status, headers, body = raw_get(url_of(public), {"Accept-Encoding": "identity", "Range": "bytes=0-9999"})
    assert status == 206 and headers["content-encoding"] == "gzip"
    assert int(headers["content-length"]) == len(body)
    assert gzip.decompress(body) == data[:10_000]
    assert "content-encoding" not in get(url_of(public)).headers


def test_body_longer_and_shorter(public: EmulatorHandle) -> None:
    data = data_of(public)
    public.faults(body_longer=1, body_delta_bytes=7)
    status, headers, body = raw_get(url_of(public), {"Range": "bytes=0-999"})
    assert status == 206 and int(headers["content-length"]) == 1000
    assert len(body) == 1007 and body[:1000] == data[:1000]
    public.faults(body_shorter=1, body_delta_bytes=3)
    status, headers, body = raw_get(url_of(public), {"Range": "bytes=0-999"})
    assert int(headers["content-length"]) == 1000 and body == data[:997]
    with pytest.raises(httpx.RemoteProtocolError):
        public.faults(body_shorter=1)
        get(url_of(public))
    assert get(url_of(public)).content == data
    injected = public.stats()["faults_injected"]
    assert (injected["body_longer"], injected["body_shorter"]) == (1, 2)


def _stalled_socket(url: str, want: int) -> tuple[socket.socket, bytes]:
    parsed = httpx.URL(url)
    sock = socket.create_connection((parsed.host, parsed.port), timeout=10)
    sock.sendall(f"GET {parsed.raw_path.decode()} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    received = b""
    while received.count(b"\r\n\r\n") == 0 or len(received.partition(b"\r\n\r\n")[2]) < want:
        chunk = sock.recv(1 << 16)
        assert chunk, "closed before the stall"
        received += chunk
    return sock, received.partition(b"\r\n\r\n")[2]


def test_stall_after_bytes_holds_the_connection(public: EmulatorHandle) -> None:
    data = data_of(public)
    public.faults(stall_after_bytes=5000, stall_s=30)
    sock, body = _stalled_socket(url_of(public), 5000)
    try:
        assert body == data[:5000]
        sock.settimeout(0.7)
        with pytest.raises(TimeoutError):
            sock.recv(1)  # nothing comes while stalled
        started = time.perf_counter()
        assert get(url_of(public)).content == data  # other requests go on
        assert time.perf_counter() - started < 2
    finally:
        sock.close()
    public.faults(stall_after_bytes=1000, stall_s=0.5)
    started = time.perf_counter()
    assert get(url_of(public)).content == data  # a short stall, then the rest
    assert time.perf_counter() - started >= 0.5
    assert public.stats()["faults_injected"]["stall_after_bytes"] == 2


def test_a_stalled_connection_does_not_block_shutdown(start_emulator: StartEmulator) -> None:
    emulator = start_emulator(images=1, extra_args=["--public-read"])
    emulator.faults(stall_after_bytes=10)
    sock, _ = _stalled_socket(url_of(emulator), 10)
    try:
        assert emulator.popen is not None
        started = time.perf_counter()
        emulator.popen.send_signal(signal.SIGTERM)
        assert emulator.popen.wait(timeout=5) == 0
        assert time.perf_counter() - started < 5
    finally:
        sock.close()


def raw_head_lines(url: str) -> list[bytes]:
    parsed = httpx.URL(url)
    with socket.create_connection((parsed.host, parsed.port), timeout=10) as sock:
        sock.sendall(f"HEAD {parsed.raw_path.decode()} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        received = b""
        while chunk := sock.recv(1 << 16):
            received += chunk
    return received.partition(b"\r\n\r\n")[0].split(b"\r\n")


@pytest.mark.parametrize("value", ["\u00b2", "12x", "-1", "18446744073709551616", ""])
def test_crc_header_is_served_verbatim(public: EmulatorHandle, value: str) -> None:
    public.faults(crc_header=value)
    line = b"x-oss-hash-crc64ecma: " + value.encode("latin-1")
    assert line in raw_head_lines(url_of(public))
    assert [v.encode("latin-1") for v in get(url_of(public)).headers.get_list("x-oss-hash-crc64ecma")] == [
        value.encode("latin-1")
    ]
    public.faults(crc_header=None)
    assert get(url_of(public)).headers["x-oss-hash-crc64ecma"] == str(crc64.xz(data_of(public)))


def test_crc_header_must_be_sendable(public: EmulatorHandle) -> None:
    for bad in ("\u20ac", "a\nb"):
        response = httpx.post(f"{public.url}/_emulator/faults", json={"crc_header": bad}, trust_env=False)
        assert response.status_code == 400


def test_content_md5_without_crc(public: EmulatorHandle) -> None:
    data = data_of(public)
    assert "content-md5" not in get(url_of(public)).headers
    public.faults(content_md5=1, omit_crc64=1)
    expected = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
    head = httpx.head(url_of(public), trust_env=False)
    assert head.headers["content-md5"] == expected and "x-oss-hash-crc64ecma" not in head.headers
    whole = get(url_of(public))
    assert whole.headers["content-md5"] == expected and whole.content == data
    assert get(url_of(public), Range="bytes=0-9").headers["content-md5"] == expected  # of the whole object
    other = public.exported()[1]["Key"]
    public.faults(key=other)
    assert "content-md5" not in get(url_of(public, 0)).headers
    assert "content-md5" in get(url_of(public, 1)).headers


def test_oss2_sees_the_content_md5(emulator: EmulatorHandle) -> None:
    key = emulator.exported()[0]["Key"]
    emulator.faults(content_md5=1)
    head = emulator.oss_bucket().head_object(key)
    data = emulator.object_path(emulator.exported()[0]["ImageId"]).read_bytes()
    assert head.headers["Content-MD5"] == base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
    emulator.faults(content_md5=0)
    with pytest.raises(oss2.exceptions.NoSuchKey):
        emulator.oss_bucket().head_object("missing")


def test_faults_race_free_under_parallel_gets(public: EmulatorHandle) -> None:
    data = data_of(public)
    public.faults(ignore_range=5)
    results: list[int] = []

    def worker() -> None:
        results.append(get(url_of(public), Range="bytes=0-9").status_code)

    threads = [threading.Thread(target=worker) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [200] * 5 + [206] * 5
    assert get(url_of(public)).content == data

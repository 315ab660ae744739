"""Fault injection and statistics of the emulator, each fault observed on the wire."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest
from conftest import EmulatorHandle, StartEmulator
from fastcrc import crc64
from test_emulator_ens import acs3_request


@pytest.fixture
def public(start_emulator: StartEmulator) -> EmulatorHandle:
    """Two 1 MiB images readable without signatures."""
    return start_emulator(images=2, extra_args=["--public-read"])


def url_of(emulator: EmulatorHandle, index: int = 0) -> str:
    return emulator.object_url(emulator.exported()[index]["ImageId"])


def data_of(emulator: EmulatorHandle, index: int = 0) -> bytes:
    return emulator.object_path(emulator.exported()[index]["ImageId"]).read_bytes()


def raw_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """GET over a bare socket: status, headers and every body byte received before EOF."""
    parsed = httpx.URL(url)
    lines = [f"GET {parsed.raw_path.decode()} HTTP/1.1", f"Host: {parsed.host}:{parsed.port}",
             "Connection: close", *(f"{k}: {v}" for k, v in (headers or {}).items()), "", ""]
    with socket.create_connection((parsed.host, parsed.port), timeout=10) as sock:
        sock.sendall("\r\n".join(lines).encode())
        received = b""
        while chunk := sock.recv(1 << 20):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    fields = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), {k.lower(): v for k, v in fields.items()}, body


def test_drop_after_bytes_cuts_the_body_then_recovers(public: EmulatorHandle) -> None:
    data = data_of(public)
    public.faults(drop_after_bytes=300_000)
    status, headers, body = raw_get(url_of(public))
    assert status == 200 and int(headers["content-length"]) == len(data)
    assert body == data[:300_000]
    public.faults(drop_after_bytes=1000)
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(url_of(public), trust_env=False)
    assert httpx.get(url_of(public), trust_env=False).content == data
    # A body no longer than the limit is not cut and does not use the fault up.
    public.faults(drop_after_bytes=100)
    assert httpx.get(url_of(public), headers={"Range": "bytes=0-99"}, trust_env=False).status_code == 206
    assert raw_get(url_of(public))[2] == data[:100]


def test_drop_every_time(public: EmulatorHandle) -> None:
    public.faults(drop_after_bytes=10, drop_times=-1)
    for _ in range(3):
        assert raw_get(url_of(public))[2] == data_of(public)[:10]
    assert public.stats()["faults_injected"]["drop"] == 3


def test_oss_5xx_and_expired(public: EmulatorHandle) -> None:
    public.faults(oss_5xx=2, oss_403_expired=1)
    head = httpx.head(url_of(public), trust_env=False)
    assert head.status_code == 503 and "x-oss-err" in head.headers
    failed = httpx.get(url_of(public), trust_env=False)
    assert failed.status_code == 503 and b"<Code>ServiceUnavailable</Code>" in failed.content
    expired = httpx.get(url_of(public), trust_env=False)
    assert expired.status_code == 403 and b"Request has expired." in expired.content
    assert httpx.get(url_of(public), trust_env=False).status_code == 200


def test_corruption_flips_one_byte_and_keeps_the_true_crc(public: EmulatorHandle) -> None:
    data = data_of(public)
    public.faults(corrupt_offset=12_345)
    untouched = httpx.get(url_of(public), headers={"Range": "bytes=0-999"}, trust_env=False)
    assert untouched.content == data[:1000]  # does not include the offset: not consumed
    corrupted = httpx.get(url_of(public), trust_env=False)
    assert corrupted.headers["x-oss-hash-crc64ecma"] == str(crc64.xz(data))
    assert len(corrupted.content) == len(data) and corrupted.content != data
    differing = [i for i in range(len(data)) if corrupted.content[i] != data[i]]
    assert differing == [12_345]
    assert httpx.get(url_of(public), trust_env=False).content == data
    public.faults(corrupt_offset=5, corrupt_times=-1)
    for _ in range(2):
        assert httpx.get(url_of(public), headers={"Range": "bytes=5-5"}, trust_env=False).content == bytes(
            [data[5] ^ 0xFF]
        )


def test_faults_restricted_to_one_key(public: EmulatorHandle) -> None:
    other_key = public.exported()[1]["Key"]
    public.faults(oss_5xx=1, corrupt_offset=0, key=other_key)
    assert httpx.get(url_of(public, 0), trust_env=False).content == data_of(public, 0)
    assert httpx.get(url_of(public, 1), trust_env=False).status_code == 503
    assert httpx.get(url_of(public, 1), trust_env=False).content[0] == data_of(public, 1)[0] ^ 0xFF


def test_ens_throttling_5xx_and_malformed(emulator: EmulatorHandle) -> None:
    emulator.faults(ens_throttle=1, ens_retry_after_ms=250, ens_5xx=1, ens_malformed=4)
    throttled = acs3_request(emulator)
    assert throttled.status_code == 400 and throttled.json()["Code"] == "Throttling.User"
    assert throttled.headers["x-acs-retry-after"] == "250"
    unavailable = acs3_request(emulator)
    assert unavailable.status_code == 503 and unavailable.json()["Code"] == "ServiceUnavailable"
    text = acs3_request(emulator)
    assert text.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        text.json()
    assert isinstance(acs3_request(emulator).json()["Images"], str)
    assert isinstance(acs3_request(emulator).json()["Images"]["Image"][0]["ImageId"], int)
    assert "TotalCount" not in acs3_request(emulator).json()
    assert acs3_request(emulator).json()["TotalCount"] == 6


def test_latency_and_bandwidth(public: EmulatorHandle) -> None:
    public.faults(latency_ms=200)
    started = time.perf_counter()
    httpx.head(url_of(public), trust_env=False)
    assert time.perf_counter() - started >= 0.2
    public.faults(latency_ms=0, bandwidth_bps=4 << 20)
    started = time.perf_counter()
    assert httpx.get(url_of(public), trust_env=False).content == data_of(public)
    assert 0.2 <= time.perf_counter() - started < 2


def test_startup_faults_survive_reset(start_emulator: StartEmulator) -> None:
    emulator = start_emulator(images=1, extra_args=["--public-read", "--latency-ms", "150"])
    emulator.reset()
    assert emulator.faults()["latency_ms"] == 150
    started = time.perf_counter()
    httpx.head(url_of(emulator), trust_env=False)
    assert time.perf_counter() - started >= 0.15


@pytest.mark.parametrize(
    "body",
    [{"no_such_fault": 1}, {"oss_5xx": "2"}, {"oss_5xx": -1}, {"drop_times": -2}, {"key": 3}, [1]],
)
def test_bad_fault_requests_are_refused(emulator: EmulatorHandle, body: object) -> None:
    response = httpx.post(f"{emulator.url}/_emulator/faults", json=body, trust_env=False)
    assert response.status_code == 400 and response.json()["error"]
    assert emulator.faults() == httpx.get(f"{emulator.url}/_emulator/faults", trust_env=False).json()


def test_fields_merge_and_reset_clears(emulator: EmulatorHandle) -> None:
    emulator.faults(oss_5xx=3, drop_after_bytes=10, drop_times=5)
    state = emulator.faults(ens_5xx=1, drop_after_bytes=20)
    assert (state["oss_5xx"], state["ens_5xx"], state["drop_after_bytes"], state["drop_times"]) == (3, 1, 20, 1)
    emulator.reset()
    state = emulator.faults()
    assert (state["oss_5xx"], state["ens_5xx"], state["drop_after_bytes"]) == (0, 0, None)


def test_stats_count_requests_and_bytes(public: EmulatorHandle) -> None:
    key = public.exported()[0]["Key"]
    size = len(data_of(public))
    httpx.get(url_of(public), trust_env=False)
    httpx.get(url_of(public), headers={"Range": "bytes=0-99"}, trust_env=False)
    httpx.head(url_of(public), trust_env=False)
    acs3_request(public)
    stats = public.stats()
    assert (stats["object_gets"], stats["object_heads"], stats["oss_requests"], stats["ens_requests"]) == (2, 1, 3, 1)
    assert stats["body_bytes_sent"] == size + 100
    assert stats["bytes_by_key"] == {key: size + 100}
    public.faults(drop_after_bytes=5000)
    raw_get(url_of(public))
    assert public.stats()["body_bytes_sent"] == size + 100 + 5000
    public.reset()
    assert public.stats()["body_bytes_sent"] == 0

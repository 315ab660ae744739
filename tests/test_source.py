"""Where bytes may come from: URL vetting, bucket/key/region parsing, ranged GETs, the read-size knob."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from imagesync.config import SourceConfig
from imagesync.errors import (
    ConfigError,
    SourceChangedError,
    TransferError,
    TransientError,
    UnsafeSourceError,
    UrlExpiredError,
)
from imagesync.source import HTTP_READ_BYTES, Body, ObjectInfo, ObjectSource, locate


@pytest.mark.parametrize(
    ("url", "config", "expected"),
    [
        ("https://backups.oss-cn-beijing.aliyuncs.com/m-1.qcow2", SourceConfig(),
         ("https://oss-cn-beijing.aliyuncs.com", "backups", "m-1.qcow2", "cn-beijing")),
        ("https://backups.oss-cn-beijing-internal.aliyuncs.com/dir/m-1.qcow2?x=1#f", SourceConfig(),
         ("https://oss-cn-beijing-internal.aliyuncs.com", "backups", "dir/m-1.qcow2", "cn-beijing")),
        ("https://backups.cn-hangzhou.oss.aliyuncs.com/m%2B1%20x.qcow2", SourceConfig(),
         ("https://cn-hangzhou.oss.aliyuncs.com", "backups", "m+1 x.qcow2", "cn-hangzhou")),
        ("https://backups.oss-cn-beijing.aliyuncs.com/m-1.qcow2",
         SourceConfig(endpoint_override="oss-cn-beijing-internal.aliyuncs.com"),
         ("https://oss-cn-beijing-internal.aliyuncs.com", "backups", "m-1.qcow2", "cn-beijing")),
        ("http://127.0.0.1:8790/ens-exports/m-1.qcow2", SourceConfig(allow_hosts=("127.0.0.1",), region="cn-x"),
         ("http://127.0.0.1:8790", "ens-exports", "m-1.qcow2", "cn-x")),
        ("http://localhost/bkt/k/m.qcow2", SourceConfig(allow_hosts=("LOCALHOST",), region="cn-x"),
         ("http://localhost", "bkt", "k/m.qcow2", "cn-x")),
    ],
)
def test_locate(url: str, config: SourceConfig, expected: tuple[str, str, str, str]) -> None:
    location = locate(url, config)
    assert (location.endpoint, location.bucket, location.key, location.region) == expected
    assert "?" not in location.public_url and "#" not in location.public_url


@pytest.mark.parametrize(
    "url",
    [
        "http://backups.oss-cn-beijing.aliyuncs.com/m-1.qcow2",  # OSS, but not https
        "http://100.100.100.200/latest/meta-data/ram/security-credentials/",  # ECS metadata
        "file:///etc/passwd",
        "https://evil.example.com/m-1.qcow2",
        "https://aliyuncs.com.evil.example/m-1.qcow2",
        "https://user:pass@backups.oss-cn-beijing.aliyuncs.com/m-1.qcow2",
        "https://127.0.0.1/b/m-1.qcow2",  # not in allow_hosts
        "ftp://backups.oss-cn-beijing.aliyuncs.com/m-1.qcow2",
        "",
        "http://127.0.0.1:99999/bucket/m.qcow2",  # port out of range
        "https://[::1/x",
        "https://evil.com\\.oss-cn-beijing.aliyuncs.com/m.qcow2",
        "https://evil.com;.oss-cn-beijing.aliyuncs.com/m.qcow2",
        "https://evil%2fcom.oss-cn-beijing.aliyuncs.com/m.qcow2",
        # aliyuncs.com hosts that are not OSS endpoints: signed requests must never go there
        "https://b.ecs.aliyuncs.com/m.qcow2",
        "https://b.sts.aliyuncs.com/m.qcow2",
        "https://backups.aliyuncs.com/m.qcow2",
        "https://oss-cn-beijing.aliyuncs.com/backups/m.qcow2",  # path-style on OSS: no bucket host
        "https://a.b.oss-cn-beijing.aliyuncs.com/m.qcow2",
        "https://b.evil.com.aliyuncs.com/m.qcow2",
        "https://b.oss.aliyuncs.com/m.qcow2",
        "https://b.oss-accelerate-internal.aliyuncs.com/m.qcow2",
        "https://b.oss-cn-beijing.aliyuncs.com.evil.example/m.qcow2",
    ],
)
def test_refused_before_any_connection(url: str) -> None:
    with pytest.raises(UnsafeSourceError, match="refusing to download"):
        locate(url, SourceConfig(region="cn-x", allow_hosts=("127.0.0.1",) if "99999" in url else ()))


def test_secret_query_never_reaches_the_message() -> None:
    with pytest.raises(UnsafeSourceError) as caught:
        locate("https://evil.example.com/m.qcow2?x-oss-signature=SECRET", SourceConfig())
    assert "SECRET" not in str(caught.value)


def test_unknown_region_is_a_config_error_before_any_request() -> None:
    """Every image would fail the same way: stop the run (exit 2) with the key to set."""
    with pytest.raises(ConfigError, match=r"set source\.region") as caught:
        locate("http://127.0.0.1/bkt/m.qcow2", SourceConfig(allow_hosts=("127.0.0.1",)))
    assert caught.value.exit_code == 2
    with pytest.raises(ConfigError, match=r"set source\.region"):
        locate("https://backups.oss-accelerate.aliyuncs.com/m.qcow2", SourceConfig())
    accelerated = locate("https://backups.oss-accelerate.aliyuncs.com/m.qcow2", SourceConfig(region="cn-x"))
    assert (accelerated.endpoint, accelerated.region) == ("https://oss-accelerate.aliyuncs.com", "cn-x")
    unsigned = locate("http://127.0.0.1/bkt/m.qcow2", SourceConfig(allow_hosts=("127.0.0.1",), sign=False))
    assert unsigned.region == ""


def test_unsigned_reads_honour_the_endpoint_override() -> None:
    config = SourceConfig(sign=False, endpoint_override="oss-cn-beijing-internal.aliyuncs.com")
    location = locate("https://backups.oss-cn-beijing.aliyuncs.com/dir/m 1.qcow2", config)
    assert location.fetch_url == "https://backups.oss-cn-beijing-internal.aliyuncs.com/dir/m%201.qcow2"


def test_path_without_key_is_refused() -> None:
    with pytest.raises(UnsafeSourceError, match="bucket and object key"):
        locate("http://127.0.0.1/bucket-only", SourceConfig(allow_hosts=("127.0.0.1",), region="cn-x"))
    with pytest.raises(UnsafeSourceError, match="bucket and object key"):
        locate("https://ab.oss-cn-beijing.aliyuncs.com/m.qcow2", SourceConfig())


def test_httpcore_still_reads_wide() -> None:
    """source.py widens httpcore's socket reads (half the CPU per GiB); this fails if httpcore drops the knob."""
    from httpcore._async.http11 import AsyncHTTP11Connection

    assert AsyncHTTP11Connection.READ_NUM_BYTES >= HTTP_READ_BYTES


@pytest.mark.parametrize(
    "override",
    ["evil.example.com", "100.100.100.200", "ecs.aliyuncs.com", "aliyuncs.com", "b.oss-cn-beijing.aliyuncs.com",
     "oss-cn-beijing.aliyuncs.com.evil.example", "127.0.0.1"],
)
def test_endpoint_override_must_be_an_oss_endpoint_or_allowed(override: str) -> None:
    """Signed requests (AccessKey id, STS token) go to the override: it is vetted like a URL host."""
    url = "https://backups.oss-cn-beijing.aliyuncs.com/m-1.qcow2"
    with pytest.raises(UnsafeSourceError, match=r"source\.endpoint_override"):
        locate(url, SourceConfig(endpoint_override=override))
    with pytest.raises(UnsafeSourceError, match=r"source\.endpoint_override"):
        locate(url, SourceConfig(endpoint_override=override, sign=False))


@pytest.mark.parametrize(
    ("override", "endpoint"),
    [
        ("oss-cn-beijing-internal.aliyuncs.com", "https://oss-cn-beijing-internal.aliyuncs.com"),
        ("cn-beijing.oss.aliyuncs.com", "https://cn-beijing.oss.aliyuncs.com"),
        ("oss-accelerate.aliyuncs.com", "https://oss-accelerate.aliyuncs.com"),
        ("oss-accelerate-overseas.aliyuncs.com", "https://oss-accelerate-overseas.aliyuncs.com"),
    ],
)
def test_endpoint_override_of_an_oss_shape(override: str, endpoint: str) -> None:
    location = locate("https://backups.oss-cn-beijing.aliyuncs.com/m-1.qcow2",
                      SourceConfig(endpoint_override=override))
    assert (location.endpoint, location.region) == (endpoint, "cn-beijing")


def test_endpoint_override_on_an_allowed_host_is_path_style() -> None:
    config = SourceConfig(endpoint_override="127.0.0.1", allow_hosts=("127.0.0.1",), sign=False)
    location = locate("https://backups.oss-cn-beijing.aliyuncs.com/m-1.qcow2", config)
    assert location.fetch_url == "https://127.0.0.1/backups/m-1.qcow2"


# --- ranged GETs over scripted answers ------------------------------------------------------

OBJECT = bytes(range(256)) * 40  # 10240 bytes
INFO = ObjectInfo(etag='"E1"', size=len(OBJECT), crc64ecma=None, last_modified="")
Handler = Callable[[httpx.Request], httpx.Response]


async def read_range(handler: Handler, start: int, info: ObjectInfo = INFO) -> tuple[int, bytes]:
    """What `ObjectSource.open_range` hands the transfer: the body's start and its bytes."""
    config = SourceConfig(allow_hosts=("127.0.0.1",), sign=False)
    location = locate("http://127.0.0.1/bkt/m.qcow2", config)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler), timeout=7) as http:
        source = ObjectSource(http, location, None, 3600)
        async with source.open_range(start, info) as body:
            return body.start, await read_all(body)


async def read_all(body: Body, into: bytearray | None = None) -> bytes:
    """Everything `Body.read_into` hands over, in reads of odd sizes."""
    received = bytearray() if into is None else into
    view = memoryview(bytearray(1000))
    while count := await body.read_into(view):
        received += view[:count]
    return bytes(received)


def answer(status: int, content: bytes | AsyncIterator[bytes], **headers: str) -> Handler:
    """A streamed answer, as from a socket (bytes content would arrive already read)."""
    def handler(request: httpx.Request) -> httpx.Response:
        stream = chunks(content) if isinstance(content, bytes) else content
        return httpx.Response(status, content=stream, headers={k.replace("_", "-"): v for k, v in headers.items()})
    return handler


async def chunks(*parts: bytes, then: Exception | None = None) -> AsyncIterator[bytes]:
    for part in parts:
        yield part
    if then is not None:
        raise then


async def test_a_ranged_get_answered_206_starts_where_asked() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(206, content=chunks(OBJECT[100:]), headers={
            "ETag": '"E1"', "Content-Range": f"bytes 100-{len(OBJECT) - 1}/{len(OBJECT)}"})

    assert await read_range(handler, 100) == (100, OBJECT[100:])
    assert seen[0].headers["range"] == "bytes=100-"
    assert seen[0].headers["if-match"] == '"E1"'
    assert seen[0].headers["accept-encoding"] == "identity"


async def test_a_server_that_ignores_range_sends_the_whole_object_from_zero() -> None:
    """Once a TransientError retried forever: now the body says it starts at 0."""
    handler = answer(200, OBJECT, ETag='"E1"', Content_Length=str(len(OBJECT)))
    assert await read_range(handler, 100) == (0, OBJECT)


@pytest.mark.parametrize(
    ("headers", "error", "message"),
    [
        ({"ETag": '"E2"', "Content-Length": "10240"}, SourceChangedError, "changed during the transfer"),
        ({"Content-Length": "10240"}, TransferError, "ignored the Range header"),
        ({"ETag": '"E1"', "Content-Length": "10239"}, SourceChangedError, "announced 10239 bytes"),
    ],
)
async def test_an_ignored_range_is_accepted_only_for_the_same_whole_object(
    headers: dict[str, str], error: type[Exception], message: str
) -> None:
    body = OBJECT[:int(headers["Content-Length"])]
    with pytest.raises(error, match=message) as caught:
        await read_range(lambda request: httpx.Response(200, content=chunks(body), headers=headers), 100)
    assert not isinstance(caught.value, TransientError)


@pytest.mark.parametrize("encoding", ["gzip", "br", "deflate, identity"])
async def test_an_encoded_body_is_never_written(encoding: str) -> None:
    handler = answer(200, OBJECT, ETag='"E1"', Content_Encoding=encoding)
    with pytest.raises(TransientError, match=r"Content-Encoding (gzip|br|deflate)"):
        await read_range(handler, 0)


@pytest.mark.parametrize("content_range", ["bytes 0-10239/10240", "bytes 100-10239/99999", "", "bytes */10240"])
async def test_a_wrong_content_range_means_the_object_changed(content_range: str) -> None:
    handler = answer(206, OBJECT[100:], ETag='"E1"', Content_Range=content_range)
    with pytest.raises(SourceChangedError, match="Content-Range"):
        await read_range(handler, 100)


# Stopping a body early leaves httpx's nested async generators unexhausted; trio reports them
# as a ResourceWarning when they are collected (harmless: the response itself is closed).
EARLY_STOP = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@EARLY_STOP
async def test_a_body_longer_than_the_object_is_cut_off_before_it_is_yielded() -> None:
    """A chunked body that runs past the object's size: nothing past the size reaches the caller."""
    received = bytearray()

    async def read() -> None:
        location = locate("http://127.0.0.1/bkt/m.qcow2", SourceConfig(allow_hosts=("127.0.0.1",), sign=False))
        handler = answer(200, chunks(OBJECT, b"extra"), ETag='"E1"')
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http, \
                ObjectSource(http, location, None, 3600).open_range(0, INFO) as body:
            await read_all(body, received)

    with pytest.raises(SourceChangedError, match="sent more than its 10240 bytes"):
        await read()
    assert bytes(received) == OBJECT


async def test_a_stall_mid_body_is_transient_with_a_clear_sentence() -> None:
    handler = answer(206, chunks(OBJECT[100:200], then=httpx.ReadTimeout("timed out")), ETag='"E1"',
                     Content_Range=f"bytes 100-{len(OBJECT) - 1}/{len(OBJECT)}")
    with pytest.raises(TransientError) as caught:
        await read_range(handler, 100)
    assert str(caught.value) == (
        "reading http://127.0.0.1/bkt/m.qcow2 stalled at byte 200 of 10240: nothing arrived for 7 s "
        "(transfer.read_timeout_s); the transfer resumes from there"
    )


async def test_a_drop_mid_body_is_transient() -> None:
    handler = answer(200, chunks(OBJECT[:10], then=httpx.RemoteProtocolError("peer closed")), ETag='"E1"')
    with pytest.raises(TransientError, match="failed at byte 10 of 10240: peer closed"):
        await read_range(handler, 0)


@EARLY_STOP
async def test_an_error_body_is_read_only_so_far() -> None:
    pulled: list[int] = []

    async def endless() -> AsyncIterator[bytes]:
        while True:
            pulled.append(1)
            yield b"x" * 65536

    with pytest.raises(TransientError, match="HTTP 503"):
        await read_range(answer(503, endless()), 0)
    assert len(pulled) <= 2


@pytest.mark.parametrize(
    ("status", "body", "error", "message"),
    [
        (403, b"<Error><Code>AccessDenied</Code><Message>Request has expired.</Message>"
              b"<RequestId>R1</RequestId></Error>", UrlExpiredError, "AccessDenied: Request has expired. (RequestId R1)"),
        (412, b"", SourceChangedError, "HTTP 412"),
        (404, b"<Error><Code>NoSuchKey</Code></Error>", TransferError, "no longer exists"),
        (500, b'<!DOCTYPE x [<!ENTITY a "aaaa">]><Error><Code>&a;</Code></Error>', TransientError,
         "HTTP 500: Internal Server Error"),
    ],
)
async def test_status_errors(status: int, body: bytes, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as caught:
        await read_range(answer(status, body), 0)
    assert message in str(caught.value)

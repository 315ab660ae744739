"""Where image bytes come from: URL checks, OSS V4 presigning (oss2), HEAD and verified ranged GETs.

An ExportedImageURL is a plain object locator. It is refused before any connection unless it is
``https`` on an OSS bucket host (``<bucket>.<OSS endpoint>``, see `endpoints`) or its host is
listed in ``source.allow_hosts``; ``source.endpoint_override`` is held to the same rule, since
signed requests go there. Everything read from a server (status, headers, error bodies) is
checked with strict rules before use; httpx and `wire` errors are translated here, once, into the
`TransferError` family the transfer loop acts on. Image bytes come over `wire`, received
straight into the caller's buffer (`Body.read_into`).
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, cast
from urllib.parse import quote, unquote, urlsplit

import httpx

from .config import SourceConfig
from .credentials import Credentials
from .endpoints import host_allowed, is_oss_bucket_host, region_from_oss_host, split_bucket_host
from .errors import (
    ConfigError,
    SourceChangedError,
    TransferError,
    TransientError,
    UnsafeSourceError,
    UrlExpiredError,
)
from .units import parse_decimal
from .wire import Connections, WireError, WireTimeout, describe

if TYPE_CHECKING:  # imported where a URL is signed or a bucket listed: it takes a quarter second
    import oss2

__all__ = [  # TransientError and UrlExpiredError live in errors.py; re-exported for old imports
    "Body", "ObjectInfo", "ObjectLocation", "ObjectSource", "TransientError", "UrlExpiredError", "locate",
]

RESIGN_MARGIN_S = 60
HTTP_READ_BYTES = 1 << 20
MAX_OBJECT_BYTES = 1 << 50  # OSS objects stop at 48.8 TB; anything bigger is a broken header
MAX_ERROR_BODY_BYTES = 64 << 10
MAX_SERVER_TEXT = 300  # characters of a server's Code/Message/ETag kept in a sentence
HOST_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")
BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")
# Printable ASCII without surrounding spaces: it goes back out in If-Match.
ETAG = re.compile(r"[!-~](?:[ -~]{0,254}[!-~])?")
IDENTITY = ("", "identity")


def _widen_http_reads() -> None:
    """Let httpcore read up to 1 MiB per socket read instead of 64 KiB.

    Under trio every read is a trip through the scheduler; for image-sized bodies (image GETs
    go through httpx when a proxy is configured) the wider reads halve the client's CPU per
    GiB received (measured 1.2 -> 0.6 s/GiB on loopback). It is httpcore's own class
    attribute, not public API: without it, only this gain is lost, and tests/test_source.py
    fails to say so.
    """
    from httpcore._async.http11 import AsyncHTTP11Connection

    if getattr(AsyncHTTP11Connection, "READ_NUM_BYTES", 0) < HTTP_READ_BYTES:
        AsyncHTTP11Connection.READ_NUM_BYTES = HTTP_READ_BYTES


_widen_http_reads()


@dataclass(frozen=True, slots=True, kw_only=True)
class ObjectLocation:
    public_url: str  # no query string: safe for logs and the manifest
    endpoint: str  # what oss2 builds object URLs from
    fetch_url: str  # the object's URL through endpoint_override, for unsigned reads
    bucket: str
    key: str
    region: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ObjectInfo:
    """The identity of the source object, from its HEAD."""

    etag: str
    size: int
    crc64ecma: int | None  # absent on some copied objects: then only the size can be checked
    last_modified: str
    # Base64 of the 16-byte MD5 from HEAD's Content-MD5 (OSS sends it for simple uploads only).
    # A value that is not base64 of exactly 16 bytes counts as absent: it is an optional
    # checksum, and an unusable one must neither fail the image nor be trusted.
    content_md5: str | None = None
    # False when it came from a bucket listing (ETag and size only): HEAD it before a transfer.
    complete: bool = True


def locate(url: str, config: SourceConfig) -> ObjectLocation:
    """Parse and vet an ExportedImageURL.

    `UnsafeSourceError` for a URL (or ``source.endpoint_override``) that is not allowed;
    `ConfigError` when signing needs a region that neither the host nor ``source.region``
    gives, since then every image would fail the same way.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        shown = url.split("?")[0][:200]
        raise UnsafeSourceError(f"refusing to download {shown}: not a valid URL") from None
    public_url = parts._replace(query="", fragment="").geturl()
    host = (parts.hostname or "").lower()
    allowed = {h.lower() for h in config.allow_hosts}
    on_oss = is_oss_bucket_host(host) and parts.scheme == "https"
    listed = host in allowed and parts.scheme in ("http", "https")
    well_formed = _is_ip_or_localhost(host) or HOST_NAME.fullmatch(host) is not None
    if parts.username or parts.password or not well_formed or not (on_oss or listed):
        raise UnsafeSourceError(
            f"refusing to download {public_url}: only https URLs on OSS bucket hosts "
            "(<bucket>.oss-<region>.aliyuncs.com and the like) or hosts listed in source.allow_hosts "
            "are allowed"
        )
    override = config.endpoint_override.lower()
    if override and (not host_allowed(override, config.allow_hosts) or _bare_host_problem(override)):
        raise UnsafeSourceError(
            f"refusing to send requests for {public_url} to source.endpoint_override {override}: "
            "expected an OSS endpoint like oss-cn-beijing-internal.aliyuncs.com, or a host listed "
            "in source.allow_hosts"
        )
    bucket, key, endpoint, fetch_url = _addressing(parts.scheme, host, port, unquote(parts.path), override)
    if not BUCKET_NAME.fullmatch(bucket) or not key:
        raise UnsafeSourceError(f"cannot tell a valid OSS bucket and object key from {public_url}")
    region = region_from_oss_host(host) or region_from_oss_host(override) or config.region
    if not region and config.sign:
        raise ConfigError(
            f"cannot tell the OSS signing region from {public_url}; set source.region "
            '(a region id like "cn-hangzhou") in the config file'
        )
    return ObjectLocation(public_url=public_url, endpoint=endpoint, fetch_url=fetch_url, bucket=bucket,
                          key=key, region=region)


def _addressing(
    scheme: str, host: str, port: int | None, path: str, override: str
) -> tuple[str, str, str, str]:
    """Bucket, key, the endpoint oss2 signs for, and the plain object URL for unsigned reads.

    An IP or ``localhost`` host (the emulator) is path-style, ``/bucket/key``; an OSS host is
    ``<bucket>.<endpoint>``, and ``source.endpoint_override`` (host only) replaces its endpoint.
    """
    netloc = host if port is None else f"{host}:{port}"
    path = path.lstrip("/")
    if _is_ip_or_localhost(host):
        bucket, _, key = path.partition("/")
        service = netloc
    else:
        split = split_bucket_host(host)
        bucket, service_host = split if split else host.partition(".")[::2]
        key = path
        service = override or (service_host if port is None else f"{service_host}:{port}")
    endpoint = f"{scheme}://{service}"
    if _is_ip_or_localhost(host) or _is_ip_or_localhost(override):
        fetch_url = f"{endpoint}/{quote(bucket)}/{quote(key)}"
    else:
        fetch_url = f"{scheme}://{bucket}.{service}/{quote(key)}"
    return bucket, key, endpoint, fetch_url


def _bare_host_problem(host: str) -> bool:
    return not (_is_ip_or_localhost(host) or HOST_NAME.fullmatch(host))


def _is_ip_or_localhost(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class ObjectSource:
    """One source object: signs its URLs (re-signing near expiry), HEADs it over httpx and reads
    its bytes over ``wire`` (httpx when that is None)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        location: ObjectLocation,
        credentials: Credentials | None,
        expires_s: int,
        wire: Connections | None = None,
    ) -> None:
        self._http = http
        self._wire = wire
        self.location = location
        self._expires_s = expires_s
        self._credentials = credentials
        self._bucket = _oss2_bucket(location, credentials) if credentials else None
        self._signed: dict[str, tuple[str, float]] = {}

    def resign(self) -> None:
        self._signed.clear()

    def list_bucket(self, prefix: str) -> dict[str, ObjectInfo] | None:
        """`list_objects` of this object's bucket, with the same credentials. Blocking."""
        return list_objects(self.location, self._credentials, prefix)

    def _url(self, method: str) -> str:
        if self._bucket is None:
            return self.location.fetch_url
        cached = self._signed.get(method)
        if cached and cached[1] > time.monotonic():
            return cached[0]
        headers = {"x-oss-range-behavior": "standard"} if method == "GET" else None
        url = self._bucket.sign_url(method, self.location.key, self._expires_s, headers=headers,
                                    slash_safe=True)
        self._signed[method] = (url, time.monotonic() + self._expires_s - RESIGN_MARGIN_S)
        return str(url)

    async def head(self) -> ObjectInfo:
        """The object's ETag, size, CRC-64 and MD5, read with a HEAD request."""
        url = self.location.public_url
        try:
            response = await self._http.head(self._url("HEAD"), headers={"Accept-Encoding": "identity"})
        except httpx.TransportError as error:
            raise TransientError(f"HEAD {url} failed: {describe(error)}") from None
        if response.status_code != 200:
            raise _status_error("HEAD", url, response.status_code, response.headers, response.content)
        return _object_info(response.headers, url)

    @asynccontextmanager
    async def open_range(self, start: int, expected: ObjectInfo,
                         end: int | None = None) -> AsyncIterator[Body]:
        """Stream the object from ``start`` to ``end`` (its end by default), only if it is still ``expected``.

        A ranged GET must come back 206 with exactly the Content-Range asked for. A server
        that ignores Range (legacy OSS on a bad range, some proxies) answers 200 with the whole
        object: that is accepted only when its ETag and Content-Length show it is ``expected``,
        and then the body's ``start`` is 0, so the caller must start its file over instead of
        appending. The body never yields more than the object's size.
        """
        headers = {"Accept-Encoding": "identity", "If-Match": expected.etag,
                   "x-oss-range-behavior": "standard"}
        end = expected.size if end is None else end
        if end < expected.size:
            headers["Range"] = f"bytes={start}-{end - 1}"
        elif start:
            headers["Range"] = f"bytes={start}-"
        url = self.location.public_url
        async with AsyncExitStack() as stack:
            try:
                answer = await stack.enter_async_context(self._get(headers))
            except (WireError, httpx.TransportError) as error:
                raise TransientError(f"GET {url} failed: {describe(error)}") from None
            if answer.status not in (200, 206):
                content = await _bounded_read(answer)
                raise _status_error("GET", url, answer.status, answer.headers, content)
            body_start = _body_start(answer.status, answer.headers, start, end, expected, url)
            limit = end if body_start == start else expected.size
            yield Body(answer, start=body_start, size=limit, url=url)

    def _get(self, headers: dict[str, str]) -> AbstractAsyncContextManager[Answer]:
        """A GET of the object: over `wire` (the body received straight into the caller's
        buffer), or over httpx when no `wire.Connections` was given (a proxy is configured)."""
        if self._wire is not None:
            return self._wire.get(self._url("GET"), headers)
        return _httpx_get(self._http, self._url("GET"), headers)


class Answer(Protocol):
    """The status and head of a GET, and its body (`wire.Response` and `_HttpxAnswer`)."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def read_timeout_s(self) -> float | None: ...

    async def read_into(self, view: memoryview) -> int: ...


@asynccontextmanager
async def _httpx_get(http: httpx.AsyncClient, url: str, headers: dict[str, str]) -> AsyncIterator[Answer]:
    response = await http.send(http.build_request("GET", url, headers=headers), stream=True)
    answer = _HttpxAnswer(response)
    try:
        yield answer
    finally:
        await answer.aclose()
        await response.aclose()


class _HttpxAnswer:
    """An httpx response seen as an `Answer`: its chunks copied into the caller's buffer."""

    def __init__(self, response: httpx.Response) -> None:
        self.status = response.status_code
        self.headers: Mapping[str, str] = response.headers
        timeout = response.request.extensions.get("timeout", {})
        self.read_timeout_s: float | None = timeout.get("read") if isinstance(timeout, dict) else None
        # httpx's aiter_raw is an async generator: closed explicitly when the GET ends.
        self._chunks = cast(AsyncGenerator[bytes, None], response.aiter_raw())
        self._rest = memoryview(b"")

    async def read_into(self, view: memoryview) -> int:
        while not self._rest:
            try:
                self._rest = memoryview(await self._chunks.__anext__())
            except StopAsyncIteration:
                return 0
        count = min(len(view), len(self._rest))
        view[:count] = self._rest[:count]
        self._rest = self._rest[count:]
        return count

    async def aclose(self) -> None:
        await self._chunks.aclose()


class Body:
    """The bytes of one GET, in order, received into the caller's buffer by `read_into`.

    ``start`` is the object offset of the first byte: the offset asked for, or 0 when the
    server sent the whole object instead. More bytes than the object holds are refused
    (`SourceChangedError`) and never handed over; a drop or a stall is a `TransientError`.
    """

    def __init__(self, answer: Answer, *, start: int, size: int, url: str) -> None:
        self.start = start
        self._answer = answer
        self._offset = start
        self._size = size
        self._url = url
        self._probe = memoryview(bytearray(1))

    async def read_into(self, view: memoryview) -> int:
        """Receive up to ``len(view)`` bytes into ``view``; 0 once the body has ended."""
        left = self._size - self._offset
        try:
            if left == 0:  # the end, unless the server goes on
                if await self._answer.read_into(self._probe):
                    raise SourceChangedError(
                        f"{self._url} sent more than its {self._size} bytes; the object changed or the "
                        "server is broken")
                return 0
            count = await self._answer.read_into(view[:left])
        except (httpx.TimeoutException, WireTimeout):
            timeout_s = self._answer.read_timeout_s
            waited = f"{timeout_s:g} s" if timeout_s else "the read timeout"
            raise TransientError(
                f"reading {self._url} stalled at byte {self._offset} of {self._size}: nothing arrived "
                f"for {waited} (transfer.read_timeout_s); the transfer resumes from there"
            ) from None
        except (httpx.TransportError, WireError) as error:
            raise TransientError(
                f"reading {self._url} failed at byte {self._offset} of {self._size}: {describe(error)}"
            ) from None
        self._offset += count
        return count


async def _bounded_read(answer: Answer) -> bytes:
    """At most `MAX_ERROR_BODY_BYTES` of an error answer: enough for OSS's XML, never a whole image."""
    data = bytearray(MAX_ERROR_BODY_BYTES)
    view, filled = memoryview(data), 0
    try:
        while filled < len(data):
            count = await answer.read_into(view[filled:])
            if not count:
                break
            filled += count
    except (httpx.TransportError, WireError):
        pass  # the status alone still says what happened
    return bytes(data[:filled])


def _body_start(status: int, headers: Mapping[str, str], start: int, end: int, expected: ObjectInfo,
                url: str) -> int:
    """Where the body of a 200/206 answer begins in the object; raise when it cannot be used."""
    fields = _lowered(headers)
    encoding = fields.get("content-encoding", "").strip().lower()
    if encoding not in IDENTITY:
        # A misbehaving proxy may do this once: retried, and never written.
        raise TransientError(
            f"GET {url} answered with Content-Encoding {_clip(encoding)} although identity was asked "
            "for; encoded bytes are never stored"
        )
    etag = fields.get("etag")
    if etag is not None and etag != expected.etag:
        raise SourceChangedError(
            f"{url} changed during the transfer (ETag {_clip(etag)}, expected {expected.etag})")
    length_text = fields.get("content-length")
    length = None if length_text is None else parse_decimal(length_text.strip(), below=MAX_OBJECT_BYTES)
    if length_text is not None and length is None:
        raise TransientError(f"GET {url} answered an unusable Content-Length {_clip(length_text)}")
    if status == 206:
        want_range = f"bytes {start}-{end - 1}/{expected.size}"
        got_range = fields.get("content-range")
        if got_range != want_range:
            raise SourceChangedError(
                f"GET {url} answered Content-Range {_clip(got_range or 'none')}, expected {want_range}; "
                "the object changed"
            )
        _check_length(length, end - start, url)
        return start
    # 200: the whole object, whatever was asked for.
    _check_length(length, expected.size, url)
    if start and (etag is None or length is None):
        raise TransferError(
            f"GET {url} ignored the Range header (HTTP 200) without an ETag and Content-Length that "
            "show the whole object is unchanged; cannot resume from it"
        )
    return 0


def _check_length(length: int | None, want: int, url: str) -> None:
    if length is not None and length != want:
        raise SourceChangedError(
            f"GET {url} announced {length} bytes where {want} were expected; the object changed")


def _object_info(headers: Mapping[str, str], url: str) -> ObjectInfo:
    """The object's identity from HEAD's headers, each read by strict rules."""
    fields = _lowered(headers)
    etag = fields.get("etag", "")
    if not ETAG.fullmatch(etag):
        raise TransferError(f"HEAD {url} answered without a usable ETag ({_clip(etag) or 'none'})")
    length_text = fields.get("content-length", "")
    size = parse_decimal(length_text.strip(), below=MAX_OBJECT_BYTES)
    if size is None:
        shown = _clip(length_text) or "none"
        raise TransferError(f"HEAD {url} answered without a usable Content-Length ({shown})")
    crc_text = fields.get("x-oss-hash-crc64ecma")
    crc = None if crc_text is None else parse_decimal(crc_text.strip(), below=1 << 64)
    if crc_text is not None and crc is None:
        raise TransferError(
            f"HEAD {url} answered an unusable CRC-64 (x-oss-hash-crc64ecma {_clip(crc_text)})")
    return ObjectInfo(
        etag=etag,
        size=size,
        crc64ecma=crc,
        last_modified=_clip(fields.get("last-modified", "")),
        content_md5=_content_md5(fields.get("content-md5")),
    )


def _content_md5(text: str | None) -> str | None:
    """The canonical base64 of a 16-byte MD5, or None for an absent or unusable header."""
    if text is None:
        return None
    try:
        digest = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return base64.b64encode(digest).decode() if len(digest) == 16 else None


def _status_error(
    method: str, url: str, status: int, headers: Mapping[str, str], body: bytes
) -> TransferError:
    code, message, request_id = _oss_error_fields(headers, body)
    message = message or httpx.codes.get_reason_phrase(status) or "no reason given"
    detail = f"{method} {url} answered HTTP {status}" + (f" {code}" if code else "") + f": {message}"
    if request_id:
        detail += f" (RequestId {request_id})"
    if status in (408, 429) or status >= 500:
        return TransientError(detail)
    if status == 412 or status == 416:
        return SourceChangedError(f"{detail}; the object changed")
    if status == 403 and "expired" in message.lower():
        return UrlExpiredError(detail)
    if status == 404:
        return TransferError(f"{detail}; the exported object no longer exists")
    return TransferError(detail)


def _oss_error_fields(headers: Mapping[str, str], body: bytes) -> tuple[str, str, str]:
    """Code, Message, RequestId from the OSS error XML (in the body, or header x-oss-err on HEAD).

    Any bytes at all give three plain strings (maybe empty), each cut to `MAX_SERVER_TEXT`.
    """
    fields = _lowered(headers)
    request_id = _clip(fields.get("x-oss-request-id", ""))
    raw = body[:MAX_ERROR_BODY_BYTES]
    if not raw:
        try:
            raw = base64.b64decode(fields.get("x-oss-err", ""), validate=True)[:MAX_ERROR_BODY_BYTES]
        except (binascii.Error, ValueError):  # ValueError: not even ASCII
            raw = b""
    found = _error_xml(raw)
    if found is None:
        return ("", "", request_id)
    code, message, xml_request_id = found
    return (code, message, xml_request_id or request_id)


def _error_xml(raw: bytes) -> tuple[str, str, str] | None:
    # An OSS error is a flat <Error> document: refuse DTDs (entity expansion) outright.
    if b"<!" in raw.replace(b"<!--", b""):
        return None
    try:
        root = ET.fromstring(raw)  # noqa: S314 - small, DTD-free, from the server we asked
    except (ET.ParseError, ValueError, LookupError):
        return None
    return (_clip(root.findtext("Code") or ""), _clip(root.findtext("Message") or ""),
            _clip(root.findtext("RequestId") or ""))


def _lowered(headers: Mapping[str, str]) -> dict[str, str]:
    return {str(name).lower(): value for name, value in headers.items()}


def _clip(text: str) -> str:
    """A server's text as plain text for a sentence: stripped and bounded, never repr-quoted."""
    text = text.strip()
    return text if len(text) <= MAX_SERVER_TEXT else text[:MAX_SERVER_TEXT] + "..."


@functools.lru_cache(maxsize=64)
def _oss2_bucket_for(endpoint: str, bucket: str, region: str, credentials: Credentials) -> oss2.Bucket:
    import oss2

    provider = oss2.credentials.StaticCredentialsProvider(
        credentials.access_key_id, credentials.access_key_secret, credentials.security_token or ""
    )
    return oss2.Bucket(oss2.ProviderAuthV4(provider), endpoint, bucket, region=region)


def _oss2_bucket(location: ObjectLocation, credentials: Credentials) -> oss2.Bucket:
    """One oss2 Bucket per bucket and credentials (building one costs a requests Session)."""
    import oss2

    try:
        return _oss2_bucket_for(location.endpoint, location.bucket, location.region, credentials)
    except oss2.exceptions.ClientError as error:
        raise UnsafeSourceError(f"cannot sign requests for {location.public_url}: {error}") from None


LISTING_PAGES_MAX = 200  # 200,000 keys: beyond that, one HEAD per image is the cheaper way


def list_objects(location: ObjectLocation, credentials: Credentials | None,
                 prefix: str) -> dict[str, ObjectInfo] | None:
    """ETag and size of every object under ``prefix`` in ``location``'s bucket (1,000 per
    request), or None when the bucket cannot be listed (no oss:ListObjects permission, an
    answer we cannot read): callers then HEAD each object. Blocking."""
    import oss2

    if credentials is not None:
        bucket = _oss2_bucket(location, credentials)
    else:
        bucket = oss2.Bucket(oss2.AnonymousAuth(), location.endpoint, location.bucket)
    found: dict[str, ObjectInfo] = {}
    try:
        for page, listed in enumerate(oss2.ObjectIteratorV2(bucket, prefix=prefix, max_keys=1000)):
            if page >= LISTING_PAGES_MAX * 1000:
                return None
            etag = f'"{listed.etag}"'
            if not ETAG.fullmatch(etag) or not 0 <= listed.size < MAX_OBJECT_BYTES:
                return None
            found[listed.key] = ObjectInfo(etag=etag, size=listed.size, crc64ecma=None,
                                           last_modified="", complete=False)
    # An optimisation only: whatever goes wrong (a refusal, a transport error, XML oss2 cannot
    # parse), the HEAD per object that follows decides.
    except Exception:
        return None
    return found

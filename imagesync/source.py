"""Where image bytes come from: URL checks, OSS V4 presigning (oss2), HEAD and verified ranged GETs.

An ExportedImageURL is a plain object locator. It is refused before any connection unless it is
``https`` on an OSS host (``*.aliyuncs.com``) or its host is listed in ``source.allow_hosts``.
httpx errors are translated here, once, into the `TransferError` family the transfer loop acts on.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

import httpx
import oss2

from .config import SourceConfig
from .credentials import Credentials
from .errors import SourceChangedError, TransferError, UnsafeSourceError

OSS_DOMAIN = ".aliyuncs.com"
RESIGN_MARGIN_S = 60
HTTP_READ_BYTES = 1 << 20
HOST_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")
BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")


def _widen_http_reads() -> None:
    """Let httpcore read up to 1 MiB per socket read instead of 64 KiB.

    Under trio every read is a trip through the scheduler; for image-sized bodies the wider
    reads halve the client's CPU per GiB received (measured 1.2 -> 0.6 s/GiB on loopback). It
    is httpcore's own class attribute, not public API: without it, only this gain is lost, and
    tests/test_source.py fails to say so.
    """
    from httpcore._async.http11 import AsyncHTTP11Connection

    if getattr(AsyncHTTP11Connection, "READ_NUM_BYTES", 0) < HTTP_READ_BYTES:
        AsyncHTTP11Connection.READ_NUM_BYTES = HTTP_READ_BYTES


_widen_http_reads()


class TransientError(TransferError):
    """A dropped connection, a timeout or a 5xx: retry from the current offset after a pause."""


class UrlExpiredError(TransferError):
    """OSS says the presigned URL has expired: sign a new one and go on."""


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


def locate(url: str, config: SourceConfig) -> ObjectLocation:
    """Parse and vet an ExportedImageURL; raise `UnsafeSourceError` for anything not allowed."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        shown = url.split("?")[0][:200]
        raise UnsafeSourceError(f"refusing to download {shown!r}: not a valid URL") from None
    public_url = parts._replace(query="", fragment="").geturl()
    host = (parts.hostname or "").lower()
    allowed = {h.lower() for h in config.allow_hosts}
    on_oss = host.endswith(OSS_DOMAIN) and parts.scheme == "https"
    listed = host in allowed and parts.scheme in ("http", "https")
    well_formed = _is_ip_or_localhost(host) or HOST_NAME.fullmatch(host) is not None
    if parts.username or parts.password or not well_formed or not (on_oss or listed):
        raise UnsafeSourceError(
            f"refusing to download {public_url}: only https URLs on OSS hosts (*{OSS_DOMAIN}) "
            "or hosts listed in source.allow_hosts are allowed"
        )
    path = unquote(parts.path).lstrip("/")
    netloc = host if port is None else f"{host}:{port}"
    if _is_ip_or_localhost(host):
        bucket, _, key = path.partition("/")
        endpoint = f"{parts.scheme}://{netloc}"
        fetch_url = f"{endpoint}/{quote(bucket)}/{quote(key)}"
    else:
        bucket, _, service_host = netloc.partition(".")
        key = path
        endpoint = f"{parts.scheme}://{config.endpoint_override or service_host}"
        fetch_url = f"{parts.scheme}://{bucket}.{config.endpoint_override or service_host}/{quote(key)}"
    if not BUCKET_NAME.fullmatch(bucket) or not key:
        raise UnsafeSourceError(f"cannot tell a valid OSS bucket and object key from {public_url}")
    region = _region_from_host(host) or config.region
    if not region and config.sign:
        raise TransferError(f"cannot tell the OSS region from {public_url}; set source.region")
    return ObjectLocation(public_url=public_url, endpoint=endpoint, fetch_url=fetch_url, bucket=bucket,
                          key=key, region=region)


def _is_ip_or_localhost(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _region_from_host(host: str) -> str:
    """``bucket.oss-cn-beijing[-internal].aliyuncs.com`` and ``bucket.cn-beijing.oss.aliyuncs.com``."""
    if not host.endswith(OSS_DOMAIN):
        return ""
    labels = host.split(".")
    if len(labels) >= 4 and labels[1].startswith("oss-"):
        return labels[1].removeprefix("oss-").removesuffix("-internal")
    if len(labels) >= 5 and labels[2] == "oss":
        return labels[1]
    return ""


class ObjectSource:
    """One source object: signs its URLs (re-signing near expiry) and reads it over httpx."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        location: ObjectLocation,
        credentials: Credentials | None,
        expires_s: int,
    ) -> None:
        self._http = http
        self.location = location
        self._expires_s = expires_s
        try:
            self._bucket = _oss2_bucket(location, credentials) if credentials else None
        except oss2.exceptions.ClientError as error:
            raise UnsafeSourceError(f"cannot sign requests for {location.public_url}: {error}") from None
        self._signed: dict[str, tuple[str, float]] = {}

    def resign(self) -> None:
        self._signed.clear()

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
        """The object's ETag, size and CRC-64, read with a HEAD request."""
        try:
            response = await self._http.head(self._url("HEAD"), headers={"Accept-Encoding": "identity"})
        except httpx.TransportError as error:
            raise TransientError(f"HEAD {self.location.public_url} failed: {_describe(error)}") from None
        if response.status_code != 200:
            raise _status_error("HEAD", self.location.public_url, response)
        return _object_info(response, self.location.public_url)

    @asynccontextmanager
    async def open_range(self, start: int, expected: ObjectInfo) -> AsyncIterator[AsyncIterator[bytes]]:
        """Stream the object from ``start`` to its end, only if it is still ``expected``.

        A ranged GET must come back 206 with exactly the Content-Range asked for: legacy OSS
        answers a bad range with 200 and the whole object, which must never be appended.
        """
        headers = {"Accept-Encoding": "identity", "If-Match": expected.etag,
                   "x-oss-range-behavior": "standard"}
        if start:
            headers["Range"] = f"bytes={start}-"
        url = self.location.public_url
        request = self._http.build_request("GET", self._url("GET"), headers=headers)
        try:
            response = await self._http.send(request, stream=True)
        except httpx.TransportError as error:
            raise TransientError(f"GET {url} failed: {_describe(error)}") from None
        try:
            if response.status_code not in (200, 206):
                await response.aread()
            _check_body_response(response, start, expected, url)
            yield _raw_body(response, url)
        finally:
            await response.aclose()


async def _raw_body(response: httpx.Response, url: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    except httpx.TransportError as error:
        raise TransientError(f"reading {url} failed: {_describe(error)}") from None


def _check_body_response(response: httpx.Response, start: int, expected: ObjectInfo, url: str) -> None:
    want_status = 206 if start else 200
    if response.status_code != want_status:
        if response.status_code in (200, 206):
            raise TransientError(
                f"GET {url} answered {response.status_code} where {want_status} was asked for")
        raise _status_error("GET", url, response)
    if start:
        want_range = f"bytes {start}-{expected.size - 1}/{expected.size}"
        if response.headers.get("content-range") != want_range:
            raise SourceChangedError(
                f"GET {url} answered Content-Range {response.headers.get('content-range')!r}, "
                f"expected {want_range!r}; the object changed"
            )
    etag = response.headers.get("etag")
    if etag is not None and etag != expected.etag:
        raise SourceChangedError(f"{url} changed during the transfer (ETag {etag}, expected {expected.etag})")


def _object_info(response: httpx.Response, url: str) -> ObjectInfo:
    headers = response.headers
    etag, crc = headers.get("etag"), headers.get("x-oss-hash-crc64ecma")
    length = headers.get("content-length", "")
    if not etag or not length.isdigit() or (crc is not None and not crc.isdigit()):
        raise TransferError(f"HEAD {url} answered without a usable ETag, Content-Length or CRC-64")
    return ObjectInfo(
        etag=etag,
        size=int(length),
        crc64ecma=int(crc) if crc is not None else None,
        last_modified=headers.get("last-modified", ""),
    )


def _status_error(method: str, url: str, response: httpx.Response) -> TransferError:
    code, message, request_id = _oss_error_fields(response)
    status = response.status_code
    detail = f"{method} {url} answered HTTP {status} {code}: {message}".rstrip(": ")
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


def _oss_error_fields(response: httpx.Response) -> tuple[str, str, str]:
    """Code, Message, RequestId from the OSS error XML (in the body, or header x-oss-err on HEAD)."""
    raw = response.content
    if not raw:
        try:
            raw = base64.b64decode(response.headers.get("x-oss-err", ""), validate=True)
        except binascii.Error:
            raw = b""
    try:
        root = ET.fromstring(raw)  # noqa: S314 - a small error document from the server we asked
    except ET.ParseError:
        return ("", response.reason_phrase, response.headers.get("x-oss-request-id", ""))
    return tuple(root.findtext(name, "") for name in ("Code", "Message", "RequestId"))  # type: ignore[return-value]


def _describe(error: httpx.TransportError) -> str:
    return str(error) or type(error).__name__


def _oss2_bucket(location: ObjectLocation, credentials: Credentials) -> oss2.Bucket:
    provider = oss2.credentials.StaticCredentialsProvider(
        credentials.access_key_id, credentials.access_key_secret, credentials.security_token or ""
    )
    auth = oss2.ProviderAuthV4(provider)
    return oss2.Bucket(auth, location.endpoint, location.bucket, region=location.region)

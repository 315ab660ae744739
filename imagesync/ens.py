"""The ENS API client: every image `DescribeExportImageInfo` reports, validated and de-duplicated.

Requests are signed with ACS3-HMAC-SHA256 as the official SDK signs them. Throttling, 5xx and
transport errors are retried with backoff; anything else the API refuses ends the listing with
an `ApiError` carrying the API's Code, Message and RequestId.
"""

from __future__ import annotations

import json
import logging
import math
import re
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import trio

from . import signing
from .config import EnsConfig
from .credentials import Credentials
from .errors import ApiError, MalformedResponseError
from .retry import RetryPolicy
from .units import parse_decimal

log = logging.getLogger("imagesync")

ACTION = "DescribeExportImageInfo"
API_VERSION = "2017-11-10"
PAGE_SIZE = 50
PAGE_CONCURRENCY = 4
MAX_IMAGES = 1_000_000  # far above any real account; bounds the work a bad TotalCount can ask for
MAX_RETRY_AFTER_MS = 3_600_000  # x-acs-retry-after beyond an hour is not a hint we can use
MAX_SERVER_TEXT = 300  # characters of a server's string kept in a sentence
MAX_DEBUG_TEXT = 4000  # characters of a server's whole message shown with -v
# Words that start the signing material a server echoes after SignatureDoesNotMatch: useful
# with -v to compare with our own, noise (and a wall of text) in the one sentence for cron.
SIGNING_DETAIL = ("server string to sign", "string to sign", "stringtosign", "canonical request",
                  "canonicalrequest")
RETRYABLE_CODES = ("Throttling", "ServiceUnavailable", "InternalError", "UnknownError",
                   "SignatureNonceUsed")
HINTS = {
    "SignatureDoesNotMatch": "check the access key secret",
    "IncompleteSignature": "check the access key secret",
    "InvalidAccessKeyId": "check the access key id",
    "NoPermission": "grant ens:DescribeExportImageInfo to this RAM identity",
    "Forbidden": "grant ens:DescribeExportImageInfo to this RAM identity",
    "InvalidTimeStamp": "check this host's clock",
    "InvalidSecurityToken": "the STS token has expired; fetch a new one",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportedImage:
    """One image as the API reports it; ``url`` is ``""`` unless it is exported."""

    image_id: str
    image_name: str
    status: str
    url: str
    platform: str
    architecture: str
    creation_time: str
    owner_alias: str

    @property
    def public_url(self) -> str:
        """The URL without query string or fragment: never a signature in logs or files."""
        try:
            return urlsplit(self.url)._replace(query="", fragment="").geturl()
        except ValueError:  # not even a URL: still never show a query string
            return self.url.split("?", 1)[0].split("#", 1)[0]


@dataclass(frozen=True, slots=True)
class _Page:
    total_count: int
    images: list[ExportedImage]


# API field -> (attribute, required)
_IMAGE_FIELDS = {
    "ImageId": ("image_id", True),
    "ImageExportStatus": ("status", True),
    "ImageName": ("image_name", False),
    "ExportedImageURL": ("url", False),
    "Platform": ("platform", False),
    "Architecture": ("architecture", False),
    "CreationTime": ("creation_time", False),
    "ImageOwnerAlias": ("owner_alias", False),
}


class EnsClient:
    """Lists images from one ENS endpoint with one set of credentials."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        endpoint: str,
        credentials: Credentials,
        retry: RetryPolicy,
    ) -> None:
        self._http = http
        self._url = httpx.URL(endpoint.rstrip("/") + "/")
        self._credentials = credentials
        self._retry = retry

    async def list_images(self, on_page: Callable[[int, int], None] | None = None) -> list[ExportedImage]:
        """Every image, page by page; pages after the first are fetched concurrently.

        ``on_page(listed, total)`` hears after each page how far the listing got (a status line).
        """
        first = await self._page(1)
        page_count = math.ceil(first.total_count / PAGE_SIZE)
        pages: dict[int, list[ExportedImage]] = {1: first.images}
        limiter = trio.CapacityLimiter(PAGE_CONCURRENCY)
        listed = len(first.images)
        if on_page is not None:
            on_page(min(listed, first.total_count), first.total_count)

        async def fetch(number: int) -> None:
            nonlocal listed
            async with limiter:
                pages[number] = (await self._page(number)).images
            listed += len(pages[number])
            if on_page is not None:
                on_page(min(listed, first.total_count), first.total_count)

        async with trio.open_nursery() as nursery:
            for number in range(2, page_count + 1):
                nursery.start_soon(fetch, number)
        unique: dict[str, ExportedImage] = {}
        for number in sorted(pages):
            for image in pages[number]:
                unique.setdefault(image.image_id, image)
        # Count after de-duplicating: an image added and another deleted while paging shift a
        # row from one page to the next, so a duplicate can stand in for an image never seen.
        if len(unique) < first.total_count:
            raise MalformedResponseError(
                f"ENS listed {len(unique)} distinct images where TotalCount promised {first.total_count} "
                "(the account may have changed while listing); try again"
            )
        return list(unique.values())

    async def _page(self, number: int) -> _Page:
        params = {"PageNumber": str(number), "PageSize": str(PAGE_SIZE)}
        return await self._call(params)

    async def _call(self, params: Mapping[str, str]) -> _Page:
        query = signing.canonical_query(params)
        url = self._url.copy_with(query=query.encode())
        problem = ""
        attempts = self._retry.max_attempts
        for attempt in range(1, attempts + 1):
            retry_after_s: float | None = None
            try:
                response = await self._http.post(url, headers=self._signed_headers(params))
            except httpx.TransportError as error:
                problem = f"cannot reach the ENS endpoint {self._url}: {_describe(error)}"
                cause = type(error).__name__ if not str(error) else f"{type(error).__name__} ({error})"
            else:
                if response.is_success:
                    return _parse_response(response.content, response.status_code, params)
                status = response.status_code
                error_fields = _error_fields(response.content, status)
                if not _is_retryable(status, error_fields[0]):
                    self._log_whole_message(error_fields, status)
                    raise ApiError(_refusal(error_fields, status))
                problem = _refusal(error_fields, status)
                cause = f"{_text(error_fields[0])} (HTTP {status})"
                retry_after_s = _retry_after_s(response.headers)
            if attempt < attempts:  # never wait after the last attempt: nothing follows it
                delay_s = self._retry.delay_s(attempt, retry_after_s)
                log.debug("ENS retry %d/%d after %s: waiting %.1f s", attempt + 1, attempts, cause, delay_s)
                await trio.sleep(delay_s)
        raise ApiError(f"{problem}; gave up after {attempts} attempts")

    def _log_whole_message(self, fields: tuple[str, str, str], status: int) -> None:
        """With -v, the server's whole Message (often the string it signed, to compare with
        ours), with anything secret of ours blanked out should the server echo it."""
        code, message, request_id = fields
        if not message or not log.isEnabledFor(logging.DEBUG):
            return
        for secret in (self._credentials.access_key_secret, self._credentials.security_token):
            if secret:
                message = message.replace(secret, "<redacted>")
        if len(message) > MAX_DEBUG_TEXT:
            message = message[:MAX_DEBUG_TEXT] + "..."
        log.debug("ENS answered %s (HTTP %d, RequestId %s) with the message: %s",
                  _text(code), status, _text(request_id) or "none", message)

    def _signed_headers(self, params: Mapping[str, str]) -> dict[str, str]:
        headers = {
            "host": self._url.netloc.decode("ascii"),
            "x-acs-action": ACTION,
            "x-acs-version": API_VERSION,
            "x-acs-date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "x-acs-signature-nonce": uuid.uuid4().hex,
            "x-acs-content-sha256": signing.EMPTY_SHA256,
        }
        if self._credentials.security_token:
            headers["x-acs-security-token"] = self._credentials.security_token
        headers["Authorization"] = signing.acs3_authorization(
            self._credentials.access_key_id,
            self._credentials.access_key_secret,
            "POST",
            "/",
            params,
            headers,
        )
        headers["accept"] = "application/json"
        return headers


def _describe(error: httpx.TransportError) -> str:
    return str(error) or type(error).__name__


def _is_retryable(status: int, code: str) -> bool:
    return status >= 500 or any(code == c or code.startswith(c + ".") for c in RETRYABLE_CODES)


def _retry_after_s(headers: Mapping[str, str]) -> float | None:
    """The server's ``x-acs-retry-after`` (milliseconds) in seconds, when it is a usable number."""
    value = parse_decimal(headers.get("x-acs-retry-after", "").strip(), below=MAX_RETRY_AFTER_MS + 1)
    return value / 1000 if value else None


def _error_fields(content: bytes, status: int) -> tuple[str, str, str]:
    """``(Code, Message, RequestId)`` of an error answer, whatever its shape, as plain strings
    (unbounded: `_refusal` bounds them for the sentence, -v shows the whole Message)."""
    try:
        body = json.loads(content)
    except (ValueError, RecursionError):
        body = None
    if not isinstance(body, dict):
        return (f"HTTP{status}", httpx.codes.get_reason_phrase(status), "")
    lowered = {str(k).lower(): v for k, v in body.items()}
    return tuple(  # type: ignore[return-value]
        value.strip() if isinstance(value := lowered.get(name), str) else ""
        for name in ("code", "message", "requestid")
    )


def _text(value: Any) -> str:
    """A server's string for a sentence: plain (never repr-quoted) and bounded; "" if not a string."""
    if not isinstance(value, str):
        return ""
    text = value.strip()
    return text if len(text) <= MAX_SERVER_TEXT else text[:MAX_SERVER_TEXT] + "..."


def _shown(value: Any) -> str:
    """What a JSON value is, for a sentence about a malformed answer."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return f"the number {value}" if abs(value) < 10**20 else "a huge number"
    if isinstance(value, str):
        return f'the string "{_text(value)}"'
    return "an array" if isinstance(value, list) else "an object"


def _refusal(fields: tuple[str, str, str], status: int) -> str:
    code, request_id = _text(fields[0]), _text(fields[2])
    message, cut = _brief(fields[1])
    hints = [h for prefix, h in HINTS.items() if code.startswith(prefix)][:1]
    if cut:
        hints.append("run with -v to see what the server signed")
    text = f"ENS refused {ACTION} with {code} (HTTP {status}): {_text(message).rstrip('.')}"
    if request_id:
        text += f" (RequestId {request_id})"
    return "; ".join([text, *hints])


def _brief(message: str) -> tuple[str, bool]:
    """The Message for one sentence, and whether it was cut: signing material a server echoes
    (its canonical request or string to sign) is cut off with the rest of its sentence."""
    lowered = message.lower()
    at = min((i for marker in SIGNING_DETAIL if (i := lowered.find(marker)) >= 0), default=-1)
    if at < 0:
        return message, False
    head = re.split(r"(?<=[.!?])\s", message[:at], maxsplit=1)[0].strip().rstrip(" .:;,")
    return head or "the server computed another signature", True


def _parse_response(content: bytes, status: int, params: Mapping[str, str]) -> _Page:
    """One page from the raw body of a successful answer; anything else is `MalformedResponseError`."""
    page = params.get("PageNumber", "?")
    try:
        body = json.loads(content)
    except (ValueError, RecursionError) as error:  # RecursionError: nested too deeply to read
        what = "JSON nested too deeply to read" if isinstance(error, RecursionError) else "not JSON"
        raise MalformedResponseError(
            f"ENS answered page {page} of {ACTION} with a body that is {what} "
            f"(HTTP {status}, {len(content)} bytes)"
        ) from None
    return _parse_page(body, page)


def _parse_page(body: Any, number: int | str) -> _Page:
    where = f"ENS answered page {number} of {ACTION} with a malformed body"
    if not isinstance(body, dict):
        raise MalformedResponseError(f"{where}: expected a JSON object")
    request_id = _text(body.get("RequestId"))
    request = f" (RequestId {request_id})" if request_id else ""
    total = body.get("TotalCount")
    if not isinstance(total, int) or isinstance(total, bool) or not 0 <= total <= MAX_IMAGES:
        raise MalformedResponseError(f"{where}: TotalCount is {_shown(total)}, expected a count{request}")
    images = body.get("Images", {"Image": []})
    raw_list = images.get("Image", []) if isinstance(images, dict) else None
    if not isinstance(raw_list, list):
        raise MalformedResponseError(f"{where}: Images.Image is not a list{request}")
    parsed = [_parse_image(raw, f"{where}: Images.Image[{i}]", request)
              for i, raw in enumerate(raw_list)]
    return _Page(total_count=total, images=parsed)


def _parse_image(raw: Any, where: str, request: str) -> ExportedImage:
    if not isinstance(raw, dict):
        raise MalformedResponseError(f"{where} is not an object{request}")
    values: dict[str, str] = {}
    for api_name, (attribute, required) in _IMAGE_FIELDS.items():
        value = raw.get(api_name, None if required else "")
        if not isinstance(value, str) or (required and not value):
            got = "missing" if value is None else _shown(value)
            raise MalformedResponseError(f"{where}.{api_name} is {got}, expected a string{request}")
        values[attribute] = value
    return ExportedImage(**values)


@asynccontextmanager
async def open_ens_client(config: EnsConfig, credentials: Credentials) -> AsyncIterator[EnsClient]:
    """An `EnsClient` with its own connection pool, closed on exit."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(config.timeout_s)) as http:
        yield EnsClient(
            http,
            endpoint=config.endpoint,
            credentials=credentials,
            retry=RetryPolicy(max_attempts=config.max_attempts),
        )

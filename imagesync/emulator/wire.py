"""The request and response values passed between the HTTP server and the API modules.

The API modules (``ens_api``, ``oss_api``, ``control``) are plain functions from a
:class:`Request` to a :class:`Response`; only ``server`` touches sockets. An object body is
described (:class:`ObjectBody`: an open file, a byte span and the faults to apply), not
read, so the server can ``sendfile`` it.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO
from urllib.parse import parse_qsl

from .faults import BodyFaults

MAX_SMALL_BODY = 1 << 20


class BodyTooLarge(Exception):
    """A request body over the limit for an API that reads bodies into memory."""


class CloseConnection(Exception):
    """Raised by an API to make the server drop the connection without answering."""


def parse_query(query: str) -> dict[str, str]:
    """Query or form parameters, decoded (``+`` is a space, as form encoding says).

    A bare name (``?uploads``) has the empty value; a repeated name keeps its last value.
    """
    return dict(parse_qsl(query, keep_blank_values=True))


@dataclass(kw_only=True, slots=True)
class Request:
    """One HTTP request, decoded.

    ``path`` is percent-decoded (``raw_path`` is as received); ``headers`` has lowercase
    names (repeated headers joined with ``,``). The body is read on demand by
    :meth:`body`, or streamed by an API that takes ``read`` (a future PUT).
    """

    method: str
    raw_path: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    content_length: int
    read: Callable[[int], bytes]
    _body: bytes | None = None
    _streamed: int = 0

    def body(self, limit: int = MAX_SMALL_BODY) -> bytes:
        if self._body is None:
            if self.content_length > limit:
                raise BodyTooLarge(f"request body of {self.content_length} bytes (limit {limit})")
            self._body = self.read(self.content_length) if self.content_length else b""
        return self._body

    def stream(self, chunk_size: int = 1 << 20, limit: int | None = None) -> Iterator[bytes]:
        """The body in chunks, read from the socket as the caller goes (for big PUTs);
        at most ``limit`` bytes. A short read (client gone) raises ConnectionError."""
        if self._body is not None:
            raise RuntimeError("the body was already read")
        end = self.content_length if limit is None else min(limit, self.content_length)
        while self._streamed < end:
            data = self.read(min(chunk_size, end - self._streamed))
            if not data:
                raise ConnectionError("the client sent less than its Content-Length")
            self._streamed += len(data)
            yield data

    def drain(self) -> None:
        """Read and discard what is left of the body."""
        if self._body is None:
            for _ in self.stream():
                pass

    @property
    def body_consumed(self) -> bool:
        return self._body is not None or self.content_length == self._streamed


@dataclass(kw_only=True, slots=True)
class ObjectBody:
    """Bytes ``[start, start + length)`` of an open object file, sent by the server.

    The server closes ``file``.
    """

    file: BinaryIO
    start: int
    length: int
    key: str
    faults: BodyFaults = field(default_factory=BodyFaults)
    bucket: str = ""


@dataclass(kw_only=True, slots=True)
class Response:
    """Status, headers and either ``body`` bytes or an ``object_body``.

    ``send_body=False`` (HEAD) keeps the headers, Content-Length included, and sends no
    body. The server adds Content-Length when it is missing.
    """

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    object_body: ObjectBody | None = None
    send_body: bool = True
    delay_s: float = 0.0

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None

    def close(self) -> None:
        """Release the object file when the response will not be sent."""
        if self.object_body is not None:
            self.object_body.file.close()


def json_response(
    status: int, document: Mapping[str, Any], headers: list[tuple[str, str]] | None = None
) -> Response:
    body = json.dumps(document).encode()
    return Response(
        status=status,
        headers=[("Content-Type", "application/json;charset=utf-8"), *(headers or [])],
        body=body,
    )


def ens_request_id() -> str:
    """An ENS-style request id (uppercase UUID)."""
    return str(uuid.uuid4()).upper()


def oss_request_id() -> str:
    """An OSS-style request id (24 uppercase hex digits)."""
    return secrets.token_hex(12).upper()

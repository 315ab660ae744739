"""The wire under image GETs: HTTP/1.1 over trio, each body received straight into the caller's buffer.

httpx hands a body over as fresh ``bytes`` after copying it through h11's receive buffer; for
images of tens of GiB those copies were most of what receiving cost (over loopback, receiving
4 x 768 MiB took 0.90-1.05 CPU s/GiB through httpx against 0.33-0.37 with ``recv_into``). So the
ranged GETs that carry image bytes use this small client: h11 writes the request and parses the
response head, and a body framed by Content-Length is read with ``recv_into`` on plain TCP, or
decrypted straight into the caller's buffer under TLS (`_TlsChannel`). A body framed any other way
(chunked, or up to the close) goes through h11. Connections are kept alive per origin.

Errors are `WireError` (the connection failed or the server broke HTTP) and its subclass
`WireTimeout`; `source` turns them into sentences. Everything else (ENS, HEAD, the OSS sink)
stays on httpx and oss2, and so do image GETs when a proxy is configured (see `proxied`).
"""

from __future__ import annotations

import os
import select
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import urlsplit

import h11
import httpx
import trio

from . import __version__

HEAD_READ_BYTES = 16 << 10  # a response head is small; what follows is body, handed over from h11
MAX_IDLE_PER_ORIGIN = 32
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")
USER_AGENT = f"imagesync/{__version__}"

TLS_READ_BYTES = 256 << 10  # ciphertext taken from the socket at once


class _TlsChannel(trio.abc.AsyncResource):
    """TLS over a TCP stream with `ssl.SSLObject`, records decrypted straight into the caller's buffer.

    trio's SSLStream hands over one TLS record (at most 16 KiB) per receive, as a new ``bytes``,
    through its locking and scheduling: over loopback that cost 2.5-3.4 CPU s/GiB. Here the
    ciphertext comes from the socket in large reads, and every record that is already complete
    is decrypted into the caller's buffer before the next await.
    """

    def __init__(self, tcp: trio.SocketStream, context: ssl.SSLContext, host: str) -> None:
        self._tcp = tcp
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_hostname=host)
        self._cipher = memoryview(bytearray(TLS_READ_BYTES))
        self._closed = False  # the server closed the connection and every record has been read

    async def do_handshake(self) -> None:
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
                if self._closed:
                    closed = "the server closed the connection during the TLS handshake"
                    raise trio.BrokenResourceError(closed) from None
        await self._flush()

    async def send_all(self, data: bytes) -> None:
        self._tls.write(data)
        await self._flush()

    async def receive_some(self, max_bytes: int) -> bytes:
        buffer = bytearray(max_bytes)
        return bytes(buffer[: await self.receive_into(memoryview(buffer))])

    async def receive_into(self, view: memoryview) -> int:
        """Decrypt into ``view`` whatever records have arrived (waiting for one if none has);
        0 once the server closed the connection."""
        while True:
            count = self._decrypt_into(view)
            if count or self._closed:
                return count
            await self._flush()  # TLS 1.3 may owe the server an answer (a key update)
            await self._fill()

    def _decrypt_into(self, view: memoryview) -> int:
        # With a buffer, SSLObject.read returns how many bytes it put there (typeshed says bytes).
        read_into = cast(Callable[[int, memoryview], int], self._tls.read)
        count = 0
        try:
            while count < len(view):
                count += read_into(len(view) - count, view[count:])
        except ssl.SSLWantReadError:
            pass
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):  # closed, with or without close_notify
            self._closed = True
        except ssl.SSLError as error:
            raise trio.BrokenResourceError(error) from error
        return count

    async def _fill(self) -> None:
        if self._incoming.eof:  # nothing more will come, and OpenSSL has said all it will
            self._closed = True
            return
        count = await self._tcp.socket.recv_into(self._cipher)
        if count:
            self._incoming.write(self._cipher[:count])
        else:
            self._incoming.write_eof()  # the next read ends in SSLEOFError or SSLZeroReturnError

    async def _flush(self) -> None:
        data = self._outgoing.read()
        if data:
            await self._tcp.send_all(data)

    async def aclose(self) -> None:
        await self._tcp.aclose()


Stream = trio.SocketStream | _TlsChannel


class WireError(Exception):
    """A connection failed, closed early, or answered something that is not HTTP/1.1."""


class WireTimeout(WireError):
    """Nothing arrived (or no connection was made) within the timeout."""


def proxied() -> bool:
    """Whether the environment names a proxy: httpx honours those variables and this client
    does not, so image GETs then go through httpx."""
    return any(os.environ.get(name) or os.environ.get(name.upper()) for name in PROXY_VARIABLES)


@dataclass(frozen=True, slots=True)
class _Origin:
    scheme: str
    host: str
    port: int


@dataclass(slots=True)
class _Connection:
    stream: Stream
    socket: trio.socket.SocketType
    reused: bool = False

    def idle_and_open(self) -> bool:
        """An idle keep-alive connection has nothing to read: if it has, the server closed it
        (or sent bytes no request asked for), and it is not used again."""
        poller = select.poll()  # not select(): descriptors may be past FD_SETSIZE
        poller.register(self.socket.fileno(), select.POLLIN)
        return not poller.poll(0)


@dataclass(slots=True)
class Response:
    """The status and head of one answer, and its body through `read_into`."""

    status: int
    headers: dict[str, str]  # lower-case names; repeated fields joined with ", " as httpx does
    _connection: _Connection
    _parser: h11.Connection
    _timeout_s: float
    _remaining: int | None  # body bytes not yet handed over, when framed by Content-Length
    _pending: bytearray = field(default_factory=bytearray)  # body bytes h11 read with the head
    _ended: bool = False
    _overrun: bool = False  # the server sent more than it announced

    @property
    def read_timeout_s(self) -> float:
        return self._timeout_s

    async def read_into(self, view: memoryview) -> int:
        """Receive up to ``len(view)`` body bytes into ``view``; 0 once the body has ended."""
        if self._ended or not view:
            return 0
        if self._remaining is None:
            return await self._read_framed_by_h11(view)
        if self._remaining == 0:
            self._ended = True
            return 0
        view = view[: self._remaining]
        if self._pending:
            count = min(len(view), len(self._pending))
            view[:count] = self._pending[:count]
            del self._pending[:count]
        else:
            count = await self._receive_into(view)
        self._remaining -= count
        return count

    async def _receive_into(self, view: memoryview) -> int:
        count = 0
        stream = self._connection.stream
        with trio.move_on_after(self._timeout_s) as waited:
            try:
                if isinstance(stream, trio.SocketStream):
                    count = await self._connection.socket.recv_into(view)
                else:
                    count = await stream.receive_into(view)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
                raise WireError(describe(error)) from None
        if waited.cancelled_caught:
            raise WireTimeout(f"nothing arrived for {self._timeout_s:g} s")
        if not count:
            raise WireError(f"the server closed the connection with {self._remaining} bytes of the body "
                            "still to come")
        return count

    async def _read_framed_by_h11(self, view: memoryview) -> int:
        while True:
            if self._pending:
                count = min(len(view), len(self._pending))
                view[:count] = self._pending[:count]
                del self._pending[:count]
                return count
            event = await _next_event(self._parser, self._connection, self._timeout_s)
            if isinstance(event, h11.Data):
                self._pending += event.data
            elif isinstance(event, h11.EndOfMessage):
                self._ended = True
                return 0

    @property
    def reusable(self) -> bool:
        """Whether the body was read to its end on a connection the server keeps open."""
        if "close" in self.headers.get("connection", "").lower() or self._parser.their_http_version != b"1.1":
            return False
        if self._remaining is None:
            return self._parser.their_state is h11.DONE and not self._pending
        return self._remaining == 0 and not self._pending and not self._overrun


class Connections:
    """Keep-alive HTTP/1.1 connections to the hosts images come from, with the timeouts of
    ``transfer.connect_timeout_s`` and ``transfer.read_timeout_s``."""

    def __init__(self, *, connect_timeout_s: float, read_timeout_s: float,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._ssl_context = ssl_context
        self._idle: dict[_Origin, list[_Connection]] = {}

    @asynccontextmanager
    async def get(self, url: str, headers: dict[str, str]) -> AsyncIterator[Response]:
        """GET ``url``; the connection goes back to the pool only if the body was read to its end."""
        parts = urlsplit(url)
        default_port = 443 if parts.scheme == "https" else 80
        origin = _Origin(parts.scheme, parts.hostname or "", parts.port or default_port)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        fields = [("Host", parts.netloc), ("User-Agent", USER_AGENT), *headers.items()]
        request = h11.Request(method="GET", target=target, headers=fields)
        connection = await self._take(origin) or await self._connect(origin)
        while True:
            try:
                response = await _exchange(connection, request, self._read_timeout_s)
                break
            except WireError:
                await trio.aclose_forcefully(connection.stream)
                if not connection.reused:
                    raise
            except BaseException:
                await trio.aclose_forcefully(connection.stream)
                raise
            # The server may close a keep-alive connection just as it is reused: once more, afresh.
            connection = await self._connect(origin)
        try:
            yield response
        finally:
            if response.reusable:
                self._keep(origin, connection)
            else:
                await trio.aclose_forcefully(connection.stream)

    async def _take(self, origin: _Origin) -> _Connection | None:
        idle = self._idle.get(origin, [])
        while idle:
            connection = idle.pop()
            if connection.idle_and_open():
                connection.reused = True
                return connection
            await trio.aclose_forcefully(connection.stream)
        return None

    async def _connect(self, origin: _Origin) -> _Connection:
        where = f"{origin.host}:{origin.port}"
        with trio.move_on_after(self._connect_timeout_s):
            try:
                tcp = await trio.open_tcp_stream(origin.host, origin.port)
            except OSError as error:
                raise WireError(f"cannot connect to {where}: {describe(error)}") from None
            if origin.scheme != "https":
                return _Connection(stream=tcp, socket=tcp.socket)
            try:
                return _Connection(stream=await self._handshake(tcp, origin.host), socket=tcp.socket)
            except (trio.BrokenResourceError, OSError) as error:
                raise WireError(f"cannot connect to {where}: {describe(error)}") from None
        raise WireTimeout(f"no connection to {where} within {self._connect_timeout_s:g} s")

    async def _handshake(self, tcp: trio.SocketStream, host: str) -> _TlsChannel:
        if self._ssl_context is None:  # httpx's, so both trust the same CAs
            self._ssl_context = httpx.create_ssl_context()
        try:
            tls = _TlsChannel(tcp, self._ssl_context, host)
            await tls.do_handshake()
        except ssl.SSLError as error:
            await trio.aclose_forcefully(tcp)
            raise trio.BrokenResourceError(error) from error
        except BaseException:  # refused, timed out or cancelled: the socket is closed either way
            await trio.aclose_forcefully(tcp)
            raise
        return tls

    def _keep(self, origin: _Origin, connection: _Connection) -> None:
        connection.reused = False
        idle = self._idle.setdefault(origin, [])
        if len(idle) < MAX_IDLE_PER_ORIGIN:
            idle.append(connection)
        else:
            trio.lowlevel.spawn_system_task(trio.aclose_forcefully, connection.stream)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                await trio.aclose_forcefully(connection.stream)


async def _exchange(connection: _Connection, request: h11.Request, timeout_s: float) -> Response:
    """Send the request and read the head of the answer (informational answers skipped)."""
    parser = h11.Connection(h11.CLIENT)
    try:
        await connection.stream.send_all(parser.send(request) + parser.send(h11.EndOfMessage()))
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
        raise WireError(describe(error)) from None
    while True:
        event = await _next_event(parser, connection, timeout_s)
        if isinstance(event, h11.Response):
            break
    headers: dict[str, str] = {}
    for name, value in event.headers:
        key, text = name.decode("ascii").lower(), value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    if "transfer-encoding" in headers or "content-length" not in headers:
        return Response(event.status_code, headers, connection, parser, timeout_s, None)
    # h11 has already checked Content-Length is one decimal number.
    pending, _ = parser.trailing_data
    length = int(headers["content-length"])
    # Bytes past the Content-Length are never handed over, and the connection is not used again.
    return Response(event.status_code, headers, connection, parser, timeout_s, length,
                    bytearray(pending[:length]), _overrun=len(pending) > length)


async def _next_event(parser: h11.Connection, connection: _Connection, timeout_s: float) -> object:
    while True:
        try:
            event = parser.next_event()
        except h11.RemoteProtocolError as error:
            raise WireError(f"the server broke HTTP/1.1 ({error})") from None
        if event is not h11.NEED_DATA:
            return event
        with trio.move_on_after(timeout_s) as waited:
            try:
                data = await connection.stream.receive_some(HEAD_READ_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
                raise WireError(describe(error)) from None
        if waited.cancelled_caught:
            raise WireTimeout(f"nothing arrived for {timeout_s:g} s")
        parser.receive_data(bytes(data))  # b"" tells h11 the server closed the connection


def describe(error: BaseException) -> str:
    """The first message in the error's chain: trio's BrokenResourceError and httpx's ConnectError
    often have none of their own, while the OSError or ssl error under them says why
    (CERTIFICATE_VERIFY_FAILED and the like)."""
    cause: BaseException | None = error
    while cause is not None:
        if text := str(cause).strip():
            return text
        cause = cause.__cause__ or cause.__context__
    return type(error).__name__

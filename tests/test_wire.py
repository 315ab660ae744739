"""imagesync.wire over real sockets on 127.0.0.1: a scripted server answers with exact bytes."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import trio
import trustme

from imagesync.wire import Connections, WireError, WireTimeout

BODY = bytes(range(256)) * 4096  # 1 MiB


@dataclass
class Script:
    """Answers requests in order; each answer is the raw bytes to send (then ``close`` or not)."""

    answers: list[tuple[bytes, bool]]
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    stall: trio.Event = field(default_factory=trio.Event)


def ok(body: bytes = BODY, *extra: str) -> bytes:
    head = "".join(f"{line}\r\n" for line in ("HTTP/1.1 200 OK", f"Content-Length: {len(body)}", *extra))
    return head.encode() + b"\r\n" + body


async def _serve(script: Script, stream: trio.abc.Stream) -> None:
    script.connections += 1
    received = b""
    async with stream:
        while script.answers:
            while b"\r\n\r\n" not in received:
                data = await stream.receive_some(65536)
                if not data:
                    return
                received += data
            request, _, received = received.partition(b"\r\n\r\n")
            script.requests.append(request)
            answer, close = script.answers.pop(0)
            if answer == b"STALL":
                await trio.sleep_forever()
            for at in range(0, len(answer), 100_000):  # in several sends, as a real server would
                await stream.send_all(answer[at:at + 100_000])
            if close:
                return


@asynccontextmanager
async def server(script: Script, tls: trustme.CA | None = None) -> AsyncIterator[str]:
    listeners: list[trio.abc.Listener[trio.abc.Stream]] = list(await trio.open_tcp_listeners(0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]  # type: ignore[attr-defined]
    if tls is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.issue_cert("127.0.0.1").configure_cert(context)
        listeners = [trio.SSLListener(listener, context, https_compatible=True) for listener in listeners]
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, lambda stream: _serve(script, stream), listeners)
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        nursery.cancel_scope.cancel()


async def fetch(connections: Connections, url: str, read_size: int = 300_000) -> tuple[int, bytes]:
    async with connections.get(url, {"Range": "bytes=0-"}) as response:
        received = bytearray()
        view = memoryview(bytearray(read_size))
        while count := await response.read_into(view):
            received += view[:count]
        return response.status, bytes(received)


CA = trustme.CA()
TRUSTING = ssl.create_default_context()
CA.configure_trust(TRUSTING)


def pool(**timeouts: float) -> Connections:
    return Connections(connect_timeout_s=timeouts.get("connect", 5), read_timeout_s=timeouts.get("read", 5),
                       ssl_context=TRUSTING)


@pytest.fixture(params=["http", "https"])
def tls(request: pytest.FixtureRequest) -> trustme.CA | None:
    """Each test so marked runs over plain TCP and over TLS."""
    return CA if request.param == "https" else None


async def fetch_once(url: str, **timeouts: float) -> tuple[int, bytes]:
    connections = pool(**timeouts)
    try:
        return await fetch(connections, url)
    finally:
        await connections.aclose()


async def test_a_body_framed_by_content_length_arrives_whole_and_the_connection_is_kept(tls: trustme.CA | None) -> None:
    script = Script([(ok(), False), (ok(b"second"), False)])
    async with server(script, tls) as url:
        connections = pool()
        assert await fetch(connections, f"{url}/b/k?sig=1") == (200, BODY)
        assert await fetch(connections, f"{url}/b/k") == (200, b"second")
        await connections.aclose()
    assert script.connections == 1
    first = script.requests[0].decode()
    assert first.startswith("GET /b/k?sig=1 HTTP/1.1\r\n")
    assert f"host: {url.split('://')[1]}" in first.lower() and "range: bytes=0-" in first.lower()


async def test_a_chunked_body_goes_through_h11(tls: trustme.CA | None) -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    script = Script([(chunked, False), (ok(b"again"), False)])
    async with server(script, tls) as url:
        connections = pool()
        assert await fetch(connections, url, read_size=3) == (200, b"hello world")
        assert await fetch(connections, url) == (200, b"again")
        await connections.aclose()
    assert script.connections == 1


async def test_a_body_up_to_the_close_is_read_to_the_close_and_the_connection_not_kept(tls: trustme.CA | None) -> None:
    script = Script([(b"HTTP/1.0 200 OK\r\n\r\n" + BODY, True), (ok(b"fresh"), False)])
    async with server(script, tls) as url:
        connections = pool()
        assert await fetch(connections, url) == (200, BODY)
        assert await fetch(connections, url) == (200, b"fresh")
        await connections.aclose()
    assert script.connections == 2


async def test_a_body_cut_short_is_an_error_that_says_how_much_was_missing(tls: trustme.CA | None) -> None:
    script = Script([(ok()[: -1000], True)])
    async with server(script, tls) as url:
        with pytest.raises(WireError, match="closed the connection with 1000 bytes of the body still to come"):
            await fetch_once(url)


async def test_bytes_past_the_content_length_never_reach_the_next_answer() -> None:
    """A broken server sends more than it announced: the connection is not used again."""
    script = Script([(ok(b"12345") + b"GARBAGE", False), (ok(b"clean"), False)])
    async with server(script) as url:
        connections = pool()
        assert await fetch(connections, url) == (200, b"12345")
        await trio.sleep(0.1)  # the garbage has arrived by now
        assert await fetch(connections, url) == (200, b"clean")
        await connections.aclose()
    assert script.connections == 2


async def test_a_kept_connection_the_server_closed_is_replaced(tls: trustme.CA | None) -> None:
    script = Script([(ok(b"one"), True), (ok(b"two"), False)])
    async with server(script, tls) as url:
        connections = pool()
        assert await fetch(connections, url) == (200, b"one")
        await trio.sleep(0.1)
        assert await fetch(connections, url) == (200, b"two")
        await connections.aclose()
    assert script.connections == 2


async def test_a_stalled_server_times_out(tls: trustme.CA | None) -> None:
    half = ok()[: len(ok()) // 2]
    script = Script([(half, False), (b"STALL", False)])
    async with server(script, tls) as url:
        with trio.fail_after(10):
            with pytest.raises(WireTimeout, match=r"nothing arrived for 0\.3 s"):
                await fetch_once(url, read=0.3)
            with pytest.raises(WireTimeout, match=r"nothing arrived for 0\.3 s"):  # before the head
                await fetch_once(url, read=0.3)


@pytest.mark.parametrize("answer", [b"SSH-2.0-OpenSSH_9.2\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 12x\r\n\r\n",
                                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"])
async def test_what_is_not_http_is_a_wire_error(answer: bytes) -> None:
    script = Script([(answer, True)])
    async with server(script) as url:
        with pytest.raises(WireError, match=r"broke HTTP/1\.1"):
            await fetch_once(url)


async def test_no_listener_is_a_wire_error() -> None:
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(WireError, match=f"cannot connect to 127.0.0.1:{port}"):
        await fetch_once(f"http://127.0.0.1:{port}/k")


async def test_error_answers_and_their_bodies_come_through() -> None:
    xml = b"<Error><Code>AccessDenied</Code></Error>"
    script = Script([(ok(xml).replace(b"200 OK", b"403 Forbidden"), False)])
    async with server(script) as url:
        assert await fetch_once(url) == (403, xml)


async def test_https_is_verified_and_read_whole() -> None:
    ca = trustme.CA()
    script = Script([(ok(), False), (ok(b"tls again"), False), (ok(b"never sent"), False)])
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with server(script, tls=ca) as url:
        connections = Connections(connect_timeout_s=5, read_timeout_s=5, ssl_context=context)
        assert await fetch(connections, url) == (200, BODY)
        assert await fetch(connections, url) == (200, b"tls again")
        await connections.aclose()
        untrusting = Connections(connect_timeout_s=5, read_timeout_s=5, ssl_context=ssl.create_default_context())
        with pytest.raises(WireError, match=r"cannot connect .*CERTIFICATE_VERIFY_FAILED"):
            await fetch(untrusting, url)
    assert script.connections == 2  # one kept for both GETs, one refused in its handshake

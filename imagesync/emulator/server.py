"""The HTTP server: one loopback port, ENS at ``/``, control at ``/_emulator/``, OSS elsewhere.

``ThreadingHTTPServer`` speaking HTTP/1.1 with keep-alive, one daemon thread per connection.
Object bodies go out with ``sendfile`` unless a fault alters them (drop, corruption,
bandwidth cap); then they are read and written in chunks of up to 1 MiB.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from . import control, ens_api, oss_api
from .state import Emulator
from .wire import MAX_SMALL_BODY, ObjectBody, Request, Response, json_response, parse_query

CHUNK_SIZE = 1 << 20


class EmulatorHTTPServer(ThreadingHTTPServer):
    """The listening socket; ``emulator`` is attached once the port is known."""

    daemon_threads = True
    block_on_close = False  # else server_close() joins every keep-alive connection's thread
    request_queue_size = 128
    emulator: Emulator
    verbose: bool = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return  # a client went away: nothing to report
        super().handle_error(request, client_address)


def route(emu: Emulator, req: Request) -> Response:
    """Pick the service by path; ENS and OSS answers wait for the latency fault."""
    if req.path.startswith("/_emulator/"):
        return control.handle(emu, req)
    latency = emu.faults.latency_s()
    if latency > 0:
        time.sleep(latency)
    if req.path == "/":
        return ens_api.handle(emu, req)
    return oss_api.handle(emu, req)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "imagesync-emulator"
    sys_version = ""
    timeout = 300
    server: EmulatorHTTPServer

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        self._serve()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def _parse(self) -> Request | None:
        target = self.path
        if target.startswith(("http://", "https://")):
            parts = urlsplit(target)
            raw_path, query = parts.path or "/", parts.query
        else:
            raw_path, _, query = target.partition("?")
        try:
            path = unquote(raw_path, errors="strict")
            length = int(self.headers.get("Content-Length") or 0)
        except (UnicodeDecodeError, ValueError):
            self.send_error(400, "Bad request target or Content-Length")
            return None
        if length < 0 or self.headers.get("Transfer-Encoding"):
            self.close_connection = True  # a body we will not read: no keep-alive after it
            length = 0
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            name = name.lower()
            headers[name] = f"{headers[name]},{value}" if name in headers else value
        return Request(
            method=self.command,
            raw_path=raw_path,
            path=path,
            query=parse_query(query),
            headers=headers,
            content_length=length,
            read=self.rfile.read,
        )

    def _serve(self) -> None:
        req = self._parse()
        if req is None:
            return
        try:
            response = route(self.server.emulator, req)
        except Exception:
            traceback.print_exc()
            response = json_response(500, {"Code": "InternalError", "Message": "emulator bug"})
        try:
            if not req.body_consumed:
                if req.content_length <= MAX_SMALL_BODY:
                    req.body()
                else:
                    self.close_connection = True
            self._send(req, response)
        except OSError:
            self.close_connection = True  # the client went away mid-answer
        finally:
            response.close()

    def _send(self, req: Request, response: Response) -> None:
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        has_length = response.header("Content-Length") is not None
        if not has_length and response.object_body is None and response.status not in (204, 304):
            self.send_header("Content-Length", str(len(response.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if req.method == "HEAD" or not response.send_body:
            return
        if response.object_body is not None:
            self._send_object(response.object_body)
        elif response.body:
            self.wfile.write(response.body)

    def _send_object(self, body: ObjectBody) -> None:
        faults = self.server.emulator.faults
        if body.faults.alters_body:
            sent = self._send_chunks(body)
        else:
            epoch = faults.add_bytes(body.key, body.length)
            body.file.seek(body.start)  # sendfile leaves the position after the last byte sent
            try:
                sent = self.connection.sendfile(body.file, body.start, body.length) if body.length else 0
            except OSError:
                faults.add_bytes(body.key, body.file.tell() - body.start - body.length, epoch)
                raise
            if sent < body.length:
                faults.add_bytes(body.key, sent - body.length, epoch)
        if sent < body.length:  # dropped on purpose, or the file shrank under us
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

    def _send_chunks(self, body: ObjectBody) -> int:
        """Write the body in chunks, corrupting, pacing or cutting it as the faults say."""
        faults, stats = body.faults, self.server.emulator.faults
        limit = body.length if faults.drop_after is None else min(body.length, faults.drop_after)
        rate = faults.bandwidth_bps
        chunk = CHUNK_SIZE if rate <= 0 else max(16 << 10, min(CHUNK_SIZE, rate // 20))
        fd = body.file.fileno()
        started = time.monotonic()
        sent = 0
        while sent < limit:
            data = os.pread(fd, min(chunk, limit - sent), body.start + sent)
            if not data:
                break
            corrupt = faults.corrupt_at
            if corrupt is not None and sent <= corrupt < sent + len(data):
                flipped = bytearray(data)
                flipped[corrupt - sent] ^= 0xFF
                data = bytes(flipped)
            epoch = stats.add_bytes(body.key, len(data))
            try:
                self.wfile.write(data)
            except OSError:
                stats.add_bytes(body.key, -len(data), epoch)
                raise
            sent += len(data)
            if rate > 0:
                ahead = started + sent / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        return sent

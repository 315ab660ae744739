"""The HTTP server: one loopback port, ENS at ``/``, control at ``/_emulator/``, OSS elsewhere.

``ThreadingHTTPServer`` speaking HTTP/1.1 with keep-alive, one daemon thread per connection.
Object bodies go out through :mod:`.bodies` (``sendfile`` unless a fault alters them).
"""

from __future__ import annotations

import contextlib
import socket
import sys
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from . import bodies, control, ens_api, oss_api
from .oss_api import change_object
from .state import Emulator
from .wire import CloseConnection, ObjectBody, Request, Response, json_response, parse_query


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
        except CloseConnection:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        except ConnectionError:
            self.close_connection = True  # the client went away mid-body
            return
        except Exception:
            traceback.print_exc()
            response = json_response(500, {"Code": "InternalError", "Message": "emulator bug"})
        try:
            if not req.body_consumed:
                req.drain()  # an early answer (an error) still lets the client finish sending
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
        emu = self.server.emulator
        sent = bodies.send_object(
            self.connection, self.wfile, body, emu.faults, lambda b, k: change_object(emu, b, k)
        )
        if sent < body.length or body.faults.extra_bytes:  # cut on purpose, or the file shrank
            self.close_connection = True
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)

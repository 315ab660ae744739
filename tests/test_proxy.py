"""Behind a proxy: with HTTP_PROXY set, every request (ENS, HEAD, the image GETs) goes through it."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from clitools import imagesync, sha256_of, write_config

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "host"}


class _Forwarding(BaseHTTPRequestHandler):
    """A plain forward proxy for http:// URLs, as a corporate proxy would be: it sees each request."""

    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def _forward(self) -> None:
        target = urlsplit(self.path)  # absolute-form, as clients send to a proxy
        self.server.seen.append((self.command, target.path))
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        upstream = http.client.HTTPConnection(target.hostname or "", target.port, timeout=30)
        path = target.path + (f"?{target.query}" if target.query else "")
        upstream.request(self.command, path, body=body, headers={**headers, "Host": target.netloc})
        answer = upstream.getresponse()
        content = answer.read()
        self.send_response_only(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in HOP_BY_HOP | {"content-length"}:
                self.send_header(name, value)
        self.send_header("Content-Length", answer.getheader("Content-Length") or str(len(content)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(content)
        upstream.close()

    do_GET = do_HEAD = do_POST = _forward

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    seen: list[tuple[str, str]]


@pytest.fixture
def proxy() -> Iterator[_ProxyServer]:
    server = _ProxyServer(("127.0.0.1", 0), _Forwarding)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_sync_behind_a_proxy_sends_every_request_through_it(emulator: Any, proxy: _ProxyServer,
                                                               tmp_path: Path) -> None:
    config = write_config(emulator, tmp_path / "sync.toml", tmp_path / "mirror")
    address = f"http://127.0.0.1:{proxy.server_address[1]}"
    result = imagesync("sync", "-c", config, env_extra={"HTTP_PROXY": address, "NO_PROXY": "", "no_proxy": ""})
    assert result.returncode == 0, result.stderr
    for image in emulator.exported():
        mirrored = tmp_path / "mirror" / f"{image['ImageId']}.qcow2"
        assert sha256_of(mirrored) == sha256_of(emulator.object_path(image["ImageId"]))
        assert ("GET", f"/{emulator.bucket}/{image['Key']}") in proxy.seen

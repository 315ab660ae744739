"""Image downloads over TLS, end to end: the CLI fetches through a TLS front on 127.0.0.1 and
checks its certificate against the CAs it is told to trust (``SSL_CERT_FILE``, as httpx reads it)."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from clitools import imagesync, sha256_of, summary, write_config

from imagesync.emulator import catalog


class _Front(socketserver.ThreadingTCPServer):
    """Terminates TLS and passes the bytes on to the emulator, as a load balancer would."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, upstream: int, context: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), _Pass)
        self.upstream = upstream
        self.context = context
        self.connections = 0


class _Pass(socketserver.BaseRequestHandler):
    server: _Front

    def handle(self) -> None:
        try:
            client = self.server.context.wrap_socket(self.request, server_side=True)
        except (ssl.SSLError, OSError):
            return  # a client that does not trust us: what the test looks for
        self.server.connections += 1
        upstream = socket.create_connection(("127.0.0.1", self.server.upstream))
        back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
        back.start()
        _pump(client, upstream)
        back.join(timeout=30)
        for end in (client, upstream):
            end.close()


def _pump(source: socket.socket, target: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(1 << 20):
            target.sendall(data)
    for end in (source, target):
        with contextlib.suppress(OSError):
            end.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_emulator(start_emulator: Any, ca: trustme.CA) -> Iterator[tuple[Any, _Front]]:
    emulator = start_emulator(images=2, image_size="3MiB", extra_args=("--public-read",))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    front = _Front(emulator.port, context)
    threading.Thread(target=front.serve_forever, daemon=True).start()
    for image in emulator.exported():  # the listing now names the TLS front
        url = f"https://127.0.0.1:{front.server_address[1]}/{image['Bucket']}/{image['Key']}"
        catalog.update_image(emulator.root, image["ImageId"], ExportedImageURL=url)
    yield emulator, front
    front.shutdown()
    front.server_close()


def test_images_come_over_tls_from_a_trusted_host(tls_emulator: tuple[Any, _Front], ca: trustme.CA,
                                                  tmp_path: Path) -> None:
    emulator, front = tls_emulator
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    config = write_config(emulator, tmp_path / "sync.toml", tmp_path / "mirror")
    result = imagesync("sync", "-c", config, "--json", env_extra={"SSL_CERT_FILE": str(tmp_path / "ca.pem")})
    assert result.returncode == 0, result.stderr
    assert summary(result)["counts"]["mirrored"] == 2
    for image in emulator.exported():
        mirrored = tmp_path / "mirror" / f"{image['ImageId']}.qcow2"
        assert sha256_of(mirrored) == sha256_of(emulator.object_path(image["ImageId"]))
    assert front.connections >= 2  # HEADs and GETs went through the TLS front


def test_a_host_whose_certificate_is_not_trusted_fails_in_one_sentence(tls_emulator: tuple[Any, _Front],
                                                                       tmp_path: Path) -> None:
    emulator, _ = tls_emulator
    config = write_config(emulator, tmp_path / "sync.toml", tmp_path / "mirror")
    result = imagesync("sync", "-c", config, "--json")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    reasons = [image["reason"] for image in summary(result)["images"]]
    assert len(reasons) == 2 and all("CERTIFICATE_VERIFY_FAILED" in reason for reason in reasons), reasons
    assert not list((tmp_path / "mirror").glob("*.qcow2"))

"""Sending object bodies: ``sendfile`` when nothing alters them, else chunks with faults.

The chunked path applies what :class:`~.faults.BodyFaults` asks for: a flipped byte, a cut
connection, a rate cap, a stall (the socket stays open, no data; the wait ends early when
the client goes away), extra bytes past the declared length, and a re-export of the object
before a given body byte goes out (``change_etag_after_bytes``).
"""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Callable
from io import BufferedIOBase

from .faults import Faults
from .wire import ObjectBody

CHUNK_SIZE = 1 << 20
STALL_POLL_S = 0.5


def send_object(
    sock: socket.socket, wfile: BufferedIOBase, body: ObjectBody, stats: Faults,
    change_object: Callable[[str, str], None],
) -> int:
    """Send ``body``; return the number of body bytes written. Raises OSError if the peer
    goes away. The caller closes the connection when fewer than ``body.length`` were sent
    or extra bytes followed."""
    if body.faults.alters_body:
        return _send_chunks(sock, wfile, body, stats, change_object)
    epoch = stats.add_bytes(body.key, body.length)
    body.file.seek(body.start)  # sendfile leaves the position after the last byte sent
    try:
        sent = sock.sendfile(body.file, body.start, body.length) if body.length else 0
    except OSError:
        stats.add_bytes(body.key, body.file.tell() - body.start - body.length, epoch)
        raise
    if sent < body.length:
        stats.add_bytes(body.key, sent - body.length, epoch)
    return sent


def _stall(sock: socket.socket, seconds: float) -> None:
    """Hold the connection without sending, until ``seconds`` pass or the client leaves."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([sock], [], [], min(STALL_POLL_S, left))
        if readable:
            try:
                if not sock.recv(1, socket.MSG_PEEK):
                    return  # the client closed its side
            except OSError:
                return
            time.sleep(min(STALL_POLL_S, max(left, 0)))


def _send_chunks(
    sock: socket.socket, wfile: BufferedIOBase, body: ObjectBody, stats: Faults,
    change_object: Callable[[str, str], None],
) -> int:
    faults = body.faults
    limit = body.length if faults.drop_after is None else min(body.length, faults.drop_after)
    rate = faults.bandwidth_bps
    chunk = CHUNK_SIZE if rate <= 0 else max(16 << 10, min(CHUNK_SIZE, rate // 20))
    stops = sorted({at for at in (faults.change_at, faults.stall_at) if at is not None and at <= limit})
    fd = body.file.fileno()
    started = time.monotonic()
    sent = 0
    while True:
        while stops and stops[0] == sent:
            stops.pop(0)
            if faults.change_at == sent:
                change_object(body.bucket, body.key)
            if faults.stall_at == sent:
                wfile.flush()
                _stall(sock, faults.stall_s)
        if sent >= limit:
            break
        until = stops[0] if stops else limit
        data = os.pread(fd, min(chunk, until - sent), body.start + sent)
        if not data:
            break
        corrupt = faults.corrupt_at
        if corrupt is not None and sent <= corrupt < sent + len(data):
            flipped = bytearray(data)
            flipped[corrupt - sent] ^= 0xFF
            data = bytes(flipped)
        epoch = stats.add_bytes(body.key, len(data))
        try:
            wfile.write(data)
        except OSError:
            stats.add_bytes(body.key, -len(data), epoch)
            raise
        sent += len(data)
        if rate > 0:
            ahead = started + sent / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    if faults.extra_bytes and sent == body.length:
        wfile.write(b"\0" * faults.extra_bytes)
    return sent

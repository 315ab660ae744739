"""OSS writes shared by PutObject and multipart: permission, streamed bodies, installs.

Bodies are streamed to a temp file under ``<root>/tmp`` in 1 MiB reads while CRC-64 and
MD5 are computed, so a 5 GiB part never sits in memory. PutObject answers what OSS answers
(ETag = quoted uppercase MD5, ``x-oss-hash-crc64ecma``, ``Content-MD5``), honours a
``Content-MD5`` request header (InvalidDigest on mismatch) and ``x-oss-forbid-overwrite``.
DeleteObject answers 204 whether or not the object existed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from fastcrc import crc64

from .objects import ObjectMeta, install_file, temp_file
from .oss_auth import OssError
from .oss_xml import empty_response
from .state import Emulator
from .wire import CloseConnection, Request, Response

MAX_PUT_SIZE = 5 << 30


def require_write(emu: Emulator, access_key_id: str | None, key: str) -> None:
    """Writes need the main AccessKey and no ``deny_writes`` fault."""
    if not emu.may_write(access_key_id) or emu.faults.active("deny_writes", key):
        if emu.faults.active("deny_writes", key):
            emu.faults.injected("deny_writes")
        raise OssError(
            403, "AccessDenied", "You have no right to access this object because of bucket acl.",
            ec="0003-00000001",
        )


def forbids_overwrite(req: Request) -> bool:
    return req.headers.get("x-oss-forbid-overwrite", "").strip().lower() == "true"


def file_exists_error() -> OssError:
    return OssError(
        409, "FileAlreadyExists", "The object you specified already exists and can not be overwritten."
    )


@dataclass(frozen=True, slots=True)
class Received:
    """A request body safely on disk (the caller renames or removes ``path``)."""

    path: Path
    size: int
    crc64: int
    md5: bytes

    @property
    def etag(self) -> str:
        return f'"{self.md5.hex().upper()}"'

    @property
    def content_md5(self) -> str:
        return base64.b64encode(self.md5).decode()


def _expected_md5(req: Request) -> bytes | None:
    value = req.headers.get("content-md5")
    if value is None:
        return None
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != 16:
        raise OssError(400, "InvalidDigest", "The Content-MD5 you specified is not valid.")
    return digest


def receive(
    emu: Emulator, req: Request, key: str, *, limit: int = MAX_PUT_SIZE,
    corrupt: bool = False, drop_after: int | None = None,
) -> Received:
    """Stream the body to a temp file, checking length and Content-MD5.

    ``corrupt`` flips the byte in the middle as it arrives (as if damaged in transit);
    ``drop_after`` reads that many bytes and then drops the connection.
    """
    if "transfer-encoding" in req.headers:
        raise OssError(411, "MissingContentLength", "You must provide the Content-Length HTTP header.")
    if req.content_length > limit:
        raise OssError(
            400, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size.",
            {"MaxSizeAllowed": str(limit), "ProposedSize": str(req.content_length)},
        )
    expected = _expected_md5(req)
    fd, tmp = temp_file(emu.root, ".upload-")
    crc, md5, size = 0, hashlib.md5(), 0  # noqa: S324 - OSS's Content-MD5, not security
    flip_at = req.content_length // 2 if corrupt and req.content_length else None
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in req.stream(limit=drop_after):
                if flip_at is not None and size <= flip_at < size + len(chunk):
                    damaged = bytearray(chunk)
                    damaged[flip_at - size] ^= 0xFF
                    chunk = bytes(damaged)
                out.write(chunk)
                crc = crc64.xz(chunk, initial=crc)
                md5.update(chunk)
                size += len(chunk)
                emu.faults.add_received(key, len(chunk))
        if drop_after is not None:
            raise CloseConnection()
        if expected is not None and expected != md5.digest():
            raise OssError(
                400, "InvalidDigest", "The Content-MD5 you specified did not match what we received.",
                {"ExpectedDigest": base64.b64encode(expected).decode()},
            )
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return Received(tmp, size, int(crc), md5.digest())


def install(emu: Emulator, req: Request, bucket: str, key: str, tmp: Path, meta: ObjectMeta) -> ObjectMeta:
    """Rename a finished file to ``bucket/key`` (respecting x-oss-forbid-overwrite)."""
    with emu.objects.write_lock:
        try:
            if forbids_overwrite(req) and emu.objects.exists(bucket, key):
                raise file_exists_error()
            return install_file(emu.root, bucket, key, tmp, meta)
        except OSError as exc:
            raise OssError(
                400, "InvalidObjectName",
                f"The emulator cannot store this key next to existing ones ({exc.strerror}).",
                {"Key": key},
            ) from None
        finally:
            tmp.unlink(missing_ok=True)


def put_object(
    emu: Emulator, req: Request, bucket: str, key: str, request_id: str, access_key_id: str | None
) -> Response:
    emu.faults.count_operation("PutObject")
    require_write(emu, access_key_id, key)
    if forbids_overwrite(req) and emu.objects.exists(bucket, key):
        raise file_exists_error()
    if emu.faults.take("put_5xx", key):
        raise OssError(503, "ServiceUnavailable", "Please reduce your request rate.")
    body = receive(emu, req, key)
    meta = ObjectMeta(
        size=body.size, mtime_ns=0, crc64=body.crc64, etag_value=body.etag, md5=body.content_md5
    )
    install(emu, req, bucket, key, body.path, meta)
    return empty_response(request_id, [
        ("ETag", body.etag), ("x-oss-hash-crc64ecma", str(body.crc64)),
        ("Content-MD5", body.content_md5),
    ])


def delete_object(
    emu: Emulator, req: Request, bucket: str, key: str, request_id: str, access_key_id: str | None
) -> Response:
    emu.faults.count_operation("DeleteObject")
    require_write(emu, access_key_id, key)
    emu.objects.delete(bucket, key)
    return Response(status=204, headers=[("x-oss-request-id", request_id)])

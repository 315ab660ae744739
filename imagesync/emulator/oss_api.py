"""The OSS endpoint: path-style ``/<bucket>/<key>``, routed by method and sub-resource.

Reads: object GET and HEAD (Range, conditionals, the CRC-64 of the whole object even on
ranged GETs, ``x-oss-object-type``, Content-MD5 for Normal objects when known), with the
object faults of :mod:`.faults`. Writes and listings live in :mod:`.oss_write`,
:mod:`.multipart` and :mod:`.listing`. Errors are OSS XML; on HEAD the XML travels
base64-encoded in ``x-oss-err``, as oss2 expects.
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
import time
from typing import BinaryIO

from . import listing, multipart, oss_write
from .http_rules import RangeNotSatisfiable, if_range_allows, parse_range, preconditions
from .objects import ObjectMeta, is_valid_bucket, store_object
from .oss_auth import OssError, authenticate
from .oss_xml import error_response as _xml_error_response
from .samples import sample_blocks
from .state import Emulator
from .wire import ObjectBody, Request, Response, oss_request_id


def split_path(path: str) -> tuple[str, str]:
    """``/bucket/some/key`` -> ``("bucket", "some/key")``; the key may be empty."""
    bucket, _, key = path[1:].partition("/")
    return bucket, key


def handle(emu: Emulator, req: Request) -> Response:
    """Answer one OSS request."""
    emu.faults.count("oss_requests")
    request_id = oss_request_id()
    bucket, key = split_path(req.path)
    try:
        if not is_valid_bucket(bucket):
            message = "The specified bucket is not valid."
            raise OssError(400, "InvalidBucketName", message, {"BucketName": bucket})
        if not emu.objects.bucket_exists(bucket):
            message = "The specified bucket does not exist."
            raise OssError(404, "NoSuchBucket", message, {"BucketName": bucket})
        access_key_id = authenticate(emu, req, bucket, key)
        return _dispatch(emu, req, bucket, key, request_id, access_key_id)
    except OssError as exc:
        return error_response(emu, exc, request_id, send_body=req.method != "HEAD")


def _dispatch(
    emu: Emulator, req: Request, bucket: str, key: str, rid: str, ak: str | None
) -> Response:
    method, query = req.method, req.query
    if not key:
        if method == "GET" and "uploads" in query:
            return multipart.list_uploads(emu, req, bucket, rid)
        if method == "GET":
            return listing.list_objects(emu, req, bucket, rid)
    elif "uploadId" in query:
        if method == "PUT":
            return multipart.upload_part(emu, req, bucket, key, rid, ak)
        if method == "GET":
            return multipart.list_parts(emu, req, bucket, key, rid)
        if method == "POST":
            return multipart.complete(emu, req, bucket, key, rid, ak)
        if method == "DELETE":
            return multipart.abort(emu, req, bucket, key, rid, ak)
    elif method == "POST" and "uploads" in query:
        return multipart.initiate(emu, req, bucket, key, rid, ak)
    elif method in ("GET", "HEAD"):
        return get_object(emu, req, bucket, key, rid)
    elif method == "PUT" and "x-oss-copy-source" not in req.headers and not query:
        return oss_write.put_object(emu, req, bucket, key, rid, ak)
    elif method == "DELETE" and not query:
        return oss_write.delete_object(emu, req, bucket, key, rid, ak)
    what = f"{method} on a {'bucket' if not key else 'object'}"
    if query:
        what += f" with ?{'&'.join(sorted(query))}"
    raise OssError(501, "NotImplemented", f"{what} is not implemented by the emulator.")


def error_response(emu: Emulator, exc: OssError, request_id: str, *, send_body: bool) -> Response:
    return _xml_error_response(exc, request_id, emu.host_id, send_body=send_body)


def object_headers(
    meta: ObjectMeta, request_id: str, *, crc64: bool = True, crc_value: str | None = None,
    content_md5: bool = False,
) -> list[tuple[str, str]]:
    headers = [
        ("Content-Type", "application/octet-stream"),
        ("Accept-Ranges", "bytes"),
        ("ETag", meta.etag),
        ("Last-Modified", meta.last_modified),
    ]
    if crc_value is not None:
        headers.append(("x-oss-hash-crc64ecma", crc_value))
    elif crc64 and meta.crc_published:
        headers.append(("x-oss-hash-crc64ecma", str(meta.crc64)))
    if content_md5 and meta.md5 is not None and meta.object_type == "Normal":
        headers.append(("Content-MD5", meta.md5))
    headers += [
        ("x-oss-object-type", meta.object_type),
        ("x-oss-storage-class", "Standard"),
        ("x-oss-request-id", request_id),
    ]
    return headers


def _object_error(emu: Emulator, req: Request, key: str) -> None:
    fault = emu.faults.take_object_error(key, req.method)
    if fault == "oss_5xx":
        raise OssError(503, "ServiceUnavailable", "Please reduce your request rate.")
    if fault == "oss_403_expired":
        raise OssError(403, "AccessDenied", "Request has expired.", ec="0002-00000069")


def get_object(emu: Emulator, req: Request, bucket: str, key: str, request_id: str) -> Response:
    head = req.method == "HEAD"
    emu.faults.count("object_heads" if head else "object_gets")
    _object_error(emu, req, key)
    opened = emu.objects.open(bucket, key)
    if opened is None:
        raise OssError(404, "NoSuchKey", "The specified key does not exist.", {"Key": key})
    try:
        meta = opened.meta
        md5_fault = emu.faults.active("content_md5", key)
        if md5_fault and meta.object_type == "Normal":
            emu.faults.injected("content_md5")
            meta = emu.objects.with_md5(bucket, key, opened)
        # PutObject objects always publish their MD5; samples only under the fault.
        content_md5 = md5_fault or meta.etag_value is not None
        return _answer(emu, req, bucket, key, meta, opened.file, request_id, content_md5)
    except BaseException:
        opened.file.close()
        raise


def change_object(emu: Emulator, bucket: str, key: str) -> None:
    """Re-export an object: new sample content of the same size (new ETag and CRC)."""
    opened = emu.objects.open(bucket, key)
    if opened is None:
        return
    with opened.file:
        size = opened.meta.size
    store_object(emu.root, bucket, key, sample_blocks(f"{bucket}/{key}#changed-{time.time_ns()}", size))


def _gzipped(file: BinaryIO, start: int, length: int) -> BinaryIO:
    """A temp file holding the gzip of bytes ``[start, start + length)`` of ``file``."""
    out = tempfile.TemporaryFile()  # noqa: SIM115 - handed to the response, which closes it
    file.seek(start)
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=1) as packer:
        shutil.copyfileobj(_Limited(file, length), packer, 1 << 20)
    out.seek(0)
    return out


class _Limited:
    def __init__(self, file: BinaryIO, length: int) -> None:
        self.file, self.left = file, length

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        data = self.file.read(size) if size else b""
        self.left -= len(data)
        return data


def _answer(
    emu: Emulator, req: Request, bucket: str, key: str, meta: ObjectMeta, file: BinaryIO,
    request_id: str, content_md5: bool,
) -> Response:
    crc_value = emu.faults.crc_header(key)
    if crc_value is not None:
        emu.faults.injected("crc_header")
    headers = object_headers(
        meta, request_id, crc64=not emu.faults.omits_crc64(key), crc_value=crc_value,
        content_md5=content_md5,
    )
    verdict = preconditions(req.headers, meta.etag, meta.mtime_s)
    if verdict == 412:
        raise OssError(
            412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold.",
            {"Condition": "If-Match" if "if-match" in req.headers else "If-Unmodified-Since"},
        )
    if verdict == 304 or req.method == "HEAD":
        file.close()
        if verdict == 304:
            kept = [(k, v) for k, v in headers if k in ("ETag", "Last-Modified", "x-oss-request-id")]
            return Response(status=304, headers=kept, send_body=False)
        return Response(
            status=200, headers=[*headers, ("Content-Length", str(meta.size))], send_body=False
        )
    standard = req.headers.get("x-oss-range-behavior", "").lower() == "standard"
    span = None
    if if_range_allows(req.headers, meta.etag, meta.mtime_s):
        try:
            span = parse_range(req.headers.get("range"), meta.size, standard=standard)
        except RangeNotSatisfiable:
            raise OssError(
                416, "InvalidRange", "The requested range cannot be satisfied.",
                {"ObjectSize": str(meta.size)},
            ) from None
    if span is not None and emu.faults.take("ignore_range", key):
        span = None
    status, start, length = 200, 0, meta.size
    if span is not None:
        status, start, length = 206, span[0], span[1] - span[0] + 1
        shown = span[0] + 1 if emu.faults.take("bad_content_range", key) else span[0]
        headers.append(("Content-Range", f"bytes {shown}-{span[1]}/{meta.size}"))
    if emu.faults.take("gzip_body", key):
        packed = _gzipped(file, start, length)
        file.close()
        file, start = packed, 0
        length = packed.seek(0, 2)
        headers.append(("Content-Encoding", "gzip"))
    headers.append(("Content-Length", str(length)))
    faults = emu.faults.take_body_faults(key, start, length)
    body = ObjectBody(file=file, start=start, length=length, key=key, faults=faults, bucket=bucket)
    return Response(status=status, headers=headers, object_body=body)

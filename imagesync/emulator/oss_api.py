"""The OSS endpoint: path-style ``/<bucket>/<key>`` object GET and HEAD.

Answers carry what OSS publishes (ETag, Last-Modified, ``x-oss-hash-crc64ecma`` of the whole
object even on ranged GETs, ``x-oss-request-id``, object type and storage class). Errors are
OSS XML; on HEAD the XML travels base64-encoded in ``x-oss-err``, as oss2 expects. Writes
(PUT, multipart) are routed here too and answer NotImplemented until they exist.
"""

from __future__ import annotations

import base64
import re
from typing import BinaryIO
from xml.sax.saxutils import escape

from .http_rules import RangeNotSatisfiable, if_range_allows, parse_range, preconditions
from .objects import ObjectMeta, is_valid_bucket
from .oss_auth import OssError, authenticate
from .state import Emulator
from .wire import ObjectBody, Request, Response, oss_request_id

_XML_UNSAFE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


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
        authenticate(emu, req, bucket, key)
        if key and req.method in ("GET", "HEAD"):
            return get_object(emu, req, bucket, key, request_id)
        what = f"{req.method} on a {'bucket' if not key else 'object'}"
        raise OssError(501, "NotImplemented", f"{what} is not implemented by the emulator yet.")
    except OssError as exc:
        return error_response(emu, exc, request_id, send_body=req.method != "HEAD")


def _xml_text(value: str) -> str:
    return escape(_XML_UNSAFE.sub("\N{REPLACEMENT CHARACTER}", value))


def error_xml(emu: Emulator, exc: OssError, request_id: str) -> bytes:
    elements = {
        "Code": exc.code,
        "Message": exc.message,
        "RequestId": request_id,
        "HostId": emu.host_id,
        **exc.details,
    }
    if exc.ec:
        elements["EC"] = exc.ec
    inner = "".join(f"  <{name}>{_xml_text(value)}</{name}>\n" for name, value in elements.items())
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<Error>\n{inner}</Error>\n'.encode()


def error_response(emu: Emulator, exc: OssError, request_id: str, *, send_body: bool) -> Response:
    xml = error_xml(emu, exc, request_id)
    headers = [("Content-Type", "application/xml"), ("x-oss-request-id", request_id)]
    if exc.ec:
        headers.append(("x-oss-ec", exc.ec))
    if not send_body:
        headers.append(("x-oss-err", base64.b64encode(xml).decode()))
    if exc.status == 416:
        headers.append(("Content-Range", f"bytes */{exc.details.get('ObjectSize', '0')}"))
    headers.append(("Content-Length", str(len(xml))))
    return Response(status=exc.status, headers=headers, body=xml, send_body=send_body)


def object_headers(meta: ObjectMeta, request_id: str, *, crc64: bool = True) -> list[tuple[str, str]]:
    headers = [
        ("Content-Type", "application/octet-stream"),
        ("Accept-Ranges", "bytes"),
        ("ETag", meta.etag),
        ("Last-Modified", meta.last_modified),
        ("x-oss-hash-crc64ecma", str(meta.crc64)),
        ("x-oss-object-type", "Normal"),
        ("x-oss-storage-class", "Standard"),
        ("x-oss-request-id", request_id),
    ]
    return headers if crc64 else [h for h in headers if h[0] != "x-oss-hash-crc64ecma"]


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
        return _answer(emu, req, key, opened.meta, opened.file, request_id)
    except BaseException:
        opened.file.close()
        raise


def _answer(
    emu: Emulator, req: Request, key: str, meta: ObjectMeta, file: BinaryIO, request_id: str
) -> Response:
    headers = object_headers(meta, request_id, crc64=not emu.faults.omits_crc64(key))
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
    status, start, length = 200, 0, meta.size
    if span is not None:
        status, start, length = 206, span[0], span[1] - span[0] + 1
        headers.append(("Content-Range", f"bytes {span[0]}-{span[1]}/{meta.size}"))
    headers.append(("Content-Length", str(length)))
    faults = emu.faults.take_body_faults(key, start, length)
    body = ObjectBody(file=file, start=start, length=length, key=key, faults=faults)
    return Response(status=status, headers=headers, object_body=body)

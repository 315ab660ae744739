"""Multipart upload operations: Initiate, UploadPart, UploadPartCopy, ListParts, Complete,
Abort and ListMultipartUploads, with the reply shapes recorded from real OSS (reference B.4).

* UploadPart answers ``ETag`` (quoted MD5 of the part) and ``x-oss-hash-crc64ecma``.
* UploadPartCopy copies a byte range of ``x-oss-copy-source: /<bucket>/<urlencoded key>``
  server-side (``x-oss-copy-source-range: bytes=a-b``, ``x-oss-copy-source-if-match`` and
  friends), answers ``CopyPartResult`` without a CRC header, and is refused with 403
  AccessDenied when the source bucket is in another region.
* Complete checks the part list (ascending, known parts, matching ETags, every part but the
  last at least 100 KB) or takes every part with ``x-oss-complete-all: yes``; the object's
  ETag is ``"<32 hex>-<parts>"``, its CRC-64 the combination of the part CRCs, published
  only when every part has one (copied parts have none).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import unquote

from fastcrc import crc64

from ..crc64 import combine
from .http_rules import parse_range, preconditions
from .multipart_store import Part, Upload
from .objects import ObjectMeta, key_path, temp_file
from .oss_auth import OssError
from .oss_write import file_exists_error, forbids_overwrite, install, receive, require_write
from .oss_xml import Node, empty_response, parse, url_encoded, xml_response
from .state import Emulator
from .wire import Request, Response

MIN_PART_SIZE = 100 * 1024
MAX_PART_SIZE = 5 << 30
COPY_CHUNK = 8 << 20


def _iso(ns: int) -> str:
    return ObjectMeta(size=0, mtime_ns=ns, crc64=0).last_modified_iso


def _int_query(req: Request, name: str, default: int, low: int, high: int) -> int:
    text = req.query.get(name, "")
    if text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise OssError(400, "InvalidArgument", f"{name} must be an integer from {low} to {high}.",
                       {"ArgumentName": name, "ArgumentValue": text})
    return value


def _upload(emu: Emulator, req: Request, bucket: str, key: str) -> Upload:
    upload = emu.uploads.get(req.query.get("uploadId", ""))
    if upload is None or (upload.bucket, upload.key) != (bucket, key):
        raise OssError(
            404, "NoSuchUpload",
            "The specified upload does not exist. The upload ID may be invalid, or the upload "
            "may have been aborted or completed.", {"UploadId": req.query.get("uploadId", "")},
        )
    return upload


def initiate(emu: Emulator, req: Request, bucket: str, key: str, rid: str, ak: str | None) -> Response:
    emu.faults.count_operation("InitiateMultipartUpload")
    require_write(emu, ak, key)
    if key_path(emu.root, bucket, key) is None:
        raise OssError(400, "InvalidObjectName", "The emulator cannot store this key.", {"Key": key})
    if forbids_overwrite(req) and emu.objects.exists(bucket, key):
        raise file_exists_error()
    upload = emu.uploads.create(bucket, key)
    encode = req.query.get("encoding-type") == "url"
    children: list[Node] = [("EncodingType", "url")] if encode else []
    children += [("Bucket", bucket), ("Key", url_encoded(key, encode)), ("UploadId", upload.upload_id)]
    return xml_response(("InitiateMultipartUploadResult", children), rid)


def upload_part(emu: Emulator, req: Request, bucket: str, key: str, rid: str, ak: str | None) -> Response:
    copy = "x-oss-copy-source" in req.headers
    emu.faults.count_operation("UploadPartCopy" if copy else "UploadPart")
    require_write(emu, ak, key)
    number = _int_query(req, "partNumber", 0, 1, 10_000)
    upload = _upload(emu, req, bucket, key)
    if emu.faults.take("upload_part_5xx", key):
        raise OssError(503, "ServiceUnavailable", "Please reduce your request rate.")
    if copy:
        return _upload_part_copy(emu, req, upload, number, rid)
    drop = emu.faults.take_upload_drop(key, req.content_length)
    corrupt = emu.faults.take("corrupt_part_crc", key)
    body = receive(emu, req, key, limit=MAX_PART_SIZE, corrupt=corrupt, drop_after=drop)
    part = Part(number, body.size, body.etag, body.crc64, True, body.md5.hex(), body.path.stat().st_mtime_ns)
    _commit(emu, req, upload, part, body.path)
    return empty_response(rid, [
        ("ETag", part.etag), ("x-oss-hash-crc64ecma", str(part.crc64)),
        ("Content-MD5", body.content_md5),
    ])


def _commit(emu: Emulator, req: Request, upload: Upload, part: Part, tmp: Path) -> None:
    if not emu.uploads.commit_part(upload, part, tmp):
        _upload(emu, req, "", "")  # raises NoSuchUpload


def _copy_source(emu: Emulator, req: Request, bucket: str) -> tuple[str, str]:
    source = req.headers["x-oss-copy-source"].strip()
    path = source.split("?", 1)[0]
    src_bucket, _, src_key = unquote(path.removeprefix("/")).partition("/")
    if not src_bucket or not src_key:
        raise OssError(400, "InvalidArgument", "x-oss-copy-source must be /<bucket>/<key>.",
                       {"ArgumentName": "x-oss-copy-source", "ArgumentValue": source})
    if not emu.objects.bucket_exists(src_bucket):
        message = "The specified bucket does not exist."
        raise OssError(404, "NoSuchBucket", message, {"BucketName": src_bucket})
    src_region, region = emu.buckets.region(src_bucket), emu.buckets.region(bucket)
    if src_region != region:
        raise OssError(
            403, "AccessDenied",
            f"Cross-region copy is not allowed: the source bucket {src_bucket!r} is in {src_region} "
            f"and the target bucket {bucket!r} is in {region}; copy within one region.",
        )
    return src_bucket, src_key


def _upload_part_copy(emu: Emulator, req: Request, upload: Upload, number: int, rid: str) -> Response:
    src_bucket, src_key = _copy_source(emu, req, upload.bucket)
    opened = emu.objects.open(src_bucket, src_key)
    if opened is None:
        raise OssError(404, "NoSuchKey", "The specified key does not exist.", {"Key": src_key})
    with opened.file:
        meta = opened.meta
        conditions = {
            name.removeprefix("x-oss-copy-source-"): value for name, value in req.headers.items()
            if name.startswith("x-oss-copy-source-if-")
        }
        if preconditions(conditions, meta.etag, meta.mtime_s) is not None:
            raise OssError(412, "PreconditionFailed",
                           "At least one of the pre-conditions you specified did not hold.")
        span = parse_range(req.headers.get("x-oss-copy-source-range"), meta.size, standard=False)
        first, last = span if span is not None else (0, meta.size - 1)
        fd, tmp = temp_file(emu.root, ".copy-")
        crc, md5 = 0, hashlib.md5()  # noqa: S324 - an ETag, not security
        try:
            with os.fdopen(fd, "wb") as out:
                offset = first
                while offset <= last:
                    chunk = os.pread(opened.file.fileno(), min(COPY_CHUNK, last + 1 - offset), offset)
                    if not chunk:
                        break
                    out.write(chunk)
                    crc = crc64.xz(chunk, initial=crc)
                    md5.update(chunk)
                    offset += len(chunk)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    size = max(0, last + 1 - first)
    emu.faults.add_copied(size)
    etag = f'"{md5.hexdigest().upper()}"'
    part = Part(number, size, etag, int(crc), False, md5.hexdigest(), tmp.stat().st_mtime_ns)
    _commit(emu, req, upload, part, tmp)
    children: list[Node] = [("LastModified", _iso(part.modified_ns)), ("ETag", etag)]
    headers = [("ETag", etag)]  # oss2 reads the part's ETag from the header
    if meta.size:
        headers.append(("Content-Range", f"bytes {first}-{last}/{meta.size}"))
    return xml_response(("CopyPartResult", children), rid, headers)


def list_parts(emu: Emulator, req: Request, bucket: str, key: str, rid: str) -> Response:
    emu.faults.count_operation("ListParts")
    upload = _upload(emu, req, bucket, key)
    max_parts = _int_query(req, "max-parts", 1000, 1, 1000)
    marker = _int_query(req, "part-number-marker", 0, 0, 10_000)
    after = [p for p in emu.uploads.parts(upload.upload_id) if p.number > marker]
    page, truncated = after[:max_parts], len(after) > max_parts
    encode = req.query.get("encoding-type") == "url"
    children: list[Node] = [("EncodingType", "url")] if encode else []
    children += [
        ("Bucket", bucket), ("Key", url_encoded(key, encode)), ("UploadId", upload.upload_id),
        ("PartNumberMarker", str(marker)), ("NextPartNumberMarker", str(page[-1].number if page else marker)),
        ("MaxParts", str(max_parts)), ("IsTruncated", "true" if truncated else "false"),
    ]
    for part in page:
        fields: list[Node] = [
            ("PartNumber", str(part.number)), ("LastModified", _iso(part.modified_ns)), ("ETag", part.etag),
        ]
        if part.crc_published:
            fields.append(("HashCrc64ecma", str(part.crc64)))
        fields.append(("Size", str(part.size)))
        children.append(("Part", fields))
    return xml_response(("ListPartsResult", children), rid)


def _chosen_parts(req: Request, parts: list[Part]) -> list[Part]:
    if req.headers.get("x-oss-complete-all", "").strip().lower() == "yes":
        if not parts:
            raise OssError(400, "InvalidArgument", "The upload has no parts to complete.")
        return parts
    root = parse(req.body())
    by_number = {p.number: p for p in parts}
    chosen: list[Part] = []
    for node in root.findall("Part"):
        try:
            number = int((node.findtext("PartNumber") or "").strip())
        except ValueError:
            raise OssError(400, "MalformedXML", "A PartNumber is not an integer.") from None
        etag = (node.findtext("ETag") or "").strip().strip('"').upper()
        if chosen and number <= chosen[-1].number:
            raise OssError(400, "InvalidPartOrder", "The list of parts was not in ascending order.")
        part = by_number.get(number)
        if part is None or part.etag.strip('"').upper() != etag:
            raise OssError(400, "InvalidPart", "One or more of the specified parts could not be found "
                           "or the specified entity tag might not have matched the part's entity tag.",
                           {"PartNumber": str(number), "ETag": etag})
        chosen.append(part)
    if not chosen:
        raise OssError(400, "MalformedXML", "The XML you provided has no Part.")
    return chosen


def complete(emu: Emulator, req: Request, bucket: str, key: str, rid: str, ak: str | None) -> Response:
    emu.faults.count_operation("CompleteMultipartUpload")
    require_write(emu, ak, key)
    upload = _upload(emu, req, bucket, key)
    if emu.faults.take("complete_5xx", key):
        raise OssError(503, "ServiceUnavailable", "Please reduce your request rate.")
    with emu.uploads.lock(upload.upload_id):
        upload = _upload(emu, req, bucket, key)
        chosen = _chosen_parts(req, emu.uploads.parts(upload.upload_id))
        for part in chosen[:-1]:
            if part.size < MIN_PART_SIZE:
                raise OssError(
                    400, "EntityTooSmall", "Your proposed upload is smaller than the minimum allowed size.",
                    {"PartNumber": str(part.number), "MinSizeAllowed": str(MIN_PART_SIZE)},
                )
        if forbids_overwrite(req) and emu.objects.exists(bucket, key):
            raise file_exists_error()
        fd, tmp = temp_file(emu.root, ".complete-")
        crc, digests = 0, b""
        try:
            with os.fdopen(fd, "wb") as out:
                for part in chosen:
                    with open(emu.uploads.part_path(upload.upload_id, part.number), "rb") as src:
                        _copy_all(src.fileno(), out.fileno(), part.size)
                    crc = combine(crc, part.crc64, part.size)
                    digests += bytes.fromhex(part.md5_hex)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        published = all(p.crc_published for p in chosen)
        etag = f'"{hashlib.md5(digests).hexdigest().upper()}-{len(chosen)}"'  # noqa: S324
        meta = ObjectMeta(size=0, mtime_ns=0, crc64=crc, etag_value=etag,
                          object_type="Multipart", crc_published=published)
        install(emu, req, bucket, key, tmp, meta)
        emu.uploads.remove(upload.upload_id)
    encode = req.query.get("encoding-type") == "url"
    children: list[Node] = [("EncodingType", "url")] if encode else []
    children += [
        ("Location", f"{emu.base_url}/{bucket}/{key}"), ("Bucket", bucket),
        ("Key", url_encoded(key, encode)), ("ETag", etag),
    ]
    headers = [("ETag", etag)] + ([("x-oss-hash-crc64ecma", str(crc))] if published else [])
    return xml_response(("CompleteMultipartUploadResult", children), rid, headers)


def _copy_all(src: int, dst: int, size: int) -> None:
    copied = 0
    while copied < size:
        try:
            count = os.copy_file_range(src, dst, size - copied)
        except OSError:
            count = os.write(dst, os.read(src, min(COPY_CHUNK, size - copied)))
        if count == 0:
            raise OSError(f"a part file ended early ({copied} of {size} bytes)")
        copied += count


def abort(emu: Emulator, req: Request, bucket: str, key: str, rid: str, ak: str | None) -> Response:
    emu.faults.count_operation("AbortMultipartUpload")
    require_write(emu, ak, key)
    upload = _upload(emu, req, bucket, key)
    if not emu.uploads.remove(upload.upload_id):
        _upload(emu, req, "", "")
    return Response(status=204, headers=[("x-oss-request-id", rid)])


def list_uploads(emu: Emulator, req: Request, bucket: str, rid: str) -> Response:
    emu.faults.count_operation("ListMultipartUploads")
    prefix = req.query.get("prefix", "")
    key_marker, id_marker = req.query.get("key-marker", ""), req.query.get("upload-id-marker", "")
    max_uploads = _int_query(req, "max-uploads", 1000, 1, 1000)
    uploads = [
        u for u in emu.uploads.uploads(bucket) if u.key.startswith(prefix)
        and (u.key > key_marker or (u.key == key_marker and id_marker and u.upload_id > id_marker))
    ]
    page, truncated = uploads[:max_uploads], len(uploads) > max_uploads
    encode = req.query.get("encoding-type") == "url"
    children: list[Node] = [("EncodingType", "url")] if encode else []
    children += [
        ("Bucket", bucket), ("KeyMarker", url_encoded(key_marker, encode)), ("UploadIdMarker", id_marker),
        ("NextKeyMarker", url_encoded(page[-1].key if truncated else "", encode)),
        ("NextUploadIdMarker", page[-1].upload_id if truncated else ""),
        ("Delimiter", ""), ("Prefix", url_encoded(prefix, encode)), ("MaxUploads", str(max_uploads)),
        ("IsTruncated", "true" if truncated else "false"),
    ]
    for upload in page:
        children.append(("Upload", [
            ("Key", url_encoded(upload.key, encode)), ("UploadId", upload.upload_id),
            ("Initiated", _iso(upload.initiated_ns)),
        ]))
    return xml_response(("ListMultipartUploadsResult", children), rid)

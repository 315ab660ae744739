"""One OSS bucket under one prefix, through oss2: the only place oss2 is called or its errors seen.

Every call is blocking (callers run it in a worker thread), retried on transient failures
(5xx, 408, 429, connection errors, ``RequestTimeTooSkewed``) with `RetryPolicy` backoff, and
its failure translated here, once, into the `imagesync.errors` tree (reference B.5):

    credentials refused, no such bucket, AccessDenied     -> ``fatal`` (ConfigError by default)
    NoSuchKey                                             -> `KeyMissing`
    NoSuchUpload (aborted, completed or expired upload)   -> `UploadGone`
    PreconditionFailed (the copy source changed)          -> `SourceChangedError`
    transient, still failing after every attempt; others  -> ``failure`` (DestinationError by default)

oss2 computes CRCs with crcmod; imagesync checks CRC-64 itself with fastcrc, so the bucket is
opened with ``enable_crc=False``. Replies oss2 leaves unread (UploadPartCopy, Complete) are read,
so their connections return to the pool (reference C).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import oss2
import requests
import urllib3

from ..checksum import Buffer, Digest
from ..credentials import Credentials
from ..errors import (
    ConfigError,
    DestinationError,
    ImagesyncError,
    SourceChangedError,
    TransferError,
    TransientError,
)
from ..retry import RetryPolicy

T = TypeVar("T")
READ_BYTES = 1 << 20
MAX_SERVER_TEXT = 200
_CREDENTIAL_CODES = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "SecurityTokenExpired",
                               "InvalidSecurityToken"})
_TRANSIENT_CODES = frozenset({"RequestTimeTooSkewed", "RequestTimeout", "InternalError",
                              "ServiceUnavailable", "Throttling"})


class KeyMissing(DestinationError):
    """No object under that key (NoSuchKey)."""


class UploadGone(TransferError):
    """The multipart upload no longer exists (aborted, completed, or removed by a lifecycle rule)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ObjectHead:
    size: int
    crc64ecma: int | None  # absent on objects completed from copied parts
    etag: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredPart:
    """What OSS answered for one uploaded or copied part."""

    etag: str
    crc64ecma: int | None  # absent on copied parts


class OssClient:
    """``oss://bucket/prefix`` at one endpoint and region, signed with OSS V4."""

    def __init__(self, *, endpoint: str, bucket: str, prefix: str, region: str,
                 credentials: Credentials, retry: RetryPolicy, pool_size: int, timeout_s: float) -> None:
        provider = oss2.credentials.StaticCredentialsProvider(
            credentials.access_key_id, credentials.access_key_secret, credentials.security_token or "")
        self._bucket = oss2.Bucket(oss2.ProviderAuthV4(provider), endpoint, bucket, region=region,
                                   session=oss2.Session(pool_size=pool_size), connect_timeout=timeout_s,
                                   enable_crc=False)
        self.endpoint = endpoint
        self.bucket = bucket
        self.prefix = prefix
        self.region = region
        self.name = f"oss://{bucket}/{prefix}" if prefix else f"oss://{bucket}"
        self._origin = credentials.origin
        self._retry = retry

    def key(self, relative: str) -> str:
        """The object key of a path relative to the destination root."""
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def where(self, key: str) -> str:
        return f"oss://{self.bucket}/{key}"

    # --- calls ---

    def check_access(self, probe_key: str) -> None:
        """List the prefix, then open and abort an upload: credentials, bucket and write permission
        fail here, before any transfer, as a `ConfigError`."""
        self.call("list", self.name, self._bucket.list_objects_v2, prefix=self.key(""), max_keys=1,
                  failure=ConfigError)
        upload_id = self.initiate(probe_key, fatal=ConfigError, failure=ConfigError)
        self.abort(probe_key, upload_id, fatal=ConfigError, failure=ConfigError)

    def head(self, key: str, *, failure: type[ImagesyncError] = DestinationError) -> ObjectHead:
        result = self.call("read", self.where(key), self._bucket.head_object, key, failure=failure)
        return ObjectHead(size=int(result.content_length), crc64ecma=result.server_crc,
                          etag=str(result.etag))

    def digest(self, key: str, *, failure: type[ImagesyncError] = DestinationError) -> Digest:
        """Stream the object through CRC-64 and sha256, in constant memory."""
        def read() -> Digest:
            digest = Digest()
            result = self._bucket.get_object(key, headers={"Accept-Encoding": "identity"})
            try:
                while chunk := _read_body(result, READ_BYTES):
                    digest.update(chunk)
            finally:
                result.close()
            return digest
        return self.call("read", self.where(key), read, failure=failure)

    def get(self, key: str) -> bytes:
        def read() -> bytes:
            result = self._bucket.get_object(key, headers={"Accept-Encoding": "identity"})
            try:
                return _read_body(result, -1)
            finally:
                result.close()
        return self.call("read", self.where(key), read)

    def put(self, key: str, data: bytes) -> None:
        self.call("write", self.where(key), self._bucket.put_object, key, data,
                  fatal=DestinationError)

    def delete(self, key: str) -> None:
        self.call("delete", self.where(key), self._bucket.delete_object, key, fatal=DestinationError)

    def initiate(self, key: str, *, fatal: type[ImagesyncError] = DestinationError,
                 failure: type[ImagesyncError] = TransferError) -> str:
        result = self.call("start an upload to", self.where(key), self._bucket.init_multipart_upload,
                           key, fatal=fatal, failure=failure)
        return str(result.upload_id)

    def abort(self, key: str, upload_id: str, *, fatal: type[ImagesyncError] = DestinationError,
              failure: type[ImagesyncError] = TransferError) -> None:
        self.call("abort the upload to", self.where(key), self._bucket.abort_multipart_upload,
                  key, upload_id, fatal=fatal, failure=failure)

    def upload_part(self, key: str, upload_id: str, number: int, data: Buffer) -> StoredPart:
        result = self.call(f"upload part {number} of", self.where(key), self._bucket.upload_part,
                           key, upload_id, number, data, fatal=DestinationError, failure=TransferError)
        return StoredPart(etag=str(result.etag), crc64ecma=result.crc)

    def upload_part_copy(self, source_bucket: str, source_key: str, first: int, last: int, *,
                         if_match: str, key: str, upload_id: str, number: int) -> StoredPart:
        def copy() -> Any:
            result = self._bucket.upload_part_copy(
                source_bucket, source_key, (first, last), key, upload_id, number,
                headers={"x-oss-copy-source-if-match": if_match})
            result.resp.read()  # oss2 leaves the CopyPartResult unread: the connection would leak
            return result
        result = self.call(f"copy part {number} of", self.where(key), copy, fatal=TransferError,
                           failure=TransferError)
        return StoredPart(etag=str(result.etag), crc64ecma=result.crc)

    def list_parts(self, key: str, upload_id: str) -> dict[int, tuple[str, int]]:
        """Part number -> (ETag, size) of every part OSS holds for the upload."""
        parts: dict[int, tuple[str, int]] = {}
        marker = ""
        while True:
            page = self.call("list the parts of", self.where(key), self._bucket.list_parts, key, upload_id,
                             marker=marker, max_parts=1000, failure=TransferError)
            for part in page.parts:
                parts[int(part.part_number)] = (str(part.etag), int(part.size))
            if not page.is_truncated:
                return parts
            marker = page.next_marker

    def complete(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> StoredPart:
        infos = [oss2.models.PartInfo(number, etag) for number, etag in parts]

        def complete() -> Any:
            result = self._bucket.complete_multipart_upload(key, upload_id, infos)
            result.resp.read()
            return result
        result = self.call("complete the upload to", self.where(key), complete, fatal=DestinationError,
                           failure=TransferError)
        return StoredPart(etag=str(result.etag), crc64ecma=result.crc)

    def list_uploads(self) -> list[tuple[str, str]]:
        """(key, upload id) of every open multipart upload under the prefix."""
        found: list[tuple[str, str]] = []
        key_marker = id_marker = ""
        while True:
            page = self.call("list the uploads under", self.name, self._bucket.list_multipart_uploads,
                             prefix=self.key(""), key_marker=key_marker, upload_id_marker=id_marker,
                             max_uploads=1000)
            found += [(str(u.key), str(u.upload_id)) for u in page.upload_list]
            if not page.is_truncated:
                return found
            key_marker, id_marker = page.next_key_marker, page.next_upload_id_marker

    # --- the boundary ---

    def call(self, what: str, where: str, function: Callable[..., T], *args: Any,
             fatal: type[ImagesyncError] = ConfigError, failure: type[ImagesyncError] = DestinationError,
             **kwargs: Any) -> T:
        """``function(*args, **kwargs)``, retried while it fails transiently; oss2 errors translated."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return function(*args, **kwargs)
            except oss2.exceptions.OssError as error:
                translated = self.translate(error, what=what, where=where, fatal=fatal, failure=failure)
            if not isinstance(translated, TransientError):
                raise translated
            if attempt >= self._retry.max_attempts:
                raise failure(f"{translated}; gave up after {attempt} attempts")
            time.sleep(self._retry.delay_s(attempt))

    def translate(self, error: oss2.exceptions.OssError, *, what: str, where: str,
                  fatal: type[ImagesyncError], failure: type[ImagesyncError]) -> ImagesyncError:
        status, code = int(error.status), str(error.code or "")
        said = _said(error)
        if isinstance(error, oss2.exceptions.RequestError):
            return TransientError(f"cannot {what} {where}: {_clip(str(error.exception))}")
        if status >= 500 or status in (408, 429) or code in _TRANSIENT_CODES:
            return TransientError(f"cannot {what} {where}: {said}")
        if code in _CREDENTIAL_CODES:
            return fatal(f"{self.endpoint} refused the destination credentials (from the {self._origin}): "
                         f"{said}; set [destination.credentials] or fix the keys")
        if code == "NoSuchBucket":
            return fatal(f"the bucket {self.bucket} does not exist at {self.endpoint} "
                         f"(region {self.region}); create it or fix destination.url")
        if code == "AccessDenied":
            return fatal(f"no permission to {what} {where}: {said}; the destination credentials need "
                         "read and write access (oss:GetObject, oss:PutObject, oss:ListParts, "
                         "oss:AbortMultipartUpload) under the prefix")
        if code == "NoSuchKey" or (status == 404 and not code):
            return KeyMissing(f"{where} does not exist")
        if code == "NoSuchUpload":
            return UploadGone(f"the multipart upload to {where} no longer exists "
                              "(aborted, completed or expired)")
        if code == "PreconditionFailed":
            return SourceChangedError(f"cannot {what} {where}: the source object changed ({said})")
        return failure(f"cannot {what} {where}: {said}")


def _read_body(result: Any, size: int) -> bytes:
    """Read from a GetObjectResult; a drop mid-body (which oss2 does not wrap) becomes its RequestError."""
    try:
        return bytes(result.read(size) if size >= 0 else result.read())
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as error:
        raise oss2.exceptions.RequestError(error) from None


def _said(error: oss2.exceptions.OssError) -> str:
    """The server's code and message, bounded, with its request id for a support ticket."""
    code, message = str(error.code or ""), str(error.message or "")
    text = f"{code}: {message}" if code and message else code or message or f"HTTP {error.status}"
    request_id = str(error.request_id or "")
    request = f", request id {_clip(request_id)}" if request_id else ""
    return f"{_clip(text)} (HTTP {error.status}{request})"


def _clip(text: str) -> str:
    text = "".join(c if c.isprintable() else " " for c in text).strip()
    return text if len(text) <= MAX_SERVER_TEXT else text[:MAX_SERVER_TEXT] + "..."

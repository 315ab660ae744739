"""Verification of OSS requests: signature V4 in a header or a presigned URL.

V1 (``Authorization: OSS ak:sig`` or ``?OSSAccessKeyId=``) is refused, as OSS refuses it
for new accounts and buckets. Anonymous requests pass only for GET/HEAD with
``--public-read``. Canonical requests and signatures are :mod:`imagesync.signing`'s.
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime

from .. import signing
from .state import CLOCK_SKEW_S, Emulator
from .wire import Request

MAX_PRESIGN_EXPIRES_S = 7 * 24 * 3600


class OssError(Exception):
    """An OSS error answer; ``details`` become extra XML elements, ``ec`` the x-oss-ec."""

    def __init__(
        self, status: int, code: str, message: str,
        details: dict[str, str] | None = None, ec: str = "",
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}
        self.ec = ec


def _invalid(message: str) -> OssError:
    return OssError(400, "InvalidArgument", message)


def _v1_refused() -> OssError:
    return OssError(
        403, "AccessDenied",
        "OSS signature version 1 is not accepted here (as for new accounts and buckets); "
        "sign the request with OSS4-HMAC-SHA256 (signature V4).",
        ec="0002-00000080",
    )


def authenticate(emu: Emulator, req: Request, bucket: str, key: str) -> str | None:
    """The AccessKey id of a request that may proceed (None: anonymous, allowed by
    ``--public-read``); raise :class:`OssError` otherwise."""
    authorization = req.headers.get("authorization")
    query = req.query
    if authorization is not None:
        if authorization.startswith(signing.OSS4_ALGORITHM + " "):
            return _verify_header(emu, req, bucket, key, authorization)
        if authorization.startswith("OSS "):
            raise _v1_refused()
        raise _invalid("The Authorization header is not OSS4-HMAC-SHA256.")
    if "x-oss-signature" in query or "x-oss-signature-version" in query:
        return _verify_presigned(emu, req, bucket, key)
    if "OSSAccessKeyId" in query or "Signature" in query:
        raise _v1_refused()
    if emu.public_read and req.method in ("GET", "HEAD"):
        return None
    raise OssError(
        403, "AccessDenied", "You have no right to access this object because of bucket acl."
    )


def _parse_date(value: str) -> float:
    try:
        return datetime.strptime(value, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise _invalid(f"x-oss-date {value!r} is not yyyymmddTHHMMSSZ.") from None


def _check_scope(emu: Emulator, bucket: str, credential: str, date_time: str) -> tuple[str, str]:
    """Check ``AK/date/region/oss/aliyun_v4_request``; return the AccessKey id and region."""
    parts = credential.split("/")
    if len(parts) != 5 or parts[3] != "oss" or parts[4] != "aliyun_v4_request":
        raise _invalid(f"Invalid credential {credential!r} (want AK/date/region/oss/aliyun_v4_request).")
    access_key_id, date, region = parts[0], parts[1], parts[2]
    if emu.secret_of(access_key_id) is None:
        raise OssError(
            403, "InvalidAccessKeyId",
            "The OSS Access Key Id you provided does not exist in our records.",
            {"OSSAccessKeyId": access_key_id},
        )
    if date != date_time[:8]:
        raise _invalid(f"The credential date {date} is not the date of x-oss-date {date_time}.")
    bucket_region = emu.buckets.region(bucket) if bucket else emu.region
    if region != bucket_region:
        raise _invalid(
            f"Invalid signing region in the credential: {region!r}; this bucket is in {bucket_region!r}."
        )
    return access_key_id, region


def _check_signature(
    emu: Emulator, req: Request, bucket: str, key: str, *, access_key_id: str, date_time: str,
    region: str, query: dict[str, str], additional: list[str], signature: str,
) -> str:
    canonical = signing.oss4_canonical_request(
        req.method, bucket, key, query, req.headers, additional
    )
    secret = emu.secret_of(access_key_id) or ""
    expected = signing.oss4_signature(secret, date_time, region, canonical)
    if not hmac.compare_digest(expected, signature.lower()):
        raise OssError(
            403, "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. "
            "Check your key and signing method.",
            {"CanonicalRequest": canonical, "OSSAccessKeyId": access_key_id},
            ec="0002-00000040",
        )
    return access_key_id


def _verify_header(emu: Emulator, req: Request, bucket: str, key: str, authorization: str) -> str:
    fields = {}
    for part in authorization[len(signing.OSS4_ALGORITHM) :].split(","):
        name, sep, value = part.strip().partition("=")
        if sep:
            fields[name] = value.strip()
    if "Credential" not in fields or "Signature" not in fields:
        raise _invalid("The Authorization header lacks Credential or Signature.")
    date_time = req.headers.get("x-oss-date")
    if not date_time:
        raise _invalid("Signature V4 needs the x-oss-date header.")
    if req.headers.get("x-oss-content-sha256") is None:
        raise _invalid("Signature V4 needs the x-oss-content-sha256 header (UNSIGNED-PAYLOAD).")
    when = _parse_date(date_time)
    access_key_id, region = _check_scope(emu, bucket, fields["Credential"], date_time)
    if abs(emu.now() - when) > CLOCK_SKEW_S:
        raise OssError(
            403, "RequestTimeTooSkewed",
            "The difference between the request time and the current time is too large.",
            {"RequestTime": date_time},
        )
    additional = [h for h in fields.get("AdditionalHeaders", "").split(";") if h]
    return _check_signature(
        emu, req, bucket, key, access_key_id=access_key_id, date_time=date_time, region=region,
        query=dict(req.query), additional=additional, signature=fields["Signature"],
    )


def _verify_presigned(emu: Emulator, req: Request, bucket: str, key: str) -> str:
    query = dict(req.query)
    if query.get("x-oss-signature-version") != signing.OSS4_ALGORITHM:
        raise _invalid(f"x-oss-signature-version must be {signing.OSS4_ALGORITHM}.")
    for name in ("x-oss-credential", "x-oss-date", "x-oss-expires", "x-oss-signature"):
        if not query.get(name):
            raise _invalid(f"The presigned URL lacks {name}.")
    date_time = query["x-oss-date"]
    when = _parse_date(date_time)
    try:
        expires = int(query["x-oss-expires"])
    except ValueError:
        expires = -1
    if not 1 <= expires <= MAX_PRESIGN_EXPIRES_S:
        raise _invalid(f"x-oss-expires must be 1..{MAX_PRESIGN_EXPIRES_S} seconds.")
    access_key_id, region = _check_scope(emu, bucket, query["x-oss-credential"], date_time)
    now = emu.now()
    if now > when + expires:
        raise OssError(
            403, "AccessDenied", "Request has expired.",
            {"Expires": datetime.fromtimestamp(when + expires, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
             "ServerTime": datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")},
            ec="0002-00000069",
        )
    if when - now > CLOCK_SKEW_S:
        raise OssError(403, "AccessDenied", "Request is not valid yet: x-oss-date is in the future.")
    signature = query.pop("x-oss-signature")
    additional = [h for h in query.get("x-oss-additional-headers", "").split(";") if h]
    return _check_signature(
        emu, req, bucket, key, access_key_id=access_key_id, date_time=date_time, region=region,
        query=query, additional=additional, signature=signature,
    )

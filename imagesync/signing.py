"""Request signatures of Alibaba Cloud, as pure functions over plain values.

Three schemes, each proven against official vectors in tests/test_signing.py:

* ACS3-HMAC-SHA256 (ENS "V3"), what the official SDK signs with today;
* the older RPC HMAC-SHA1 form (``SignatureVersion=1.0``), still accepted by ENS;
* OSS4-HMAC-SHA256 (OSS signature V4), as header signature or presigned URL.

The client signs with them and the emulator verifies with them; nothing here does I/O.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from urllib.parse import quote

ACS3_ALGORITHM = "ACS3-HMAC-SHA256"
OSS4_ALGORITHM = "OSS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"


def percent_encode(text: str) -> str:
    """RFC 3986 encoding used by every Alibaba signer: only ``A-Za-z0-9-_.~`` stay as is."""
    return quote(text, safe="~")


def canonical_query(params: Mapping[str, str]) -> str:
    """Sorted ``name=value`` pairs, both percent-encoded (ACS3 and RPC V1 form)."""
    return "&".join(
        f"{percent_encode(name)}={percent_encode(value)}" for name, value in sorted(params.items())
    )


# --- ACS3-HMAC-SHA256 -----------------------------------------------------------------


def acs3_canonical_request(
    method: str,
    path: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    payload_sha256: str = EMPTY_SHA256,
) -> tuple[str, str]:
    """Return ``(canonical_request, signed_headers)``.

    The signed set is ``host``, ``content-type`` (when present) and every ``x-acs-*`` header.
    """
    lowered = {name.lower(): value.strip() for name, value in headers.items()}
    signed = sorted(
        name for name in lowered if name in ("host", "content-type") or name.startswith("x-acs-")
    )
    canonical_headers = "".join(f"{name}:{lowered[name]}\n" for name in signed)
    signed_headers = ";".join(signed)
    canonical_uri = quote(path or "/", safe="/~")
    request = "\n".join(
        [
            method.upper(),
            canonical_uri,
            canonical_query(query),
            canonical_headers,
            signed_headers,
            payload_sha256,
        ]
    )
    return request, signed_headers


def acs3_signature(secret: str, canonical_request: str) -> str:
    digest = hashlib.sha256(canonical_request.encode()).hexdigest()
    string_to_sign = f"{ACS3_ALGORITHM}\n{digest}"
    return hmac.new(secret.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()


def acs3_authorization(
    access_key_id: str,
    secret: str,
    method: str,
    path: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    payload_sha256: str = EMPTY_SHA256,
) -> str:
    """The ``Authorization`` header value for an ACS3-HMAC-SHA256 request."""
    request, signed_headers = acs3_canonical_request(method, path, query, headers, payload_sha256)
    signature = acs3_signature(secret, request)
    return (
        f"{ACS3_ALGORITHM} Credential={access_key_id},"
        f"SignedHeaders={signed_headers},Signature={signature}"
    )


# --- RPC HMAC-SHA1 (SignatureVersion 1.0) ---------------------------------------------


def rpc_v1_string_to_sign(method: str, params: Mapping[str, str]) -> str:
    unsigned = {name: value for name, value in params.items() if name != "Signature"}
    return f"{method.upper()}&{percent_encode('/')}&{percent_encode(canonical_query(unsigned))}"


def rpc_v1_signature(secret: str, method: str, params: Mapping[str, str]) -> str:
    """Base64 HMAC-SHA1 over the doubly encoded query; the key is ``secret + "&"``."""
    string_to_sign = rpc_v1_string_to_sign(method, params)
    mac = hmac.new(f"{secret}&".encode(), string_to_sign.encode(), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode()


# --- OSS signature V4 -----------------------------------------------------------------

OSS4_DEFAULT_SIGNED = ("content-type", "content-md5")


def oss4_scope(date: str, region: str) -> str:
    """``yyyymmdd/region/oss/aliyun_v4_request``."""
    return f"{date}/{region}/oss/aliyun_v4_request"


def _oss4_query(params: Mapping[str, str]) -> str:
    pairs = sorted((quote(k, safe="~"), quote(v, safe="~")) for k, v in params.items())
    return "&".join(f"{k}={v}" if v else k for k, v in pairs)


def oss4_canonical_request(
    method: str,
    bucket: str,
    key: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    additional_headers: Iterable[str] = (),
) -> str:
    """The OSS V4 canonical request; signed headers are ``x-oss-*``, the defaults and extras."""
    extra = sorted({name.lower() for name in additional_headers})
    lowered = {name.lower(): value.strip() for name, value in headers.items()}
    signed = sorted(
        name
        for name in lowered
        if name.startswith("x-oss-") or name in OSS4_DEFAULT_SIGNED or name in extra
    )
    resource = f"/{bucket}/{key}" if bucket else "/"
    return "\n".join(
        [
            method.upper(),
            quote(resource, safe="/~"),
            _oss4_query(query),
            "".join(f"{name}:{lowered[name]}\n" for name in signed),
            ";".join(extra),
            lowered.get("x-oss-content-sha256", UNSIGNED_PAYLOAD),
        ]
    )


def oss4_signature(secret: str, date_time: str, region: str, canonical_request: str) -> str:
    """Hex HMAC-SHA256 with the derived key ``aliyun_v4+secret -> date -> region -> oss``."""
    date = date_time[:8]
    string_to_sign = "\n".join(
        [
            OSS4_ALGORITHM,
            date_time,
            oss4_scope(date, region),
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    key = f"aliyun_v4{secret}".encode()
    for part in (date, region, "oss", "aliyun_v4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


def oss4_presign_query(
    access_key_id: str,
    secret: str,
    *,
    method: str,
    bucket: str,
    key: str,
    region: str,
    date_time: str,
    expires_s: int,
    headers: Mapping[str, str] | None = None,
    security_token: str | None = None,
) -> dict[str, str]:
    """Query parameters of a V4 presigned URL (``x-oss-signature`` last).

    ``headers`` are the ``x-oss-*`` headers the request will carry; they are signed and must
    be sent verbatim.
    """
    params = {
        "x-oss-signature-version": OSS4_ALGORITHM,
        "x-oss-credential": f"{access_key_id}/{oss4_scope(date_time[:8], region)}",
        "x-oss-date": date_time,
        "x-oss-expires": str(expires_s),
    }
    if security_token:
        params["x-oss-security-token"] = security_token
    request = oss4_canonical_request(method, bucket, key, params, headers or {})
    params["x-oss-signature"] = oss4_signature(secret, date_time, region, request)
    return params

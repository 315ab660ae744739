"""Verification of ENS request signatures: ACS3-HMAC-SHA256 (V3) and RPC HMAC-SHA1 (V1).

Signatures are recomputed with :mod:`imagesync.signing` from what arrived on the wire and
compared in constant time. The V3 canonical request is built here from the header list the
client declares in ``SignedHeaders`` (the official SDK signs every header it sends, e.g.
``user-agent`` and ``accept``); the hashing and HMAC are ``signing``'s.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

from .. import signing
from .state import CLOCK_SKEW_S, Emulator
from .wire import Request, parse_query

ENS_VERSION = "2017-11-10"
_V1_AUTH_PARAMS = (
    "AccessKeyId",
    "Signature",
    "SignatureMethod",
    "SignatureVersion",
    "SignatureNonce",
    "Timestamp",
)
_V3_REQUIRED_SIGNED = (
    "host",
    "x-acs-action",
    "x-acs-content-sha256",
    "x-acs-date",
    "x-acs-signature-nonce",
    "x-acs-version",
)


class EnsError(Exception):
    """An ENS error answer: HTTP status, Code and Message."""

    def __init__(
        self, status: int, code: str, message: str, headers: list[tuple[str, str]] | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or []


def missing(name: str) -> EnsError:
    return EnsError(
        400,
        "MissingParameter",
        f'The input parameter "{name}" that is mandatory for processing this request '
        "is not supplied.",
    )


@dataclass(frozen=True, slots=True)
class EnsCall:
    """An authenticated call: which operation, and its own parameters."""

    action: str
    version: str
    params: dict[str, str]
    signature_version: str  # "ACS3" or "V1"


def _form_params(req: Request) -> dict[str, str]:
    content_type = req.headers.get("content-type", "")
    if req.method == "POST" and content_type.startswith("application/x-www-form-urlencoded"):
        return parse_query(req.body().decode("utf-8", "replace"))
    return {}


def _check_time(value: str, name: str, now: float) -> None:
    for layout in ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S.%fZ"):
        try:
            when = datetime.strptime(value, layout).replace(tzinfo=UTC).timestamp()
            break
        except ValueError:
            continue
    else:
        raise EnsError(
            400, "InvalidTimeStamp.Format", f"Specified {name} {value!r} is not valid "
            "(expected UTC yyyy-MM-ddTHH:mm:ssZ)."
        )
    if abs(now - when) > CLOCK_SKEW_S:
        raise EnsError(
            400, "InvalidTimeStamp.Expired",
            f"Specified time stamp or date value is expired: {value} is more than 15 minutes "
            "away from the server time.",
        )


def _check_key(emu: Emulator, access_key_id: str) -> None:
    if access_key_id != emu.access_key_id:
        raise EnsError(404, "InvalidAccessKeyId.NotFound", "Specified access key is not found.")


def _check_nonce(emu: Emulator, access_key_id: str, nonce: str) -> None:
    if not emu.nonces.first_use(access_key_id, nonce, emu.now()):
        raise EnsError(400, "SignatureNonceUsed", "Specified signature nonce was used already.")


def _mismatch(detail: str) -> EnsError:
    return EnsError(
        400, "SignatureDoesNotMatch",
        f"Specified signature is not matched with our calculation. {detail}",
    )


def authenticate(emu: Emulator, req: Request) -> EnsCall:
    """Verify the request's signature and return the call, or raise :class:`EnsError`."""
    authorization = req.headers.get("authorization")
    if authorization is not None:
        return _authenticate_v3(emu, req, authorization)
    params = {**req.query, **_form_params(req)}
    if "Signature" in params or "AccessKeyId" in params:
        return _authenticate_v1(emu, req.method, params)
    raise missing("AccessKeyId")


# --- ACS3-HMAC-SHA256 ------------------------------------------------------------------


def _parse_acs3(authorization: str) -> tuple[str, list[str], str]:
    algorithm, _, rest = authorization.strip().partition(" ")
    if algorithm != signing.ACS3_ALGORITHM:
        raise EnsError(
            400, "IncompleteSignature",
            f"Unsupported signature algorithm {algorithm!r}; use {signing.ACS3_ALGORITHM}.",
        )
    fields = {}
    for part in rest.split(","):
        name, sep, value = part.strip().partition("=")
        if sep:
            fields[name] = value.strip()
    try:
        return fields["Credential"], fields["SignedHeaders"].split(";"), fields["Signature"]
    except KeyError as exc:
        raise EnsError(
            400, "IncompleteSignature", f"The Authorization header lacks {exc.args[0]}."
        ) from None


def acs3_canonical_request(
    req: Request, signed_headers: list[str], payload_sha256: str
) -> str:
    """The canonical request over exactly the headers the client says it signed."""
    lines = "".join(f"{name}:{req.headers.get(name, '').strip()}\n" for name in signed_headers)
    return "\n".join(
        [
            req.method,
            quote(req.path or "/", safe="/~"),
            signing.canonical_query(req.query),
            lines,
            ";".join(signed_headers),
            payload_sha256,
        ]
    )


def _authenticate_v3(emu: Emulator, req: Request, authorization: str) -> EnsCall:
    access_key_id, signed_headers, signature = _parse_acs3(authorization)
    headers = req.headers
    for name in _V3_REQUIRED_SIGNED:
        if not headers.get(name):
            raise missing(name)
    unsigned = [
        name for name in headers
        if (name.startswith("x-acs-") or name in _V3_REQUIRED_SIGNED) and name not in signed_headers
    ]
    if unsigned:
        raise EnsError(400, "IncompleteSignature", f"These headers must be signed: {', '.join(unsigned)}.")
    _check_key(emu, access_key_id)
    _check_time(headers["x-acs-date"], "x-acs-date", emu.now())
    body_hash = hashlib.sha256(req.body()).hexdigest()
    if headers["x-acs-content-sha256"] != body_hash:
        raise _mismatch(
            f"x-acs-content-sha256 {headers['x-acs-content-sha256']} is not the SHA-256 of "
            f"the request body ({body_hash})."
        )
    canonical = acs3_canonical_request(req, signed_headers, headers["x-acs-content-sha256"])
    expected = signing.acs3_signature(emu.access_key_secret, canonical)
    if not hmac.compare_digest(expected, signature.lower()):
        raise _mismatch(f"Server canonical request is: {canonical!r}")
    _check_nonce(emu, access_key_id, headers["x-acs-signature-nonce"])
    params = {**req.query, **_form_params(req)}
    return EnsCall(headers["x-acs-action"], headers["x-acs-version"], params, "ACS3")


# --- RPC HMAC-SHA1 --------------------------------------------------------------------


def _authenticate_v1(emu: Emulator, method: str, params: Mapping[str, str]) -> EnsCall:
    for name in ("AccessKeyId", "Action", "Version", "Timestamp", "SignatureNonce"):
        if not params.get(name):
            raise missing(name)
    for name in ("Signature", "SignatureMethod", "SignatureVersion"):
        if not params.get(name):
            raise EnsError(400, "IncompleteSignature", f"The request lacks {name}.")
    if params["SignatureMethod"] != "HMAC-SHA1" or params["SignatureVersion"] != "1.0":
        raise EnsError(
            400, "IncompleteSignature",
            "Only SignatureMethod=HMAC-SHA1 with SignatureVersion=1.0 is supported.",
        )
    _check_key(emu, params["AccessKeyId"])
    _check_time(params["Timestamp"], "Timestamp", emu.now())
    expected = signing.rpc_v1_signature(emu.access_key_secret, method, params)
    if not hmac.compare_digest(expected.encode(), params["Signature"].encode()):
        string_to_sign = signing.rpc_v1_string_to_sign(method, params)
        raise _mismatch(f"server string to sign is:{string_to_sign}")
    _check_nonce(emu, params["AccessKeyId"], params["SignatureNonce"])
    own = {k: v for k, v in params.items() if k not in (*_V1_AUTH_PARAMS, "Action", "Version")}
    for name in ("Format", "SecurityToken", "RegionId"):
        own.pop(name, None)
    return EnsCall(params["Action"], params["Version"], own, "V1")

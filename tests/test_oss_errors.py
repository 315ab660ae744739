"""oss2's errors become imagesync's once, in `oss_client`: every class of failure has its outcome.

A table of what OSS (or the network) says, against the error imagesync raises and so what happens
next: stop the run (configuration), retry, start the upload again, restart the image, or fail it.
"""

from __future__ import annotations

from typing import Any

import oss2
import pytest

from imagesync.credentials import Credentials
from imagesync.errors import (
    ConfigError,
    DestinationError,
    ImagesyncError,
    SourceChangedError,
    TransferError,
    TransientError,
)
from imagesync.retry import RetryPolicy
from imagesync.sinks.oss_client import KeyMissing, OssClient, UploadGone

SECRET = "do-not-show-this-secret"


def client(attempts: int = 3) -> OssClient:
    credentials = Credentials(access_key_id="AKID", access_key_secret=SECRET, origin="config file")
    return OssClient(endpoint="https://oss-cn-hangzhou.aliyuncs.com", bucket="dest", prefix="mirror",
                     region="cn-hangzhou", credentials=credentials,
                     retry=RetryPolicy(max_attempts=attempts, base_delay_s=0), pool_size=2, timeout_s=5)


def server_error(status: int, code: str, message: str = "said the server") -> oss2.exceptions.OssError:
    details = {"Code": code, "Message": message} if code else {}
    return oss2.exceptions.make_exception(_Reply(status, details))


class _Reply:
    """The shape of a reply oss2's make_exception reads (status, headers, body)."""

    def __init__(self, status: int, details: dict[str, str]) -> None:
        self.status = status
        self.headers = {"x-oss-request-id": "5C3D9175B6FC201293AD4890"}
        fields = "".join(f"<{k}>{v}</{k}>" for k, v in details.items())
        self._body = f"<?xml version='1.0' encoding='UTF-8'?><Error>{fields}</Error>".encode() if details else b""

    def read(self, amount: int = -1) -> bytes:
        return self._body


CASES: list[tuple[Any, type[ImagesyncError]]] = [
    (server_error(403, "InvalidAccessKeyId"), ConfigError),
    (server_error(403, "SignatureDoesNotMatch"), ConfigError),
    (server_error(404, "NoSuchBucket"), ConfigError),
    (server_error(403, "AccessDenied"), ConfigError),
    (server_error(404, "NoSuchKey"), KeyMissing),
    (server_error(404, ""), KeyMissing),  # a HEAD without its x-oss-err header
    (server_error(404, "NoSuchUpload"), UploadGone),
    (server_error(412, "PreconditionFailed"), SourceChangedError),
    (server_error(500, "InternalError"), TransientError),
    (server_error(503, "ServiceUnavailable"), TransientError),
    (server_error(502, ""), TransientError),
    (server_error(408, "RequestTimeout"), TransientError),
    (server_error(429, "Throttling"), TransientError),
    (server_error(403, "RequestTimeTooSkewed"), TransientError),
    (oss2.exceptions.RequestError(ConnectionResetError("connection reset by peer")), TransientError),
    (server_error(400, "InvalidArgument", "Invalid signing region"), DestinationError),
    (server_error(400, "EntityTooSmall"), DestinationError),
    (oss2.exceptions.ClientError("bad bucket name"), DestinationError),
]


@pytest.mark.parametrize(("raised", "expected"), CASES, ids=[f"{e.status}-{e.code or type(e).__name__}"
                                                             for e, _ in CASES])
def test_every_oss2_error_has_its_outcome(raised: oss2.exceptions.OssError,
                                          expected: type[ImagesyncError]) -> None:
    translated = client().translate(raised, what="upload part 3 of", where="oss://dest/mirror/m-1.qcow2",
                                    fatal=ConfigError, failure=DestinationError)
    assert type(translated) is expected
    text = str(translated)
    assert SECRET not in text and "\n" not in text and len(text) < 700
    if expected in (TransientError, DestinationError, SourceChangedError):
        assert "oss://dest/mirror/m-1.qcow2" in text


def test_the_fatal_class_is_the_callers() -> None:
    """Refused credentials stop a run as a ConfigError before transfers, a DestinationError after."""
    refused = server_error(403, "InvalidAccessKeyId", "The OSS Access Key Id you provided does not exist.")
    translated = client().translate(refused, what="write", where="oss://dest/mirror/manifest.json",
                                    fatal=DestinationError, failure=TransferError)
    assert type(translated) is DestinationError
    assert "refused the destination credentials (from the config file)" in str(translated)
    assert "request id 5C3D9175B6FC201293AD4890" in str(translated)


def test_transient_failures_are_retried_then_given_up() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise server_error(503, "ServiceUnavailable")
        return "stored"

    assert client(attempts=3).call("upload part 1 of", "oss://dest/k", flaky) == "stored"
    assert len(calls) == 3

    def down() -> None:
        calls.append(1)
        raise oss2.exceptions.RequestError(ConnectionRefusedError("connection refused"))

    calls.clear()
    with pytest.raises(TransferError, match="gave up after 4 attempts") as caught:
        client(attempts=4).call("upload part 1 of", "oss://dest/k", down, failure=TransferError)
    assert type(caught.value) is TransferError and len(calls) == 4  # not Transient: the caller stops


def test_other_errors_are_not_retried() -> None:
    calls: list[int] = []

    def denied() -> None:
        calls.append(1)
        raise server_error(403, "AccessDenied", "You have no right to access this object.")

    with pytest.raises(ConfigError, match="no permission to write oss://dest/k: AccessDenied"):
        client().call("write", "oss://dest/k", denied)
    assert len(calls) == 1


def test_keys_under_the_prefix() -> None:
    oss = client()
    assert oss.name == "oss://dest/mirror"
    assert oss.key("dir/m-1.qcow2") == "mirror/dir/m-1.qcow2"
    assert oss.where(oss.key("manifest.json")) == "oss://dest/mirror/manifest.json"

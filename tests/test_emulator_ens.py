"""The emulator's ENS endpoint: DescribeExportImageInfo, paging, filters, signatures, the SDK."""

from __future__ import annotations

import hashlib
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from conftest import EmulatorHandle, StartEmulator
from Tea.exceptions import TeaException

from imagesync import signing
from imagesync.emulator import catalog

ACTION = "DescribeExportImageInfo"
VERSION = "2017-11-10"


def iso_now(offset: timedelta = timedelta()) -> str:
    return (datetime.now(UTC) + offset).strftime("%Y-%m-%dT%H:%M:%SZ")


def acs3_request(
    emu: EmulatorHandle,
    params: dict[str, str] | None = None,
    *,
    method: str = "POST",
    secret: str | None = None,
    access_key_id: str | None = None,
    date: str | None = None,
    nonce: str | None = None,
    action: str = ACTION,
    version: str = VERSION,
    extra_headers: dict[str, str] | None = None,
    client: httpx.Client | None = None,
) -> httpx.Response:
    """A request signed as the official SDK signs it (ACS3-HMAC-SHA256), via signing."""
    params = params or {}
    headers = {
        "host": f"127.0.0.1:{emu.port}",
        "x-acs-action": action,
        "x-acs-version": version,
        "x-acs-date": date or iso_now(),
        "x-acs-signature-nonce": nonce or uuid.uuid4().hex,
        "x-acs-content-sha256": signing.EMPTY_SHA256,
        **(extra_headers or {}),
    }
    headers["Authorization"] = signing.acs3_authorization(
        access_key_id or emu.access_key_id, secret or emu.access_key_secret,
        method, "/", params, headers,
    )
    if client is not None:
        return client.request(method, f"{emu.url}/", params=params, headers=headers)
    return httpx.request(method, f"{emu.url}/", params=params, headers=headers, trust_env=False)


def rpc_v1_request(
    emu: EmulatorHandle,
    params: dict[str, str] | None = None,
    *,
    method: str = "GET",
    in_body: bool = False,
    secret: str | None = None,
    timestamp: str | None = None,
    nonce: str | None = None,
) -> httpx.Response:
    """A request signed with RPC HMAC-SHA1, parameters in the query or a form body."""
    signed = {
        "Action": ACTION,
        "Version": VERSION,
        "Format": "JSON",
        "AccessKeyId": emu.access_key_id,
        "SignatureMethod": "HMAC-SHA1",
        "SignatureVersion": "1.0",
        "SignatureNonce": nonce or str(uuid.uuid4()),
        "Timestamp": timestamp or iso_now(),
        **(params or {}),
    }
    signed["Signature"] = signing.rpc_v1_signature(secret or emu.access_key_secret, method, signed)
    if in_body:
        return httpx.request(method, f"{emu.url}/", data=signed, trust_env=False)
    return httpx.request(method, f"{emu.url}/", params=signed, trust_env=False)


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def error_code(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    document = response.json()
    assert set(document) == {"RequestId", "HostId", "Code", "Message", "Recommend"}
    code: str = document["Code"]
    return code


# --- the operation ----------------------------------------------------------------------


def test_pages_cover_the_catalog_in_the_documented_shape(emulator: EmulatorHandle) -> None:
    first = ok(acs3_request(emulator, {"PageSize": "4"}))
    second = ok(acs3_request(emulator, {"PageSize": "4", "PageNumber": "2"}))
    assert list(first) == ["Images", "PageNumber", "PageSize", "RequestId", "TotalCount"]
    assert (first["PageNumber"], first["PageSize"], first["TotalCount"]) == (1, 4, 6)
    images = first["Images"]["Image"] + second["Images"]["Image"]
    assert len(first["Images"]["Image"]) == 4 and len(second["Images"]["Image"]) == 2
    assert [i["ImageId"] for i in images] == [e["ImageId"] for e in emulator.catalog()]
    assert sorted(i["ImageExportStatus"] for i in images) == sorted(
        ["Exported"] * 3 + ["Exporting", "ExportError", "Unexported"]
    )
    for image in images:
        assert list(image) == list(catalog_fields())
        if image["ImageExportStatus"] == "Exported":
            entry = next(e for e in emulator.catalog() if e["ImageId"] == image["ImageId"])
            assert image["ExportedImageURL"] == f"{emulator.url}/{entry['Bucket']}/{entry['Key']}"
        else:
            assert image["ExportedImageURL"] == ""


def catalog_fields() -> tuple[str, ...]:
    from imagesync.emulator.ens_api import IMAGE_FIELDS

    return IMAGE_FIELDS


def test_defaults_and_past_the_end(emulator: EmulatorHandle) -> None:
    default = ok(acs3_request(emulator))
    assert (default["PageNumber"], default["PageSize"], len(default["Images"]["Image"])) == (1, 10, 6)
    beyond = ok(acs3_request(emulator, {"PageNumber": "7", "PageSize": "50"}))
    assert beyond["Images"]["Image"] == [] and beyond["TotalCount"] == 6


def test_filters_are_exact_matches(emulator: EmulatorHandle) -> None:
    target = emulator.exported()[1]
    by_id = ok(acs3_request(emulator, {"ImageId": target["ImageId"]}))
    assert [i["ImageId"] for i in by_id["Images"]["Image"]] == [target["ImageId"]]
    assert by_id["TotalCount"] == 1
    by_name = ok(acs3_request(emulator, {"ImageName": target["ImageName"]}))
    assert [i["ImageId"] for i in by_name["Images"]["Image"]] == [target["ImageId"]]
    partial = ok(acs3_request(emulator, {"ImageName": target["ImageName"][:-1]}))
    assert partial["TotalCount"] == 0
    both = ok(acs3_request(emulator, {"ImageId": target["ImageId"], "ImageName": "other"}))
    assert both["TotalCount"] == 0


@pytest.mark.parametrize(
    ("name", "value"),
    [("PageSize", "51"), ("PageSize", "0"), ("PageSize", "ten"), ("PageNumber", "0"), ("PageNumber", "-1")],
)
def test_bad_paging_is_invalid_parameter(emulator: EmulatorHandle, name: str, value: str) -> None:
    assert error_code(acs3_request(emulator, {name: value}), 400) == "InvalidParameter"


def test_catalog_edits_are_picked_up(emulator: EmulatorHandle) -> None:
    assert ok(acs3_request(emulator))["TotalCount"] == 6
    entry = emulator.add_image(
        name="../../etc/passwd", size=4096, ExportedImageURL="http://169.254.169.254/latest", Extra=1
    )
    images = ok(acs3_request(emulator, {"ImageId": entry["ImageId"]}))["Images"]["Image"]
    assert images[0]["ImageName"] == "../../etc/passwd"
    assert images[0]["ExportedImageURL"] == "http://169.254.169.254/latest"
    assert images[0]["Extra"] == 1 and "Bucket" not in images[0]
    catalog.remove_image(emulator.root, entry["ImageId"])
    assert ok(acs3_request(emulator))["TotalCount"] == 6


def test_ten_thousand_images_page_quickly(start_emulator: StartEmulator, tmp_path: Any) -> None:
    catalog.create_sample_catalog(tmp_path / "emulator", 10_000, write_objects=False)
    emulator = start_emulator()
    seen: list[str] = []
    started = time.perf_counter()
    with httpx.Client(trust_env=False) as client:
        for page in range(1, 202):
            document = ok(acs3_request(emulator, {"PageNumber": str(page), "PageSize": "50"}, client=client))
            seen += [i["ImageId"] for i in document["Images"]["Image"]]
    elapsed = time.perf_counter() - started
    assert document["TotalCount"] == 10_003 and len(seen) == len(set(seen)) == 10_003
    assert elapsed < 10, f"201 pages took {elapsed:.2f} s"


# --- signatures ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_acs3_signature_accepted(emulator: EmulatorHandle, method: str) -> None:
    token = {"x-acs-security-token": "sts token/+="}
    assert ok(acs3_request(emulator, {"PageSize": "2"}, method=method))["PageSize"] == 2
    assert ok(acs3_request(emulator, method=method, extra_headers=token))["TotalCount"] == 6


@pytest.mark.parametrize(("method", "in_body"), [("GET", False), ("POST", False), ("POST", True)])
def test_rpc_v1_signature_accepted(emulator: EmulatorHandle, method: str, in_body: bool) -> None:
    params = {"PageSize": "3", "SecurityToken": "tok en*~/+"}
    assert ok(rpc_v1_request(emulator, params, method=method, in_body=in_body))["PageSize"] == 3


def test_wrong_secret_is_signature_does_not_match(emulator: EmulatorHandle) -> None:
    assert error_code(acs3_request(emulator, secret="wrong"), 400) == "SignatureDoesNotMatch"
    assert error_code(rpc_v1_request(emulator, secret="wrong"), 400) == "SignatureDoesNotMatch"


def test_unknown_key_id(emulator: EmulatorHandle) -> None:
    response = acs3_request(emulator, access_key_id="nobody")
    assert error_code(response, 404) == "InvalidAccessKeyId.NotFound"


def test_stale_dates_are_expired(emulator: EmulatorHandle) -> None:
    stale = iso_now(timedelta(minutes=-20))
    assert error_code(acs3_request(emulator, date=stale), 400) == "InvalidTimeStamp.Expired"
    assert error_code(rpc_v1_request(emulator, timestamp=stale), 400) == "InvalidTimeStamp.Expired"
    assert ok(acs3_request(emulator, date=iso_now(timedelta(minutes=-10))))


def test_replayed_nonce_is_refused(emulator: EmulatorHandle) -> None:
    ok(acs3_request(emulator, nonce="once"))
    assert error_code(acs3_request(emulator, nonce="once"), 400) == "SignatureNonceUsed"


def test_missing_auth_unknown_action_and_version(emulator: EmulatorHandle) -> None:
    bare = httpx.get(f"{emulator.url}/", params={"Action": ACTION}, trust_env=False)
    assert error_code(bare, 400) == "MissingParameter"
    assert error_code(acs3_request(emulator, action="DeleteImage"), 400) == "InvalidAction.NotFound"
    assert error_code(acs3_request(emulator, version="2099-01-01"), 400) == "InvalidVersion"
    broken = httpx.get(
        f"{emulator.url}/", headers={"Authorization": "ACS3-HMAC-SHA256 Credential=x"}, trust_env=False
    )
    assert error_code(broken, 400) == "IncompleteSignature"


def test_unsigned_or_tampered_headers_are_refused(emulator: EmulatorHandle) -> None:
    headers = {"x-acs-date": iso_now(), "x-acs-action": ACTION, "x-acs-version": VERSION,
               "x-acs-signature-nonce": uuid.uuid4().hex, "x-acs-content-sha256": signing.EMPTY_SHA256,
               "host": f"127.0.0.1:{emulator.port}"}
    authorization = signing.acs3_authorization(
        emulator.access_key_id, emulator.access_key_secret, "POST", "/", {}, headers
    )
    body = b"PageSize=2"
    tampered = httpx.post(
        f"{emulator.url}/", headers={**headers, "Authorization": authorization}, content=body,
        trust_env=False,
    )
    assert error_code(tampered, 400) == "SignatureDoesNotMatch"
    assert hashlib.sha256(body).hexdigest() in tampered.json()["Message"]
    partial = authorization.replace(";x-acs-version", "")
    unsigned = httpx.post(f"{emulator.url}/", headers={**headers, "Authorization": partial}, trust_env=False)
    assert error_code(unsigned, 400) == "IncompleteSignature"


# --- the official SDK -----------------------------------------------------------------------


def sdk_client(emulator: EmulatorHandle, secret: str, algorithm: str | None) -> Any:
    from alibabacloud_ens20171110.client import Client
    from alibabacloud_tea_openapi.models import Config

    config = Config(
        access_key_id=emulator.access_key_id, access_key_secret=secret,
        endpoint=f"127.0.0.1:{emulator.port}", protocol="http", signature_algorithm=algorithm,
    )
    return Client(config)


@pytest.mark.parametrize("algorithm", [None, "v2"])  # ACS3 (the default), RPC HMAC-SHA1
def test_official_sdk_lists_and_is_refused_with_a_wrong_secret(
    emulator: EmulatorHandle, algorithm: str | None
) -> None:
    from alibabacloud_ens20171110 import models

    request = models.DescribeExportImageInfoRequest(page_size=2, page_number=2)
    client = sdk_client(emulator, emulator.access_key_secret, algorithm)
    body = client.describe_export_image_info(request).body
    assert (body.total_count, body.page_number, body.page_size) == (6, 2, 2)
    assert [i.image_id for i in body.images.image] == [e["ImageId"] for e in emulator.catalog()[2:4]]
    named = models.DescribeExportImageInfoRequest(image_name=emulator.catalog()[0]["ImageName"])
    assert client.describe_export_image_info(named).body.total_count == 1
    with pytest.raises(TeaException) as caught:
        sdk_client(emulator, "wrong", algorithm).describe_export_image_info(request)
    assert caught.value.code == "SignatureDoesNotMatch"

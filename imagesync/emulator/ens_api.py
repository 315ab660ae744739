"""The ENS endpoint (path ``/``): ``DescribeExportImageInfo`` over the catalog.

Answers have the shape of the official API page: ``Images.Image[]``, ``PageNumber``,
``PageSize``, ``TotalCount``, ``RequestId``; errors are ``{RequestId, HostId, Code,
Message, Recommend}``. Each page costs O(page size), whatever the catalog's size.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from .catalog import CatalogError, Snapshot
from .ens_auth import ENS_VERSION, EnsCall, EnsError, authenticate
from .state import Emulator
from .wire import BodyTooLarge, Request, Response, ens_request_id, json_response

MAX_PAGE_SIZE = 50
IMAGE_FIELDS = (
    "Architecture",
    "CreationTime",
    "ExportedImageURL",
    "ImageExportStatus",
    "ImageId",
    "ImageName",
    "ImageOwnerAlias",
    "Platform",
)
_PRIVATE_FIELDS = ("Bucket", "Key")


def handle(emu: Emulator, req: Request) -> Response:
    """Answer one ENS request."""
    emu.faults.count("ens_requests")
    request_id = ens_request_id()
    try:
        if req.method not in ("GET", "POST"):
            raise EnsError(400, "UnsupportedHTTPMethod", f"HTTP method {req.method} is not supported.")
        call = authenticate(emu, req)
        if call.version != ENS_VERSION:
            message = f"Specified parameter Version {call.version!r} is not valid."
            raise EnsError(400, "InvalidVersion", message)
        if call.action != "DescribeExportImageInfo":
            message = f"Specified api {call.action!r} is not found, please check your url and method."
            raise EnsError(400, "InvalidAction.NotFound", message)
        fault = emu.faults.take_ens_fault()
        if fault is not None:
            return _fault_response(emu, call, fault, request_id)
        return json_response(200, describe_export_image_info(emu, call.params, request_id))
    except EnsError as exc:
        return error_response(emu, exc, request_id)
    except BodyTooLarge as exc:
        return error_response(emu, EnsError(400, "InvalidParameter", str(exc)), request_id)
    except CatalogError as exc:
        return error_response(emu, EnsError(500, "InternalError", str(exc)), request_id)


def error_response(emu: Emulator, exc: EnsError, request_id: str) -> Response:
    document = {
        "RequestId": request_id,
        "HostId": emu.host_id,
        "Code": exc.code,
        "Message": exc.message,
        "Recommend": f"https://api.aliyun.com/troubleshoot?q={quote(exc.code)}&product=Ens",
    }
    return json_response(exc.status, document, exc.headers)


def _int_param(params: Mapping[str, str], name: str, default: int, high: int | None) -> int:
    text = params.get(name, "")
    if text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1 or (high is not None and value > high):
        bounds = f"between 1 and {high}" if high else "a positive integer"
        raise EnsError(
            400, "InvalidParameter",
            f"The errorMessage is {name} {text!r} must be {bounds}. Please check it again.",
        )
    return value


def _object_url(entry: Mapping[str, Any], base_url: str) -> str:
    bucket, key = entry.get("Bucket"), entry.get("Key")
    exported = entry.get("ImageExportStatus") == "Exported"
    if exported and isinstance(bucket, str) and isinstance(key, str):
        return f"{base_url}/{quote(bucket)}/{quote(key, safe='/~')}"
    return ""


def image_record(entry: Mapping[str, Any], base_url: str) -> dict[str, Any]:
    """One ``Images.Image`` element: the entry's fields in the API's order, then any extra
    field a test added; ``ExportedImageURL`` is computed unless the entry sets it."""
    merged = dict(entry)
    merged.setdefault("ExportedImageURL", _object_url(entry, base_url))
    record = {name: merged[name] for name in IMAGE_FIELDS if name in merged}
    for name, value in merged.items():
        if name not in record and name not in _PRIVATE_FIELDS:
            record[name] = value
    return record


def describe_export_image_info(
    emu: Emulator, params: Mapping[str, str], request_id: str
) -> dict[str, Any]:
    page_number = _int_param(params, "PageNumber", 1, None)
    page_size = _int_param(params, "PageSize", 10, MAX_PAGE_SIZE)
    snapshot: Snapshot = emu.catalog.snapshot()
    if page_number == 1:
        emu.faults.count("ens_listings")
    listings = emu.schedule.begin(snapshot.scheduled, new_listing=page_number == 1)
    matches = snapshot.select(params.get("ImageId") or None, params.get("ImageName") or None)
    start = (page_number - 1) * page_size
    page = [emu.schedule.effective(entry, listings) for entry in matches[start : start + page_size]]
    return {
        "Images": {"Image": [image_record(entry, emu.base_url) for entry in page]},
        "PageNumber": page_number,
        "PageSize": page_size,
        "RequestId": request_id,
        "TotalCount": len(matches),
    }


def _fault_response(
    emu: Emulator, call: EnsCall, fault: tuple[str, int | None], request_id: str
) -> Response:
    kind, retry_after_ms = fault
    if kind == "throttle":
        headers = [] if retry_after_ms is None else [("x-acs-retry-after", str(retry_after_ms))]
        error = EnsError(400, "Throttling.User", "Request was denied due to user flow control.", headers)
        return error_response(emu, error, request_id)
    if kind == "5xx":
        message = "The request has failed due to a temporary failure of the server."
        error = EnsError(503, "ServiceUnavailable", message)
        return error_response(emu, error, request_id)
    mode = kind.removeprefix("malformed:")
    if mode == "text":
        body = b"<html><body><h1>502 Bad Gateway</h1></body></html>\n"
        return Response(status=200, headers=[("Content-Type", "text/html")], body=body)
    document = describe_export_image_info(emu, call.params, request_id)
    if mode == "images_string":
        document["Images"] = "Image"
    elif mode == "image_id_number":
        images = document["Images"]["Image"]
        if not images:
            images.append({"ImageId": 0, "ImageExportStatus": "Exported", "ExportedImageURL": ""})
        images[0]["ImageId"] = 12345
    else:
        del document["TotalCount"]
    return Response(
        status=200,
        headers=[("Content-Type", "application/json;charset=utf-8")],
        body=json.dumps(document).encode(),
    )

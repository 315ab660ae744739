"""OSS XML: building answers (errors, results, listings) and reading request bodies."""

from __future__ import annotations

import base64
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from urllib.parse import quote
from xml.sax.saxutils import escape

from .oss_auth import OssError
from .wire import Response

_XML_UNSAFE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

# An element: (name, text) or (name, [children]).
Node = tuple[str, "str | Sequence[Node]"]


def xml_text(value: str) -> str:
    return escape(_XML_UNSAFE.sub("\N{REPLACEMENT CHARACTER}", value))


def url_encoded(value: str, encode: bool) -> str:
    """A key or prefix as a listing writes it: percent-encoded with ``encoding-type=url``."""
    return quote(value, safe="") if encode else value


def _render(node: Node, out: list[str]) -> None:
    name, content = node
    if isinstance(content, str):
        out.append(f"<{name}>{xml_text(content)}</{name}>")
        return
    out.append(f"<{name}>")
    for child in content:
        _render(child, out)
    out.append(f"</{name}>")


def document(root: Node) -> bytes:
    out = ['<?xml version="1.0" encoding="UTF-8"?>\n']
    _render(root, out)
    return "".join(out).encode("utf-8", "surrogateescape")


def xml_response(
    root: Node, request_id: str, headers: Sequence[tuple[str, str]] = (), status: int = 200
) -> Response:
    body = document(root)
    return Response(
        status=status,
        headers=[
            ("Content-Type", "application/xml"), ("x-oss-request-id", request_id), *headers,
            ("Content-Length", str(len(body))),
        ],
        body=body,
    )


def empty_response(request_id: str, headers: Sequence[tuple[str, str]] = (), status: int = 200) -> Response:
    return Response(
        status=status,
        headers=[("x-oss-request-id", request_id), *headers, ("Content-Length", "0")],
    )


def error_xml(code: str, message: str, request_id: str, host_id: str, details: dict[str, str]) -> bytes:
    children: list[Node] = [
        ("Code", code), ("Message", message), ("RequestId", request_id), ("HostId", host_id),
        *details.items(),
    ]
    body = document(("Error", children))
    return body + b"\n"


def error_response(exc: OssError, request_id: str, host_id: str, *, send_body: bool) -> Response:
    details = dict(exc.details)
    if exc.ec:
        details["EC"] = exc.ec
    xml = error_xml(exc.code, exc.message, request_id, host_id, details)
    headers = [("Content-Type", "application/xml"), ("x-oss-request-id", request_id)]
    if exc.ec:
        headers.append(("x-oss-ec", exc.ec))
    if not send_body:
        headers.append(("x-oss-err", base64.b64encode(xml).decode()))
    if exc.status == 416:
        headers.append(("Content-Range", f"bytes */{exc.details.get('ObjectSize', '0')}"))
    headers.append(("Content-Length", str(len(xml))))
    return Response(status=exc.status, headers=headers, body=xml, send_body=send_body)


def parse(body: bytes) -> ET.Element:
    """A request body's root element; MalformedXML when it is not XML."""
    try:
        return ET.fromstring(body)  # noqa: S314 - loopback test clients only
    except ET.ParseError:
        raise OssError(
            400, "MalformedXML", "The XML you provided was not well-formed or did not validate."
        ) from None

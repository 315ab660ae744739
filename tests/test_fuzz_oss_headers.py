"""Whatever an OSS server (or anything pretending to be one) answers ends in a result or a TransferError.

The functions fed here read every header and error body source.py trusts: HEAD's identity
(`_object_info`), the checks on a GET's 200/206 (`_body_start`), the OSS error XML
(`_oss_error_fields`), and the URL vetting (`locate`). Any other exception would surface as
"internal error" instead of one sentence about one image.
"""

from __future__ import annotations

import base64
import string

import httpx
from hypothesis import example, given, settings
from hypothesis import strategies as st

from imagesync.config import SourceConfig
from imagesync.errors import ConfigError, TransferError, UnsafeSourceError
from imagesync.source import (
    MAX_OBJECT_BYTES,
    ObjectInfo,
    _body_start,
    _object_info,
    _oss_error_fields,
    _status_error,
    locate,
)

NAMES = st.sampled_from(["ETag", "etag", "Content-Length", "content-length", "x-oss-hash-crc64ecma",
                         "Content-MD5", "Last-Modified", "Content-Range", "Content-Encoding",
                         "x-oss-err", "x-oss-request-id", "X-Other"])
NUMBERISH = st.one_of(
    st.integers(min_value=-(1 << 70), max_value=1 << 70).map(str),
    st.text(alphabet=string.digits + "\u00b2\u0663\uff11 _+-.e", max_size=25),
    st.sampled_from(["\u00b2", "\u0663", "1_000", " 7", "7\n", "18446744073709551616", "0x10", ""]),
)
VALUES = st.one_of(NUMBERISH, st.text(max_size=40),
                   st.binary(min_size=16, max_size=16).map(lambda b: base64.b64encode(b).decode()))
HEADERS = st.dictionaries(NAMES, VALUES, max_size=8)
INFO = ObjectInfo(etag='"E1"', size=10240, crc64ecma=None, last_modified="")


@settings(max_examples=400, deadline=None)  # a loaded machine must not fail it
@given(HEADERS)
@example({"ETag": '"E"', "Content-Length": "5", "x-oss-hash-crc64ecma": "\u00b2"})
@example({"ETag": '"E"', "Content-Length": "\u0663"})
@example({"ETag": '"\u00e9"', "Content-Length": "5"})
@example({"ETag": '"E"', "Content-Length": "5", "Content-MD5": "not base64!"})
def test_object_info_from_any_headers(headers: dict[str, str]) -> None:
    try:
        info = _object_info(headers, "https://b.oss-cn-x.aliyuncs.com/k")
    except TransferError as error:
        assert str(error)
        return
    assert 0 <= info.size < MAX_OBJECT_BYTES
    assert info.crc64ecma is None or 0 <= info.crc64ecma < 1 << 64
    assert info.etag.isascii() and info.etag == info.etag.strip() and info.etag
    if info.content_md5 is not None:
        assert len(base64.b64decode(info.content_md5, validate=True)) == 16
    info.etag.encode("ascii")  # it goes back out in If-Match


def test_content_md5_is_canonical_or_absent() -> None:
    digest = bytes(range(16))
    good = base64.b64encode(digest).decode()
    base = {"ETag": '"E"', "Content-Length": "1"}
    assert _object_info(base | {"Content-MD5": good}, "u").content_md5 == good
    for bad in ("", "AAAA", good[:-2], good + "AAAA", "!" * 24, base64.b64encode(bytes(17)).decode()):
        assert _object_info(base | {"Content-MD5": bad}, "u").content_md5 is None
    assert _object_info(base, "u").content_md5 is None


def test_the_superscript_two_crc_is_a_transfer_error() -> None:
    """'\u00b2'.isdigit() is True and int('\u00b2') raises: once an internal error."""
    try:
        _object_info({"ETag": '"E"', "Content-Length": "5", "x-oss-hash-crc64ecma": "\u00b2"}, "u")
    except TransferError as error:
        assert "x-oss-hash-crc64ecma" in str(error)
    else:
        raise AssertionError("accepted a non-ASCII CRC-64")


@settings(max_examples=400, deadline=None)  # a loaded machine must not fail it
@given(st.sampled_from([200, 206]), HEADERS, st.sampled_from([0, 1, 100, 10239]))
def test_body_checks_from_any_headers(status: int, headers: dict[str, str], start: int) -> None:
    try:
        begins = _body_start(status, headers, start, INFO.size, INFO, "u")
    except TransferError:
        return
    assert begins in (0, start)


@settings(max_examples=400, deadline=None)  # a loaded machine must not fail it
@given(HEADERS, st.one_of(st.binary(max_size=300), st.text(max_size=200).map(str.encode),
                          st.builds(lambda c, m: f"<Error><Code>{c}</Code><Message>{m}</Message></Error>".encode(),
                                    st.text(max_size=30), st.text(max_size=30))))
@example({}, b'<?xml version="1.0" encoding="x-unknown"?><Error/>')
@example({}, b'<?xml version="1.0" encoding="utf-16"?><Error/>')
@example({}, b'<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]><Error><Code>&b;</Code></Error>')
@example({"x-oss-err": "\u00e9\u00e9\u00e9\u00e9"}, b"")
@example({"x-oss-err": base64.b64encode(b"<Error><Code>X</Code></Error>").decode()}, b"")
def test_oss_error_fields_from_anything(headers: dict[str, str], body: bytes) -> None:
    fields = _oss_error_fields(headers, body)
    assert all(isinstance(field, str) and len(field) <= 303 for field in fields)
    for status in (400, 403, 404, 412, 416, 429, 500, 599):
        assert isinstance(_status_error("GET", "u", status, headers, body), TransferError)


def test_server_text_is_plain_in_messages() -> None:
    body = b"<Error><Code>Odd\nCode</Code><Message>it's \"quoted\"</Message></Error>"
    message = str(_status_error("GET", "u", 400, httpx.Headers(), body))
    assert "Odd\nCode: it's \"quoted\"" in message


@settings(max_examples=300, deadline=None)  # a loaded machine must not fail it
@given(st.one_of(
    st.text(max_size=80),
    st.builds(lambda host, path: f"https://{host}/{path}",
              st.text(alphabet=string.ascii_lowercase + string.digits + ".-:[]@%\\;", max_size=50),
              st.text(max_size=20)),
))
@example("https://b\u00b2.oss-cn-beijing.aliyuncs.com/k")
@example("https://[::1]:0/b/k")
def test_locate_from_any_text(url: str) -> None:
    for config in (SourceConfig(), SourceConfig(allow_hosts=("127.0.0.1", "localhost"), region="cn-x")):
        try:
            location = locate(url, config)
        except (UnsafeSourceError, ConfigError):
            continue
        assert "?" not in location.public_url and location.key and location.bucket

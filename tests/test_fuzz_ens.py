"""Whatever the ENS endpoint answers ends in a page of images, a MalformedResponseError or an ApiError.

Fed to the functions that read a response: the success body (`_parse_response`, raw bytes and
JSON-shaped values), the error body (`_error_fields`) and the retry hint (`_retry_after_s`).
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from imagesync.ens import MAX_IMAGES, ExportedImage, _error_fields, _parse_response, _retry_after_s
from imagesync.errors import MalformedResponseError

PARAMS = {"PageNumber": "1", "PageSize": "50"}
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20))
JSONISH = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                       max_leaves=20)
IMAGE_KEYS = st.sampled_from(["ImageId", "ImageExportStatus", "ImageName", "ExportedImageURL", "Platform",
                              "Architecture", "CreationTime", "ImageOwnerAlias", "Other"])
IMAGE = st.dictionaries(IMAGE_KEYS, st.one_of(st.text(max_size=20), SCALARS, JSONISH), max_size=9)
PAGE = st.fixed_dictionaries(
    {},
    optional={
        "TotalCount": st.one_of(st.integers(min_value=-5, max_value=MAX_IMAGES + 5), JSONISH),
        "Images": st.one_of(st.fixed_dictionaries({"Image": st.lists(st.one_of(IMAGE, JSONISH), max_size=4)}), JSONISH),
        "RequestId": st.one_of(st.text(max_size=10), JSONISH),
    },
)


def check_page(content: bytes) -> None:
    try:
        page = _parse_response(content, 200, PARAMS)
    except MalformedResponseError as error:
        assert str(error) and error.exit_code == 3
        return
    assert 0 <= page.total_count <= MAX_IMAGES
    for image in page.images:
        assert isinstance(image, ExportedImage)
        assert all(isinstance(getattr(image, name), str) for name in ExportedImage.__dataclass_fields__)
        assert image.image_id and image.status


@settings(max_examples=400, deadline=None)  # a loaded machine must not fail it
@given(st.binary(max_size=200))
@example(b"[" * 100_000)
@example(b'{"TotalCount": 1, "Images": {"Image": [' + b"[" * 50_000 + b"]" * 50_000 + b"]}}")
@example(b"\xff\xfe{\x00}\x00")
@example(b'{"TotalCount": 1e999}')
@example(b'{"TotalCount": NaN}')
def test_any_bytes(content: bytes) -> None:
    check_page(content)


@settings(max_examples=400, deadline=None)  # a loaded machine must not fail it
@given(st.one_of(PAGE, JSONISH))
def test_any_json_shape(value: Any) -> None:
    check_page(json.dumps(value).encode())


@settings(max_examples=300, deadline=None)  # a loaded machine must not fail it
@given(st.one_of(st.binary(max_size=100), JSONISH.map(lambda v: json.dumps(v).encode()),
                 st.dictionaries(st.sampled_from(["Code", "code", "Message", "RequestId", "requestId"]),
                                 JSONISH, max_size=4).map(lambda v: json.dumps(v).encode())),
       st.integers(min_value=100, max_value=999))
@example(b'{"Code": ' + b"[" * 100_000, 400)
@example(b'{"Code": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400)
def test_error_fields_are_three_strings(content: bytes, status: int) -> None:
    fields = _error_fields(content, status)
    assert len(fields) == 3 and all(isinstance(field, str) for field in fields)


@settings(max_examples=300, deadline=None)  # a loaded machine must not fail it
@given(st.text(max_size=30))
@example("\u00b2")
@example("\u0663\u0663")
@example("99999999999999999999999")
def test_retry_after_is_none_or_bounded(value: str) -> None:
    wait = _retry_after_s({"x-acs-retry-after": value})
    assert wait is None or 0 < wait <= 3600

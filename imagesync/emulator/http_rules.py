"""Range and conditional-request rules for object GET/HEAD, as OSS applies them.

* ``Range``: one range ``bytes=a-b``, ``bytes=a-`` or ``bytes=-n``. Legacy OSS ignores an
  invalid or unsatisfiable range and answers 200 with the whole object. With
  ``x-oss-range-behavior: standard`` an end past the object is cut to its last byte and a
  start past it is 416 InvalidRange.
* ``If-Match`` / ``If-Unmodified-Since`` fail with 412, ``If-None-Match`` /
  ``If-Modified-Since`` answer 304, in the order RFC 9110 section 13.2.2 gives;
  ``If-Range`` drops the Range unless it names the current ETag or Last-Modified.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Mapping

_RANGE_RE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", re.IGNORECASE)


class RangeNotSatisfiable(Exception):
    """Standard range behaviour and the range starts at or past the object's end."""


def parse_range(header: str | None, size: int, *, standard: bool) -> tuple[int, int] | None:
    """The inclusive ``(first, last)`` bytes to answer with 206, or None for 200 whole."""
    if header is None:
        return None
    match = _RANGE_RE.fullmatch(header)
    if not match or (not match[1] and not match[2]):
        return None
    if not match[1]:
        suffix = int(match[2])
        if suffix == 0 or size == 0:
            if standard:
                raise RangeNotSatisfiable(header)
            return None
        if suffix > size:
            return (0, size - 1) if standard else None
        return (size - suffix, size - 1)
    first = int(match[1])
    last = int(match[2]) if match[2] else None
    if last is not None and last < first:
        return None
    if first >= size:
        if standard:
            raise RangeNotSatisfiable(header)
        return None
    if last is None:
        return (first, size - 1)
    if last >= size:
        return (first, size - 1) if standard else None
    return (first, last)


def _etag_matches(header: str, etag: str) -> bool:
    if header.strip() == "*":
        return True
    wanted = etag.strip('"')
    for candidate in header.split(","):
        candidate = candidate.strip().removeprefix("W/").strip('"')
        if candidate == wanted:
            return True
    return False


def _http_date(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return int(parsed.timestamp()) if parsed.tzinfo is not None else None


def preconditions(headers: Mapping[str, str], etag: str, mtime_s: int) -> int | None:
    """412, 304 or None (go ahead) for the conditional headers of a GET or HEAD."""
    if_match = headers.get("if-match")
    if if_match is not None:
        if not _etag_matches(if_match, etag):
            return 412
    else:
        since = _http_date(headers.get("if-unmodified-since"))
        if since is not None and mtime_s > since:
            return 412
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        if _etag_matches(if_none_match, etag):
            return 304
    else:
        since = _http_date(headers.get("if-modified-since"))
        if since is not None and mtime_s <= since:
            return 304
    return None


def if_range_allows(headers: Mapping[str, str], etag: str, mtime_s: int) -> bool:
    """Whether a Range may be honoured: no If-Range, or it names the current version."""
    value = headers.get("if-range")
    if value is None:
        return True
    value = value.strip()
    if value.startswith(('"', "W/")):
        return value == etag  # strong comparison: weak tags never match
    return _http_date(value) == mtime_s

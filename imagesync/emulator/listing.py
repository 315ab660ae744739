"""ListObjects (``GET /<bucket>``) and ListObjectsV2 (``?list-type=2``) over any bucket.

Keys come in byte order, at most ``max-keys`` (default 100, cap 1000) per page, with
``prefix``, ``delimiter`` (CommonPrefixes), ``marker`` / ``start-after`` /
``continuation-token`` and ``encoding-type=url``. Each entry has Key, LastModified, ETag,
Type, Size and StorageClass.
"""

from __future__ import annotations

from .oss_auth import OssError
from .oss_xml import Node, url_encoded, xml_response
from .state import Emulator
from .wire import Request, Response


def _max_keys(req: Request) -> int:
    text = req.query.get("max-keys", "")
    if text == "":
        return 100
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 1000:
        raise OssError(400, "InvalidArgument", "max-keys must be an integer from 1 to 1000.",
                       {"ArgumentName": "max-keys", "ArgumentValue": text})
    return value


def _page(
    keys: list[str], prefix: str, delimiter: str, after: str, max_keys: int
) -> tuple[list[str], list[str], str | None]:
    """(keys, common prefixes, next marker or None) of one page."""
    found: list[str] = []
    prefixes: list[str] = []
    last = None
    for key in keys:
        if after and (key <= after or (after.endswith(delimiter or "\0") and key.startswith(after))):
            continue
        if delimiter:
            cut = key.find(delimiter, len(prefix))
            if cut >= 0:
                common = key[: cut + len(delimiter)]
                if prefixes and prefixes[-1] == common:
                    continue
                if len(found) + len(prefixes) == max_keys:
                    return found, prefixes, last
                prefixes.append(common)
                last = common
                continue
        if len(found) + len(prefixes) == max_keys:
            return found, prefixes, last
        found.append(key)
        last = key
    return found, prefixes, None


def list_objects(emu: Emulator, req: Request, bucket: str, rid: str) -> Response:
    v2 = req.query.get("list-type") == "2"
    emu.faults.count_operation("ListObjectsV2" if v2 else "ListObjects")
    query = req.query
    prefix, delimiter = query.get("prefix", ""), query.get("delimiter", "")
    max_keys = _max_keys(req)
    v1_marker = query.get("marker", "")
    after = (query.get("continuation-token") or query.get("start-after", "")) if v2 else v1_marker
    encode = query.get("encoding-type") == "url"
    keys, prefixes, next_marker = _page(emu.objects.keys(bucket, prefix), prefix, delimiter, after, max_keys)
    children: list[Node] = [("EncodingType", "url")] if encode else []
    children += [("Name", bucket), ("Prefix", url_encoded(prefix, encode))]
    if v2:
        if "continuation-token" in query:
            children.append(("ContinuationToken", url_encoded(query["continuation-token"], encode)))
        if "start-after" in query:
            children.append(("StartAfter", url_encoded(query["start-after"], encode)))
    else:
        children.append(("Marker", url_encoded(after, encode)))
    children += [("MaxKeys", str(max_keys)), ("Delimiter", url_encoded(delimiter, encode))]
    children.append(("IsTruncated", "true" if next_marker is not None else "false"))
    if next_marker is not None:
        name = "NextContinuationToken" if v2 else "NextMarker"
        children.append((name, url_encoded(next_marker, encode)))
    if v2:
        children.append(("KeyCount", str(len(keys) + len(prefixes))))
    owner = not v2 or query.get("fetch-owner") == "true"
    for key in keys:
        opened = emu.objects.open(bucket, key)
        if opened is None:
            continue  # deleted meanwhile
        opened.file.close()
        meta = opened.meta
        fields: list[Node] = [
            ("Key", url_encoded(key, encode)), ("LastModified", meta.last_modified_iso),
            ("ETag", meta.etag), ("Type", meta.object_type), ("Size", str(meta.size)),
            ("StorageClass", "Standard"),
        ]
        if owner:
            fields.append(("Owner", [("ID", emu.access_key_id), ("DisplayName", emu.access_key_id)]))
        children.append(("Contents", fields))
    for common in prefixes:
        children.append(("CommonPrefixes", [("Prefix", url_encoded(common, encode))]))
    return xml_response(("ListBucketResult", children), rid)

"""Which host names are OSS endpoints, and which region they name; pure, so config can vet early.

Signed requests carry the AccessKey id (and an STS token), so they may only go to hosts of
these shapes (reference B.1.5; `DESIGN.md` "Where bytes may come from"), or to a host the
user listed in ``source.allow_hosts``:

    oss-<region>.aliyuncs.com             public endpoint
    oss-<region>-internal.aliyuncs.com    same-region (VPC/classic) endpoint
    <region>.oss.aliyuncs.com             dual-stack endpoint
    oss-accelerate.aliyuncs.com           transfer acceleration (no region in the name)
    oss-accelerate-overseas.aliyuncs.com

An object URL's host is ``<bucket>.<endpoint>`` (virtual-hosted style).
"""

from __future__ import annotations

import re

OSS_DOMAIN = ".aliyuncs.com"
ACCELERATE_ENDPOINTS = frozenset({"oss-accelerate.aliyuncs.com", "oss-accelerate-overseas.aliyuncs.com"})
# cn-beijing, ap-southeast-1, cn-shanghai-finance-1, us-west-1: letters, then dash-joined parts.
_REGION = r"[a-z]{2,}(?:-[a-z0-9]+){1,5}"
_PUBLIC_OR_INTERNAL = re.compile(rf"oss-(?P<region>{_REGION}?)(?:-internal)?\.aliyuncs\.com")
_DUAL_STACK = re.compile(rf"(?P<region>{_REGION})\.oss\.aliyuncs\.com")
_REGION_ONLY = re.compile(_REGION)
_BUCKET_LABEL = re.compile(r"[a-z0-9][a-z0-9-]{0,61}[a-z0-9]?")


def is_oss_endpoint(host: str) -> bool:
    """True for an OSS service endpoint host (no bucket in front, no port, lower case)."""
    if host in ACCELERATE_ENDPOINTS:
        return True
    match = _PUBLIC_OR_INTERNAL.fullmatch(host) or _DUAL_STACK.fullmatch(host)
    return match is not None and not match["region"].startswith("accelerate")


def split_bucket_host(host: str) -> tuple[str, str] | None:
    """``(bucket, endpoint)`` for a virtual-hosted OSS object host, else None."""
    bucket, dot, endpoint = host.partition(".")
    if not dot or _BUCKET_LABEL.fullmatch(bucket) is None or not is_oss_endpoint(endpoint):
        return None
    return bucket, endpoint


def is_oss_bucket_host(host: str) -> bool:
    """True for ``<bucket>.<OSS endpoint>``."""
    return split_bucket_host(host) is not None


def region_from_oss_host(host: str) -> str:
    """The region an OSS endpoint or bucket host names; ``""`` when it names none.

    ``oss-cn-beijing[-internal].aliyuncs.com``, ``cn-beijing.oss.aliyuncs.com`` and the same
    with ``<bucket>.`` in front give ``cn-beijing``; acceleration endpoints and other hosts ``""``.
    """
    if not is_oss_endpoint(host):
        split = split_bucket_host(host)
        if split is None:
            return ""
        host = split[1]
    if host in ACCELERATE_ENDPOINTS:
        return ""
    if host.startswith("oss-"):
        name = host.removesuffix(OSS_DOMAIN).removeprefix("oss-")
        return name.removesuffix("-internal")
    return host.split(".", 1)[0]


def is_region(text: str) -> bool:
    """True for a plain region id like ``cn-hangzhou`` (not ``oss-cn-hangzhou``)."""
    return _REGION_ONLY.fullmatch(text) is not None and not text.startswith("oss-")


def host_allowed(host: str, allow_hosts: tuple[str, ...] | list[str]) -> bool:
    """True for an OSS endpoint shape, or a host the user listed (compared case-insensitively)."""
    return is_oss_endpoint(host) or host in {h.lower() for h in allow_hosts}

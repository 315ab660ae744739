"""OSS endpoint shapes: where signed requests may go, and the region a host names."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagesync.endpoints import (
    host_allowed,
    is_oss_bucket_host,
    is_oss_endpoint,
    is_region,
    region_from_oss_host,
    split_bucket_host,
)


@pytest.mark.parametrize(
    ("host", "region"),
    [
        ("oss-cn-beijing.aliyuncs.com", "cn-beijing"),
        ("oss-cn-beijing-internal.aliyuncs.com", "cn-beijing"),
        ("oss-ap-southeast-1.aliyuncs.com", "ap-southeast-1"),
        ("oss-ap-southeast-1-internal.aliyuncs.com", "ap-southeast-1"),
        ("oss-cn-shanghai-finance-1-internal.aliyuncs.com", "cn-shanghai-finance-1"),
        ("cn-hangzhou.oss.aliyuncs.com", "cn-hangzhou"),
        ("oss-accelerate.aliyuncs.com", ""),
        ("oss-accelerate-overseas.aliyuncs.com", ""),
    ],
)
def test_oss_endpoints_and_their_regions(host: str, region: str) -> None:
    assert is_oss_endpoint(host)
    assert region_from_oss_host(host) == region
    assert is_oss_bucket_host(f"backups.{host}") and not is_oss_bucket_host(host)
    assert split_bucket_host(f"backups.{host}") == ("backups", host)
    assert region_from_oss_host(f"backups.{host}") == region


@pytest.mark.parametrize(
    "host",
    ["aliyuncs.com", "ecs.aliyuncs.com", "ens.aliyuncs.com", "sts.aliyuncs.com", "oss.aliyuncs.com",
     "oss-cn-beijing.aliyuncs.com.evil.example", "evil.example", "oss-.aliyuncs.com", "oss-cn.aliyuncs.com",
     "oss-accelerate-internal.aliyuncs.com", "oss-accelerate-overseas-internal.aliyuncs.com",
     "OSS-CN-BEIJING.ALIYUNCS.COM", "oss-cn-beijing.aliyuncs.com.", "x.oss-cn-beijing.aliyuncs.com",
     "100.100.100.200", "", "oss-cn_beijing.aliyuncs.com"],
)
def test_not_oss_endpoints(host: str) -> None:
    assert not is_oss_endpoint(host)
    assert not host_allowed(host, ())


def test_allow_hosts_widen_the_rule() -> None:
    assert host_allowed("127.0.0.1", ("127.0.0.1",))
    assert host_allowed("mirror.local", ("Mirror.Local",))
    assert not host_allowed("127.0.0.2", ("127.0.0.1",))


@pytest.mark.parametrize(("text", "ok"), [("cn-hangzhou", True), ("ap-southeast-1", True), ("oss-cn-hangzhou", False),
                                          ("Beijing", False), ("", False), ("cn", False)])
def test_regions(text: str, ok: bool) -> None:
    assert is_region(text) == ok


@settings(deadline=None)  # timing on a loaded machine is not what is tested
@given(st.text(alphabet="abcnos-.1234aliyuncsm", max_size=60))
def test_a_bucket_host_is_a_label_in_front_of_an_endpoint(host: str) -> None:
    split = split_bucket_host(host)
    assert (split is not None) == is_oss_bucket_host(host)
    if split is not None:
        assert f"{split[0]}.{split[1]}" == host and is_oss_endpoint(split[1])

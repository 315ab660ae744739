"""Where bytes may come from: URL vetting, bucket/key/region parsing, and the read-size knob."""

from __future__ import annotations

import pytest

from imagesync.config import SourceConfig
from imagesync.errors import TransferError, UnsafeSourceError
from imagesync.source import HTTP_READ_BYTES, locate


@pytest.mark.parametrize(
    ("url", "config", "expected"),
    [
        ("https://backups.oss-cn-beijing.aliyuncs.com/m-1.qcow2", SourceConfig(),
         ("https://oss-cn-beijing.aliyuncs.com", "backups", "m-1.qcow2", "cn-beijing")),
        ("https://backups.oss-cn-beijing-internal.aliyuncs.com/dir/m-1.qcow2?x=1#f", SourceConfig(),
         ("https://oss-cn-beijing-internal.aliyuncs.com", "backups", "dir/m-1.qcow2", "cn-beijing")),
        ("https://backups.cn-hangzhou.oss.aliyuncs.com/m%2B1%20x.qcow2", SourceConfig(),
         ("https://cn-hangzhou.oss.aliyuncs.com", "backups", "m+1 x.qcow2", "cn-hangzhou")),
        ("https://backups.oss-cn-beijing.aliyuncs.com/m-1.qcow2",
         SourceConfig(endpoint_override="oss-cn-beijing-internal.aliyuncs.com"),
         ("https://oss-cn-beijing-internal.aliyuncs.com", "backups", "m-1.qcow2", "cn-beijing")),
        ("http://127.0.0.1:8790/ens-exports/m-1.qcow2", SourceConfig(allow_hosts=("127.0.0.1",), region="cn-x"),
         ("http://127.0.0.1:8790", "ens-exports", "m-1.qcow2", "cn-x")),
        ("http://localhost/bkt/k/m.qcow2", SourceConfig(allow_hosts=("LOCALHOST",), region="cn-x"),
         ("http://localhost", "bkt", "k/m.qcow2", "cn-x")),
    ],
)
def test_locate(url: str, config: SourceConfig, expected: tuple[str, str, str, str]) -> None:
    location = locate(url, config)
    assert (location.endpoint, location.bucket, location.key, location.region) == expected
    assert "?" not in location.public_url and "#" not in location.public_url


@pytest.mark.parametrize(
    "url",
    [
        "http://backups.oss-cn-beijing.aliyuncs.com/m-1.qcow2",  # OSS, but not https
        "http://100.100.100.200/latest/meta-data/ram/security-credentials/",  # ECS metadata
        "file:///etc/passwd",
        "https://evil.example.com/m-1.qcow2",
        "https://aliyuncs.com.evil.example/m-1.qcow2",
        "https://user:pass@backups.oss-cn-beijing.aliyuncs.com/m-1.qcow2",
        "https://127.0.0.1/b/m-1.qcow2",  # not in allow_hosts
        "ftp://backups.oss-cn-beijing.aliyuncs.com/m-1.qcow2",
        "",
        "http://127.0.0.1:99999/bucket/m.qcow2",  # port out of range
        "https://[::1/x",
        "https://evil.com\\.oss-cn-beijing.aliyuncs.com/m.qcow2",
        "https://evil.com;.oss-cn-beijing.aliyuncs.com/m.qcow2",
        "https://evil%2fcom.oss-cn-beijing.aliyuncs.com/m.qcow2",
    ],
)
def test_refused_before_any_connection(url: str) -> None:
    with pytest.raises(UnsafeSourceError, match="refusing to download"):
        locate(url, SourceConfig(region="cn-x", allow_hosts=("127.0.0.1",) if "99999" in url else ()))


def test_secret_query_never_reaches_the_message() -> None:
    with pytest.raises(UnsafeSourceError) as caught:
        locate("https://evil.example.com/m.qcow2?x-oss-signature=SECRET", SourceConfig())
    assert "SECRET" not in str(caught.value)


def test_unknown_region_needs_config() -> None:
    with pytest.raises(TransferError, match=r"set source\.region"):
        locate("http://127.0.0.1/bkt/m.qcow2", SourceConfig(allow_hosts=("127.0.0.1",)))
    unsigned = locate("http://127.0.0.1/bkt/m.qcow2", SourceConfig(allow_hosts=("127.0.0.1",), sign=False))
    assert unsigned.region == ""


def test_unsigned_reads_honour_the_endpoint_override() -> None:
    config = SourceConfig(sign=False, endpoint_override="oss-cn-beijing-internal.aliyuncs.com")
    location = locate("https://backups.oss-cn-beijing.aliyuncs.com/dir/m 1.qcow2", config)
    assert location.fetch_url == "https://backups.oss-cn-beijing-internal.aliyuncs.com/dir/m%201.qcow2"


def test_path_without_key_is_refused() -> None:
    with pytest.raises(UnsafeSourceError, match="bucket and object key"):
        locate("http://127.0.0.1/bucket-only", SourceConfig(allow_hosts=("127.0.0.1",), region="cn-x"))
    with pytest.raises(UnsafeSourceError, match="bucket and object key"):
        locate("https://ab.oss-cn-beijing.aliyuncs.com/m.qcow2", SourceConfig())


def test_httpcore_still_reads_wide() -> None:
    """source.py widens httpcore's socket reads (half the CPU per GiB); this fails if httpcore drops the knob."""
    from httpcore._async.http11 import AsyncHTTP11Connection

    assert AsyncHTTP11Connection.READ_NUM_BYTES >= HTTP_READ_BYTES

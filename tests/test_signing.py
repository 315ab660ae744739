"""The signers against the official vectors of ../shared/reference/alibaba-api.md."""

from __future__ import annotations

import hashlib

import pytest

from imagesync import signing

TV1_PARAMS = {
    "Action": "DescribeRegions",
    "Format": "XML",
    "Version": "2014-05-26",
    "SignatureMethod": "HMAC-SHA1",
    "SignatureVersion": "1.0",
    "SignatureNonce": "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf",
    "Timestamp": "2016-02-23T12:46:24Z",
    "AccessKeyId": "testid",
}

ENS_PARAMS = {
    "Action": "DescribeExportImageInfo",
    "Version": "2017-11-10",
    "Format": "JSON",
    "AccessKeyId": "testid",
    "SignatureMethod": "HMAC-SHA1",
    "SignatureVersion": "1.0",
    "SignatureNonce": "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf",
    "Timestamp": "2024-01-01T00:00:00Z",
    "PageNumber": "1",
    "PageSize": "50",
}


@pytest.mark.parametrize(
    ("method", "params", "expected"),
    [
        ("GET", TV1_PARAMS, "OLeaidS1JvxuMvnyHOwuJ+uX5qY="),  # TV1
        ("POST", TV1_PARAMS, "MxbnVAM4w6sft9xjVpe/GCKueuk="),  # TV3
        (
            "GET",
            {**{k: v for k, v in TV1_PARAMS.items() if k != "Timestamp"},
             "TimeStamp": "2016-02-23T12:46:24Z"},
            "CT9X0VtwR86fNWSnsc6v8YGOjuE=",
        ),  # TV2
        ("GET", ENS_PARAMS, "if6e3gzflrXU4DPESmDiKiX2eh8="),  # TV4a
        ("POST", ENS_PARAMS, "LEXxjf69qM1gCKU5oIq7uUJ5CEI="),  # TV4b
        ("POST", {**ENS_PARAMS, "SecurityToken": "tok en*~/+"}, "AYmr0IfJ3LJzUkRNpMxksHUiDFE="),
    ],
)
def test_rpc_v1_vectors(method: str, params: dict[str, str], expected: str) -> None:
    secret = "testsecret"
    assert signing.rpc_v1_signature(secret, method, params) == expected


def test_rpc_v1_string_to_sign_tv1() -> None:
    assert signing.rpc_v1_string_to_sign("GET", TV1_PARAMS) == (
        "GET&%2F&AccessKeyId%3Dtestid%26Action%3DDescribeRegions%26Format%3DXML"
        "%26SignatureMethod%3DHMAC-SHA1%26SignatureNonce%3D3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"
        "%26SignatureVersion%3D1.0%26Timestamp%3D2016-02-23T12%253A46%253A24Z"
        "%26Version%3D2014-05-26"
    )


def test_acs3_tv5() -> None:
    headers = {
        "host": "ecs.cn-shanghai.aliyuncs.com",
        "x-acs-action": "RunInstances",
        "x-acs-version": "2014-05-26",
        "x-acs-date": "2023-10-26T10:22:32Z",
        "x-acs-signature-nonce": "3156853299f313e23d1673dc12e1703d",
        "x-acs-content-sha256": signing.EMPTY_SHA256,
    }
    query = {
        "ImageId": "win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd",
        "RegionId": "cn-shanghai",
    }
    request, signed = signing.acs3_canonical_request("POST", "/", query, headers)
    assert hashlib.sha256(request.encode()).hexdigest() == (
        "7ea06492da5221eba5297e897ce16e55f964061054b7695beedaac1145b1e259"
    )
    assert signed == "host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version"
    expected = "06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"
    assert signing.acs3_signature("YourAccessKeySecret", request) == expected
    auth = signing.acs3_authorization("YourAccessKeyId", "YourAccessKeySecret", "POST", "/", query, headers)
    assert auth == f"ACS3-HMAC-SHA256 Credential=YourAccessKeyId,SignedHeaders={signed},Signature={expected}"


def test_oss4_header_tv8() -> None:
    headers = {
        "x-oss-head1": "value",
        "abc": "value",
        "ZAbc": "value",
        "XYZ": "value",
        "content-type": "text/plain",
        "x-oss-content-sha256": "UNSIGNED-PAYLOAD",
        "x-oss-date": "20231216T162057Z",
    }
    query = {"param1": "value1", "+param1": "value3", "|param1": "value4",
             "+param2": "", "|param2": "", "param2": ""}
    request = signing.oss4_canonical_request("PUT", "bucket", "1234+-/123/1.txt", query, headers)
    assert hashlib.sha256(request.encode()).hexdigest() == (
        "f4613657f1b108998e8dbd10a1aa5da621dc2c6e02c9ddec0f163664848704c4"
    )
    assert signing.oss4_signature("sk", "20231216T162057Z", "cn-hangzhou", request) == (
        "e21d18daa82167720f9b1047ae7e7f1ce7cb77a31e8203a7d5f4624fa0284afe"
    )


def test_oss4_presign_tv9() -> None:
    params = signing.oss4_presign_query(
        "ak", "sk", method="GET", bucket="bucket", key="1234+-/123/1.txt",
        region="cn-hangzhou", date_time="20231216T162057Z", expires_s=3600,
    )
    assert params["x-oss-credential"] == "ak/20231216/cn-hangzhou/oss/aliyun_v4_request"
    assert params["x-oss-signature"] == (
        "40e3fb48fda68c3f92d80573851c1ca96883db37b68e207e3ce516183f5d582e"
    )


def test_oss4_presign_matches_oss2() -> None:
    """Our presigned query equals what oss2 (the official SDK) produces for the same inputs."""
    from urllib.parse import parse_qsl, urlsplit

    import oss2

    bucket = oss2.Bucket(oss2.AuthV4("ak", "sk"), "http://127.0.0.1:9", "bucket", region="cn-hangzhou")
    url = bucket.sign_url("GET", "dir/m-1.qcow2", 600, slash_safe=True,
                          headers={"x-oss-range-behavior": "standard"})
    theirs = dict(parse_qsl(urlsplit(url).query))
    ours = signing.oss4_presign_query(
        "ak", "sk", method="GET", bucket="bucket", key="dir/m-1.qcow2", region="cn-hangzhou",
        date_time=theirs["x-oss-date"], expires_s=600, headers={"x-oss-range-behavior": "standard"},
    )
    assert ours == theirs

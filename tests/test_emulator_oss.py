"""The emulator's OSS endpoint: V4 auth (oss2, presigned URLs), ranges, conditionals, errors."""

from __future__ import annotations

import base64
import random
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import oss2
import pytest
from conftest import EmulatorHandle, StartEmulator
from fastcrc import crc64
from test_emulator_ens import acs3_request

from imagesync import signing


def bucket(emulator: EmulatorHandle, secret: str | None = None, key_id: str | None = None) -> oss2.Bucket:
    auth = oss2.AuthV4(key_id or emulator.access_key_id, secret or emulator.access_key_secret)
    return oss2.Bucket(auth, emulator.url, emulator.bucket, region=emulator.region)


@pytest.fixture
def public(start_emulator: StartEmulator) -> EmulatorHandle:
    """One 1 MiB image readable without signatures, for the HTTP semantics."""
    return start_emulator(images=1, extra_args=["--public-read"])


def get(emulator: EmulatorHandle, headers: dict[str, str] | None = None, method: str = "GET") -> httpx.Response:
    url = emulator.object_url(emulator.exported()[0]["ImageId"])
    return httpx.request(method, url, headers=headers or {}, trust_env=False)


def first(emulator: EmulatorHandle) -> tuple[str, bytes]:
    entry = emulator.exported()[0]
    return entry["Key"], emulator.object_path(entry["ImageId"]).read_bytes()


# --- oss2 with signature V4 -------------------------------------------------------------


def test_oss2_reads_objects_byte_identical(emulator: EmulatorHandle) -> None:
    key, data = first(emulator)
    oss = bucket(emulator)
    assert oss.get_object(key).read() == data
    ranged = oss.get_object(key, byte_range=(100, 1099))
    assert ranged.status == 206 and ranged.read() == data[100:1100]
    head = oss.head_object(key)
    assert head.content_length == len(data)
    assert head.server_crc == crc64.xz(data)
    assert head.headers["x-oss-object-type"] == "Normal"
    assert head.etag == oss.get_object_meta(key).etag


def test_oss2_is_refused_with_a_wrong_secret_or_key(emulator: EmulatorHandle) -> None:
    key, _ = first(emulator)
    with pytest.raises(oss2.exceptions.SignatureDoesNotMatch):
        bucket(emulator, secret="wrong").get_object(key)
    with pytest.raises(oss2.exceptions.SignatureDoesNotMatch):  # HEAD: the error is in x-oss-err
        bucket(emulator, secret="wrong").head_object(key)
    with pytest.raises(oss2.exceptions.ServerError) as caught:
        bucket(emulator, key_id="nobody").get_object(key)
    assert (caught.value.status, caught.value.code) == (403, "InvalidAccessKeyId")


def test_signature_v1_is_refused(emulator: EmulatorHandle) -> None:
    key, _ = first(emulator)
    v1 = oss2.Bucket(oss2.Auth(emulator.access_key_id, emulator.access_key_secret), emulator.url, emulator.bucket)
    with pytest.raises(oss2.exceptions.AccessDenied) as caught:
        v1.get_object(key)
    assert "V4" in caught.value.message
    presigned_v1 = v1.sign_url("GET", key, 60)
    assert httpx.get(presigned_v1, trust_env=False).status_code == 403


def test_missing_objects_and_buckets(emulator: EmulatorHandle) -> None:
    oss = bucket(emulator)
    with pytest.raises(oss2.exceptions.NoSuchKey):
        oss.get_object("absent.qcow2")
    with pytest.raises(oss2.exceptions.NotFound):
        oss.head_object("absent.qcow2")
    with pytest.raises(oss2.exceptions.NoSuchBucket):
        oss2.Bucket(oss.auth, emulator.url, "no-such-bucket", region=emulator.region).get_object("x")


def test_anonymous_access_needs_public_read(emulator: EmulatorHandle, public: EmulatorHandle) -> None:
    refused = get(emulator)
    assert refused.status_code == 403 and b"<Code>AccessDenied</Code>" in refused.content
    assert get(public).status_code == 200


# --- presigned URLs ------------------------------------------------------------------------


def test_presigned_url_reads_with_signed_headers(emulator: EmulatorHandle) -> None:
    key, data = first(emulator)
    standard = {"x-oss-range-behavior": "standard"}
    url = bucket(emulator).sign_url("GET", key, 60, headers=standard)
    ranged = httpx.get(url, headers={**standard, "Range": "bytes=10-"}, trust_env=False)
    assert ranged.status_code == 206 and ranged.content == data[10:]
    unsigned_header = bucket(emulator).sign_url("GET", key, 60)
    refused = httpx.get(unsigned_header, headers=standard, trust_env=False)
    assert refused.status_code == 403 and b"SignatureDoesNotMatch" in refused.content
    assert httpx.get(unsigned_header, trust_env=False).content == data


def presign(emulator: EmulatorHandle, key: str, when: datetime, expires_s: int, secret: str | None = None) -> str:
    query = signing.oss4_presign_query(
        emulator.access_key_id, secret or emulator.access_key_secret, method="GET",
        bucket=emulator.bucket, key=key, region=emulator.region,
        date_time=when.strftime("%Y%m%dT%H%M%SZ"), expires_s=expires_s,
    )
    return str(httpx.URL(f"{emulator.url}/{emulator.bucket}/{key}", params=query))


def test_expired_presigned_url_is_access_denied(emulator: EmulatorHandle) -> None:
    key, data = first(emulator)
    now = datetime.now(UTC)
    assert httpx.get(presign(emulator, key, now, 60), trust_env=False).content == data
    expired = httpx.get(presign(emulator, key, now - timedelta(hours=2), 3600), trust_env=False)
    assert expired.status_code == 403
    assert b"<Code>AccessDenied</Code>" in expired.content and b"Request has expired." in expired.content
    just_expired = httpx.get(presign(emulator, key, now - timedelta(seconds=5), 1), trust_env=False)
    assert just_expired.status_code == 403
    wrong = httpx.get(presign(emulator, key, now, 60, secret="wrong"), trust_env=False)
    assert wrong.status_code == 403 and b"SignatureDoesNotMatch" in wrong.content


# --- ranges ----------------------------------------------------------------------------------

SIZE = 1 << 20


@pytest.mark.parametrize(
    ("header", "legacy", "standard"),
    [
        ("bytes=0-99", (0, 99), (0, 99)),
        ("bytes=100-", (100, SIZE - 1), (100, SIZE - 1)),
        ("bytes=-100", (SIZE - 100, SIZE - 1), (SIZE - 100, SIZE - 1)),
        (f"bytes=0-{SIZE}", None, (0, SIZE - 1)),
        (f"bytes=10-{SIZE + 5000}", None, (10, SIZE - 1)),
        (f"bytes={SIZE}-", None, 416),
        (f"bytes={SIZE + 1}-{SIZE + 9}", None, 416),
        (f"bytes=-{SIZE + 1}", None, (0, SIZE - 1)),
        ("bytes=9-3", None, None),
        ("byte=0-9", None, None),
        ("bytes=0-1,5-9", None, None),
    ],
)
def test_range_legacy_and_standard(
    public: EmulatorHandle, header: str, legacy: tuple[int, int] | None, standard: tuple[int, int] | int | None
) -> None:
    _, data = first(public)
    assert len(data) == SIZE
    for behaviour, expected in (({}, legacy), ({"x-oss-range-behavior": "standard"}, standard)):
        response = get(public, {"Range": header, **behaviour})
        crc = response.headers.get("x-oss-hash-crc64ecma")
        if expected is None:
            assert response.status_code == 200 and response.content == data
            assert "content-range" not in response.headers
        elif expected == 416:
            assert response.status_code == 416 and b"<Code>InvalidRange</Code>" in response.content
            continue
        else:
            assert isinstance(expected, tuple)
            start, end = expected
            assert response.status_code == 206, (header, behaviour)
            assert response.headers["content-range"] == f"bytes {start}-{end}/{SIZE}"
            assert response.content == data[start : end + 1]
        assert crc == str(crc64.xz(data))  # the whole object's CRC, ranged or not


# --- conditionals ------------------------------------------------------------------------------


def test_conditional_requests(public: EmulatorHandle) -> None:
    plain = get(public)
    etag, modified = plain.headers["etag"], plain.headers["last-modified"]
    earlier = "Mon, 01 Jan 2001 00:00:00 GMT"
    assert plain.headers["content-type"] == "application/octet-stream"
    assert plain.headers["accept-ranges"] == "bytes"
    assert plain.headers["x-oss-storage-class"] == "Standard" and plain.headers["x-oss-request-id"]
    assert etag.startswith('"') and etag == etag.upper()
    assert get(public, {"If-Match": etag, "Range": "bytes=0-9"}).status_code == 206
    failed = get(public, {"If-Match": '"0000"', "Range": "bytes=0-9"})
    assert failed.status_code == 412 and b"<Code>PreconditionFailed</Code>" in failed.content
    assert get(public, {"If-None-Match": etag}).status_code == 304
    assert get(public, {"If-None-Match": '"0000"'}).status_code == 200
    assert get(public, {"If-Modified-Since": modified}).status_code == 304
    assert get(public, {"If-Modified-Since": earlier}).status_code == 200
    assert get(public, {"If-Unmodified-Since": earlier}).status_code == 412
    assert get(public, {"If-Unmodified-Since": modified}).status_code == 200
    assert get(public, {"If-Range": etag, "Range": "bytes=0-9"}).status_code == 206
    assert get(public, {"If-Range": '"0000"', "Range": "bytes=0-9"}).status_code == 200
    assert get(public, {"If-Range": modified, "Range": "bytes=0-9"}).status_code == 206
    head = get(public, {"If-Match": '"0000"'}, method="HEAD")
    assert head.status_code == 412
    assert b"PreconditionFailed" in base64.b64decode(head.headers["x-oss-err"])


def test_rewritten_object_changes_etag_and_crc(public: EmulatorHandle) -> None:
    before = get(public, method="HEAD").headers
    image_id = public.exported()[0]["ImageId"]
    meta = public.rewrite_object(image_id)
    after = get(public, method="HEAD").headers
    assert after["etag"] == meta.etag != before["etag"]
    assert after["x-oss-hash-crc64ecma"] == str(meta.crc64) != before["x-oss-hash-crc64ecma"]
    assert get(public, {"If-Match": before["etag"], "Range": "bytes=0-9"}).status_code == 412
    # A plain in-place write (not through the helpers) is noticed too.
    public.object_path(image_id).write_bytes(b"short")
    assert get(public).content == b"short"
    assert get(public, method="HEAD").headers["x-oss-hash-crc64ecma"] == str(crc64.xz(b"short"))


def test_awkward_keys_round_trip(emulator: EmulatorHandle) -> None:
    key = "exports/2024 q1/m-ü+%20&x=1.qcow2"
    entry = emulator.add_image(image_id="m-awkward", key=key, content=b"awkward bytes")
    assert entry["Key"] == key
    assert bucket(emulator).get_object(key).read() == b"awkward bytes"
    url = bucket(emulator).sign_url("GET", key, 60)
    assert httpx.get(url, trust_env=False).content == b"awkward bytes"
    listed = acs3_request(emulator, {"ImageId": "m-awkward"}).json()["Images"]["Image"][0]
    assert httpx.URL(listed["ExportedImageURL"]).path == f"/{emulator.bucket}/{key}"


def test_parallel_ranged_reads_stay_exact(start_emulator: StartEmulator) -> None:
    emulator = start_emulator(images=2, image_size="3MiB", extra_args=["--public-read"])
    blobs = {e["Key"]: emulator.object_path(e["ImageId"]).read_bytes() for e in emulator.exported()}
    emulator.faults(drop_after_bytes=1000, drop_times=-1, key=sorted(blobs)[1])

    def worker(seed: int) -> int:
        rng = random.Random(seed)
        checked = 0
        with httpx.Client(trust_env=False, timeout=30) as client:
            for _ in range(12):
                key = sorted(blobs)[0]
                start = rng.randrange(len(blobs[key]))
                end = min(len(blobs[key]) - 1, start + rng.randrange(1 << 20))
                response = client.get(f"{emulator.url}/{emulator.bucket}/{key}",
                                      headers={"Range": f"bytes={start}-{end}"})
                assert response.status_code == 206 and response.content == blobs[key][start : end + 1]
                checked += 1
        return checked

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(worker, range(8))) == 96
    assert emulator.stats()["object_gets"] == 96

"""The emulator's OSS write side, driven by oss2 itself (signature V4 with region)."""

from __future__ import annotations

import base64
import hashlib
import random
import tomllib

import httpx
import oss2
import pytest
from conftest import EmulatorHandle, StartEmulator
from oss2.models import PartInfo

from imagesync.crc64 import combine, crc64

KIB = 1024


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


def copy_part(bucket: oss2.Bucket, *args: object, **kwargs: object) -> oss2.models.PutObjectResult:
    """``upload_part_copy``, reading the CopyPartResult body that oss2 leaves unread (else the
    connection is never returned to the pool and leaks)."""
    result = bucket.upload_part_copy(*args, **kwargs)
    result.resp.read()
    return result


def complete(bucket: oss2.Bucket, *args: object, **kwargs: object) -> oss2.models.PutObjectResult:
    """``complete_multipart_upload``, reading the result body oss2 leaves unread (as above)."""
    result = bucket.complete_multipart_upload(*args, **kwargs)
    result.resp.read()
    return result


@pytest.fixture
def emu(start_emulator: StartEmulator) -> EmulatorHandle:
    return start_emulator(
        images=1, dest_buckets=["mirror", "far@cn-beijing"],
        extra_args=["--readonly-key", "ro-ak:ro-secret"],
    )


def source(emu: EmulatorHandle) -> tuple[str, bytes]:
    entry = emu.exported()[0]
    return entry["Key"], emu.object_path(entry["ImageId"]).read_bytes()


def test_buckets_and_regions(emu: EmulatorHandle) -> None:
    assert emu.buckets() == {"ens-exports": "cn-hangzhou", "far": "cn-beijing", "mirror": "cn-hangzhou"}
    assert httpx.get(f"{emu.url}/_emulator/buckets", trust_env=False).json() == emu.buckets()
    with pytest.raises(oss2.exceptions.ServerError) as caught:  # signed for the wrong region
        emu.oss_bucket("far", region="cn-hangzhou").put_object("x", b"x")
    assert (caught.value.status, caught.value.code) == (400, "InvalidArgument")
    with pytest.raises(oss2.exceptions.NoSuchBucket):
        emu.oss_bucket("nowhere", region="cn-hangzhou").put_object("x", b"x")


def test_put_get_head_delete(emu: EmulatorHandle) -> None:
    oss = emu.dest_bucket("mirror")
    data = random.Random(1).randbytes(300 * KIB)
    result = oss.put_object("dir/a b+c.qcow2", data)  # oss2 compares the CRC itself
    assert result.etag == hashlib.md5(data, usedforsecurity=False).hexdigest().upper()
    assert result.crc == crc64(data)
    assert result.headers["Content-MD5"] == md5_b64(data)
    assert emu.read_object("mirror", "dir/a b+c.qcow2") == data
    head = oss.head_object("dir/a b+c.qcow2")
    assert head.headers["x-oss-object-type"] == "Normal" and head.headers["Content-MD5"] == md5_b64(data)
    assert head.server_crc == crc64(data) and head.content_length == len(data)
    assert head.etag == result.etag
    assert oss.get_object("dir/a b+c.qcow2").read() == data
    ranged = oss.get_object("dir/a b+c.qcow2", byte_range=(1000, 1999))
    assert ranged.status == 206 and ranged.read() == data[1000:2000]
    again = oss.put_object("dir/a b+c.qcow2", b"new")
    assert again.etag != result.etag and oss.get_object("dir/a b+c.qcow2").read() == b"new"
    assert oss.delete_object("dir/a b+c.qcow2").status == 204
    assert oss.delete_object("dir/a b+c.qcow2").status == 204  # absent: still 204
    with pytest.raises(oss2.exceptions.NoSuchKey):
        oss.get_object("dir/a b+c.qcow2")
    assert emu.keys("mirror") == []


def test_put_checks_content_md5_and_forbid_overwrite(emu: EmulatorHandle) -> None:
    oss = emu.dest_bucket("mirror")
    with pytest.raises(oss2.exceptions.ServerError) as caught:
        oss.put_object("k", b"hello", headers={"Content-MD5": md5_b64(b"other")})
    assert (caught.value.status, caught.value.code) == (400, "InvalidDigest")
    with pytest.raises(oss2.exceptions.ServerError) as caught:
        oss.put_object("k", b"hello", headers={"Content-MD5": "not base64!"})
    assert caught.value.code == "InvalidDigest"
    assert emu.keys("mirror") == []
    oss.put_object("k", b"hello", headers={"Content-MD5": md5_b64(b"hello")})
    with pytest.raises(oss2.exceptions.ServerError) as caught:
        oss.put_object("k", b"again", headers={"x-oss-forbid-overwrite": "true"})
    assert (caught.value.status, caught.value.code) == (409, "FileAlreadyExists")
    assert oss.get_object("k").read() == b"hello"


def test_multipart_with_uploaded_and_copied_parts(emu: EmulatorHandle) -> None:
    key, src = source(emu)
    oss = emu.dest_bucket("mirror")
    first = random.Random(2).randbytes(200 * KIB)
    last = b"tail" * 100
    upload_id = oss.init_multipart_upload("img.qcow2").upload_id
    assert len(upload_id) == 32 and upload_id == upload_id.upper()
    p1 = oss.upload_part("img.qcow2", upload_id, 1, first)
    assert p1.crc == crc64(first) and p1.etag == hashlib.md5(first, usedforsecurity=False).hexdigest().upper()
    p2 = copy_part(oss, emu.bucket, key, (0, 150 * KIB - 1), "img.qcow2", upload_id, 2)
    assert "x-oss-hash-crc64ecma" not in p2.headers
    p3 = oss.upload_part("img.qcow2", upload_id, 3, last)
    listed = oss.list_parts("img.qcow2", upload_id, max_parts=2)
    assert [p.part_number for p in listed.parts] == [1, 2] and listed.is_truncated
    assert [p.size for p in listed.parts] == [len(first), 150 * KIB]
    rest = oss.list_parts("img.qcow2", upload_id, marker=listed.next_marker)
    assert [p.part_number for p in rest.parts] == [3] and not rest.is_truncated
    raw = httpx.get(oss._make_url(oss.bucket_name, "img.qcow2"), trust_env=False)  # unsigned: refused
    assert raw.status_code == 403
    parts = [PartInfo(1, p1.etag, size=len(first), part_crc=p1.crc), PartInfo(2, p2.etag),
             PartInfo(3, p3.etag, size=len(last), part_crc=p3.crc)]
    done = complete(oss, "img.qcow2", upload_id, parts)
    assert done.crc is None  # a copied part has no CRC, so the object has none
    assert done.etag.endswith("-3")
    expected = first + src[: 150 * KIB] + last
    assert oss.get_object("img.qcow2").read() == expected
    head = oss.head_object("img.qcow2")
    assert head.headers["x-oss-object-type"] == "Multipart"
    assert "Content-MD5" not in head.headers and head.server_crc is None
    assert head.content_length == len(expected)
    with pytest.raises(oss2.exceptions.NoSuchUpload):
        oss.list_parts("img.qcow2", upload_id)
    stats = emu.stats()
    assert stats["oss_operations"]["UploadPart"] == 2 and stats["oss_operations"]["UploadPartCopy"] == 1
    assert stats["bytes_copied"] == 150 * KIB
    assert stats["bytes_received_by_key"]["img.qcow2"] == len(first) + len(last)


def test_multipart_crc_is_the_combination(emu: EmulatorHandle) -> None:
    oss = emu.dest_bucket("mirror")
    chunks = [random.Random(n).randbytes(size) for n, size in enumerate((120 * KIB, 100 * KIB, 7))]
    upload_id = oss.init_multipart_upload("whole").upload_id
    parts = []
    for number, chunk in enumerate(chunks, 1):
        result = oss.upload_part("whole", upload_id, number, chunk)
        parts.append(PartInfo(number, result.etag, size=len(chunk), part_crc=result.crc))
    done = complete(oss, "whole", upload_id, parts)  # oss2 checks the combined CRC
    data = b"".join(chunks)
    combined = combine(combine(crc64(chunks[0]), crc64(chunks[1]), len(chunks[1])), crc64(chunks[2]), 7)
    assert done.crc == crc64(data) == combined
    assert oss.head_object("whole").server_crc == crc64(data)
    listed = oss.list_objects_v2()
    assert [(o.key, o.size, o.type) for o in listed.object_list] == [("whole", len(data), "Multipart")]


def test_complete_validation(emu: EmulatorHandle) -> None:
    oss = emu.dest_bucket("mirror")
    upload_id = oss.init_multipart_upload("v").upload_id
    a = oss.upload_part("v", upload_id, 1, b"a" * 1000)
    b = oss.upload_part("v", upload_id, 2, b"b" * 1000)
    with pytest.raises(oss2.exceptions.ServerError) as caught:
        complete(oss, "v", upload_id, [PartInfo(1, a.etag), PartInfo(2, b.etag)])
    assert (caught.value.status, caught.value.code) == (400, "EntityTooSmall")
    with pytest.raises(oss2.exceptions.ServerError) as caught:
        complete(oss, "v", upload_id, [PartInfo(1, b.etag)])
    assert caught.value.code == "InvalidPart"
    with pytest.raises(oss2.exceptions.ServerError) as caught:
        complete(oss, "v", upload_id, [PartInfo(3, a.etag)])
    assert caught.value.code == "InvalidPart"
    body = (f"<CompleteMultipartUpload><Part><PartNumber>2</PartNumber><ETag>\"{b.etag}\"</ETag></Part>"
            f"<Part><PartNumber>1</PartNumber><ETag>\"{a.etag}\"</ETag></Part></CompleteMultipartUpload>")
    with pytest.raises(oss2.exceptions.ServerError) as caught:
        oss._Bucket__do_object("POST", "v", params={"uploadId": upload_id}, data=body)
    assert caught.value.code == "InvalidPartOrder"
    big = oss.upload_part("v", upload_id, 1, b"A" * (100 * KIB))
    done = complete(oss, "v", upload_id, None, headers={"x-oss-complete-all": "yes"})
    assert done.etag.endswith("-2") and big.etag != a.etag
    assert oss.get_object("v").read() == b"A" * (100 * KIB) + b"b" * 1000


def test_abort_and_list_uploads(emu: EmulatorHandle) -> None:
    oss = emu.dest_bucket("mirror")
    ids = {key: oss.init_multipart_upload(key).upload_id for key in ("p/one", "p/two", "q/three")}
    oss.upload_part("p/one", ids["p/one"], 1, b"x" * 10)
    listed = oss.list_multipart_uploads(prefix="p/")
    assert [(u.key, u.upload_id) for u in listed.upload_list] == [("p/one", ids["p/one"]), ("p/two", ids["p/two"])]
    assert sorted(u.key for u in oss2.MultipartUploadIterator(oss)) == ["p/one", "p/two", "q/three"]
    assert oss.abort_multipart_upload("p/one", ids["p/one"]).status == 204
    with pytest.raises(oss2.exceptions.NoSuchUpload):
        oss.upload_part("p/one", ids["p/one"], 2, b"late")
    with pytest.raises(oss2.exceptions.NoSuchUpload):
        oss.abort_multipart_upload("p/one", ids["p/one"])
    with pytest.raises(oss2.exceptions.NoSuchUpload):  # an upload id belongs to its key
        oss.list_parts("p/two", ids["q/three"])
    assert sorted(emu.uploads("mirror")) == sorted([ids["p/two"], ids["q/three"]])


def test_list_objects_pages_and_prefixes(emu: EmulatorHandle) -> None:
    oss = emu.dest_bucket("mirror")
    keys = ["a/1", "a/2", "a/b/3", "b", "c d/é"]
    for key in keys:
        oss.put_object(key, key.encode())
    page = oss.list_objects_v2(max_keys=2)
    assert [o.key for o in page.object_list] == ["a/1", "a/2"] and page.is_truncated
    rest = oss.list_objects_v2(max_keys=100, continuation_token=page.next_continuation_token)
    assert [o.key for o in rest.object_list] == ["a/b/3", "b", "c d/é"] and not rest.is_truncated
    assert [o.key for o in oss2.ObjectIteratorV2(oss, max_keys=1)] == keys
    assert [o.key for o in oss2.ObjectIterator(oss, max_keys=2)] == keys  # ListObjects (v1)
    grouped = oss.list_objects_v2(prefix="a/", delimiter="/")
    assert [o.key for o in grouped.object_list] == ["a/1", "a/2"] and grouped.prefix_list == ["a/b/"]
    entry = oss.list_objects_v2(prefix="b").object_list[0]
    assert entry.etag == hashlib.md5(b"b", usedforsecurity=False).hexdigest().upper() and entry.size == 1
    key, src = source(emu)
    listed = emu.oss_bucket().list_objects_v2().object_list
    assert [(o.key, o.size) for o in listed] == [(key, len(src))]
    with pytest.raises(oss2.exceptions.ServerError):
        oss.list_objects_v2(max_keys=1001)
    assert emu.stats()["oss_operations"]["ListObjectsV2"] >= 5


def test_cross_region_copy_is_refused(emu: EmulatorHandle) -> None:
    key, src = source(emu)
    far = emu.dest_bucket("far")
    upload_id = far.init_multipart_upload("x").upload_id
    with pytest.raises(oss2.exceptions.AccessDenied) as caught:
        copy_part(far, emu.bucket, key, (0, 1023), "x", upload_id, 1)
    assert caught.value.status == 403 and "Cross-region copy is not allowed" in caught.value.message
    far.upload_part("x", upload_id, 1, src[:1024])  # streaming into the far bucket works
    complete(far, "x", upload_id, None, headers={"x-oss-complete-all": "yes"})
    assert far.get_object("x").read() == src[:1024]


def test_copy_source_conditions_and_errors(emu: EmulatorHandle) -> None:
    key, src = source(emu)
    oss = emu.dest_bucket("mirror")
    etag = emu.oss_bucket().head_object(key).etag
    upload_id = oss.init_multipart_upload("c").upload_id
    with pytest.raises(oss2.exceptions.PreconditionFailed):
        copy_part(oss, emu.bucket, key, (0, 99), "c", upload_id, 2,
                             headers={"x-oss-copy-source-if-match": '"0000"'})
    ok = copy_part(oss, emu.bucket, key, (0, 99), "c", upload_id, 2,
                              headers={"x-oss-copy-source-if-match": f'"{etag}"'})
    assert ok.etag == hashlib.md5(src[:100], usedforsecurity=False).hexdigest().upper()
    with pytest.raises(oss2.exceptions.NoSuchKey):
        copy_part(oss, emu.bucket, "missing", (0, 99), "c", upload_id, 1)
    whole = copy_part(oss, emu.bucket, key, None, "c", upload_id, 1)  # no range: all of it
    assert whole.status == 200
    complete(oss, "c", upload_id, None, headers={"x-oss-complete-all": "yes"})
    assert oss.get_object("c").read() == src + src[:100]


def test_read_only_key_and_deny_writes(emu: EmulatorHandle) -> None:
    key, src = source(emu)
    readonly = emu.dest_bucket("mirror", key_id="ro-ak", secret="ro-secret")
    assert emu.oss_bucket(key_id="ro-ak", secret="ro-secret").get_object(key).read() == src
    assert readonly.list_objects_v2().object_list == []
    for write in (lambda: readonly.put_object("k", b"x"), lambda: readonly.init_multipart_upload("k"),
                  lambda: readonly.delete_object("k")):
        with pytest.raises(oss2.exceptions.AccessDenied):
            write()
    with pytest.raises(oss2.exceptions.SignatureDoesNotMatch):
        emu.dest_bucket("mirror", key_id="ro-ak", secret="wrong").put_object("k", b"x")
    with pytest.raises(oss2.exceptions.ServerError) as caught:
        emu.dest_bucket("mirror", key_id="nobody").put_object("k", b"x")
    assert caught.value.code == "InvalidAccessKeyId"
    oss = emu.dest_bucket("mirror")
    emu.faults(deny_writes=1)
    with pytest.raises(oss2.exceptions.AccessDenied):
        oss.put_object("k", b"x")
    emu.faults(deny_writes=0)
    oss.put_object("k", b"x")
    assert emu.stats()["faults_injected"]["deny_writes"] == 1


def test_uploads_and_regions_survive_a_restart(start_emulator: StartEmulator) -> None:
    first = start_emulator(images=1, dest_buckets=["far@cn-beijing"])
    far = first.dest_bucket("far")
    upload_id = far.init_multipart_upload("big").upload_id
    part = far.upload_part("big", upload_id, 1, b"z" * (100 * KIB))
    assert first.popen is not None
    first.popen.terminate()
    first.popen.wait(timeout=10)
    second = start_emulator(images=1, root=first.root)
    assert second.bucket_region("far") == "cn-beijing"
    far = second.dest_bucket("far")
    assert [(p.part_number, p.etag) for p in far.list_parts("big", upload_id).parts] == [(1, part.etag)]
    far.upload_part("big", upload_id, 2, b"y")
    complete(far, "big", upload_id, None, headers={"x-oss-complete-all": "yes"})
    assert far.get_object("big").read() == b"z" * (100 * KIB) + b"y"


def test_printed_config_for_an_oss_destination(start_emulator: StartEmulator) -> None:
    emu = start_emulator(images=1, extra_args=["--destination", "oss://backup/ens"])
    assert emu.buckets()["backup"] == "cn-hangzhou"
    config = tomllib.loads(emu.config_text("oss://backup/ens"))
    assert config["destination"] == {"url": "oss://backup/ens", "oss_endpoint": emu.url, "region": "cn-hangzhou"}
    assert emu.dest_bucket("backup").list_objects_v2().object_list == []

"""Destination (write-side) faults of the emulator, observed through oss2 and raw HTTP."""

from __future__ import annotations

import base64
import hashlib
import random

import httpx
import oss2
import pytest
from conftest import EmulatorHandle, StartEmulator
from oss2.models import PartInfo
from test_emulator_write import complete

from imagesync.crc64 import crc64

KIB = 1024


@pytest.fixture
def emu(start_emulator: StartEmulator) -> EmulatorHandle:
    return start_emulator(images=0, dest_buckets=["mirror"])


def test_upload_part_5xx_then_success(emu: EmulatorHandle) -> None:
    oss = emu.dest_bucket("mirror")
    upload_id = oss.init_multipart_upload("k").upload_id
    emu.faults(upload_part_5xx=2)
    for _ in range(2):
        with pytest.raises(oss2.exceptions.ServerError) as caught:
            oss.upload_part("k", upload_id, 1, b"x" * 1000)
        assert (caught.value.status, caught.value.code) == (503, "ServiceUnavailable")
    assert oss.list_parts("k", upload_id).parts == []
    assert oss.upload_part("k", upload_id, 1, b"x" * 1000).crc == crc64(b"x" * 1000)
    stats = emu.stats()
    assert stats["faults_injected"]["upload_part_5xx"] == 2 and stats["oss_operations"]["UploadPart"] == 3


def test_drop_upload_after_bytes_closes_mid_part(emu: EmulatorHandle) -> None:
    oss = emu.dest_bucket("mirror")
    upload_id = oss.init_multipart_upload("k").upload_id
    data = random.Random(3).randbytes(512 * KIB)
    emu.faults(drop_upload_after_bytes=64 * KIB)
    with pytest.raises(oss2.exceptions.RequestError):
        oss.upload_part("k", upload_id, 1, data)
    assert oss.list_parts("k", upload_id).parts == []  # nothing half-stored
    assert oss.upload_part("k", upload_id, 1, data).crc == crc64(data)
    assert emu.stats()["faults_injected"]["drop_upload_after_bytes"] == 1


def test_corrupt_part_crc(emu: EmulatorHandle) -> None:
    oss = emu.dest_bucket("mirror")
    upload_id = oss.init_multipart_upload("k").upload_id
    data = random.Random(4).randbytes(200 * KIB)
    emu.faults(corrupt_part_crc=2)
    with pytest.raises(oss2.exceptions.InconsistentError):  # oss2 compares the returned CRC
        oss.upload_part("k", upload_id, 1, data)
    stored = oss.list_parts("k", upload_id).parts[0]
    assert stored.etag != hashlib.md5(data, usedforsecurity=False).hexdigest().upper()
    md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
    with pytest.raises(oss2.exceptions.ServerError) as caught:  # with Content-MD5: refused
        oss.upload_part("k", upload_id, 2, data, headers={"Content-MD5": md5})
    assert caught.value.code == "InvalidDigest"
    good = oss.upload_part("k", upload_id, 1, data, headers={"Content-MD5": md5})
    assert good.crc == crc64(data)


def test_complete_5xx_leaves_the_upload_open(emu: EmulatorHandle) -> None:
    oss = emu.dest_bucket("mirror")
    upload_id = oss.init_multipart_upload("k").upload_id
    part = oss.upload_part("k", upload_id, 1, b"abc")
    emu.faults(complete_5xx=1)
    parts = [PartInfo(1, part.etag, size=3, part_crc=part.crc)]
    with pytest.raises(oss2.exceptions.ServerError) as caught:
        complete(oss, "k", upload_id, parts)
    assert caught.value.status == 503
    assert not oss.object_exists("k") and emu.uploads("mirror") == [upload_id]
    assert complete(oss, "k", upload_id, parts).crc == crc64(b"abc")
    assert oss.get_object("k").read() == b"abc"


def test_forget_upload(emu: EmulatorHandle) -> None:
    oss = emu.dest_bucket("mirror")
    one = oss.init_multipart_upload("a").upload_id
    two = oss.init_multipart_upload("b").upload_id
    three = oss.init_multipart_upload("c").upload_id
    assert emu.faults(forget_upload=one)["forgotten"] == 1
    with pytest.raises(oss2.exceptions.NoSuchUpload):
        oss.upload_part("a", one, 1, b"x")
    oss.upload_part("b", two, 1, b"x")
    assert emu.faults(forget_upload="*")["forgotten"] == 2
    for key, upload_id in (("b", two), ("c", three)):
        with pytest.raises(oss2.exceptions.NoSuchUpload):
            oss.list_parts(key, upload_id)
    assert emu.faults(forget_upload="no-such-id")["forgotten"] == 0
    assert emu.stats()["faults_injected"]["forget_upload"] == 3


def test_put_5xx_and_key_restriction(emu: EmulatorHandle) -> None:
    oss = emu.dest_bucket("mirror")
    emu.faults(put_5xx=1, key="manifest.json")
    oss.put_object("other", b"x")
    with pytest.raises(oss2.exceptions.ServerError) as caught:
        oss.put_object("manifest.json", b"{}")
    assert caught.value.status == 503 and emu.keys("mirror") == ["other"]
    oss.put_object("manifest.json", b"{}")
    assert emu.keys("mirror") == ["manifest.json", "other"]


def test_errors_answered_before_a_big_body_is_read(emu: EmulatorHandle) -> None:
    oss = emu.dest_bucket("mirror")
    emu.faults(put_5xx=1)
    url = oss._make_url("mirror", "big")
    body = bytes(8 << 20)
    response = httpx.put(url, content=body, trust_env=False)  # unsigned: 403, body drained
    assert response.status_code == 403
    with pytest.raises(oss2.exceptions.ServerError):
        oss.put_object("big", body)
    assert oss.put_object("big", body).crc == crc64(body)
    assert emu.stats()["bytes_received_by_key"]["big"] == len(body)

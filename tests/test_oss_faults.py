"""An ``oss://`` mirror under the emulator's write-side faults: what is retried, redone or given up.

Every case ends with the bucket holding the source's exact bytes (or nothing under the key) and no
multipart upload left open under the prefix.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from clitools import imagesync, summary
from conftest import EmulatorHandle, StartEmulator
from test_oss_destination import PREFIX, assert_bucket_mirrors, killed, ops, oss_config, uploads

MIB = 1 << 20


@pytest.fixture
def emu(start_emulator: StartEmulator) -> EmulatorHandle:
    return start_emulator(images=1, image_size="20MiB", dest_buckets=["dest", "far@cn-beijing"])


def key_of(emu: EmulatorHandle) -> str:
    return f"{PREFIX}/{emu.exported()[0]['ImageId']}.qcow2"


@pytest.mark.parametrize("fault", [
    {"upload_part_5xx": 3},  # retried with backoff
    {"drop_upload_after_bytes": 3 * MIB},  # the connection drops mid-part: retried
    {"complete_5xx": 2},  # Complete retried; the upload stays open meanwhile
    {"put_5xx": 2},  # manifest.json / SHA256SUMS PUT retried
])
def test_transient_write_failures_are_retried(emu: EmulatorHandle, tmp_path: Path, fault: dict[str, int]) -> None:
    emu.faults(**fault)
    result = imagesync("sync", "-c", oss_config(emu, tmp_path, "far"), "--json")
    assert result.returncode == 0, result.stderr
    assert sum(emu.stats()["faults_injected"].values()) >= 1
    assert_bucket_mirrors(emu, "far", "crc64+sha256")


def test_a_part_stored_with_other_bytes_is_uploaded_again(emu: EmulatorHandle, tmp_path: Path) -> None:
    emu.faults(corrupt_part_crc=1)
    result = imagesync("sync", "-c", oss_config(emu, tmp_path, "far"))
    assert result.returncode == 0, result.stderr
    assert ops(emu)["UploadPart"] == 3 + 1  # 20 MiB = 3 parts, one of them twice
    assert "uploading it again" in result.stderr
    assert_bucket_mirrors(emu, "far", "crc64+sha256")


def test_a_part_stored_wrong_twice_fails_the_image(emu: EmulatorHandle, tmp_path: Path) -> None:
    emu.faults(corrupt_part_crc=100)  # every part, every time
    result = imagesync("sync", "-c", oss_config(emu, tmp_path, "far"), "--json")
    assert result.returncode == 1, result.stderr
    reason = summary(result)["images"][0]["reason"]
    assert "CRC-64" in reason and "twice" in reason and "aborted" in reason
    assert uploads(emu, "far") == [] and emu.keys("far", key_of(emu)) == []


def test_a_vanished_upload_is_started_again(emu: EmulatorHandle, tmp_path: Path) -> None:
    config = oss_config(emu, tmp_path, "far")
    killed(config, "batch-written:2")
    assert len(uploads(emu, "far")) == 1
    emu.faults(forget_upload="*")  # as a lifecycle rule would
    assert uploads(emu, "far") == []
    emu.reset()
    result = imagesync("sync", "-c", config, "--json")
    assert result.returncode == 0, result.stderr
    assert ops(emu)["UploadPart"] == 3 and ops(emu)["InitiateMultipartUpload"] >= 2  # the probe, then it
    assert_bucket_mirrors(emu, "far", "crc64+sha256")


def test_a_source_changed_since_the_upload_began_starts_over(emu: EmulatorHandle, tmp_path: Path) -> None:
    config = oss_config(emu, tmp_path, "far")
    killed(config, "batch-written:2")
    [old_upload] = uploads(emu, "far")
    emu.rewrite_object(emu.exported()[0]["ImageId"])
    emu.reset()
    result = imagesync("sync", "-c", config, "--json")
    assert result.returncode == 0, result.stderr
    assert ops(emu)["UploadPart"] == 3 and ops(emu)["AbortMultipartUpload"] >= 2  # the probe's and the old one
    assert old_upload not in uploads(emu, "far")
    assert_bucket_mirrors(emu, "far", "crc64+sha256")


def test_a_server_side_copy_that_fails_is_aborted(emu: EmulatorHandle, tmp_path: Path) -> None:
    emu.faults(upload_part_5xx=1000, key=key_of(emu))
    result = imagesync("sync", "-c", oss_config(emu, tmp_path, "dest"), "--json")
    assert result.returncode == 1, result.stderr
    assert "ServiceUnavailable" in summary(result)["images"][0]["reason"]
    assert ops(emu).get("UploadPartCopy", 0) >= 2
    assert uploads(emu, "dest") == [] and emu.keys("dest", key_of(emu)) == []

    emu.reset()
    result = imagesync("sync", "-c", oss_config(emu, tmp_path, "dest"), "--json")
    assert result.returncode == 0, result.stderr
    assert_bucket_mirrors(emu, "dest", "crc64+sha256")


def test_upload_records_of_finished_images_are_cleaned_up(emu: EmulatorHandle, tmp_path: Path) -> None:
    """A crash after Complete but before the record was removed leaves nothing open for long."""
    config = oss_config(emu, tmp_path, "far")
    killed(config, "after-rename")  # Complete done, the manifest record not written
    assert uploads(emu, "far") == []
    result = imagesync("sync", "-c", config, "--json")
    assert result.returncode == 0, result.stderr
    assert summary(result)["images"][0]["action"] == "adopt"  # the object is already the source
    assert not list((tmp_path / "state").rglob("*.upload"))
    assert_bucket_mirrors(emu, "far", "crc64+sha256")


def test_uploads_nobody_needs_are_aborted_after_a_sync(start_emulator: StartEmulator, tmp_path: Path) -> None:
    """An upload with no record (a crash right after Initiate) and the record of an image no run
    has looked at for a week are aborted at the end of a sync; a resumable one is kept."""
    emu = start_emulator(images=2, image_size="20MiB", dest_buckets=["far@cn-beijing"])
    kept_id, gone_id = (e["ImageId"] for e in emu.exported())
    config = oss_config(emu, tmp_path, "far")
    stray = emu.dest_bucket("far").init_multipart_upload(f"{PREFIX}/stray.qcow2").upload_id
    killed(config, "batch-written:2")  # both images have an upload in progress now
    assert len(uploads(emu, "far")) == 3
    records = list((tmp_path / "state").rglob("*.upload"))
    assert len(records) == 2
    for record in records:
        if gone_id in record.read_text():
            os.utime(record, (1, 1))  # last touched long ago, and not planned below
    result = imagesync("sync", "-c", config, "--image-id", emu.exported()[0]["ImageId"], "--dry-run")
    assert result.returncode == 0 and len(uploads(emu, "far")) == 3  # a dry run cleans nothing

    emu.faults(upload_part_5xx=10_000, key=f"{PREFIX}/{kept_id}.qcow2")  # fails, resumable later
    result = imagesync("sync", "-c", config, "--json", "--image-id", kept_id)
    assert result.returncode == 1, result.stderr
    assert stray not in uploads(emu, "far")
    assert len(uploads(emu, "far")) == 0  # kept_id failed for good: aborted too
    assert not list((tmp_path / "state").rglob("*.upload"))

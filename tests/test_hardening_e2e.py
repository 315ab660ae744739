"""The fault matrix and the hardening items, end to end through the CLI against the emulator.

Every server misbehaviour here has its own emulator fault; each test asserts what lands on
disk and in the manifest, never on our own code's internals.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from clitools import CLEAN_ENV, imagesync, one_sentence, sha256_of, summary, write_config

MiB = 1 << 20


def exported_ids(emulator: Any) -> list[str]:
    return sorted(e["ImageId"] for e in emulator.exported())


def assert_mirrored(emulator: Any, mirror: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((mirror / "manifest.json").read_text())
    assert sorted(e["image_id"] for e in document["images"]) == exported_ids(emulator)
    for entry in document["images"]:
        assert (mirror / entry["path"]).read_bytes() == emulator.object_path(entry["image_id"]).read_bytes()
        assert entry["sha256"] == sha256_of(mirror / entry["path"])
    check = subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=mirror, capture_output=True)
    assert check.returncode == 0, check.stdout
    return document


@pytest.fixture
def one_image(start_emulator: Any) -> Any:
    return start_emulator(images=1, image_size="12MiB")


def sync(emulator: Any, tmp_path: Path, *extra: str, **tables: Any) -> Any:
    config = write_config(emulator, tmp_path / "sync.toml", tmp_path / "mirror", **tables)
    return imagesync("sync", "-c", config, "--json", *extra)


# --- item 11: each response check, through the CLI ---------------------------------------


def test_a_200_to_a_ranged_get_restarts_from_zero_within_the_run(one_image: Any, tmp_path: Path) -> None:
    one_image.faults(drop_after_bytes=5 * MiB, ignore_range=1)
    result = sync(one_image, tmp_path)
    assert result.returncode == 0, result.stderr
    assert one_image.stats()["faults_injected"].get("ignore_range") == 1
    assert_mirrored(one_image, tmp_path / "mirror")
    # the dropped prefix, then the whole object from 0: never appended at the old offset
    assert summary(result)["bytes_transferred"] >= 12 * MiB


def test_a_wrong_content_range_restarts_the_image(one_image: Any, tmp_path: Path) -> None:
    one_image.faults(drop_after_bytes=5 * MiB, bad_content_range=1)
    result = sync(one_image, tmp_path)
    assert result.returncode == 0, result.stderr
    assert one_image.stats()["faults_injected"].get("bad_content_range") == 1
    assert_mirrored(one_image, tmp_path / "mirror")


def test_an_object_reexported_between_two_ranged_reads_is_fetched_anew(one_image: Any, tmp_path: Path) -> None:
    [image_id] = exported_ids(one_image)
    old = one_image.object_path(image_id).read_bytes()
    one_image.faults(change_etag_after_bytes=3 * MiB, drop_after_bytes=5 * MiB)
    result = sync(one_image, tmp_path)
    assert result.returncode == 0, result.stderr
    document = assert_mirrored(one_image, tmp_path / "mirror")
    assert (tmp_path / "mirror" / document["images"][0]["path"]).read_bytes() != old


def test_a_gzip_body_is_never_written(one_image: Any, tmp_path: Path) -> None:
    one_image.faults(gzip_body=1)
    result = sync(one_image, tmp_path)
    assert result.returncode == 0, result.stderr
    assert one_image.stats()["faults_injected"].get("gzip_body") == 1
    assert_mirrored(one_image, tmp_path / "mirror")


@pytest.mark.parametrize("fault", ["body_longer", "body_shorter"])
def test_a_body_of_the_wrong_length_is_caught(one_image: Any, tmp_path: Path, fault: str) -> None:
    one_image.faults(**{fault: 1, "body_delta_bytes": 1000})
    result = sync(one_image, tmp_path)
    assert result.returncode == 0, result.stderr
    assert one_image.stats()["faults_injected"].get(fault) == 1
    assert_mirrored(one_image, tmp_path / "mirror")


def test_a_stalled_body_times_out_and_resumes(one_image: Any, tmp_path: Path) -> None:
    one_image.faults(stall_after_bytes=4 * MiB, stall_s=60)
    started = time.monotonic()
    result = sync(one_image, tmp_path, transfer={"read_timeout_s": 1})
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 30
    assert_mirrored(one_image, tmp_path / "mirror")


@pytest.mark.parametrize("value", ["\u00b2", "12x", "-1", "18446744073709551616", ""])
def test_a_crc_header_that_is_not_a_number_fails_that_image_in_one_sentence(
    emulator: Any, tmp_path: Path, value: str
) -> None:
    target = emulator.exported()[0]
    emulator.faults(crc_header=value, key=target["Key"])
    result = sync(emulator, tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    outcomes = {i["image_id"]: i for i in summary(result)["images"]}
    assert outcomes[target["ImageId"]]["result"] == "failed"
    assert "CRC-64" in outcomes[target["ImageId"]]["reason"]
    recorded = {e["image_id"] for e in json.loads((tmp_path / "mirror" / "manifest.json").read_text())["images"]}
    assert target["ImageId"] not in recorded and len(recorded) == len(emulator.exported()) - 1


# --- item 8: "verified" means verified ---------------------------------------------------------


def test_without_a_crc_content_md5_verifies(emulator: Any, tmp_path: Path) -> None:
    emulator.faults(omit_crc64=1, content_md5=1)
    result = sync(emulator, tmp_path)
    assert result.returncode == 0, result.stderr
    document = assert_mirrored(emulator, tmp_path / "mirror")
    assert {e["verified"] for e in document["images"]} == {"md5+sha256"}
    assert summary(result)["verification"] == {"verified": 3, "size_only": 0}


def test_without_any_checksum_an_image_is_size_only_and_says_so(emulator: Any, tmp_path: Path) -> None:
    emulator.faults(omit_crc64=1)
    result = sync(emulator, tmp_path)
    assert result.returncode == 0, result.stderr
    document = assert_mirrored(emulator, tmp_path / "mirror")
    assert {e["verified"] for e in document["images"]} == {"size-only"}
    assert summary(result)["verification"] == {"verified": 0, "size_only": 3}
    assert {i["verified"] for i in summary(result)["images"]} == {"size-only"}
    assert "size only" in result.stderr and ", verified" not in result.stderr


def test_a_corrupt_byte_without_a_crc_is_caught_by_content_md5(emulator: Any, tmp_path: Path) -> None:
    emulator.faults(omit_crc64=1, content_md5=1, corrupt_offset=1000, corrupt_times=-1,
                    key=emulator.exported()[0]["Key"])
    result = sync(emulator, tmp_path)
    assert result.returncode == 1
    failed = [i for i in summary(result)["images"] if i["result"] == "failed"]
    assert len(failed) == 1 and "MD5" in failed[0]["reason"]


# --- item 3: server text never drives the terminal ---------------------------------------------


def test_escape_sequences_from_the_api_are_shown_escaped(emulator: Any, tmp_path: Path) -> None:
    hostile = "\x1b]0;pwned\x07\x1b[2J"
    emulator.add_image(image_id=f"m-evil{hostile}", name=f"name{hostile}", key="evil.qcow2",
                       Platform=f"centos{hostile}", Architecture=f"x86{hostile}",
                       CreationTime=f"2024{hostile}")
    config = write_config(emulator, tmp_path / "sync.toml", tmp_path / "mirror")
    outputs = [imagesync("list", "-c", config), imagesync("sync", "-c", config),
               imagesync("sync", "-c", config, "--dry-run"), imagesync("verify", "-c", config)]
    emulator.faults(oss_5xx=10_000)
    outputs.append(imagesync("sync", "-c", config))
    for result in outputs:
        assert "\x1b" not in result.stdout + result.stderr and "\x07" not in result.stdout + result.stderr
    assert "\\x1b]0;pwned\\x07" in outputs[0].stdout


# --- item 7: every OS error is a sentence -------------------------------------------------------


def test_a_closed_stdout_ends_quietly(emulator: Any, tmp_path: Path) -> None:
    for index in range(40):
        emulator.add_image(status="Unexported", name=f"padding-{index}" + "x" * 200)
    config = write_config(emulator, tmp_path / "sync.toml", tmp_path / "mirror")
    command = [sys.executable, "-m", "imagesync", "list", "-c", str(config)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=CLEAN_ENV) as process:
        assert process.stdout is not None and process.stderr is not None
        process.stdout.readline()
        process.stdout.close()
        stderr = process.stderr.read().decode()
        process.wait(timeout=60)
    assert stderr == "", stderr
    assert process.returncode in (0, 141)


def test_a_destination_that_is_a_file_is_a_usage_error(emulator: Any, tmp_path: Path) -> None:
    (tmp_path / "mirror").write_text("not a folder")
    result = sync(emulator, tmp_path)
    assert result.returncode == 2
    assert "is not a directory" in one_sentence(result)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a read-only tmpfs needs root")
def test_verify_works_on_a_read_only_mirror(emulator: Any, tmp_path: Path) -> None:
    mount = tmp_path / "ro"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], check=True)
    try:
        config = write_config(emulator, tmp_path / "sync.toml", mount / "mirror")
        assert imagesync("sync", "-c", config).returncode == 0
        (mount / "mirror" / ".imagesync.lock").unlink()  # a copy made without the lock file
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        result = imagesync("verify", "-c", config)
        assert result.returncode == 0, result.stderr
        assert "read-only" in result.stderr and "3 of 3 mirrored images verified" in result.stderr
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="tmpfs needs root")
def test_a_full_disk_while_writing_the_lock_is_a_sentence(emulator: Any, tmp_path: Path) -> None:
    mount = tmp_path / "full"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    try:
        (mount / "mirror").mkdir()
        fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        result = sync(emulator, tmp_path, destination={"url": str(mount / "mirror")})
        assert result.returncode == 1
        line = one_sentence(result)
        assert "lock" in line and "No space left" in line and "internal error" not in line
    finally:
        subprocess.run(["umount", str(mount)], check=False)


# --- item 10: smaller defects ------------------------------------------------------------------


def test_dry_run_text_plan_names_unknown_image_ids(emulator: Any, tmp_path: Path) -> None:
    config = write_config(emulator, tmp_path / "sync.toml", tmp_path / "mirror")
    result = imagesync("sync", "-c", config, "--dry-run", "--image-id", "m-doesnotexist")
    assert result.returncode == 1
    assert "m-doesnotexist" in result.stdout and "not listed by the API" in result.stdout
    assert f"destination: {tmp_path / 'mirror'}" in result.stdout


def test_summary_names_the_resolved_destination(emulator: Any, tmp_path: Path) -> None:
    result = sync(emulator, tmp_path)
    assert result.returncode == 0, result.stderr
    assert summary(result)["destination"] == str(tmp_path / "mirror")
    assert f"to {tmp_path / 'mirror'}" in result.stderr


def test_head_retries_in_planning_wait_as_configured(emulator: Any, tmp_path: Path) -> None:
    # Seven retries with the old built-in waits (0.5 s doubling to 20 s) would take ~20 s.
    emulator.faults(oss_5xx=10_000)
    started = time.monotonic()
    result = sync(emulator, tmp_path, transfer={"retry_delay_s": 0, "retry_max_delay_s": 0.001,
                                                "max_attempts": 8})
    assert time.monotonic() - started < 8
    assert result.returncode == 1
    assert emulator.stats()["object_heads"] == 8 * len(emulator.exported())

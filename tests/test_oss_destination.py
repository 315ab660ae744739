"""`imagesync sync` into an ``oss://`` destination, end to end over real sockets against the emulator.

The emulator serves the source bucket (cn-hangzhou) and two destination buckets: ``dest`` in the
same region (server-side copy) and ``far`` in cn-beijing (streamed multipart upload). What lands
in a bucket is read back with oss2 and compared with the source objects' bytes.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import oss2
import pytest
import trio
from clitools import CLEAN_ENV, imagesync, one_sentence, summary, write_config
from conftest import EmulatorHandle, StartEmulator

from imagesync.checksum import crc64
from imagesync.config import load_config
from imagesync.sinks.oss_state import StateFolder
from imagesync.sync import open_destination
from imagesync.verify import Result as VerifyResult
from imagesync.verify import verify_mirror

MIB = 1 << 20
PREFIX = "mirror"


@pytest.fixture
def emu(start_emulator: StartEmulator) -> EmulatorHandle:
    return start_emulator(images=3, image_size="20MiB,1MiB,9MiB", dest_buckets=["dest", "far@cn-beijing"],
                          extra_args=["--readonly-key", "ro-ak:ro-secret"])


def oss_config(emu: EmulatorHandle, tmp_path: Path, bucket: str = "far", name: str = "sync.toml",
               **destination: Any) -> Path:
    credentials = destination.pop("credentials", None)
    settings = {"oss_endpoint": emu.url, "region": emu.bucket_region(bucket) if bucket in emu.buckets()
                else "cn-hangzhou", "state_dir": str(tmp_path / "state"), **destination}
    tables = {"destination.credentials": credentials} if credentials else {}
    url: Any = f"oss://{bucket}/{PREFIX}"  # write_config takes it as a directory or an oss:// URL
    return write_config(emu, tmp_path / name, url, destination=settings, **tables)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sources(emu: EmulatorHandle) -> dict[str, bytes]:
    return {e["ImageId"]: emu.object_path(e["ImageId"]).read_bytes() for e in emu.exported()}


def uploads(emu: EmulatorHandle, bucket: str) -> list[str]:
    return [u.upload_id for u in oss2.MultipartUploadIterator(emu.dest_bucket(bucket), prefix=f"{PREFIX}/")]


def manifest(emu: EmulatorHandle, bucket: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(emu.dest_bucket(bucket).get_object(f"{PREFIX}/manifest.json").read())
    return document


def assert_bucket_mirrors(emu: EmulatorHandle, bucket: str, verified: str) -> dict[str, Any]:
    """Every exported image is in the bucket, byte for byte, and manifest.json and SHA256SUMS say so."""
    oss = emu.dest_bucket(bucket)
    expected = sources(emu)
    document = manifest(emu, bucket)
    entries = {e["image_id"]: e for e in document["images"]}
    assert set(entries) == set(expected)
    sums = []
    for image_id, data in expected.items():
        entry = entries[image_id]
        stored = oss.get_object(f"{PREFIX}/{entry['path']}").read()
        assert sha(stored) == sha(data)
        assert (entry["size"], entry["crc64ecma"], entry["verified"]) == (len(data), str(crc64(data)), verified)
        assert entry["sha256"] == (None if verified == "crc64-server-side" else sha(data))
        if entry["sha256"]:
            sums.append(f"{sha(data)}  {entry['path']}\n")
    assert oss.get_object(f"{PREFIX}/SHA256SUMS").read().decode() == "".join(sorted(sums, key=lambda s: s[66:]))
    assert uploads(emu, bucket) == []
    return document


def image_bytes_read(emu: EmulatorHandle) -> int:
    """Body bytes of image objects sent by GETs (not the manifest's)."""
    return sum(n for key, n in emu.stats()["bytes_by_key"].items() if key.endswith(".qcow2"))


def ops(emu: EmulatorHandle) -> dict[str, int]:
    operations: dict[str, int] = emu.stats()["oss_operations"]
    return operations


def test_cross_region_streams_then_nothing_to_do(emu: EmulatorHandle, tmp_path: Path) -> None:
    config = oss_config(emu, tmp_path, "far")
    first = imagesync("sync", "-c", config, "--json")
    assert first.returncode == 0, first.stderr
    assert summary(first)["counts"] == {"mirrored": 3, "skipped": 0, "failed": 0}
    assert ops(emu).get("UploadPart", 0) >= 4 and "UploadPartCopy" not in ops(emu)
    assert_bucket_mirrors(emu, "far", "crc64+sha256")
    head = emu.dest_bucket("far").head_object(f"{PREFIX}/{emu.exported()[0]['ImageId']}.qcow2")
    assert head.server_crc == crc64(next(iter(sources(emu).values())))

    emu.reset()
    second = imagesync("sync", "-c", config, "--json")
    assert second.returncode == 0, second.stderr
    assert summary(second)["counts"] == {"mirrored": 0, "skipped": 3, "failed": 0}
    stats = emu.stats()
    assert set(stats["bytes_by_key"]) == {f"{PREFIX}/manifest.json"}  # no image byte read
    assert stats["body_bytes_received"] == 0
    assert not {"UploadPart", "UploadPartCopy", "CompleteMultipartUpload"} & set(stats["oss_operations"])


def test_same_region_copies_inside_oss(emu: EmulatorHandle, tmp_path: Path) -> None:
    config = oss_config(emu, tmp_path, "dest", read_back="never")
    result = imagesync("sync", "-c", config, "--json")
    assert result.returncode == 0, result.stderr
    stats = emu.stats()
    assert stats["oss_operations"].get("UploadPartCopy", 0) >= 3 and "UploadPart" not in stats["oss_operations"]
    assert image_bytes_read(emu) == 0  # not one image byte crossed this host
    assert stats["bytes_copied"] == sum(len(d) for d in sources(emu).values())
    assert summary(result)["bytes_transferred"] == 0
    assert {i["verified"] for i in summary(result)["images"]} == {"crc64-server-side"}
    assert_bucket_mirrors(emu, "dest", "crc64-server-side")


def test_same_region_reads_back_when_oss_gives_no_crc(emu: EmulatorHandle, tmp_path: Path) -> None:
    config = oss_config(emu, tmp_path, "dest")  # read_back = "auto": copied parts carry no CRC
    result = imagesync("sync", "-c", config, "--json")
    assert result.returncode == 0, result.stderr
    total = sum(len(d) for d in sources(emu).values())
    assert emu.stats()["bytes_copied"] == total
    assert image_bytes_read(emu) == total  # read back once, to hash it
    assert_bucket_mirrors(emu, "dest", "crc64+sha256")


def test_dry_run_shows_the_route(emu: EmulatorHandle, tmp_path: Path) -> None:
    routes = {}
    for bucket, extra in (("dest", {}), ("far", {}), ("dest", {"server_side_copy": "never"})):
        config = oss_config(emu, tmp_path, bucket, **extra)
        result = imagesync("sync", "-c", config, "--dry-run", "--json")
        assert result.returncode == 0, result.stderr
        routes[bucket, bool(extra)] = {i["route"] for i in json.loads(result.stdout)["images"]}
        human = imagesync("sync", "-c", config, "--dry-run")
        assert ("via server-side copy (same region cn-hangzhou)" in human.stdout) == (routes[bucket, bool(extra)]
                                                                                    != {"stream"})
    assert routes == {("dest", False): {"server-side copy (same region cn-hangzhou)"},
                      ("far", False): {"stream"}, ("dest", True): {"stream"}}
    assert emu.keys("dest", PREFIX) == [] and emu.keys("far", PREFIX) == []


def killed(config: Path, point: str) -> None:
    env = {**CLEAN_ENV, "IMAGESYNC_KILL_AT": point}
    result = subprocess.run([sys.executable, "-m", "imagesync", "sync", "-c", str(config)], env=env,
                            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == -signal.SIGKILL, f"{point} was never reached: {result.stderr}"


def test_killed_upload_resumes_with_the_missing_parts(start_emulator: StartEmulator, tmp_path: Path) -> None:
    emu = start_emulator(images=1, image_size="40MiB", dest_buckets=["far@cn-beijing"])
    config = oss_config(emu, tmp_path, "far")
    killed(config, "batch-written:4")  # about 32 MiB in: part 1 stored, parts 2 and 3 on their way
    [upload_id] = uploads(emu, "far")
    key = f"{PREFIX}/{emu.exported()[0]['ImageId']}.qcow2"
    listed = {p.part_number for p in emu.dest_bucket("far").list_parts(key, upload_id).parts}
    [record] = StateFolder(next((tmp_path / "state").iterdir()), "far").records()
    recorded = [p.number for p in record.parts]
    kept = next(n for n in range(1, 6) if n not in recorded or n not in listed) - 1
    assert kept >= 1

    emu.reset()
    result = imagesync("sync", "-c", config, "--json")
    assert result.returncode == 0, result.stderr
    sent = ops(emu)["UploadPart"]
    assert sent == 5 - kept  # 40 MiB = 5 parts of 8 MiB: only those not recorded go again
    assert emu.stats()["bytes_received_by_key"][key] == sent * 8 * MIB
    assert_bucket_mirrors(emu, "far", "crc64+sha256")


def test_an_image_that_fails_for_good_leaves_no_upload(emu: EmulatorHandle, tmp_path: Path) -> None:
    broken, corrupt, fine = (e["ImageId"] for e in emu.exported())
    emu.faults(upload_part_5xx=10_000, key=f"{PREFIX}/{broken}.qcow2")
    config = oss_config(emu, tmp_path, "far")
    result = imagesync("sync", "-c", config, "--json", "--image-id", broken, "--image-id", fine)
    assert result.returncode == 1, result.stderr
    outcomes = {i["image_id"]: i for i in summary(result)["images"]}
    assert outcomes[broken]["result"] == "failed" and outcomes[fine]["result"] == "mirrored"
    assert "ServiceUnavailable" in outcomes[broken]["reason"] and "aborted" in outcomes[broken]["reason"]
    assert uploads(emu, "far") == []
    assert emu.keys("far", f"{PREFIX}/{broken}") == []

    emu.reset()
    source_key = next(e["Key"] for e in emu.exported() if e["ImageId"] == corrupt)
    emu.faults(corrupt_offset=100, corrupt_times=-1, key=source_key)  # every read of it is damaged
    result = imagesync("sync", "-c", config, "--json", "--image-id", corrupt)
    assert result.returncode == 1, result.stderr
    assert "CRC-64" in summary(result)["images"][0]["reason"]
    assert uploads(emu, "far") == []
    assert [k for k in emu.keys("far", PREFIX) if corrupt in k] == []


def test_a_changed_source_replaces_the_object_only_once_verified(emu: EmulatorHandle, tmp_path: Path) -> None:
    config = oss_config(emu, tmp_path, "far")
    assert imagesync("sync", "-c", config).returncode == 0
    image_id = emu.exported()[0]["ImageId"]
    key = f"{PREFIX}/{image_id}.qcow2"
    old = emu.dest_bucket("far").get_object(key).read()
    emu.rewrite_object(image_id)
    new = emu.object_path(image_id).read_bytes()
    assert new != old

    killed(config, "before-rename")  # every part uploaded and checked, not completed
    assert emu.dest_bucket("far").get_object(key).read() == old
    assert len(uploads(emu, "far")) == 1

    result = imagesync("sync", "-c", config, "--json")
    assert result.returncode == 0, result.stderr
    assert emu.dest_bucket("far").get_object(key).read() == new
    entry = next(e for e in manifest(emu, "far")["images"] if e["image_id"] == image_id)
    assert entry["sha256"] == sha(new) and entry["crc64ecma"] == str(crc64(new))
    assert_bucket_mirrors(emu, "far", "crc64+sha256")


@pytest.mark.parametrize("case", ["wrong credentials", "missing bucket", "read-only key", "deny writes",
                                  "wrong region"])
def test_destination_problems_stop_before_any_transfer(emu: EmulatorHandle, tmp_path: Path, case: str) -> None:
    bucket, extra = "far", dict[str, Any]()
    if case == "wrong credentials":
        extra = {"credentials": {"access_key_id": "nobody", "access_key_secret": "wrong"}}
    elif case == "missing bucket":
        bucket = "nowhere"
    elif case == "read-only key":
        extra = {"credentials": {"access_key_id": "ro-ak", "access_key_secret": "ro-secret"}}
    elif case == "deny writes":
        emu.faults(deny_writes=1)
    else:
        extra = {"region": "cn-shanghai"}
    config = oss_config(emu, tmp_path, bucket, **extra)
    result = imagesync("sync", "-c", config)
    assert result.returncode == 2, result.stderr
    message = one_sentence(result)
    expected = {"wrong credentials": "refused the destination credentials", "missing bucket": "does not exist",
                "read-only key": "no permission to", "deny writes": "no permission to",
                "wrong region": "signing region"}[case]
    assert expected in message, message
    assert "secret" not in message.lower().replace("access_key_secret", "")
    emu.reset()
    assert emu.keys("far", PREFIX) == [] and uploads(emu, "far") == []
    assert not list((tmp_path / "state").rglob("manifest.journal"))


def test_config_problems(emu: EmulatorHandle, tmp_path: Path) -> None:
    for key in ("oss_endpoint", "region"):
        left_out: dict[str, Any] = {key: None}
        config = oss_config(emu, tmp_path, "far", **left_out)
        result = imagesync("sync", "-c", config, "--dry-run")
        assert result.returncode == 2, result.stderr
        assert f"destination.{key} is missing" in one_sentence(result)


def test_verify_an_oss_mirror(emu: EmulatorHandle, tmp_path: Path) -> None:
    config = oss_config(emu, tmp_path, "far")
    assert imagesync("sync", "-c", config).returncode == 0
    emu.reset()
    result = imagesync("verify", "-c", config)
    assert result.returncode == 0, result.stderr
    assert image_bytes_read(emu) == 0  # HEAD and its CRC-64 only

    total = sum(len(d) for d in sources(emu).values())
    destination = open_destination(load_config(config), None)
    try:
        verdicts = trio.run(lambda: verify_mirror(destination, 2, read=True))
    finally:
        destination.close()
    assert {v.result for v in verdicts} == {VerifyResult.OK}
    assert image_bytes_read(emu) == total  # every byte re-hashed

    image_id = emu.exported()[1]["ImageId"]
    key = f"{PREFIX}/{image_id}.qcow2"
    damaged = bytearray(emu.dest_bucket("far").get_object(key).read())
    damaged[5] ^= 1
    emu.dest_bucket("far").put_object(key, bytes(damaged))
    result = imagesync("verify", "-c", config, "--json")
    assert result.returncode == 1
    verdicts_json = {v["image_id"]: v["result"] for v in json.loads(result.stdout)}
    assert verdicts_json[image_id] == "corrupt" and list(verdicts_json.values()).count("ok") == 2


def test_keep_replaced_keeps_earlier_copies_in_the_bucket(emu: EmulatorHandle, tmp_path: Path) -> None:
    config = oss_config(emu, tmp_path, "far", keep_replaced=1)
    image_id = emu.exported()[1]["ImageId"]
    versions = [emu.object_path(image_id).read_bytes()]
    assert imagesync("sync", "-c", config).returncode == 0
    for _ in range(2):
        emu.rewrite_object(image_id)
        versions.append(emu.object_path(image_id).read_bytes())
        result = imagesync("sync", "-c", config, "--image-id", image_id)
        assert result.returncode == 0, result.stderr
    oss = emu.dest_bucket("far")
    entry = next(e for e in manifest(emu, "far")["images"] if e["image_id"] == image_id)
    assert oss.get_object(f"{PREFIX}/{entry['path']}").read() == versions[2]
    [kept] = entry["replaced"]  # keep_replaced = 1: the oldest was pruned
    assert oss.get_object(f"{PREFIX}/{kept['path']}").read() == versions[1]
    assert kept["sha256"] == sha(versions[1])
    assert emu.keys("far", f"{PREFIX}/replaced/") == [f"{PREFIX}/{kept['path']}"]
    assert uploads(emu, "far") == []

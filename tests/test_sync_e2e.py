"""`imagesync sync` end to end over real sockets against the emulator (issue 3's "done when")."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from clitools import CLEAN_ENV, imagesync, one_sentence, sha256_of, summary, tree_snapshot, write_config


def exported(emulator: Any) -> list[dict[str, Any]]:
    return [e for e in emulator.catalog() if e["ImageExportStatus"] == "Exported"]


def manifest_of(mirror: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((mirror / "manifest.json").read_text())
    return document


def assert_mirror_matches(emulator: Any, mirror: Path, image_ids: list[str]) -> None:
    manifest = manifest_of(mirror)
    assert sorted(e["image_id"] for e in manifest["images"]) == sorted(image_ids)
    for entry in manifest["images"]:
        local = mirror / entry["path"]
        assert local.read_bytes() == emulator.object_path(entry["image_id"]).read_bytes()
        assert entry["sha256"] == sha256_of(local)
        assert "?" not in entry["source_url"]
    check = subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=mirror,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert not list(mirror.rglob("*.imagesync-part"))


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    return tmp_path / "mirror"


def test_mirror_then_nothing_to_do(emulator: Any, tmp_path: Path, mirror: Path) -> None:
    config = write_config(emulator, tmp_path / "sync.toml", mirror)
    first = imagesync("sync", "-c", config, "--json")
    assert first.returncode == 0, first.stderr
    ids = [e["ImageId"] for e in exported(emulator)]
    assert summary(first)["counts"] == {"mirrored": len(ids), "skipped": 0, "failed": 0}
    assert_mirror_matches(emulator, mirror, ids)
    assert {i["image_id"] for i in summary(first)["not_exported"]} == {
        e["ImageId"] for e in emulator.catalog() if e["ImageExportStatus"] != "Exported"}

    emulator.reset()
    second = imagesync("sync", "-c", config, "--json")
    assert second.returncode == 0, second.stderr
    assert summary(second)["bytes_transferred"] == 0
    assert summary(second)["counts"]["skipped"] == len(ids)
    assert emulator.stats()["object_gets"] == 0


def test_quiet_success_prints_nothing(emulator: Any, tmp_path: Path, mirror: Path) -> None:
    config = write_config(emulator, tmp_path / "sync.toml", mirror)
    result = imagesync("sync", "-c", config, "-q")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_dry_run_writes_nothing(emulator: Any, tmp_path: Path, mirror: Path) -> None:
    config = write_config(emulator, tmp_path / "sync.toml", mirror)
    before = tree_snapshot(tmp_path)
    result = imagesync("sync", "-c", config, "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    assert tree_snapshot(tmp_path) == before
    assert not mirror.exists()
    plan = summary(result)
    sizes = {e["ImageId"]: emulator.object_path(e["ImageId"]).stat().st_size for e in exported(emulator)}
    assert {i["image_id"]: i["action"] for i in plan["images"]} == {i: "download" for i in sizes}
    assert plan["totals"]["bytes_to_transfer"] == sum(sizes.values())
    assert plan["totals"]["images_to_transfer"] == len(sizes)
    assert plan["destination"]["fits"] is True

    # After a real run, the preview of an existing mirror changes nothing either.
    assert imagesync("sync", "-c", config).returncode == 0
    before = tree_snapshot(tmp_path)
    again = summary(imagesync("sync", "-c", config, "--dry-run", "--json"))
    assert {i["action"] for i in again["images"]} == {"skip"}
    assert again["totals"]["bytes_to_transfer"] == 0
    assert tree_snapshot(tmp_path) == before


def test_dropped_connection_resumes_in_the_same_run(emulator: Any, tmp_path: Path, mirror: Path) -> None:
    config = write_config(emulator, tmp_path / "sync.toml", mirror, transfer={"concurrency": 1})
    emulator.faults(drop_after_bytes=300_000, drop_times=3)
    result = imagesync("sync", "-c", config, "--json")
    assert result.returncode == 0, result.stderr
    ids = [e["ImageId"] for e in exported(emulator)]
    assert_mirror_matches(emulator, mirror, ids)
    total = sum(emulator.object_path(i).stat().st_size for i in ids)
    # Resumed, not restarted: what crossed the wire is the objects plus at most the dropped tails.
    assert summary(result)["bytes_transferred"] == total
    assert emulator.stats()["object_gets"] >= len(ids) + 3


def test_5xx_and_expired_urls_are_ridden_out(emulator: Any, tmp_path: Path, mirror: Path) -> None:
    config = write_config(emulator, tmp_path / "sync.toml", mirror)
    emulator.faults(oss_5xx=2, oss_403_expired=2)
    result = imagesync("sync", "-c", config, "--json")
    assert result.returncode == 0, result.stderr
    assert_mirror_matches(emulator, mirror, [e["ImageId"] for e in exported(emulator)])


def test_corrupt_byte_is_caught_and_refetched(emulator: Any, tmp_path: Path, mirror: Path) -> None:
    config = write_config(emulator, tmp_path / "sync.toml", mirror)
    emulator.faults(corrupt_offset=12_345, corrupt_times=1)
    result = imagesync("sync", "-c", config, "--json")
    assert result.returncode == 0, result.stderr
    assert_mirror_matches(emulator, mirror, [e["ImageId"] for e in exported(emulator)])


def test_persistent_corruption_fails_that_image_only(emulator: Any, tmp_path: Path, mirror: Path) -> None:
    images = exported(emulator)
    bad = images[0]
    config = write_config(emulator, tmp_path / "sync.toml", mirror)
    emulator.faults(corrupt_offset=1000, corrupt_times=-1, key=bad["Key"])
    result = imagesync("sync", "-c", config)
    assert result.returncode == 1
    assert bad["ImageId"] in result.stderr and "CRC-64" in result.stderr
    assert "Traceback" not in result.stderr
    good = [e["ImageId"] for e in images[1:]]
    assert_mirror_matches(emulator, mirror, good)
    assert not (mirror / f"{bad['ImageId']}.qcow2").exists()


def test_changed_source_is_replaced_only_after_it_verifies(emulator: Any, tmp_path: Path, mirror: Path) -> None:
    from imagesync.emulator import catalog

    config = write_config(emulator, tmp_path / "sync.toml", mirror)
    assert imagesync("sync", "-c", config).returncode == 0
    target = exported(emulator)[0]
    image_id = target["ImageId"]
    old_bytes = (mirror / f"{image_id}.qcow2").read_bytes()
    old_entry = next(e for e in manifest_of(mirror)["images"] if e["image_id"] == image_id)
    catalog.rewrite_object(emulator.root, image_id, seed="re-exported")

    # A replacement that cannot verify leaves the old copy and its manifest entry alone.
    emulator.faults(corrupt_offset=10, corrupt_times=-1, key=target["Key"])
    failed = imagesync("sync", "-c", config, "--json")
    assert failed.returncode == 1
    assert (mirror / f"{image_id}.qcow2").read_bytes() == old_bytes
    assert next(e for e in manifest_of(mirror)["images"] if e["image_id"] == image_id) == old_entry

    emulator.reset()
    replaced = imagesync("sync", "-c", config, "--json")
    assert replaced.returncode == 0, replaced.stderr
    actions = {i["image_id"]: i["action"] for i in summary(replaced)["images"]}
    assert actions[image_id] == "replace"
    assert (mirror / f"{image_id}.qcow2").read_bytes() == emulator.object_path(image_id).read_bytes()
    assert_mirror_matches(emulator, mirror, [e["ImageId"] for e in exported(emulator)])


def test_disallowed_host_fails_before_any_connection(emulator: Any, tmp_path: Path, mirror: Path) -> None:
    config = write_config(emulator, tmp_path / "sync.toml", mirror, source={"allow_hosts": ["localhost"]})
    result = imagesync("sync", "-c", config)
    assert result.returncode == 1
    assert "refusing to download" in result.stderr
    assert emulator.stats()["oss_requests"] == 0


def test_hostile_names_stay_inside(start_emulator: Any, tmp_path: Path, mirror: Path) -> None:
    from imagesync.emulator import catalog

    emulator = start_emulator(images=1, image_size="64KiB")
    hostile = ["../../etc/x", "a/b", "nul\x00byte", "x" * 300, "..", "manifest.json", "a\\b"]
    for number, name in enumerate(hostile):
        catalog.add_image(emulator.root, image_id=f"m-hostile{number}", name=name, size=4096)
    config = write_config(emulator, tmp_path / "sync.toml", mirror,
                          destination={"path_template": "{image_name}.qcow2"})
    result = imagesync("sync", "-c", config, "--json")
    assert result.returncode == 0, result.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    ours = {"sync.toml", "emulator.stderr"}
    outside = [p for p in written if mirror not in p.parents and p.name not in ours
               and (tmp_path / "emulator") not in p.parents]
    assert outside == []
    paths = [entry["path"] for entry in manifest_of(mirror)["images"]]
    assert len(paths) == len(set(paths)) == len(hostile) + 1
    assert_mirror_matches(emulator, mirror, [e["ImageId"] for e in exported(emulator)])


def test_second_run_waits_for_the_lock(emulator: Any, tmp_path: Path, mirror: Path) -> None:
    import fcntl

    config = write_config(emulator, tmp_path / "sync.toml", mirror)
    mirror.mkdir()
    with open(mirror / ".imagesync.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = imagesync("sync", "-c", config)
    assert result.returncode == 75
    assert "another imagesync run" in one_sentence(result)


def partial_bytes(mirror: Path) -> int:
    return sum(p.stat().st_size for p in mirror.rglob("*.imagesync-part")) if mirror.exists() else 0


def test_sigkill_at_half_then_resume(start_emulator: Any, tmp_path: Path, mirror: Path) -> None:
    emulator = start_emulator(images=2, image_size="24MiB")
    total = sum(emulator.object_path(e["ImageId"]).stat().st_size for e in exported(emulator))
    config = write_config(emulator, tmp_path / "sync.toml", mirror)
    emulator.faults(bandwidth_bps=12 << 20)
    process = subprocess.Popen([sys.executable, "-m", "imagesync", "sync", "-c", str(config)],
                               env=CLEAN_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while partial_bytes(mirror) < total // 2 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    on_disk = partial_bytes(mirror)
    assert total * 0.4 < on_disk < total, (on_disk, total)

    emulator.reset()
    result = imagesync("sync", "-c", config, "--json")
    assert result.returncode == 0, result.stderr
    assert summary(result)["bytes_transferred"] <= 0.55 * total
    assert emulator.stats()["body_bytes_sent"] <= 0.55 * total
    assert_mirror_matches(emulator, mirror, [e["ImageId"] for e in exported(emulator)])


def test_sigterm_exits_143_and_keeps_partials(start_emulator: Any, tmp_path: Path, mirror: Path) -> None:
    emulator = start_emulator(images=1, image_size="16MiB")
    config = write_config(emulator, tmp_path / "sync.toml", mirror)
    emulator.faults(bandwidth_bps=4 << 20)
    process = subprocess.Popen([sys.executable, "-m", "imagesync", "sync", "-c", str(config)],
                               env=CLEAN_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while partial_bytes(mirror) < 2 << 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 143, stderr
    assert "SIGTERM" in stderr and "Traceback" not in stderr
    assert partial_bytes(mirror) > 0


def test_ctrl_c_at_any_moment_leaves_a_mirror_the_next_run_completes(start_emulator: Any, tmp_path: Path,
                                                                     mirror: Path) -> None:
    """SIGINT lands wherever it lands (receiving, or between starting a batch's write and hash);
    each run exits 130, and the run after them all mirrors the image byte for byte."""
    emulator = start_emulator(images=1, image_size="48MiB")
    config = write_config(emulator, tmp_path / "sync.toml", mirror)
    emulator.faults(bandwidth_bps=24 << 20)
    for delay_s in (0.35, 0.6, 0.85, 1.1):
        process = subprocess.Popen([sys.executable, "-m", "imagesync", "sync", "-c", str(config), "-q"],
                                   env=CLEAN_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay_s)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
        if process.returncode == 0:
            break  # it finished first: nothing was interrupted
        # A shell shows 130 for both: the exit code, or death by SIGINT (the signal can land
        # while the interpreter is finalizing, when Python no longer handles it)
        assert process.returncode in (130, -signal.SIGINT), stderr
        assert "Traceback" not in stderr
    emulator.reset()
    assert imagesync("sync", "-c", config).returncode == 0
    assert_mirror_matches(emulator, mirror, [e["ImageId"] for e in exported(emulator)])


def test_disk_full_stops_the_run_and_keeps_partials(start_emulator: Any, tmp_path: Path, small_tmpfs: Any) -> None:
    small_disk = small_tmpfs("3m")  # a real ENOSPC
    emulator = start_emulator(images=3, image_size="2MiB")
    mirror = small_disk / "mirror"
    config = write_config(emulator, tmp_path / "sync.toml", mirror)
    result = imagesync("sync", "-c", config, "-q", "--ignore-free-space")
    assert result.returncode == 1
    line = one_sentence(result)
    # Either an image's write or the manifest's hits ENOSPC first; both say so and what to do.
    assert ("destination is full" in line or "No space left" in line) and "free some space" in line
    assert partial_bytes(mirror) > 0
    manifest = mirror / "manifest.json"
    if manifest.exists():  # whatever it lists must be complete and verified
        for entry in manifest_of(mirror)["images"]:
            assert (mirror / entry["path"]).read_bytes() == emulator.object_path(entry["image_id"]).read_bytes()


def test_disk_full_in_the_middle_of_an_image_publishes_nothing(start_emulator: Any, tmp_path: Path,
                                                              small_tmpfs: Any) -> None:
    """ENOSPC on a later batch, while the next one is already being received and hashed: the
    write's failure wins, and no byte that was hashed but not written is ever counted as copied."""
    small_disk = small_tmpfs("20m")
    emulator = start_emulator(images=1, image_size="40MiB")
    mirror = small_disk / "mirror"
    config = write_config(emulator, tmp_path / "sync.toml", mirror)
    result = imagesync("sync", "-c", config, "-q", "--ignore-free-space")
    assert result.returncode == 1
    assert "free some space" in one_sentence(result)
    assert not list(mirror.glob("*.qcow2")) and 8 << 20 <= partial_bytes(mirror) <= 20 << 20
    manifest = mirror / "manifest.json"
    assert not manifest.exists() or manifest_of(mirror)["images"] == []


def test_image_gone_from_the_account_stays_marked(emulator: Any, tmp_path: Path, mirror: Path) -> None:
    from imagesync.emulator import catalog

    config = write_config(emulator, tmp_path / "sync.toml", mirror)
    assert imagesync("sync", "-c", config).returncode == 0
    gone = exported(emulator)[0]["ImageId"]
    kept_bytes = (mirror / f"{gone}.qcow2").read_bytes()
    catalog.remove_image(emulator.root, gone, delete_object=True)
    result = imagesync("sync", "-c", config, "--json")
    assert result.returncode == 0, result.stderr
    assert summary(result)["no_longer_listed"] == [gone]
    entries = {e["image_id"]: e for e in manifest_of(mirror)["images"]}
    assert entries[gone]["missing_since"]
    assert all("missing_since" not in e or e["missing_since"] is None for i, e in entries.items() if i != gone)
    assert (mirror / f"{gone}.qcow2").read_bytes() == kept_bytes
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=mirror, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout


def test_progress_bars_when_asked(emulator: Any, tmp_path: Path, mirror: Path) -> None:
    config = write_config(emulator, tmp_path / "sync.toml", mirror)
    result = imagesync("sync", "-c", config, "--progress", "always")
    assert result.returncode == 0, result.stderr
    assert "total" in result.stderr and "B/s" in result.stderr and "Traceback" not in result.stderr


def test_only_the_asked_image(emulator: Any, tmp_path: Path, mirror: Path) -> None:
    config = write_config(emulator, tmp_path / "sync.toml", mirror)
    wanted = exported(emulator)[1]["ImageId"]
    result = imagesync("sync", "-c", config, "--image-id", wanted, "--json")
    assert result.returncode == 0, result.stderr
    assert [e["image_id"] for e in manifest_of(mirror)["images"]] == [wanted]
    assert summary(result)["no_longer_listed"] == []
    unknown = imagesync("sync", "-c", config, "--image-id", "m-nosuchimage", "--json")
    assert unknown.returncode == 1
    assert summary(unknown)["unknown_image_ids"] == ["m-nosuchimage"]


def test_verify_finds_rot_and_loss(emulator: Any, tmp_path: Path, mirror: Path) -> None:
    config = write_config(emulator, tmp_path / "sync.toml", mirror)
    assert imagesync("sync", "-c", config).returncode == 0
    clean = imagesync("verify", "-c", config, "--json")
    assert clean.returncode == 0, clean.stderr
    assert {v["result"] for v in json.loads(clean.stdout)} == {"ok"}

    first, second = sorted(mirror.glob("*.qcow2"))[:2]
    with open(first, "r+b") as file:  # one flipped byte in the middle: bit rot
        file.seek(first.stat().st_size // 2)
        byte = file.read(1)
        file.seek(-1, 1)
        file.write(bytes([byte[0] ^ 0xFF]))
    second.unlink()
    rotten = imagesync("verify", "-c", config, "--json")
    assert rotten.returncode == 1
    results = {v["path"]: v["result"] for v in json.loads(rotten.stdout)}
    assert results[first.name] == "corrupt" and results[second.name] == "missing"
    assert list(results.values()).count("ok") == len(results) - 2


def test_a_link_that_keeps_dropping_gives_up(emulator: Any, tmp_path: Path, mirror: Path) -> None:
    """Progress of a few KiB per attempt is not progress: the image fails in bounded time."""
    config = write_config(emulator, tmp_path / "sync.toml", mirror, transfer={"max_attempts": 4})
    target = exported(emulator)[0]
    emulator.faults(drop_after_bytes=4096, drop_times=-1, key=target["Key"])
    result = imagesync("sync", "-c", config, timeout=60)
    assert result.returncode == 1
    assert target["ImageId"] in result.stderr and "gave up after 4 attempts" in result.stderr
    assert emulator.stats()["object_gets"] < 20
    assert not (mirror / f"{target['ImageId']}.qcow2").exists()


def test_asking_for_an_image_that_is_not_exported_fails(emulator: Any, tmp_path: Path, mirror: Path) -> None:
    config = write_config(emulator, tmp_path / "sync.toml", mirror)
    exporting = next(e for e in emulator.catalog() if e["ImageExportStatus"] == "Exporting")
    result = imagesync("sync", "-c", config, "--image-id", exporting["ImageId"], "-q")
    assert result.returncode == 1
    assert f"{exporting['ImageId']} is Exporting, not exported" in result.stderr


def test_without_a_published_crc_a_drop_restarts_from_zero(emulator: Any, tmp_path: Path, mirror: Path) -> None:
    """No CRC-64 to vouch for a joined file: never resume, fetch the object whole again."""
    config = write_config(emulator, tmp_path / "sync.toml", mirror, transfer={"concurrency": 1})
    target = exported(emulator)[0]
    size = emulator.object_path(target["ImageId"]).stat().st_size
    emulator.faults(omit_crc64=1, drop_after_bytes=size // 2, drop_times=1, key=target["Key"])
    result = imagesync("sync", "-c", config, "--json")
    assert result.returncode == 0, result.stderr
    sent = emulator.stats()["bytes_by_key"][target["Key"]]
    assert sent >= size + size // 2  # the first half, then the whole object again
    assert_mirror_matches(emulator, mirror, [e["ImageId"] for e in exported(emulator)])


def test_files_without_a_record_are_adopted_or_replaced(emulator: Any, tmp_path: Path, mirror: Path) -> None:
    """A pre-seeded disk (or a crash between rename and record): keep what hashes right."""
    config = write_config(emulator, tmp_path / "sync.toml", mirror)
    assert imagesync("sync", "-c", config).returncode == 0
    for name in ("manifest.json", "SHA256SUMS"):
        (mirror / name).unlink()
    images = exported(emulator)
    damaged = mirror / f"{images[0]['ImageId']}.qcow2"
    with open(damaged, "r+b") as file:
        file.seek(100)
        file.write(b"\x00\x01\x02")
    result = imagesync("sync", "-c", config, "--json")
    assert result.returncode == 0, result.stderr
    document = summary(result)
    assert {i["action"] for i in document["images"]} == {"adopt"}
    assert document["bytes_transferred"] == emulator.object_path(images[0]["ImageId"]).stat().st_size
    assert_mirror_matches(emulator, mirror, [e["ImageId"] for e in images])

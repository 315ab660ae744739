"""Running unattended: repair, --wait, room before starting, metrics, output for logs, example config.

All through the CLI against the emulator, asserting on files, the manifest and what a log keeps.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from clitools import imagesync, one_sentence, summary, write_config
from prometheus_client.parser import text_string_to_metric_families

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}[+-]\d{2}:\d{2} ")


def sums_ok(mirror: Path) -> bool:
    check = subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=mirror, capture_output=True)
    return check.returncode == 0


def damage(mirror: Path) -> dict[str, str]:
    """Flip a byte in one image, truncate another, delete the third: image_id -> what was done."""
    entries = sorted(json.loads((mirror / "manifest.json").read_text())["images"], key=lambda e: e["image_id"])
    flipped, truncated, deleted = (mirror / e["path"] for e in entries)
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    with open(truncated, "r+b") as file:
        file.truncate(1000)
    deleted.unlink()
    return dict(zip((e["image_id"] for e in entries), ("corrupt", "corrupt", "missing"), strict=True))


@pytest.mark.parametrize("heal_with", ["sync", "verify --repair"])
def test_verify_finds_damage_and_it_is_healed(emulator: Any, tmp_path: Path, heal_with: str) -> None:
    mirror = tmp_path / "mirror"
    config = write_config(emulator, tmp_path / "sync.toml", mirror)
    assert imagesync("sync", "-c", config).returncode == 0
    expected = damage(mirror)

    if heal_with == "sync":
        found = imagesync("verify", "-c", config, "--json")
        assert found.returncode == 1
        assert {v["image_id"]: v["result"] for v in json.loads(found.stdout)} == expected
        manifest = json.loads((mirror / "manifest.json").read_text())
        assert manifest["last_verify"]["checked"] == 3 and manifest["last_verify"]["problems"] == 3
        plan = summary(imagesync("sync", "-c", config, "--dry-run", "--json"))
        assert {i["action"] for i in plan["images"]} != {"skip"}
        healed = imagesync("sync", "-c", config, "--json")
    else:
        healed = imagesync("verify", "-c", config, "--repair")
    assert healed.returncode == 0, healed.stderr
    assert sums_ok(mirror)
    assert imagesync("verify", "-c", config).returncode == 0
    for entry in json.loads((mirror / "manifest.json").read_text())["images"]:
        assert "verify_problem" not in entry
        assert (mirror / entry["path"]).read_bytes() == emulator.object_path(entry["image_id"]).read_bytes()


def test_sync_checksum_rehashes_before_skipping(emulator: Any, tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    config = write_config(emulator, tmp_path / "sync.toml", mirror)
    assert imagesync("sync", "-c", config).returncode == 0
    path = mirror / sorted(json.loads((mirror / "manifest.json").read_text())["images"],
                           key=lambda e: e["image_id"])[0]["path"]
    data = bytearray(path.read_bytes())
    data[12345] ^= 1
    path.write_bytes(bytes(data))
    plain = summary(imagesync("sync", "-c", config, "--dry-run", "--json"))
    assert {i["action"] for i in plain["images"]} == {"skip"}  # size and record alone look fine
    result = imagesync("sync", "-c", config, "--checksum", "--json")
    assert result.returncode == 0, result.stderr
    assert summary(result)["counts"] == {"mirrored": 1, "skipped": 2, "failed": 0}
    assert sums_ok(mirror)


def test_wait_mirrors_an_image_as_soon_as_it_is_exported(emulator: Any, tmp_path: Path) -> None:
    late = emulator.add_scheduled_image(name="late-export", exported_after_listings=2, size=1 << 20)
    later = emulator.add_scheduled_image(name="later-export", exported_after_listings=8, size=1 << 20)
    failing = emulator.add_scheduled_image(name="doomed-export", error_after_listings=1, size=1 << 20)
    mirror = tmp_path / "mirror"
    chosen = [image["ImageId"] for image in (late, later, failing)]
    config = write_config(emulator, tmp_path / "sync.toml", mirror, wait={"interval_s": 0.2, "timeout_s": 30},
                          filter={"image_ids": chosen})
    result = imagesync("sync", "-c", config, "--wait", "--json")
    outcomes = {i["image_id"]: i for i in summary(result)["images"]}
    assert outcomes[late["ImageId"]]["result"] == "mirrored"
    assert outcomes[later["ImageId"]]["result"] == "mirrored"
    # The first was mirrored while the second was still being waited for.
    lines = result.stderr.splitlines()
    done_late = next(n for n, line in enumerate(lines) if f"done {late['ImageId']}" in line)
    assert any("waiting for 1 image" in line and later["ImageId"] in line for line in lines[done_late:])
    assert outcomes[failing["ImageId"]]["result"] == "failed"
    assert "ExportError" in outcomes[failing["ImageId"]]["reason"]
    assert result.returncode == 1
    recorded = {e["image_id"] for e in json.loads((mirror / "manifest.json").read_text())["images"]}
    assert late["ImageId"] in recorded and failing["ImageId"] not in recorded
    assert sums_ok(mirror)


def test_wait_gives_up_after_its_timeout(emulator: Any, tmp_path: Path) -> None:
    stuck = emulator.add_scheduled_image(name="stuck", exported_after_listings=10_000, size=1 << 20)
    config = write_config(emulator, tmp_path / "sync.toml", tmp_path / "mirror",
                          wait={"interval_s": 0.1, "timeout_s": 0.5}, filter={"image_ids": [stuck["ImageId"]]})
    started = time.monotonic()
    result = imagesync("sync", "-c", config, "--wait", "--json")
    assert time.monotonic() - started < 30
    assert result.returncode == 1
    [outcome] = summary(result)["images"]
    assert "still exporting" in outcome["reason"] and "wait.timeout_s" in outcome["reason"]


def test_a_plan_that_cannot_fit_transfers_nothing(start_emulator: Any, tmp_path: Path, small_tmpfs: Any) -> None:
    small_disk = small_tmpfs("6m")
    emulator = start_emulator(images=3, image_size="1MiB")
    config = write_config(emulator, tmp_path / "sync.toml", small_disk / "mirror")
    refused = imagesync("sync", "-c", config)
    assert refused.returncode == 1
    line = one_sentence(refused)
    assert "3.0 MiB" in line and "free" in line and "--ignore-free-space" in line
    assert emulator.stats()["object_gets"] == 0
    forced = imagesync("sync", "-c", config, "--ignore-free-space")
    assert forced.returncode == 0, forced.stderr
    assert sums_ok(small_disk / "mirror")


def test_metrics_file_parses_and_matches_the_run(emulator: Any, tmp_path: Path) -> None:
    prom = tmp_path / "textfile" / "imagesync.prom"
    prom.parent.mkdir()
    config = write_config(emulator, tmp_path / "sync.toml", tmp_path / "mirror", run={"metrics_file": str(prom)})
    before = time.time()
    first = imagesync("sync", "-c", config, "--json")
    assert first.returncode == 0, first.stderr

    def values() -> dict[tuple[str, str], float]:
        found = {}
        for family in text_string_to_metric_families(prom.read_text()):
            for sample in family.samples:
                found[(sample.name, sample.labels.get("outcome", ""))] = sample.value
        return found

    got = values()
    assert got[("imagesync_last_run_exit_code", "")] == 0
    assert got[("imagesync_last_run_images", "mirrored")] == 3
    assert got[("imagesync_last_run_bytes_transferred", "")] == summary(first)["bytes_transferred"]
    success = got[("imagesync_last_success_timestamp_seconds", "")]
    assert before - 1 <= success <= time.time() + 1
    assert (prom.stat().st_mode & 0o777) == 0o644

    emulator.faults(oss_5xx=10_000)
    emulator.rewrite_object(emulator.exported()[0]["ImageId"])
    failing = imagesync("sync", "-c", config)
    assert failing.returncode == 1
    got = values()
    assert got[("imagesync_last_run_exit_code", "")] == 1
    assert got[("imagesync_last_success_timestamp_seconds", "")] == success
    emulator.reset()
    assert imagesync("verify", "-c", config).returncode == 0
    got = values()
    assert got[("imagesync_last_verify_problems", "")] == 0
    assert got[("imagesync_last_run_exit_code", "")] == 1  # a verify keeps the sync's figures


def test_without_a_terminal_every_line_is_timestamped_and_plain(emulator: Any, tmp_path: Path) -> None:
    config = write_config(emulator, tmp_path / "sync.toml", tmp_path / "mirror")
    result = imagesync("sync", "-c", config)
    assert result.returncode == 0
    lines = result.stderr.splitlines()
    assert lines and all(TIMESTAMP.match(line) for line in lines), lines
    assert "\r" not in result.stderr and "\x1b" not in result.stderr


def test_example_config_is_the_annotated_file(tmp_path: Path) -> None:
    result = imagesync("example-config")
    assert result.returncode == 0
    shipped = (Path(__file__).parent.parent / "sync.example.toml").read_text()
    assert result.stdout == shipped
    missing = imagesync("sync", "-c", tmp_path / "nope.toml")
    assert missing.returncode == 2 and "imagesync example-config" in one_sentence(missing)


def test_keep_replaced_keeps_exactly_the_last_copies(emulator: Any, tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    config = write_config(emulator, tmp_path / "sync.toml", mirror, destination={"keep_replaced": 1})
    image_id = sorted(e["ImageId"] for e in emulator.exported())[0]
    versions = [emulator.object_path(image_id).read_bytes()]
    assert imagesync("sync", "-c", config).returncode == 0
    for _ in range(2):  # two re-exports, maybe within one second: each kept copy has its own name
        emulator.rewrite_object(image_id)
        versions.append(emulator.object_path(image_id).read_bytes())
        result = imagesync("sync", "-c", config)
        assert result.returncode == 0, result.stderr
    entry = next(e for e in json.loads((mirror / "manifest.json").read_text())["images"] if e["image_id"] == image_id)
    assert (mirror / entry["path"]).read_bytes() == versions[2]
    [kept] = entry["replaced"]
    assert (mirror / kept["path"]).read_bytes() == versions[1]
    assert kept["path"].startswith("replaced/")
    assert [p.name for p in (mirror / "replaced").iterdir()] == [Path(kept["path"]).name]
    assert sums_ok(mirror)  # SHA256SUMS lists the current files only
    assert "replaced/" not in (mirror / "SHA256SUMS").read_text()


def test_two_replacements_within_one_second_keep_two_copies(emulator: Any, tmp_path: Path) -> None:
    """Kept copies are named by when the replaced copy was mirrored, to the second: a copy
    mirrored in the same second as one kept earlier gets a numbered name, never the same one."""
    mirror = tmp_path / "mirror"
    config = write_config(emulator, tmp_path / "sync.toml", mirror, destination={"keep_replaced": 2})
    image_id = sorted(e["ImageId"] for e in emulator.exported())[0]
    versions = []
    for generation in range(3):
        if generation:
            emulator.rewrite_object(image_id)
        versions.append(emulator.object_path(image_id).read_bytes())
        if generation == 2:  # as if the second copy was mirrored in the same second as the first
            document = json.loads((mirror / "manifest.json").read_text())
            entry = next(e for e in document["images"] if e["image_id"] == image_id)
            entry["mirrored_at"] = entry["replaced"][0]["mirrored_at"]
            (mirror / "manifest.json").write_text(json.dumps(document))
        result = imagesync("sync", "-c", config)
        assert result.returncode == 0, result.stderr
    entry = next(e for e in json.loads((mirror / "manifest.json").read_text())["images"] if e["image_id"] == image_id)
    newer, older = entry["replaced"]
    assert newer["path"] == older["path"] + ".2"
    assert (mirror / newer["path"]).read_bytes() == versions[1]
    assert (mirror / older["path"]).read_bytes() == versions[0]
    assert (mirror / entry["path"]).read_bytes() == versions[2]


def test_many_images_are_planned_from_bucket_listings_not_heads(start_emulator: Any, tmp_path: Path) -> None:
    emulator = start_emulator(images=30, image_size="4KiB")
    mirror = tmp_path / "mirror"
    config = write_config(emulator, tmp_path / "sync.toml", mirror)
    first = imagesync("sync", "-c", config, "--json")
    assert first.returncode == 0, first.stderr
    assert emulator.stats()["oss_operations"].get("ListObjectsV2", 0) >= 1
    emulator.reset()
    changed = sorted(e["ImageId"] for e in emulator.exported())[3]
    emulator.rewrite_object(changed)
    second = imagesync("sync", "-c", config, "--json")
    assert second.returncode == 0, second.stderr
    stats = emulator.stats()
    assert stats["object_heads"] == 1  # only the changed image, for its CRC-64 before the transfer
    assert summary(second)["counts"] == {"mirrored": 1, "skipped": 29, "failed": 0}
    assert sums_ok(mirror)
    entry = next(e for e in json.loads((mirror / "manifest.json").read_text())["images"] if e["image_id"] == changed)
    assert (mirror / entry["path"]).read_bytes() == emulator.object_path(changed).read_bytes()


def test_verbose_shows_retries_resumes_and_refetches(start_emulator: Any, tmp_path: Path) -> None:
    emulator = start_emulator(images=1, image_size="12MiB")
    emulator.faults(drop_after_bytes=9 << 20, corrupt_offset=1000)
    config = write_config(emulator, tmp_path / "sync.toml", tmp_path / "mirror")
    result = imagesync("sync", "-c", config, "-v")
    assert result.returncode == 0, result.stderr
    log = result.stderr
    assert "retry 1 of" in log and "resuming at byte" in log
    assert "fetching it again from the start" in log and "CRC-64" in log
    assert "Signature" not in log and "emulator-secret" not in log

"""Links planted inside the destination are never followed: nothing outside it ever changes.

Each case plants one symbolic link where imagesync creates, truncates, appends or renames a
file, pointing at a victim outside the destination, runs a real sync against the emulator,
and checks the victim byte for byte. What the tool does instead is asserted per case.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from clitools import imagesync, one_sentence, sha256_of, summary, tree_snapshot, write_config

VICTIM = b"precious data that is not an image\n"


def plant(mirror: Path, relative: str, target: Path) -> None:
    link = mirror / relative
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


def first_image(emulator: Any) -> dict[str, Any]:
    return sorted(emulator.exported(), key=lambda e: e["ImageId"])[0]


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "outside" / "victim"
    path.parent.mkdir()
    path.write_bytes(VICTIM)
    return path


def run_sync(emulator: Any, tmp_path: Path, mirror: Path, **tables: Any) -> Any:
    config = write_config(emulator, tmp_path / "sync.toml", mirror, **tables)
    return imagesync("sync", "-c", config, "--json")


@pytest.mark.parametrize("where", ["final", "partial", "state"])
def test_link_at_an_image_name_is_replaced_by_a_real_file(
    emulator: Any, tmp_path: Path, victim: Path, where: str
) -> None:
    mirror = tmp_path / "mirror"
    image = first_image(emulator)
    name = f"{image['ImageId']}.qcow2"
    suffix = {"final": "", "partial": ".imagesync-part", "state": ".imagesync-state"}[where]
    plant(mirror, name + suffix, victim)
    before = tree_snapshot(victim.parent)

    result = run_sync(emulator, tmp_path, mirror)

    assert result.returncode == 0, result.stderr
    assert tree_snapshot(victim.parent) == before
    final = mirror / name
    assert not final.is_symlink() and stat.S_ISREG(final.lstat().st_mode)
    assert final.read_bytes() == emulator.object_path(image["ImageId"]).read_bytes()
    assert not list(mirror.rglob("*.imagesync-*"))
    assert all(not p.is_symlink() for p in mirror.rglob("*"))


def test_recorded_image_replaced_by_a_link_is_fetched_again(
    emulator: Any, tmp_path: Path, victim: Path
) -> None:
    mirror = tmp_path / "mirror"
    assert run_sync(emulator, tmp_path, mirror).returncode == 0
    image = first_image(emulator)
    final = mirror / f"{image['ImageId']}.qcow2"
    final.unlink()
    victim.write_bytes(emulator.object_path(image["ImageId"]).read_bytes())  # even a perfect copy
    final.symlink_to(victim)
    before = tree_snapshot(victim.parent)

    result = run_sync(emulator, tmp_path, mirror)

    assert result.returncode == 0, result.stderr
    actions = {i["image_id"]: i["action"] for i in summary(result)["images"]}
    assert actions[image["ImageId"]] == "download"
    assert not final.is_symlink()
    assert tree_snapshot(victim.parent) == before


@pytest.mark.parametrize("name", [".imagesync.lock", "manifest.json", "manifest.journal"])
def test_link_at_a_file_of_the_tool_stops_the_run_with_a_sentence(
    emulator: Any, tmp_path: Path, victim: Path, name: str
) -> None:
    mirror = tmp_path / "mirror"
    plant(mirror, name, victim)
    before = tree_snapshot(victim.parent)

    result = run_sync(emulator, tmp_path, mirror)

    assert result.returncode == 1
    line = one_sentence(result)
    assert name in line and "symbolic link" in line
    assert tree_snapshot(victim.parent) == before
    assert not list(mirror.glob("*.qcow2"))  # nothing transferred and recorded


def test_link_at_sha256sums_is_replaced_by_the_real_file(
    emulator: Any, tmp_path: Path, victim: Path
) -> None:
    mirror = tmp_path / "mirror"
    plant(mirror, "SHA256SUMS", victim)
    before = tree_snapshot(victim.parent)

    result = run_sync(emulator, tmp_path, mirror)

    assert result.returncode == 0, result.stderr
    assert tree_snapshot(victim.parent) == before
    sums = mirror / "SHA256SUMS"
    assert not sums.is_symlink()
    recorded = {e["path"]: e["sha256"] for e in json.loads((mirror / "manifest.json").read_text())["images"]}
    assert {line.split("  ", 1)[1]: line.split("  ", 1)[0] for line in sums.read_text().splitlines()} == recorded
    assert all(sha256_of(mirror / path) == digest for path, digest in recorded.items())


def test_link_at_a_template_folder_fails_those_images_only(
    emulator: Any, tmp_path: Path, victim: Path
) -> None:
    mirror = tmp_path / "mirror"
    image = first_image(emulator)
    folder = image["Platform"]
    plant(mirror, folder, victim.parent)
    before = tree_snapshot(victim.parent)

    result = run_sync(emulator, tmp_path, mirror,
                      destination={"path_template": "{platform}/{image_id}.qcow2"})

    assert tree_snapshot(victim.parent) == before
    outcomes = {i["image_id"]: i for i in summary(result)["images"]}
    failed = outcomes[image["ImageId"]]
    assert failed["result"] == "failed" and "symbolic link" in failed["reason"]
    assert result.returncode == 1
    recorded = {e["image_id"] for e in json.loads((mirror / "manifest.json").read_text())["images"]}
    assert image["ImageId"] not in recorded
    assert recorded == {i for i, o in outcomes.items() if o["result"] == "mirrored"}


def test_destination_writable_by_others_warns_or_refuses(emulator: Any, tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    mirror.chmod(0o777)

    warned = run_sync(emulator, tmp_path, mirror)
    assert warned.returncode == 0, warned.stderr
    assert "writable by every user" in warned.stderr and "chmod go-w" in warned.stderr

    refused = run_sync(emulator, tmp_path, tmp_path / "other",
                       destination={"refuse_unsafe_permissions": True})
    assert refused.returncode == 0  # a new folder is created 0755: nothing to refuse
    (tmp_path / "other").chmod(0o777)
    refused = run_sync(emulator, tmp_path, tmp_path / "other",
                       destination={"refuse_unsafe_permissions": True})
    assert refused.returncode == 2
    assert "refuse_unsafe_permissions" in one_sentence(refused)


@pytest.mark.parametrize("name", ["manifest.journal", "state"])
def test_a_fifo_planted_in_the_destination_never_hangs_the_run(emulator: Any, tmp_path: Path, name: str) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    image = first_image(emulator)
    fifo = mirror / (name if name != "state" else f"{image['ImageId']}.qcow2.imagesync-state")
    os.mkfifo(fifo)
    result = run_sync(emulator, tmp_path, mirror)  # clitools' timeout fails the test on a hang
    if name == "state":  # not a usable state: the image is fetched afresh, the FIFO replaced
        assert result.returncode == 0, result.stderr
        assert not fifo.exists() or not stat.S_ISFIFO(fifo.lstat().st_mode)
    else:
        assert result.returncode == 1
        assert "not a regular file" in one_sentence(result)

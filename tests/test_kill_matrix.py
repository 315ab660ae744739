"""Crash anywhere: SIGKILL the CLI at named points, then prove nothing was lost or faked.

``IMAGESYNC_KILL_AT=NAME[:N]`` makes the process kill itself at the N-th passage of a named
point (see imagesync/killpoints.py). After each kill, every time:

* no file under a final name differs from a version of its source (no half or mixed file);
* manifest.json parses, and every entry it lists hashes to a version of its source;
* the next run exits 0 with a complete, verified mirror, transferring no more than what
  was missing (bytes of images not already in place, less the partial bytes kept).

The last test prints the tally: points tried, bytes lost, files wrongly recorded as verified.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from clitools import CLEAN_ENV, imagesync, summary, write_config

IMAGE_SIZE = 17 << 20  # three batches of 8 MiB: first, middle and last
TALLY: dict[str, Any] = {"points": [], "bytes_lost": 0, "wrongly_recorded": 0}


@dataclass(frozen=True)
class Case:
    point: str  # NAME or NAME:N
    setup: str = "fresh"  # fresh | resume | replace | verify
    command: str = "sync"


CASES = [
    Case("locked"), Case("listed"), Case("plan-head"), Case("plan-head:2"), Case("marked"),
    Case("begin"), Case("state-written"), Case("batch-written"), Case("batch-written:2"),
    Case("body-complete"), Case("before-rename"), Case("after-rename"), Case("recorded"),
    Case("begin:2"), Case("after-rename:2"), Case("compaction"), Case("after-publish"),
    Case("begin", setup="resume"), Case("batch-written", setup="resume"),
    Case("after-rename", setup="resume"),
    Case("batch-written", setup="replace"), Case("before-rename", setup="replace"),
    Case("after-rename", setup="replace"), Case("recorded", setup="replace"),
    Case("adopt", setup="replace-crashed"), Case("after-publish", setup="replace"),
    Case("verified-one", setup="verify", command="verify"),
]


FIXED = list(CASES)


def _soak_cases(count: int, seed: int) -> list[Case]:
    """``scripts/soak``: random points, passages and setups on top of the fixed matrix."""
    chooser = random.Random(seed)
    points = sorted({c.point.split(":")[0] for c in CASES if c.command == "sync"})
    setups = ["fresh", "resume", "replace", "replace-crashed"]
    return [Case(f"{chooser.choice(points)}:{chooser.randint(1, 4)}", setup=chooser.choice(setups))
            for _ in range(count)]


CASES += _soak_cases(int(os.environ.get("IMAGESYNC_SOAK", "0")), int(os.environ.get("IMAGESYNC_SOAK_SEED", "1")))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def killed_run(config: Path, point: str, command: str = "sync", *, must_die: bool = True) -> None:
    env = {**CLEAN_ENV, "IMAGESYNC_KILL_AT": point}
    result = subprocess.run([sys.executable, "-m", "imagesync", command, "-c", str(config)],
                            env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    if must_die:
        assert result.returncode == -signal.SIGKILL, f"{point} was never reached: {result.stderr}"


def versions_of(emulator: Any) -> dict[str, set[str]]:
    """image_id -> the sha256 of every version its source had so far (filled by the caller)."""
    return {e["ImageId"]: {sha(emulator.object_path(e["ImageId"]).read_bytes())} for e in emulator.exported()}


def final_files(mirror: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in mirror.glob("*.qcow2") if p.is_file()}


def partial_bytes(mirror: Path) -> int:
    return sum(p.stat().st_size for p in mirror.glob("*.imagesync-part"))


def setup_case(case: Case, emulator: Any, config: Path, known: dict[str, set[str]]) -> None:
    if case.setup == "resume":
        killed_run(config, "batch-written")
    elif case.setup in ("replace", "replace-crashed", "verify"):
        assert imagesync("sync", "-c", config).returncode == 0
        if case.setup != "verify":
            first = sorted(known)[0]
            emulator.rewrite_object(first)
            known[first].add(sha(emulator.object_path(first).read_bytes()))
        if case.setup == "replace-crashed":  # the new bytes renamed in, the record never written
            killed_run(config, "after-rename")


@pytest.mark.parametrize("case", CASES, ids=[f"{c.setup}-{c.point}" for c in CASES])
def test_kill_point(start_emulator: Any, tmp_path: Path, case: Case) -> None:
    emulator = start_emulator(images=2, image_size=f"{IMAGE_SIZE >> 20}MiB")
    mirror = tmp_path / "mirror"
    config = write_config(emulator, tmp_path / "sync.toml", mirror, transfer={"concurrency": 1})
    known = versions_of(emulator)
    setup_case(case, emulator, config, known)
    current = {i: sha(emulator.object_path(i).read_bytes()) for i in known}
    good_before = {name for name, data in final_files(mirror).items() if sha(data) == current[name[:-6]]}

    # A random soak case may name a passage the run never reaches: then it simply finishes.
    killed_run(config, case.point, case.command, must_die=case in FIXED)

    after = final_files(mirror)
    for name, data in after.items():  # never a half, mixed or foreign file under a final name
        assert sha(data) in known[name[:-6]], f"{name} matches no version of its source"
    lost = [name for name in good_before if sha(after.get(name, b"")) != current[name[:-6]]]
    TALLY["bytes_lost"] += sum(IMAGE_SIZE for _ in lost)
    manifest_path = mirror / "manifest.json"
    if manifest_path.exists():
        for entry in json.loads(manifest_path.read_text())["images"]:
            file = mirror / entry["path"]
            if not (entry["sha256"] in known[entry["image_id"]] and file.is_file()
                    and sha(file.read_bytes()) in known[entry["image_id"]]):
                TALLY["wrongly_recorded"] += 1
    TALLY["points"].append(f"{case.setup}-{case.point}")

    in_place = {name for name, data in after.items() if sha(data) == current[name[:-6]]}
    missing = (len(known) - len(in_place)) * IMAGE_SIZE - partial_bytes(mirror)
    emulator.reset()
    result = imagesync("sync", "-c", config, "--json")
    assert result.returncode == 0, result.stderr
    assert summary(result)["bytes_transferred"] <= max(missing, 0), (missing, summary(result))
    document = json.loads(manifest_path.read_text())
    assert sorted(e["image_id"] for e in document["images"]) == sorted(known)
    for entry in document["images"]:
        data = (mirror / entry["path"]).read_bytes()
        assert sha(data) == entry["sha256"] == current[entry["image_id"]]
    check = subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=mirror, capture_output=True)
    assert check.returncode == 0, check.stdout
    assert not list(mirror.glob("*.imagesync-*")) and not lost


def test_kill_matrix_tally(record_property: Any) -> None:
    """Runs after the cases (same module, file order, one worker): the figures the issue asks
    for, shown at the end of the run by tests/conftest.py."""
    tried = TALLY["points"]
    record_property("summary", f"kill matrix: {len(tried)} kill points tried, {TALLY['bytes_lost']} bytes "
                    f"lost, {TALLY['wrongly_recorded']} files wrongly recorded as verified")
    if os.environ.get("PYTEST_XDIST_WORKER") is None and len(tried) == len(CASES):
        assert len(tried) >= 20
    assert TALLY["bytes_lost"] == 0 and TALLY["wrongly_recorded"] == 0

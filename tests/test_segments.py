"""Segmented downloads: one image over several connections, verified by the pieces' combined
CRC-64, resumable piece by piece, end to end through the CLI against the emulator."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from clitools import CLEAN_ENV, imagesync, sha256_of, summary, write_config

MiB = 1 << 20
SEGMENTED = {"segments": 4, "min_segment_size": "4MiB"}


@pytest.fixture
def big_image(start_emulator: Any) -> Any:
    return start_emulator(images=1, image_size="40MiB")


def config_for(emulator: Any, tmp_path: Path, **transfer: Any) -> Path:
    return write_config(emulator, tmp_path / "sync.toml", tmp_path / "mirror", transfer={**SEGMENTED, **transfer})


def assert_identical(emulator: Any, mirror: Path) -> None:
    [entry] = json.loads((mirror / "manifest.json").read_text())["images"]
    assert (mirror / entry["path"]).read_bytes() == emulator.object_path(entry["image_id"]).read_bytes()
    assert entry["sha256"] == sha256_of(mirror / entry["path"]) and entry["verified"] == "crc64+sha256"
    assert not list(mirror.glob("*.imagesync-*"))


def test_an_image_comes_in_pieces_over_several_connections(big_image: Any, tmp_path: Path) -> None:
    result = imagesync("sync", "-c", config_for(big_image, tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    assert_identical(big_image, tmp_path / "mirror")
    assert big_image.stats()["object_gets"] >= 10  # 40 MiB in 4 MiB pieces: one ranged GET each


def killed_part_way(big_image: Any, tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A segmented sync SIGKILLed part of the way: its config, and the state file it left.

    Each connection is held to 16 MiB/s, so the four pieces advance side by side and every
    checkpoint finds pieces part of the way. Checkpoints every 64 MiB would be too rare for
    40 MiB: every 8 MiB here."""
    big_image.faults(bandwidth_bps=16 * MiB)
    config = config_for(big_image, tmp_path, min_segment_size="5MiB")
    env = {**CLEAN_ENV, "IMAGESYNC_KILL_AT": "batch-written:14", "IMAGESYNC_CHECKPOINT_BYTES": str(8 * MiB)}
    killed = subprocess.run([sys.executable, "-m", "imagesync", "sync", "-c", str(config)], env=env,
                            capture_output=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL
    [state_file] = (tmp_path / "mirror").glob("*.imagesync-state")
    big_image.reset()
    return config, json.loads(state_file.read_text())


def test_a_killed_segmented_transfer_resumes_every_piece_where_it_stopped(big_image: Any, tmp_path: Path) -> None:
    config, state = killed_part_way(big_image, tmp_path)
    kept = sum(done for _, done, _ in state["pieces"])
    partly = [done for _, done, _ in state["pieces"] if 0 < done < 5 * MiB]
    assert kept >= 8 * MiB and state["piece_size"] == 5 * MiB
    assert partly, f"some piece was checkpointed part of the way: {state['pieces']}"
    result = imagesync("sync", "-c", config, "--json")
    assert result.returncode == 0, result.stderr
    assert summary(result)["bytes_transferred"] <= 40 * MiB - kept
    assert big_image.stats()["body_bytes_sent"] <= 40 * MiB - kept + 5 * MiB  # read-back of nothing else
    assert_identical(big_image, tmp_path / "mirror")


def test_a_corrupt_piece_is_caught_by_the_combined_crc_and_refetched(big_image: Any, tmp_path: Path) -> None:
    big_image.faults(corrupt_offset=21 * MiB + 7)
    result = imagesync("sync", "-c", config_for(big_image, tmp_path), "--json", "-v")
    assert result.returncode == 0, result.stderr
    assert big_image.stats()["faults_injected"].get("corrupt") == 1
    assert summary(result)["bytes_transferred"] >= 80 * MiB - 1  # discarded, then all again
    assert_identical(big_image, tmp_path / "mirror")


def test_drops_in_pieces_resume_within_the_run(big_image: Any, tmp_path: Path) -> None:
    big_image.faults(drop_after_bytes=1 * MiB, drop_times=5)
    result = imagesync("sync", "-c", config_for(big_image, tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    assert summary(result)["bytes_transferred"] == 40 * MiB
    assert_identical(big_image, tmp_path / "mirror")


def test_a_server_that_ignores_ranges_falls_back_to_one_connection(big_image: Any, tmp_path: Path) -> None:
    big_image.faults(ignore_range=1000)
    result = imagesync("sync", "-c", config_for(big_image, tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    assert_identical(big_image, tmp_path / "mirror")


def test_a_part_file_grown_past_the_object_is_fetched_again(big_image: Any, tmp_path: Path) -> None:
    """Longer than the object, a partial cannot be what was checkpointed: the plan starts it over
    (the commit would refuse a file of the wrong size anyway)."""
    config, state = killed_part_way(big_image, tmp_path)
    assert state["pieces"], "some progress was checkpointed"
    [part] = (tmp_path / "mirror").glob("*.imagesync-part")
    with part.open("ab") as grown:  # past the object's 40 MiB, as a careless hand might
        grown.truncate(48 * MiB)
    result = imagesync("sync", "-c", config, "--json")
    assert result.returncode == 0, result.stderr
    assert_identical(big_image, tmp_path / "mirror")

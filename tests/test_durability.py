"""What no end-to-end assertion on files can see: new folders are made durable in their parents,
and a failed transfer leaves no file descriptor open on its partial file."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from clitools import CLEAN_ENV, write_config

from imagesync.config import load_config
from imagesync.credentials import resolve_credentials
from imagesync.sync import Result, RunOptions, run_sync


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed (apt-get install strace)")
def test_new_folders_are_fsynced_into_their_parents(emulator: Any, tmp_path: Path) -> None:
    mirror = tmp_path / "new" / "mirror"
    config = write_config(emulator, tmp_path / "sync.toml", mirror,
                          destination={"path_template": "{platform}/{image_id}.qcow2"})
    trace = tmp_path / "trace"
    result = subprocess.run(["strace", "-f", "-y", "-e", "trace=mkdir,mkdirat,fsync", "-o", str(trace),
                             sys.executable, "-m", "imagesync", "sync", "-c", str(config)],
                            env=CLEAN_ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    calls = trace.read_text().splitlines()

    def fsynced_after(made: str, parent: Path) -> bool:
        index = next(n for n, line in enumerate(calls) if made in line and "mkdir" in line)
        return any(re.search(rf"fsync\(\d+<{re.escape(str(parent))}>\)", line) for line in calls[index:])

    assert fsynced_after(f'"{tmp_path / "new"}"', tmp_path)  # the destination and the folder above it
    assert fsynced_after(f'"{mirror}"', tmp_path / "new")
    platform = emulator.exported()[0]["Platform"]
    assert fsynced_after(f'"{platform}"', mirror)  # a template folder, made relative to its parent


def test_a_failed_transfer_closes_its_partial_file(emulator: Any, tmp_path: Path) -> None:
    config_path = write_config(emulator, tmp_path / "sync.toml", tmp_path / "mirror",
                               transfer={"max_attempts": 2, "retry_delay_s": 0})
    emulator.faults(drop_after_bytes=4096, drop_times=-1)  # every image fails for good, part-way
    config = load_config(config_path)
    result = trio.run(run_sync, config, resolve_credentials(config.credentials), RunOptions(progress="never"))
    assert {o.result for o in result.outcomes if o.path} == {Result.FAILED}
    assert list((tmp_path / "mirror").glob("*.imagesync-part"))
    open_files = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            open_files.append(str(fd.readlink()))
        except OSError:  # the descriptor of the listing itself, closed meanwhile
            continue
    assert not [name for name in open_files if name.endswith(".imagesync-part")]

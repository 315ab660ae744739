"""What cron's mail, a journal and a person at a terminal get, end to end over real sockets.

Without a terminal every stderr line starts with an ISO-8601 timestamp and its UTC offset, holds
no carriage return and no escape code, and a running transfer reports every
``run.progress_interval_s``; ``--json`` keeps stdout pure JSON. At a terminal, a run with nothing
to do draws no bar.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from clitools import CLEAN_ENV, imagesync, one_sentence, write_config

STAMPED = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d \S")
PROGRESS = re.compile(r" imagesync: progress (m-\S+): ([\d.]+ [KMG]?i?B) of ([\d.]+ [KMG]?i?B) \(\d+%\), "
                      r"(?:[\d.]+ [KMG]?i?B/s, about \d+ (?:s|min) left|no bytes for \d+ s)$")


def assert_log_lines(stderr: str) -> list[str]:
    """Every line timestamped, nothing that drives a terminal; returns the lines."""
    assert "\r" not in stderr and "\x1b" not in stderr, repr(stderr)
    lines = stderr.splitlines()
    for line in lines:
        assert STAMPED.match(line), line
    return lines


def test_without_a_terminal_a_slow_transfer_reports_progress(start_emulator: Any, tmp_path: Path) -> None:
    emulator = start_emulator(images=1, image_size="48MiB")  # bytes are counted per 8 MiB batch
    config = write_config(emulator, tmp_path / "sync.toml", tmp_path / "mirror",
                          run={"progress_interval_s": 0.2})
    emulator.faults(bandwidth_bps=16 << 20)
    result = imagesync("sync", "-c", config, "--json")
    assert result.returncode == 0, result.stderr
    json.loads(result.stdout)  # pure JSON, nothing else
    lines = assert_log_lines(result.stderr)
    progress = [match for line in lines if (match := PROGRESS.search(line))]
    assert len(progress) >= 3, result.stderr
    assert {m.group(1) for m in progress} == {emulator.exported()[0]["ImageId"]}
    assert all(m.group(3) == "48.0 MiB" for m in progress)
    assert any(" imagesync: start m-" in line for line in lines)
    assert any(" imagesync: done m-" in line for line in lines)


def test_quiet_stays_quiet_on_a_slow_transfer(start_emulator: Any, tmp_path: Path) -> None:
    emulator = start_emulator(images=1, image_size="1MiB")
    config = write_config(emulator, tmp_path / "sync.toml", tmp_path / "mirror",
                          run={"progress_interval_s": 0.2})
    emulator.faults(bandwidth_bps=2 << 20)
    result = imagesync("sync", "-c", config, "-q")
    assert (result.returncode, result.stderr, result.stdout) == (0, "", "")


def test_verbose_shows_ens_retries_without_secrets(emulator: Any, tmp_path: Path) -> None:
    config = write_config(emulator, tmp_path / "sync.toml", tmp_path / "mirror")
    emulator.faults(ens_throttle=2, ens_retry_after_ms=50)
    result = imagesync("list", "-c", config, "--json", "-v")
    assert result.returncode == 0, result.stderr
    json.loads(result.stdout)
    lines = assert_log_lines(result.stderr)
    retries = [line.split(" imagesync: ", 1)[1] for line in lines if " imagesync: ENS retry " in line]
    assert [r.split(":")[0] for r in retries] == ["ENS retry 2/6 after Throttling.User (HTTP 400)",
                                                  "ENS retry 3/6 after Throttling.User (HTTP 400)"]
    assert all(re.search(r": waiting \d+\.\d s$", r) for r in retries), retries
    assert emulator.access_key_secret not in result.stderr


def test_a_signature_mismatch_is_one_short_sentence(emulator: Any, tmp_path: Path) -> None:
    secret = "not-the-secret-4f1c"
    config = write_config(emulator, tmp_path / "sync.toml", tmp_path / "mirror",
                          credentials={"access_key_secret": secret})
    result = imagesync("list", "-c", config)
    assert result.returncode == 3
    line = one_sentence(result)
    assert "SignatureDoesNotMatch" in line and "RequestId" in line and "check the access key secret" in line
    assert "canonical request" not in line.lower() and "POST" not in line
    assert line.endswith("run with -v to see what the server signed")

    verbose = imagesync("list", "-c", config, "-v")
    assert verbose.returncode == 3
    lines = assert_log_lines(verbose.stderr)
    [whole] = [line for line in lines if " with the message: " in line]
    assert "canonical request" in whole.lower() and "x-acs-action:DescribeExportImageInfo" in whole
    assert secret not in verbose.stderr and emulator.access_key_secret not in verbose.stderr


def at_a_terminal(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run the CLI with stderr (and stdout) on a pseudo-terminal, as a person would."""
    # Under script with no terminal around it the window is 0 columns wide: give it a size.
    command = "stty cols 100 rows 30; " + shlex.join([sys.executable, "-m", "imagesync", *map(str, args)])
    env = {**CLEAN_ENV, "COLUMNS": "100", "LINES": "30", "TERM": "xterm"}
    ran = subprocess.run(["script", "-qec", command, os.devnull], capture_output=True, timeout=120, env=env,
                         stdin=subprocess.DEVNULL)  # bytes: text mode would turn every \r into \n
    return subprocess.CompletedProcess(ran.args, ran.returncode, ran.stdout.decode(), ran.stderr.decode())


def test_at_a_terminal_a_run_with_nothing_to_do_draws_no_bar(emulator: Any, tmp_path: Path) -> None:
    config = write_config(emulator, tmp_path / "sync.toml", tmp_path / "mirror")
    assert imagesync("sync", "-c", config).returncode == 0
    result = at_a_terminal("sync", "-c", config)
    assert result.returncode == 0, result.stdout
    assert "total" not in result.stdout and "%|" not in result.stdout, repr(result.stdout)
    assert not STAMPED.search(result.stdout), repr(result.stdout)  # a person needs no timestamps
    assert "mirrored 0, skipped 3, failed 0" in result.stdout
    # listing and planning said what they were doing, and the line was erased before the summary
    assert re.search(r"\rlisting images… 6 of 6\x1b\[K\rplanning 3 images…\x1b\[K\r\x1b\[Kmirrored 0",
                     result.stdout), repr(result.stdout)


def test_at_a_terminal_a_transfer_draws_bars(emulator: Any, tmp_path: Path) -> None:
    config = write_config(emulator, tmp_path / "sync.toml", tmp_path / "mirror")
    result = at_a_terminal("sync", "-c", config)
    assert result.returncode == 0, result.stdout
    assert "total" in result.stdout and "done m-" in result.stdout
    assert not STAMPED.search(result.stdout)


def test_at_a_terminal_listing_shows_a_status_line_then_erases_it(emulator: Any, tmp_path: Path) -> None:
    config = write_config(emulator, tmp_path / "sync.toml", tmp_path / "mirror")
    result = at_a_terminal("list", "-c", config)
    assert result.returncode == 0, result.stdout
    status = re.search(r"\rlisting images… (\d+) of (\d+)\x1b\[K\r\x1b\[K", result.stdout)
    assert status is not None and status.group(1) == status.group(2), repr(result.stdout)
    assert result.stdout[status.end():].startswith("ID ")  # the table starts on a clean line
    quiet = at_a_terminal("list", "-c", config, "-q")
    assert "listing images" not in quiet.stdout

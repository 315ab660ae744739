"""Run the real `imagesync` command line in a subprocess, as cron or a person would."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("ALIBABA_CLOUD_")}


def imagesync(*args: str | Path, timeout: float = 120, home: Path | None = None,
              env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**CLEAN_ENV, **(env_extra or {})}
    if home is not None:
        env["HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "imagesync", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL,
    )


def summary(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.stdout, f"no JSON on stdout; stderr: {result.stderr}"
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def one_sentence(result: subprocess.CompletedProcess[str]) -> str:
    """The error output must be a single line, never a traceback."""
    text = result.stderr.strip()
    assert "Traceback" not in text, text
    assert len(text.splitlines()) == 1, text
    return text


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every entry under root (dirs included) with its mode and content hash."""
    if not root.exists():
        return {}
    snapshot = {}
    for path in sorted(root.rglob("*")):
        stat = path.lstat()
        content = sha256_of(path) if path.is_file() else ""
        snapshot[str(path.relative_to(root))] = (stat.st_mode, content)
    return snapshot


def write_config(emulator: Any, path: Path, mirror: Path, **tables: dict[str, Any]) -> Path:
    """The emulator's own config, with quick retries and ``tables`` overriding keys per section."""
    transfer = {"concurrency": 3, "retry_delay_s": 0.05, **tables.pop("transfer", {})}
    written: Path = emulator.write_config(path, mirror, transfer=transfer, **tables)
    return written

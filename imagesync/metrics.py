"""The metrics file for node_exporter's textfile collector, replaced atomically after every run.

A sync run and a verify run write different gauges into the same file, so each one reads the
file first and keeps the other's gauges, plus ``imagesync_last_success_timestamp_seconds``
when the run failed. The previous file is parsed strictly, one known sample per line; anything
else in it (garbage, foreign metrics, NaN, negative values) is dropped rather than carried on.

The file is written to ``.<name>.tmp-<random>`` beside the target (a name the collector,
which reads only ``*.prom``, never picks up), created with ``O_EXCL | O_NOFOLLOW`` so a planted
symlink cannot redirect the write, fsynced, given mode 0644 whatever the umask, and renamed over
the target. Samples carry no timestamps: the collector stamps them when it scrapes.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from .durable import fsync_directory, write_all
from .errors import DestinationError

OUTCOMES = ("mirrored", "skipped", "failed")
LAST_SUCCESS = "imagesync_last_success_timestamp_seconds"
LABELLED = "imagesync_last_run_images"

# name -> HELP text, in the order the file lists them.
SYNC_GAUGES = {
    "imagesync_last_run_start_timestamp_seconds": "When the last sync run started (Unix time).",
    "imagesync_last_run_end_timestamp_seconds": "When the last sync run ended (Unix time).",
    LAST_SUCCESS: "When a sync run last ended with exit code 0 (Unix time; 0 = never).",
    "imagesync_last_run_duration_seconds": "How long the last sync run took.",
    "imagesync_last_run_exit_code": "Exit code of the last sync run (0 = every image mirrored).",
    LABELLED: "Images of the last sync run by outcome.",
    "imagesync_last_run_bytes_transferred": "Bytes the last sync run transferred.",
}
VERIFY_GAUGES = {
    "imagesync_last_verify_timestamp_seconds": "When a verify run last ended (Unix time).",
    "imagesync_last_verify_problems": "Images the last verify run found missing or corrupt.",
}
HELP = SYNC_GAUGES | VERIFY_GAUGES

MAX_PREVIOUS_BYTES = 1 << 20
TEMPORARY_ATTEMPTS = 8

# One sample: a name, an optional outcome label, one plain number, nothing else.
_SAMPLE = re.compile(
    r'(?P<name>[a-z_]+)(?:\{outcome="(?P<outcome>[a-z]+)"\})? '
    r"(?P<value>[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)"
)

Key = tuple[str, str | None]  # (metric name, outcome label or None)
Samples = dict[Key, float]


@dataclass(frozen=True, kw_only=True, slots=True)
class RunMetrics:
    """What one sync run reports; times are Unix seconds (``time.time()``)."""

    start: float
    end: float
    exit_code: int
    mirrored: int
    skipped: int
    failed: int
    bytes_transferred: int

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0


def write_run_metrics(path: Path, run: RunMetrics) -> None:
    """Record a sync run in ``path``, keeping the verify gauges and, on failure, the last success."""
    previous = read_samples(path)
    samples: Samples = {key: value for key, value in previous.items() if key[0] in VERIFY_GAUGES}
    samples |= {
        ("imagesync_last_run_start_timestamp_seconds", None): run.start,
        ("imagesync_last_run_end_timestamp_seconds", None): run.end,
        (LAST_SUCCESS, None): run.end if run.succeeded else previous.get((LAST_SUCCESS, None), 0.0),
        ("imagesync_last_run_duration_seconds", None): max(0.0, run.end - run.start),
        ("imagesync_last_run_exit_code", None): run.exit_code,
        (LABELLED, "mirrored"): run.mirrored,
        (LABELLED, "skipped"): run.skipped,
        (LABELLED, "failed"): run.failed,
        ("imagesync_last_run_bytes_transferred", None): run.bytes_transferred,
    }
    replace_metrics_file(path, render(samples))


def write_verify_metrics(path: Path, *, at: float, problems: int) -> None:
    """Record a verify run in ``path``, keeping every sync gauge as it was."""
    samples = {key: value for key, value in read_samples(path).items() if key[0] in SYNC_GAUGES}
    samples[("imagesync_last_verify_timestamp_seconds", None)] = at
    samples[("imagesync_last_verify_problems", None)] = problems
    replace_metrics_file(path, render(samples))


def read_samples(path: Path) -> Samples:
    """The known samples of an earlier metrics file; empty when it is missing or unreadable."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_PREVIOUS_BYTES + 1)
    except OSError:
        return {}
    if len(data) > MAX_PREVIOUS_BYTES:
        return {}
    samples: Samples = {}
    for line in data.decode("utf-8", errors="replace").splitlines():
        parsed = _parse_sample(line)
        if parsed is not None:
            samples[parsed[0]] = parsed[1]
    return samples


def _parse_sample(line: str) -> tuple[Key, float] | None:
    match = _SAMPLE.fullmatch(line)
    if match is None:
        return None
    name, outcome = match["name"], match["outcome"]
    if name not in HELP or (outcome is not None) != (name == LABELLED):
        return None
    if outcome is not None and outcome not in OUTCOMES:
        return None
    value = float(match["value"])
    return ((name, outcome), value) if math.isfinite(value) else None


def render(samples: Samples) -> str:
    """Prometheus text format: HELP, TYPE and samples of each gauge present, in a fixed order."""
    lines: list[str] = []
    order = {outcome: i for i, outcome in enumerate((None, *OUTCOMES))}
    for name, help_text in HELP.items():
        present = [(outcome, value) for (n, outcome), value in samples.items() if n == name]
        if not present:
            continue
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        for outcome, value in sorted(present, key=lambda item: order[item[0]]):
            labels = "" if outcome is None else f'{{outcome="{outcome}"}}'
            lines.append(f"{name}{labels} {_format(value)}")
    return "".join(f"{line}\n" for line in lines)


def _format(value: float) -> str:
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def replace_metrics_file(path: Path, text: str) -> None:
    """Atomically give ``path`` the content ``text`` with mode 0644."""
    try:
        temporary, fd = _create_temporary(path)
    except OSError as error:
        raise _metrics_error(path, error) from None
    try:
        try:
            write_all(fd, text.encode())
            os.fchmod(fd, 0o644)
            os.fsync(fd)
        finally:
            os.close(fd)
        temporary.replace(path)
        fsync_directory(path.parent)
    except OSError as error:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise _metrics_error(path, error) from None


def _create_temporary(path: Path) -> tuple[Path, int]:
    """A new file beside ``path``; a name already taken (even by a symlink) is never opened."""
    for _ in range(TEMPORARY_ATTEMPTS - 1):
        with contextlib.suppress(FileExistsError):
            return _create_new(path)
    return _create_new(path)


def _create_new(path: Path) -> tuple[Path, int]:
    temporary = path.with_name(f".{path.name}.tmp-{secrets.token_hex(8)}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return temporary, os.open(temporary, flags, 0o600)


def _metrics_error(path: Path, error: OSError) -> DestinationError:
    return DestinationError(f"cannot write metrics file {path}: {error.strerror or error}")

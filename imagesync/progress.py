"""What a person or cron sees while images transfer: tqdm bars on a terminal, log lines elsewhere.

The orchestrator calls these from the event loop only, so no locking is needed.
"""

from __future__ import annotations

import logging
import sys
from typing import Protocol

from tqdm import tqdm

log = logging.getLogger("imagesync")


class Progress(Protocol):
    def start(self, image_id: str, name: str, size: int, already: int) -> None: ...
    def advance(self, image_id: str, count: int) -> None: ...
    def finish(self, image_id: str, line: str, ok: bool) -> None: ...
    def close(self) -> None: ...


def make_progress(mode: str, total_bytes: int, quiet: bool) -> Progress:
    """``mode`` is auto (bars when stderr is a terminal), always or never."""
    interactive = sys.stderr.isatty() if mode == "auto" else mode == "always"
    if interactive and not quiet:
        return BarProgress(total_bytes)
    return LogProgress()


class LogProgress:
    """One line when an image starts and one when it ends: what cron mails and logs keep."""

    def start(self, image_id: str, name: str, size: int, already: int) -> None:
        resumed = f", resuming at {format_bytes(already)}" if already else ""
        log.info("start %s (%s, %s%s)", image_id, name, format_bytes(size), resumed)

    def advance(self, image_id: str, count: int) -> None:
        pass

    def finish(self, image_id: str, line: str, ok: bool) -> None:
        (log.info if ok else log.error)("%s", line)

    def close(self) -> None:
        pass


class BarProgress:
    """A bar for the total bytes and one per active transfer."""

    def __init__(self, total_bytes: int) -> None:
        self._total = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024,
                           desc="total", position=0, dynamic_ncols=True, file=sys.stderr)
        self._bars: dict[str, tqdm] = {}
        self._lines: dict[str, int] = {}

    def start(self, image_id: str, name: str, size: int, already: int) -> None:
        taken = set(self._lines.values())
        line = next(n for n in range(1, len(taken) + 2) if n not in taken)  # reuse freed lines
        self._lines[image_id] = line
        self._bars[image_id] = tqdm(total=size, initial=already, unit="B", unit_scale=True,
                                    unit_divisor=1024, desc=printable(image_id), leave=False,
                                    position=line, dynamic_ncols=True, file=sys.stderr)

    def advance(self, image_id: str, count: int) -> None:
        self._total.update(count)
        self._bars[image_id].update(count)

    def finish(self, image_id: str, line: str, ok: bool) -> None:
        self._lines.pop(image_id, None)
        bar = self._bars.pop(image_id, None)
        if bar is not None:
            bar.close()
        self._total.write(printable(line), file=sys.stderr)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._total.close()


def format_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def printable(text: str) -> str:
    """Text from the API, with control characters shown escaped, never interpreted by a terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)

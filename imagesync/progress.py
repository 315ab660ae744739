"""What a person or cron sees while work runs: tqdm bars and a status line on a terminal,
log lines elsewhere (a progress line per running transfer every ``run.progress_interval_s``).

Everything here is called from the event loop only, so no locking is needed. ``advance`` runs
once per chunk: it adds, reads the clock and compares, and logs only when an interval passed.
Human units are binary everywhere (KiB, MiB/s); :func:`plural` gets "1 image, 2 images" right.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, TextIO

from tqdm import tqdm

log = logging.getLogger("imagesync")

DEFAULT_INTERVAL_S = 60.0
Clock = Callable[[], float]


class Progress(Protocol):
    def start(self, image_id: str, name: str, size: int, already: int) -> None: ...
    def advance(self, image_id: str, count: int) -> None: ...
    def finish(self, image_id: str, line: str, ok: bool) -> None: ...
    def close(self) -> None: ...


def make_progress(mode: str, total_bytes: int, quiet: bool, *,
                  interval_s: float = DEFAULT_INTERVAL_S) -> Progress:
    """``mode`` is auto (bars when stderr is a terminal), always or never; ``interval_s`` is
    how often log lines report running transfers (``run.progress_interval_s``)."""
    interactive = sys.stderr.isatty() if mode == "auto" else mode == "always"
    if interactive and not quiet:
        return BarProgress(total_bytes)
    return LogProgress(total_bytes=total_bytes, interval_s=interval_s)


@dataclass(slots=True)
class _Running:
    size: int
    done: int
    mark_s: float  # when ``mark_done`` was taken: the rate is measured since then
    mark_done: int


class LogProgress:
    """A line when an image starts and ends, and every ``interval_s`` one per running transfer
    (with the rate since the last one and the time left): what cron mails and journals keep."""

    def __init__(self, *, total_bytes: int = 0, interval_s: float = DEFAULT_INTERVAL_S,
                 clock: Clock = time.monotonic) -> None:
        self._total = total_bytes
        self._moved = 0
        self._interval = interval_s
        self._clock = clock
        self._running: dict[str, _Running] = {}
        self._due = clock() + interval_s

    def start(self, image_id: str, name: str, size: int, already: int) -> None:
        resumed = f", resuming at {format_bytes(already)}" if already else ""
        log.info("start %s (%s, %s%s)", image_id, name, format_bytes(size), resumed)
        now = self._clock()
        if not self._running:  # after an idle spell, a whole interval before the first line
            self._due = now + self._interval
        self._running[image_id] = _Running(size=size, done=already, mark_s=now, mark_done=already)

    def advance(self, image_id: str, count: int) -> None:
        self._moved += count
        running = self._running.get(image_id)
        if running is not None:
            running.done += count
        now = self._clock()
        if now >= self._due:
            self._report(now)

    def finish(self, image_id: str, line: str, ok: bool) -> None:
        self._running.pop(image_id, None)
        (log.info if ok else log.error)("%s", line)

    def close(self) -> None:
        self._running.clear()

    def _report(self, now: float) -> None:
        self._due = now + self._interval
        reported = 0
        for image_id, running in self._running.items():
            elapsed = now - running.mark_s
            if elapsed < self._interval / 2 or running.done >= running.size:  # just started or
                continue  # already complete (its "done" line is next)
            rate = (running.done - running.mark_done) / elapsed
            log.info("progress %s: %s", image_id, transfer_line(running.done, running.size, rate, elapsed))
            running.mark_s, running.mark_done = now, running.done
            reported += 1
        if reported > 1 and self._total:
            done = min(self._moved, self._total)
            log.info("progress: %s running, %s of %s (%d%%) in all", plural(len(self._running), "image"),
                     format_bytes(done), format_bytes(self._total), percent(done, self._total))


def transfer_line(done: int, size: int, rate: float, elapsed_s: float) -> str:
    """``1.2 GiB of 4.0 GiB (30%), 85.3 MiB/s, about 34 s left``; ``rate`` in bytes per second
    over the last ``elapsed_s``."""
    done = min(done, size)
    text = f"{format_bytes(done)} of {format_bytes(size)} ({percent(done, size)}%)"
    if rate <= 0:
        return f"{text}, no bytes for {format_duration(elapsed_s)}"
    return f"{text}, {format_rate(rate)}, about {format_duration((size - done) / rate)} left"


class Ticker:
    """A log line at most every ``interval_s`` while a long job works through a known number of
    items (``verify: 120 of 400 images checked (30%), about 2 min left``); silent with -q.

    Call :meth:`tick` as each item is done, from the event loop.
    """

    def __init__(self, what: str, total: int, *, noun: str = "image", done: str = "checked",
                 interval_s: float = DEFAULT_INTERVAL_S, clock: Clock = time.monotonic) -> None:
        self._what = what
        self._total = total
        self._noun = noun
        self._verb = done
        self._interval = interval_s
        self._clock = clock
        self._started = clock()
        self._due = self._started + interval_s
        self.count = 0

    def tick(self, count: int = 1) -> None:
        self.count += count
        now = self._clock()
        if now >= self._due and self.count < self._total:  # the caller reports the end itself
            self._due = now + self._interval
            log.info("%s", self.line(now))

    def line(self, now: float) -> str:
        text = (f"{self._what}: {self.count} of {plural(self._total, self._noun)} {self._verb} "
                f"({percent(self.count, self._total)}%)")
        if 0 < self.count < self._total:
            left = (now - self._started) / self.count * (self._total - self.count)
            text += f", about {format_duration(left)} left"
        return text


class BarProgress:
    """A bar for the total bytes and one per active transfer, drawn from the first transfer on:
    a run with nothing to transfer draws nothing."""

    def __init__(self, total_bytes: int) -> None:
        self._total_bytes = total_bytes
        self._total: tqdm | None = None
        self._bars: dict[str, tqdm] = {}
        self._lines: dict[str, int] = {}

    def start(self, image_id: str, name: str, size: int, already: int) -> None:
        if self._total is None:
            self._total = _bar(total=self._total_bytes, desc="total", position=0)
        taken = set(self._lines.values())
        line = next(n for n in range(1, len(taken) + 2) if n not in taken)  # reuse freed lines
        self._lines[image_id] = line
        self._bars[image_id] = _bar(total=size, initial=already, desc=printable(image_id),
                                    leave=False, position=line)

    def advance(self, image_id: str, count: int) -> None:
        if self._total is not None:
            self._total.update(count)
        bar = self._bars.get(image_id)
        if bar is not None:
            bar.update(count)

    def finish(self, image_id: str, line: str, ok: bool) -> None:
        self._lines.pop(image_id, None)
        bar = self._bars.pop(image_id, None)
        if bar is not None:
            bar.close()
        tqdm.write(printable(line), file=sys.stderr)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()
        if self._total is not None:
            self._total.close()


def _bar(**options: object) -> tqdm:
    return tqdm(unit="B", unit_scale=True, unit_divisor=1024, dynamic_ncols=True, file=sys.stderr,
                **options)


class StatusLine:
    """One line at a terminal saying what is going on before there is a bar to draw (listing,
    planning): redrawn in place, erased before any log line and when done. Without a stream
    (no terminal, -q, ``--progress never``) every call does nothing.

    Use it as a context manager, so the line is erased however the block ends.
    """

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream
        self._shown = False

    def show(self, text: str) -> None:
        if self._stream is None:
            return
        width = max(shutil.get_terminal_size().columns - 1, 10)  # a wrapped line cannot be erased
        self._stream.write(f"\r{printable(text)[:width]}\x1b[K")
        self._stream.flush()
        if not self._shown:
            self._shown = True
            log.addFilter(self._before_log)

    def listing(self, listed: int, total: int) -> None:
        """For ``EnsClient.list_images(on_page=...)``."""
        self.show(f"listing images… {listed} of {total}")

    def clear(self) -> None:
        if self._shown and self._stream is not None:
            self._shown = False
            log.removeFilter(self._before_log)
            self._stream.write("\r\x1b[K")
            self._stream.flush()

    def _before_log(self, record: logging.LogRecord) -> bool:
        if self._shown and self._stream is not None:  # the log line takes the status line's place
            self._stream.write("\r\x1b[K")
            self._stream.flush()
        return True

    def __enter__(self) -> StatusLine:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.clear()


def make_status(mode: str, quiet: bool) -> StatusLine:
    """A status line on stderr when it is a terminal, unless -q or ``--progress never``."""
    live = mode != "never" and not quiet and sys.stderr.isatty()
    return StatusLine(sys.stderr if live else None)


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 image``, ``2 images``, ``0 images``; ``many`` for irregular words."""
    return f"{count} {word if count == 1 else many or word + 's'}"


def percent(part: float, whole: float) -> int:
    """Whole percent, rounded down (99% until it is really done); 100 for nothing to do."""
    return min(100, int(part * 100 // whole)) if whole > 0 else 100


def format_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def format_rate(bytes_per_s: float) -> str:
    """``85.3 MiB/s``: the units of :func:`format_bytes`, per second."""
    return f"{format_bytes(bytes_per_s)}/s"


def format_duration(seconds: float) -> str:
    """``34 s``, ``12 min``, ``3 h 05 min``: as precise as an estimate deserves."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def printable(text: str) -> str:
    """Text from the API, with control characters shown escaped, never interpreted by a terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)

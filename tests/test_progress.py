"""What people and cron see while work runs, driven by a fake clock: periodic lines, the verify
ticker, the status line, lazily drawn bars, units and plurals."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from imagesync import progress
from imagesync.progress import (
    BarProgress,
    LogProgress,
    StatusLine,
    Ticker,
    format_bytes,
    format_duration,
    format_rate,
    make_progress,
    make_status,
    plural,
    transfer_line,
)

MiB = 1 << 20
GiB = 1 << 30


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def logged() -> Iterator[list[str]]:
    logger = logging.getLogger("imagesync")
    handler = Lines()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_a_progress_line_at_most_once_per_interval(logged: list[str]) -> None:
    clock = FakeClock()
    shown = LogProgress(total_bytes=4 * GiB, interval_s=60, clock=clock)
    shown.start("m-1", "centos", 4 * GiB, 0)
    for _ in range(59):  # a chunk a second, each well under the interval
        clock.now += 1
        shown.advance("m-1", 20 * MiB)
    assert logged == ["start m-1 (centos, 4.0 GiB)"]
    clock.now += 1
    shown.advance("m-1", 20 * MiB)
    assert logged[1:] == ["progress m-1: 1.2 GiB of 4.0 GiB (29%), 20.0 MiB/s, about 2 min left"]
    for _ in range(60):
        clock.now += 1
        shown.advance("m-1", 40 * MiB)  # twice as fast: the rate is the last interval's
    assert logged[2:] == ["progress m-1: 3.5 GiB of 4.0 GiB (87%), 40.0 MiB/s, about 12 s left"]
    shown.finish("m-1", "done m-1", ok=True)
    assert logged[-1] == "done m-1"


def test_resumed_bytes_count_as_done_but_not_as_speed(logged: list[str]) -> None:
    clock = FakeClock()
    shown = LogProgress(interval_s=10, clock=clock)
    shown.start("m-1", "n", 100 * MiB, 50 * MiB)
    clock.now += 10
    shown.advance("m-1", 10 * MiB)
    assert logged == ["start m-1 (n, 100.0 MiB, resuming at 50.0 MiB)",
                      "progress m-1: 60.0 MiB of 100.0 MiB (60%), 1.0 MiB/s, about 40 s left"]


def test_each_running_transfer_gets_a_line_and_a_total_follows(logged: list[str]) -> None:
    clock = FakeClock()
    shown = LogProgress(total_bytes=300 * MiB, interval_s=10, clock=clock)
    shown.start("m-1", "a", 100 * MiB, 0)
    shown.start("m-2", "b", 200 * MiB, 0)
    clock.now += 10
    shown.advance("m-1", 30 * MiB)  # m-2 moved nothing in the interval
    assert logged[2:] == [
        "progress m-1: 30.0 MiB of 100.0 MiB (30%), 3.0 MiB/s, about 23 s left",
        "progress m-2: 0 B of 200.0 MiB (0%), no bytes for 10 s",
        "progress: 2 images running, 30.0 MiB of 300.0 MiB (10%) in all",
    ]


def test_a_transfer_that_just_started_waits_for_the_next_round(logged: list[str]) -> None:
    clock = FakeClock()
    shown = LogProgress(interval_s=10, clock=clock)
    shown.start("m-1", "a", 100 * MiB, 0)
    clock.now += 9
    shown.start("m-2", "b", 100 * MiB, 0)
    clock.now += 1
    shown.advance("m-2", MiB)
    assert [line.split(":")[0] for line in logged[2:]] == ["progress m-1"]


def test_an_idle_spell_does_not_make_the_next_transfer_report_at_once(logged: list[str]) -> None:
    clock = FakeClock()
    shown = LogProgress(interval_s=10, clock=clock)
    clock.now += 500
    shown.start("m-1", "a", 100 * MiB, 0)
    clock.now += 1
    shown.advance("m-1", MiB)
    assert len(logged) == 1


def test_bytes_beyond_the_size_never_show_more_than_all_of_it() -> None:
    """A retried range counts twice in ``advance``: the line still stops at 100%."""
    assert transfer_line(150, 100, 10.0, 1.0) == "100 B of 100 B (100%), 10 B/s, about 0 s left"


def test_verify_ticker(logged: list[str]) -> None:
    clock = FakeClock()
    ticker = Ticker("verify", 400, interval_s=60, clock=clock)
    for _ in range(119):
        clock.now += 0.5
        ticker.tick()
    assert logged == []
    clock.now += 0.5
    ticker.tick()
    assert logged == ["verify: 120 of 400 images checked (30%), about 2 min left"]
    for _ in range(280):
        clock.now += 60
        ticker.tick()
    assert logged[-1].startswith("verify: 399 of 400 images checked (99%)")  # the end is the caller's line
    assert ticker.count == 400
    assert Ticker("verify", 1, clock=clock).line(clock.now) == "verify: 0 of 1 image checked (0%)"


def test_plural_and_units() -> None:
    assert [plural(n, "image") for n in (0, 1, 2)] == ["0 images", "1 image", "2 images"]
    assert plural(2, "entry", "entries") == "2 entries"
    assert format_bytes(1023) == "1023 B"
    assert format_bytes(1536 * 1024) == "1.5 MiB"
    assert format_rate(85.3 * MiB) == "85.3 MiB/s"
    assert [format_duration(s) for s in (0.4, 34, 89, 90, 3000, 5400, 7500)] == [
        "0 s", "34 s", "89 s", "2 min", "50 min", "1 h 30 min", "2 h 05 min"]


def test_bars_are_drawn_from_the_first_transfer_only(capsys: pytest.CaptureFixture[str]) -> None:
    bars = BarProgress(0)
    bars.finish("m-1", "failed m-1: gone", ok=False)  # a planned failure: a line, no bar
    bars.close()
    assert capsys.readouterr().err == "failed m-1: gone\n"
    bars = BarProgress(10 * MiB)
    bars.start("m-1", "a", 10 * MiB, 0)
    bars.advance("m-1", MiB)
    bars.finish("m-1", "done m-1", ok=True)
    bars.close()
    assert "total" in capsys.readouterr().err


def test_without_a_terminal_the_progress_is_log_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress.sys, "stderr", io.StringIO())
    assert isinstance(make_progress("auto", 1, quiet=False, interval_s=0.2), LogProgress)
    assert isinstance(make_progress("always", 1, quiet=True), LogProgress)


def test_status_line_redraws_in_place_and_is_erased(logged: list[str]) -> None:
    stream = io.StringIO()
    with StatusLine(stream) as status:
        status.listing(50, 120)
        status.listing(100, 120)
        logging.getLogger("imagesync").warning("a warning")  # takes the status line's place
        status.show("planning 3 images\x1b[2J…")
    text = stream.getvalue()
    assert text == ("\rlisting images… 50 of 120\x1b[K\rlisting images… 100 of 120\x1b[K\r\x1b[K"
                    "\rplanning 3 images\\x1b[2J…\x1b[K\r\x1b[K")
    assert logged == ["a warning"]
    logging.getLogger("imagesync").warning("after")
    assert stream.getvalue() == text  # the filter went with the line


def test_status_line_needs_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress.sys, "stderr", io.StringIO())
    with make_status("auto", quiet=False) as status:
        status.listing(1, 2)
        status.show("planning")
    assert progress.sys.stderr.getvalue() == ""


def test_a_complete_transfer_is_left_to_its_done_line(logged: list[str]) -> None:
    clock = FakeClock()
    shown = LogProgress(interval_s=10, clock=clock)
    shown.start("m-1", "a", 8 * MiB, 0)
    clock.now += 10
    shown.advance("m-1", 8 * MiB)  # bytes are counted per batch: the last one ends it
    assert logged == ["start m-1 (a, 8.0 MiB)"]

"""One bandwidth cap shared by every transfer of a run, allowing at most one second of burst.

The problem: N transfers each reading 1 MiB chunks must together stay under one rate, without
one of them starving the others and without a central task pacing them. `BandwidthLimit` is a
token bucket that lets callers run into debt: ``consume(n)`` takes ``n`` tokens at once, even
if the bucket holds fewer, and sleeps until the debt it has added is paid off. Taking the tokens
is immediate (no checkpoint between reading and updating the bucket), so concurrent callers are
served in the order they asked, each sleeping behind those before it: fair without a lock, and
the bytes let through by time ``t`` never exceed ``rate * t`` plus what the bucket held.

The bucket holds at most one second of tokens and starts empty, so a run never averages above
the cap from its start, and after a pause at most one second's worth passes unpaced. A rate of
0 (or None) means unlimited: ``consume`` then returns at once and costs one comparison.

`parse_rate` reads the rates of the command line and config: ``"200MB/s"``, ``"1.5 GiB/s"``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal

import trio

BURST_S = 1.0

UNITS = {
    "B/s": 1,
    "kB/s": 1000,
    "MB/s": 1000**2,
    "GB/s": 1000**3,
    "KiB/s": 1024,
    "MiB/s": 1024**2,
    "GiB/s": 1024**3,
}
ACCEPTED = (
    "a number with a unit B/s, kB/s, MB/s, GB/s (powers of 1000) or KiB/s, MiB/s, GiB/s "
    '(powers of 1024), like "200MB/s" or "1.5 GiB/s"; a plain number is bytes per second, '
    "0 means unlimited"
)
_RATE = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]+)?) ?(?P<unit>[A-Za-z]+/s)?")


class BandwidthLimit:
    """A token bucket in bytes per second, shared by the tasks of one trio run.

    ``clock`` must be trio's clock (the default) or one that advances with it, because waiting
    is ``trio.sleep``; tests pass nothing and use ``autojump_clock``.
    """

    def __init__(
        self, bytes_per_second: int | None, *, clock: Callable[[], float] = trio.current_time
    ) -> None:
        if bytes_per_second is not None and bytes_per_second < 0:
            raise ValueError(f"a bandwidth limit cannot be negative, got {bytes_per_second}")
        self.bytes_per_second = bytes_per_second or 0
        self._clock = clock
        self._tokens = 0.0  # may go negative: the debt that sleeping callers are paying off
        self._updated: float | None = None  # read the clock on first use, inside trio.run

    @property
    def unlimited(self) -> bool:
        return self.bytes_per_second == 0

    async def consume(self, count: int) -> None:
        """Account for ``count`` bytes, sleeping as long as the cap requires."""
        if self.bytes_per_second == 0 or count <= 0:
            return
        self._refill()
        self._tokens -= count
        if self._tokens >= 0:
            return
        try:
            await trio.sleep(-self._tokens / self.bytes_per_second)
        except trio.Cancelled:
            # The bytes will not be sent: give the tokens back (those queued behind this caller
            # still wait as long as they were told, which errs on the slow side).
            self._refill()
            self._tokens += count
            raise

    def _refill(self) -> None:
        now = self._clock()
        if self._updated is not None:
            earned = (now - self._updated) * self.bytes_per_second
            self._tokens = min(self._tokens + earned, BURST_S * self.bytes_per_second)
        self._updated = now


def parse_rate(text: str) -> int:
    """Bytes per second from ``"200MB/s"``, ``"200 MB/s"``, ``"1.5GiB/s"`` or ``"1000"``; 0 = unlimited.

    Units are case-sensitive as written in `UNITS` (``mb/s`` would be millibits). Anything else
    is a ValueError whose message lists the accepted forms; a positive rate below 1 B/s too,
    since rounding it to 0 would turn a cap into no cap.
    """
    match = _RATE.fullmatch(text.strip())
    factor = UNITS.get(match["unit"] or "B/s") if match else None
    if match is None or factor is None:
        raise ValueError(f"invalid rate {text!r}: expected {ACCEPTED}")
    number = Decimal(match["number"])
    rate = int(number * factor)
    if number and rate == 0:
        raise ValueError(f"invalid rate {text!r}: below 1 B/s; expected {ACCEPTED}")
    return rate


def format_rate(bytes_per_second: float) -> str:
    """``20971520`` -> ``"20.0 MiB/s"``; ``0`` -> ``"unlimited"``."""
    if bytes_per_second == 0:
        return "unlimited"
    value = float(bytes_per_second)
    for unit in ("B/s", "KiB/s", "MiB/s"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB/s"

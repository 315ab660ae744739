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

Rates are read from the command line and config by `imagesync.units.parse_rate`.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

BURST_S = 1.0


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

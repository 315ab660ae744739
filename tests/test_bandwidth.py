"""The shared bandwidth cap (on trio's autojump clock: simulated seconds, no real waiting) and rates."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from imagesync.bandwidth import BandwidthLimit, format_rate
from imagesync.units import parse_rate

MiB = 2**20
RATE = 20 * MiB


async def run_consumers(
    limit: BandwidthLimit, *, consumers: int, chunk: int, seconds: float
) -> list[int]:
    """Bytes each consumer got through in ``seconds`` of (virtual) time, taking ``chunk`` at a time."""
    passed = [0] * consumers

    async def consumer(index: int) -> None:
        while True:
            await limit.consume(chunk)
            passed[index] += chunk

    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for index in range(consumers):
                nursery.start_soon(consumer, index)
    return passed


async def test_four_consumers_together_hold_the_rate_over_30_seconds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    passed = await run_consumers(BandwidthLimit(RATE), consumers=4, chunk=MiB, seconds=30)
    achieved = sum(passed) / 30
    assert abs(achieved - RATE) / RATE < 0.02, achieved / RATE
    assert sum(passed) <= RATE * 30


async def test_consumers_share_the_rate_fairly(autojump_clock: trio.testing.MockClock) -> None:
    passed = await run_consumers(BandwidthLimit(RATE), consumers=4, chunk=MiB, seconds=30)
    for share in passed:
        assert abs(share - sum(passed) / 4) <= 2 * MiB, passed


async def test_uneven_chunks_still_hold_the_rate(autojump_clock: trio.testing.MockClock) -> None:
    """Callers are served in turn, one call each: shares follow the chunk sizes, nobody starves."""
    limit = BandwidthLimit(RATE)
    passed = [0, 0]
    calls = [0, 0]

    async def consumer(index: int, chunk: int) -> None:
        while True:
            await limit.consume(chunk)
            passed[index] += chunk
            calls[index] += 1

    with trio.move_on_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consumer, 0, 64 * 1024)
            nursery.start_soon(consumer, 1, 3 * MiB)
    assert abs(sum(passed) / 30 - RATE) / RATE < 0.02
    assert abs(calls[0] - calls[1]) <= 1, calls


async def test_the_burst_is_at_most_one_second(autojump_clock: trio.testing.MockClock) -> None:
    limit = BandwidthLimit(RATE)
    await limit.consume(MiB)  # the bucket starts empty: even the first chunk is paced
    assert trio.current_time() == pytest.approx(MiB / RATE)
    await trio.sleep(3600)  # idle for an hour: the bucket fills, but only to one second
    started = trio.current_time()
    got = 0
    while trio.current_time() == started:
        await limit.consume(MiB)
        got += MiB
    # What went through without waiting: one second's worth, and the chunk that overdrew it.
    assert got == RATE + MiB
    passed = await run_consumers(limit, consumers=4, chunk=MiB, seconds=5)
    assert sum(passed) + got <= RATE * (5 + 1) + 4 * MiB


async def test_a_chunk_larger_than_a_second_waits_its_time(autojump_clock: trio.testing.MockClock) -> None:
    limit = BandwidthLimit(MiB)
    await limit.consume(10 * MiB)
    assert trio.current_time() == pytest.approx(10)


async def test_unlimited_never_sleeps_nor_checkpoints(autojump_clock: trio.testing.MockClock) -> None:
    for limit in (BandwidthLimit(0), BandwidthLimit(None)):
        assert limit.unlimited
        with trio.CancelScope() as scope:
            scope.cancel()  # a checkpoint would raise Cancelled here
            for _ in range(1000):
                await limit.consume(2**40)
        assert trio.current_time() == 0


async def test_a_cancelled_wait_gives_its_tokens_back(autojump_clock: trio.testing.MockClock) -> None:
    limit = BandwidthLimit(MiB)
    with trio.move_on_after(0.5):
        await limit.consume(10 * MiB)  # would wait 10 s; cancelled after 0.5 s
    assert trio.current_time() == pytest.approx(0.5)
    await limit.consume(MiB)  # not behind the abandoned 10 MiB: half a second left to pay
    assert trio.current_time() == pytest.approx(1.0)


async def test_an_injected_clock_is_used() -> None:
    now = [100.0]
    limit = BandwidthLimit(1000, clock=lambda: now[0])
    await limit.consume(0)
    now[0] += 5  # five seconds later by this clock: the bucket holds its one second
    await limit.consume(1000)  # paid from the bucket: no wait


def test_a_negative_rate_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot be negative"):
        BandwidthLimit(-1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("200MB/s", 200_000_000), ("200 MB/s", 200_000_000), ("1.5GiB/s", 1536 * MiB), ("0", 0)],
)
def test_the_contract_rates_make_a_limit(text: str, expected: int) -> None:
    """DESIGN.md's examples, read by the one rate parser (units.py), give the cap its rate."""
    limit = BandwidthLimit(parse_rate(text))
    assert limit.bytes_per_second == expected
    assert limit.unlimited == (expected == 0)


def test_format_rate() -> None:
    assert format_rate(0) == "unlimited"
    assert format_rate(20 * MiB) == "20.0 MiB/s"
    assert format_rate(1536 * MiB) == "1.5 GiB/s"
    assert format_rate(512) == "512.0 B/s"

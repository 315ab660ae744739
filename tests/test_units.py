"""Sizes, rates and ASCII decimals: the one strict parser for people's and servers' numbers."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagesync.units import parse_decimal, parse_rate, parse_size

KiB, MiB, GiB = 1024, 1024**2, 1024**3


@pytest.mark.parametrize(
    ("text", "expected"),
    [("32MiB", 32 * MiB), ("32 MiB", 32 * MiB), ("1.5GiB", 1536 * MiB), ("500MB", 500_000_000),
     ("4096B", 4096), ("1kB", 1000), ("1KB", 1000), ("2KiB", 2 * KiB), ("1TiB", 1 << 40)],
)
def test_sizes(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "32", "32 mb", "32MiB/s", "-1MiB", "0MiB", "1e3MB", "\u0663MiB",
                                  "32  MiB", "1_000B", "MiB", "2000000PiB", "9" * 16 + "TiB"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="a size like 32MiB"):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("200MB/s", 200_000_000), ("50MiB/s", 50 * MiB), ("1GB/s", 10**9), ("1.5GiB/s", 1536 * MiB),
     ("10kB/s", 10_000), ("1KiB/s", 1024), ("1000B/s", 1000), ("", 0), ("0", 0), (" 0 ", 0)],
)
def test_rates(text: str, expected: int) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize("text", ["200MB", "fast", "200 mb/s", "999B/s", "0.1kB/s", "-5MB/s", "200MB/h"])
def test_bad_rates(text: str) -> None:
    with pytest.raises(ValueError, match="a rate like 200MB/s"):
        parse_rate(text)


@pytest.mark.parametrize(
    ("text", "below", "expected"),
    [("0", 10, 0), ("123", 1000, 123), ("18446744073709551615", 1 << 64, (1 << 64) - 1),
     ("18446744073709551616", 1 << 64, None), ("\u00b2", 10, None), ("\u0663", 10, None), ("1_0", 100, None),
     ("+1", 10, None), ("1 ", 10, None), ("", 10, None), ("1\n", 10, None), ("9" * 21, 10**30, None)],
)
def test_decimals_are_ascii_only(text: str, below: int, expected: int | None) -> None:
    assert parse_decimal(text, below=below) == expected


@settings(deadline=None)  # timing on a loaded machine is not what is tested
@given(st.text(max_size=30))
def test_parsers_raise_only_value_error(text: str) -> None:
    for parse in (parse_size, parse_rate):
        with contextlib.suppress(ValueError):
            assert parse(text) >= 0
    value = parse_decimal(text, below=1 << 64)
    assert value is None or 0 <= value < 1 << 64

"""Numbers read from people and servers: sizes ("32MiB"), rates ("200MB/s") and ASCII decimals.

Everything here is pure and strict: ``int()`` and ``str.isdigit()`` accept more than ASCII
digits (``"²"``, ``"٣"``, ``"1_000"``), so numbers from config files and HTTP headers are
matched with explicit ASCII patterns and range-checked before use.
"""

from __future__ import annotations

import re
from fractions import Fraction

# Powers of 1000 and of 1024; "KB" is read as the kB it almost always means.
SIZE_UNITS = {
    "B": 1,
    "kB": 1000, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
    "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4,
}
MAX_SIZE_BYTES = 1 << 60  # far above any disk; keeps arithmetic on sizes sane
MIN_RATE_BYTES_PER_S = 1000
SIZE_EXPECTED = "a size like 32MiB or 500MB (units B, kB, MB, GB, TB, KiB, MiB, GiB, TiB)"
RATE_EXPECTED = (
    "a rate like 200MB/s or 50MiB/s (units B/s, kB/s, MB/s, GB/s, KiB/s, MiB/s, GiB/s; "
    "at least 1kB/s), or 0 for no limit"
)

_DECIMAL = re.compile(r"[0-9]{1,20}")
_QUANTITY = re.compile(r"(?P<number>[0-9]{1,15}(?:\.[0-9]{1,9})?) ?(?P<unit>[A-Za-z]{1,3})")


def parse_decimal(text: str, *, below: int) -> int | None:
    """``text`` as a non-negative ASCII decimal less than ``below``; None for anything else."""
    if _DECIMAL.fullmatch(text) is None:
        return None
    value = int(text)
    return value if value < below else None


def parse_size(text: str) -> int:
    """Bytes in ``text`` (``"32MiB"``, ``"1.5GB"``, ``"4096B"``); `ValueError` says what is expected."""
    value = _quantity(text.strip(), SIZE_EXPECTED)
    if value <= 0 or value > MAX_SIZE_BYTES:
        raise ValueError(SIZE_EXPECTED)
    return value


def parse_rate(text: str) -> int:
    """Bytes per second in ``text`` (``"200MB/s"``); ``""`` and ``"0"`` are 0, meaning no limit."""
    text = text.strip()
    if text in ("", "0"):
        return 0
    if not text.endswith("/s"):
        raise ValueError(RATE_EXPECTED)
    value = _quantity(text.removesuffix("/s"), RATE_EXPECTED)
    if value < MIN_RATE_BYTES_PER_S or value > MAX_SIZE_BYTES:
        raise ValueError(RATE_EXPECTED)
    return value


def _quantity(text: str, expected: str) -> int:
    match = _QUANTITY.fullmatch(text)
    if match is None or match["unit"] not in SIZE_UNITS:
        raise ValueError(expected)
    return int(Fraction(match["number"]) * SIZE_UNITS[match["unit"]])

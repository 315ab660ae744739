"""CRC-64/XZ (OSS's ``x-oss-hash-crc64ecma``): running CRC and the combine of two CRCs.

``crc64(data, crc)`` continues a CRC over more bytes (fastcrc, many GB/s).
``combine(crc1, crc2, len2)`` is the CRC of ``A + B`` from ``crc64(A)``, ``crc64(B)`` and
``len(B)``, without the bytes: zlib's ``crc32_combine`` method carried to 64 bits
(multiply ``crc1`` by ``x^(8 * len2)`` modulo the polynomial, in the reflected domain,
then add ``crc2``). It costs O(log len2) 64-bit carry-less products, microseconds for any
length, so multipart uploads can fold part CRCs in part order as OSS does.
"""

from __future__ import annotations

import fastcrc

POLY = 0xC96C5795D7870F42  # 0x42F0E1EBA9EA3693 reflected
_TOP = 1 << 63
Buffer = bytes | bytearray | memoryview


def crc64(data: Buffer, crc: int = 0) -> int:
    """CRC-64/XZ of ``data``, continuing from ``crc`` (the CRC of the bytes before it)."""
    return int(fastcrc.crc64.xz(data, initial=crc))


def _multmodp(a: int, b: int) -> int:
    """``a * b`` modulo the polynomial, both in the reflected representation."""
    m = _TOP
    p = 0
    while True:
        if a & m:
            p ^= b
            if not a & (m - 1):
                break
        m >>= 1
        b = (b >> 1) ^ POLY if b & 1 else b >> 1
    return p


def _x2n_table() -> tuple[int, ...]:
    p = _TOP >> 1  # x^1
    table = [p]
    for _ in range(1, 64):
        p = _multmodp(p, p)
        table.append(p)
    return tuple(table)


_X2N = _x2n_table()  # _X2N[k] = x^(2^k) mod P


def _x2nmodp(n: int, k: int) -> int:
    """``x^(n * 2^k)`` modulo the polynomial."""
    p = _TOP  # x^0
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 63], p)
        n >>= 1
        k += 1
    return p


def combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC-64/XZ of ``A + B`` given ``crc64(A)``, ``crc64(B)`` and ``len(B)``."""
    if len2 < 0:
        raise ValueError("len2 must not be negative")
    if len2 == 0:
        return crc1
    return _multmodp(_x2nmodp(len2, 3), crc1) ^ crc2

"""imagesync.crc64: the OSS CRC-64/XZ vectors (reference B.3) and combine."""

from __future__ import annotations

import crcmod
import pytest
from hypothesis import given
from hypothesis import strategies as st

from imagesync.crc64 import combine, crc64

_crcmod = crcmod.mkCrcFun(0x142F0E1EBA9EA3693, initCrc=0, rev=True, xorOut=0xFFFFFFFFFFFFFFFF)


def test_reference_vectors() -> None:
    assert crc64(b"123456789") == 11051210869376104954
    assert crc64(b"") == 0
    assert crc64(b"hello world") == 5981764153023615706
    assert crc64(b"hello ") == 1796661072844795914
    assert crc64(b"world") == 4472352582074980600
    assert combine(crc64(b"hello "), crc64(b"world"), 5) == crc64(b"hello world")


def test_running_crc_and_buffer_types() -> None:
    assert crc64(b"world", crc64(b"hello ")) == crc64(b"hello world")
    assert crc64(memoryview(b"hello world")) == crc64(bytearray(b"hello world"))


def test_combine_edge_cases() -> None:
    assert combine(crc64(b"abc"), 0, 0) == crc64(b"abc")
    assert combine(0, crc64(b"abc"), 3) == crc64(b"abc")
    with pytest.raises(ValueError):
        combine(1, 2, -1)


def test_combine_of_large_lengths_is_fast_and_right() -> None:
    zeros = bytes(3 << 20)
    head = b"head" * 1000
    assert combine(crc64(head), crc64(zeros), len(zeros)) == crc64(head + zeros)
    for _ in range(200):  # 5 TiB lengths cost microseconds
        combine(12345, 67890, 5 << 40)


@given(st.binary(max_size=3000), st.binary(max_size=3000))
def test_combine_property(a: bytes, b: bytes) -> None:
    assert combine(crc64(a), crc64(b), len(b)) == crc64(a + b)
    assert crc64(a + b) == _crcmod(a + b)


@given(st.lists(st.binary(max_size=500), max_size=8))
def test_fold_parts_in_order(parts: list[bytes]) -> None:
    crc = 0
    for part in parts:
        crc = combine(crc, crc64(part), len(part))
    assert crc == crc64(b"".join(parts))

"""Running CRC-64/XZ (what OSS publishes as x-oss-hash-crc64ecma) and sha256 over a byte stream.

fastcrc computes CRC-64/XZ at over 20 GB/s on this class of machine, against about 0.45 GB/s
for crcmod, the library oss2 uses; hashlib's sha256 is the slower of the two by far. Both
release the GIL on large buffers, so callers feed them from a worker thread.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import fastcrc

READ_SIZE = 8 << 20
Buffer = bytes | bytearray | memoryview


def crc64(data: Buffer, initial: int | None = None) -> int:
    """CRC-64/XZ of ``data``, continuing from ``initial`` (the CRC of what came before)."""
    if initial is None:
        return int(fastcrc.crc64.xz(data))
    return int(fastcrc.crc64.xz(data, initial=initial))


class Digest:
    """CRC-64 and sha256 of everything passed to `update`, in order."""

    __slots__ = ("_crc64", "_sha256", "size")

    def __init__(self) -> None:
        self._crc64: int | None = None
        self._sha256 = hashlib.sha256()
        self.size = 0

    def update(self, data: Buffer) -> None:
        self._crc64 = crc64(data, self._crc64)
        self._sha256.update(data)
        self.size += memoryview(data).nbytes

    @property
    def crc64(self) -> int:
        return self._crc64 or 0

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()


def digest_file(path: Path, limit: int | None = None) -> Digest:
    """Hash the first ``limit`` bytes of ``path`` (all of it when None). Blocking."""
    digest = Digest()
    buffer = bytearray(READ_SIZE)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as file:
        while limit is None or digest.size < limit:
            want = READ_SIZE if limit is None else min(READ_SIZE, limit - digest.size)
            count = file.readinto(view[:want])
            if not count:
                break
            digest.update(view[:count])
    return digest

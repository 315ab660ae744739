"""Running CRC-64/XZ (what OSS publishes as x-oss-hash-crc64ecma) and sha256 over a byte stream.

fastcrc computes CRC-64/XZ at over 20 GB/s on this class of machine, against about 0.45 GB/s
for crcmod, the library oss2 uses; hashlib's sha256 is the slower of the two by far. Both
release the GIL on large buffers, so callers feed them from a worker thread.
"""

from __future__ import annotations

import base64
import hashlib
import os

import fastcrc

READ_SIZE = 8 << 20
Buffer = bytes | bytearray | memoryview


def crc64(data: Buffer, initial: int | None = None) -> int:
    """CRC-64/XZ of ``data``, continuing from ``initial`` (the CRC of what came before)."""
    if initial is None:
        return int(fastcrc.crc64.xz(data))
    return int(fastcrc.crc64.xz(data, initial=initial))


class Digest:
    """CRC-64 and sha256 (and MD5 when asked for) of everything passed to `update`, in order."""

    __slots__ = ("_crc64", "_md5", "_sha256", "size")

    def __init__(self, *, md5: bool = False) -> None:
        self._crc64: int | None = None
        self._sha256 = hashlib.sha256()
        self._md5 = hashlib.md5(usedforsecurity=False) if md5 else None
        self.size = 0

    def update(self, data: Buffer) -> None:
        self._crc64 = crc64(data, self._crc64)
        self._sha256.update(data)
        if self._md5 is not None:
            self._md5.update(data)
        self.size += memoryview(data).nbytes

    @property
    def md5_base64(self) -> str | None:
        """The MD5 as OSS's Content-MD5 header gives it (Base64 of the binary digest)."""
        return base64.b64encode(self._md5.digest()).decode() if self._md5 is not None else None

    @property
    def crc64(self) -> int:
        return self._crc64 or 0

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()


def digest_fd(fd: int, limit: int | None = None, *, md5: bool = False) -> Digest:
    """Hash the first ``limit`` bytes of the open file (all of it when None), then close it. Blocking."""
    digest = Digest(md5=md5)
    view = memoryview(bytearray(READ_SIZE))
    with os.fdopen(fd, "rb", buffering=0) as file:
        while limit is None or digest.size < limit:
            want = READ_SIZE if limit is None else min(READ_SIZE, limit - digest.size)
            count = file.readinto(view[:want])
            if not count:
                break
            digest.update(view[:count])
    return digest

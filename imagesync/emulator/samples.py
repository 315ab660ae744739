"""Deterministic sample images: a valid qcow2 v3 header, then pseudo-random content.

Content is derived from the image id, so two runs produce identical bytes and two images
never share a body. It is cheap to make (one 2 MiB random pool per image, each 1 MiB block
a different window of it behind a prefix naming the image and the block), so gigabytes are
generated at disk speed.
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

BLOCK_SIZE = 1 << 20
CLUSTER_BITS = 16
CLUSTER_SIZE = 1 << CLUSTER_BITS
QCOW2_MAGIC = b"QFI\xfb"
QCOW2_HEADER_LENGTH = 104
GIB = 1 << 30

_PLATFORMS = (
    ("centos", "7.9"),
    ("ubuntu", "22.04"),
    ("debian", "12"),
    ("alinux", "3"),
    ("rockylinux", "9.3"),
    ("windows", "2019"),
)
_ROLES = ("web", "db", "cache", "edge", "build", "base")
_EPOCH = datetime(2024, 3, 1, 8, 0, 0, tzinfo=UTC)


def qcow2_header(file_size: int) -> bytes:
    """A qcow2 v3 header (big-endian, 64 KiB clusters) for an image of ``file_size`` bytes.

    The refcount table sits in cluster 1 and the L1 table in cluster 2; the generator
    leaves both zeroed (unallocated), which ``qemu-img info`` accepts.
    """
    virtual_size = max(20 * GIB, -(-file_size // GIB) * GIB)
    l2_coverage = CLUSTER_SIZE * (CLUSTER_SIZE // 8)
    l1_size = -(-virtual_size // l2_coverage)
    return struct.pack(
        ">4sIQIIQIIQQIIQQQQII",
        QCOW2_MAGIC,
        3,  # version
        0,  # backing_file_offset
        0,  # backing_file_size
        CLUSTER_BITS,
        virtual_size,
        0,  # crypt_method
        l1_size,
        2 * CLUSTER_SIZE,  # l1_table_offset
        1 * CLUSTER_SIZE,  # refcount_table_offset
        1,  # refcount_table_clusters
        0,  # nb_snapshots
        0,  # snapshots_offset
        0,  # incompatible_features
        0,  # compatible_features
        0,  # autoclear_features
        4,  # refcount_order (16-bit refcounts)
        QCOW2_HEADER_LENGTH,
    )


def _metadata_end(size: int) -> int:
    """Bytes at the start kept for header, extension end marker and zeroed tables."""
    if size >= 4 * CLUSTER_SIZE:
        return 3 * CLUSTER_SIZE
    return min(size, QCOW2_HEADER_LENGTH + 8)


def sample_blocks(seed: str, size: int) -> Iterator[memoryview]:
    """The content of a sample image, as consecutive blocks of at most 1 MiB.

    The yielded buffer is reused: consume each block before asking for the next.
    """
    # An image of one block reads only the first ``size`` bytes of the pool, and randbytes(n)
    # is a prefix of randbytes(m) for multiples of 4: small images skip most of the work.
    pool_size = 2 * BLOCK_SIZE if size > BLOCK_SIZE else -(-size // 4) * 4
    pool = memoryview(random.Random(f"imagesync-emulator:{seed}").randbytes(pool_size))
    tag = hashlib.sha256(seed.encode()).digest()[:8]
    block_size = min(BLOCK_SIZE, max(size, 16))
    buf = bytearray(block_size)
    view = memoryview(buf)
    offset = 0
    index = 0
    while offset < size:
        window = (index * 40_961 * 8) % BLOCK_SIZE
        buf[16:] = pool[window + 16 : window + block_size]
        buf[:16] = tag + index.to_bytes(8, "big")
        if index == 0:
            head = _metadata_end(size)
            header = qcow2_header(size)[:head]
            buf[:head] = header + bytes(head - len(header))
        length = min(BLOCK_SIZE, size - offset)
        yield view[:length]
        offset += length
        index += 1


def sample_bytes(seed: str, size: int) -> bytes:
    """The whole content at once (for small images and tests)."""
    return b"".join(bytes(block) for block in sample_blocks(seed, size))


def image_id(index: int, namespace: str = "") -> str:
    """A plausible, deterministic ENS image id: ``m-`` and 20 lowercase base-36 chars."""
    digest = int.from_bytes(hashlib.sha256(f"{namespace}image:{index}".encode()).digest(), "big")
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
    chars = []
    for _ in range(20):
        digest, rest = divmod(digest, 36)
        chars.append(alphabet[rest])
    return "m-" + "".join(chars)


def sample_entry(index: int, *, status: str, namespace: str = "") -> dict[str, Any]:
    """Catalog fields of the ``index``-th sample image (without Bucket/Key)."""
    platform, version = _PLATFORMS[index % len(_PLATFORMS)]
    role = _ROLES[(index // len(_PLATFORMS)) % len(_ROLES)]
    arch = "arm64" if index % 4 == 3 and platform != "windows" else "x86_64"
    created = _EPOCH - timedelta(days=index, hours=3 * (index % 7), minutes=17 * (index % 5))
    return {
        "ImageId": image_id(index, namespace),
        "ImageName": f"{platform}-{version}-{role}-{index:02d}",
        "ImageExportStatus": status,
        "Architecture": arch,
        "Platform": platform,
        "CreationTime": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "ImageOwnerAlias": "self",
    }

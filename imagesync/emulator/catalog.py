"""The image catalog (``<root>/catalog.json``) and the helpers tests use to shape it.

The catalog is ``{"images": [{ImageId, ImageName, ImageExportStatus, Architecture,
Platform, CreationTime, ImageOwnerAlias, Bucket, Key}, ...]}``; Bucket and Key are present
for images whose object exists. An entry may also carry ``ExportedImageURL``, which the
ENS API then reports verbatim (for hostile-URL tests). Values are served as they are, so a
test can put anything in them.

Helpers (all take the emulator root and may be used while the server runs; every write is
atomic and the server picks it up on the next request):

* :func:`create_sample_catalog` - N exported samples plus Exporting/ExportError/Unexported;
* :func:`add_image`, :func:`update_image`, :func:`remove_image` - edit entries;
* :func:`add_scheduled_image` - an Exporting image that turns Exported or ExportError after
  N listings or at a given time (``ExportedAfterListings``, ``ExportedAt``,
  ``ErrorAfterListings``, ``ErrorAt``; see ``schedule``);
* :func:`rewrite_object` - new content for an image (a re-export: new ETag and CRC);
* :func:`object_path`, :func:`load_entries`, :func:`save_entries`.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .objects import ObjectMeta, bucket_path, key_path, store_object, write_atomically
from .samples import sample_blocks, sample_entry
from .schedule import SCHEDULE_FIELDS

CATALOG_FILE = "catalog.json"
DEFAULT_BUCKET = "ens-exports"
STATUSES = ("Exported", "Exporting", "ExportError", "Unexported")
_rewrites = itertools.count(1)


class CatalogError(Exception):
    """catalog.json exists but is not a valid catalog."""


def catalog_path(root: Path) -> Path:
    return root / CATALOG_FILE


def _parse(data: bytes) -> list[dict[str, Any]]:
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise CatalogError(f"{CATALOG_FILE} is not JSON: {exc}") from None
    images = document.get("images") if isinstance(document, dict) else None
    if not isinstance(images, list) or not all(isinstance(item, dict) for item in images):
        raise CatalogError(f'{CATALOG_FILE} needs {{"images": [{{...}}, ...]}}')
    return images


def load_entries(root: Path) -> list[dict[str, Any]]:
    """The catalog's entries; an absent catalog is empty."""
    try:
        data = catalog_path(root).read_bytes()
    except FileNotFoundError:
        return []
    return _parse(data)


def save_entries(root: Path, entries: Sequence[dict[str, Any]]) -> None:
    """Replace the catalog atomically, always with a newer mtime than before."""
    path = catalog_path(root)
    try:
        previous = path.stat().st_mtime_ns
    except OSError:
        previous = -1
    data = json.dumps({"images": list(entries)}, indent=1).encode()
    write_atomically(root, path, data)
    st = path.stat()
    if st.st_mtime_ns <= previous:
        os.utime(path, ns=(st.st_atime_ns, previous + 1000))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One parsed version of the catalog with lookups by id and by name."""

    entries: tuple[dict[str, Any], ...]
    by_id: dict[str, list[int]] = field(default_factory=dict)
    by_name: dict[str, list[int]] = field(default_factory=dict)
    scheduled: list[dict[str, Any]] = field(default_factory=list)  # entries whose status changes

    @classmethod
    def of(cls, entries: Iterable[dict[str, Any]]) -> Snapshot:
        snapshot = cls(entries=tuple(entries))
        for index, entry in enumerate(snapshot.entries):
            for name, table in (("ImageId", snapshot.by_id), ("ImageName", snapshot.by_name)):
                value = entry.get(name)
                if isinstance(value, str):
                    table.setdefault(value, []).append(index)
            if any(name in entry for name in SCHEDULE_FIELDS):
                snapshot.scheduled.append(entry)
        return snapshot

    def select(self, image_id: str | None, image_name: str | None) -> Sequence[dict[str, Any]]:
        """Entries matching both exact filters (None = no filter), in catalog order."""
        if image_id is None and image_name is None:
            return self.entries
        indexes: set[int] | None = None
        for value, table in ((image_id, self.by_id), (image_name, self.by_name)):
            if value is not None:
                found = set(table.get(value, ()))
                indexes = found if indexes is None else indexes & found
        return [self.entries[index] for index in sorted(indexes or ())]


class Catalog:
    """The live catalog of a root, re-read whenever the file changes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._key: tuple[int, int, int, int] | None = None
        self._snapshot = Snapshot.of(())

    def snapshot(self) -> Snapshot:
        """The current catalog; raises CatalogError if the file is broken."""
        try:
            st = catalog_path(self.root).stat()
            key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        except FileNotFoundError:
            key = None
        with self._lock:
            if key == self._key:
                return self._snapshot
            entries = load_entries(self.root) if key is not None else []
            self._snapshot = Snapshot.of(entries)
            self._key = key
            return self._snapshot


# --- helpers --------------------------------------------------------------------------


def create_sample_catalog(
    root: Path,
    count: int,
    sizes: Sequence[int] = (16 << 20, 32 << 20, 48 << 20),
    *,
    bucket: str = DEFAULT_BUCKET,
    write_objects: bool = True,
    namespace: str = "",
    log: Any = None,
) -> list[dict[str, Any]]:
    """Write a catalog of ``count`` Exported samples (objects generated, sizes cycled) plus
    one Exporting, one ExportError and one Unexported entry. Replaces any catalog.

    With ``write_objects=False`` no object is written (for paging tests with many images).
    ``log`` is an optional ``print``-like callable told about each object generated.
    """
    bucket_path(root, bucket).mkdir(parents=True, exist_ok=True)
    entries = []
    for index in range(count):
        entry = sample_entry(index, status="Exported", namespace=namespace)
        entry["Bucket"] = bucket
        entry["Key"] = f"{entry['ImageId']}.qcow2"
        if write_objects:
            size = sizes[index % len(sizes)]
            if log is not None:
                log(f"generating {bucket}/{entry['Key']} ({size} bytes)")
            store_object(root, bucket, entry["Key"], sample_blocks(entry["ImageId"], size))
        entries.append(entry)
    for offset, status in enumerate(STATUSES[1:]):
        entries.append(sample_entry(count + offset, status=status, namespace=namespace))
    save_entries(root, entries)
    return entries


def _find(entries: Sequence[dict[str, Any]], image_id: str) -> dict[str, Any]:
    for entry in entries:
        if entry.get("ImageId") == image_id:
            return entry
    raise KeyError(f"no image {image_id!r} in the catalog")


def add_image(
    root: Path,
    *,
    image_id: str | None = None,
    name: str | None = None,
    status: str = "Exported",
    size: int = 1 << 20,
    bucket: str = DEFAULT_BUCKET,
    key: str | None = None,
    content: bytes | None = None,
    write_object: bool | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """Append an image (duplicates of an ImageId are allowed) and return its entry.

    An Exported image gets an object (``content``, or ``size`` bytes of sample data seeded
    by the id) at ``bucket/key`` (key default ``<ImageId>.qcow2``). Other statuses get no
    object unless ``key`` is given or ``write_object`` is true. ``fields`` set or (with
    None) drop any entry field, e.g. ``ExportedImageURL="http://169.254.169.254/x"``.
    """
    entries = load_entries(root)
    index = len(entries)
    entry = sample_entry(index, status=status, namespace="added:")
    while image_id is None and any(e.get("ImageId") == entry["ImageId"] for e in entries):
        index += 1
        entry = sample_entry(index, status=status, namespace="added:")
    entry["ImageId"] = image_id if image_id is not None else entry["ImageId"]
    entry["ImageName"] = name if name is not None else entry["ImageName"]
    if write_object is None:
        write_object = status == "Exported" or key is not None
    if write_object:
        entry["Bucket"] = bucket
        entry["Key"] = key if key is not None else f"{entry['ImageId']}.qcow2"
        bucket_path(root, bucket).mkdir(parents=True, exist_ok=True)
        blocks = [content] if content is not None else sample_blocks(str(entry["ImageId"]), size)
        store_object(root, bucket, entry["Key"], blocks)
    for name_, value in fields.items():
        if value is None:
            entry.pop(name_, None)
        else:
            entry[name_] = value
    entries.append(entry)
    save_entries(root, entries)
    return entry


def add_scheduled_image(
    root: Path,
    *,
    exported_after_listings: int | None = None,
    exported_at: float | None = None,
    error_after_listings: int | None = None,
    error_at: float | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """An ``Exporting`` image (object already written) whose status changes by itself:
    to Exported after N listings or at a time, or to ExportError (see ``schedule``)."""
    schedule: dict[str, Any] = {
        "ExportedAfterListings": exported_after_listings, "ExportedAt": exported_at,
        "ErrorAfterListings": error_after_listings, "ErrorAt": error_at,
    }
    kwargs.setdefault("status", "Exporting")
    kwargs.setdefault("write_object", True)
    return add_image(root, **kwargs, **{k: v for k, v in schedule.items() if v is not None})


def update_image(root: Path, image_id: str, **fields: Any) -> dict[str, Any]:
    """Set (or with None drop) fields of the first entry with this ImageId."""
    entries = load_entries(root)
    entry = _find(entries, image_id)
    for name, value in fields.items():
        if value is None:
            entry.pop(name, None)
        else:
            entry[name] = value
    save_entries(root, entries)
    return entry


def remove_image(root: Path, image_id: str, *, delete_object: bool = False) -> None:
    """Drop every entry with this ImageId (and, if asked, the object of the first)."""
    entries = load_entries(root)
    path = object_path(root, image_id) if delete_object else None
    save_entries(root, [e for e in entries if e.get("ImageId") != image_id])
    if path is not None:
        path.unlink(missing_ok=True)


def object_path(root: Path, image_id: str) -> Path:
    """The file holding the object of an image (which may not exist)."""
    entry = _find(load_entries(root), image_id)
    bucket, key = entry.get("Bucket"), entry.get("Key")
    if not isinstance(bucket, str) or not isinstance(key, str):
        raise KeyError(f"image {image_id!r} has no Bucket/Key")
    path = key_path(root, bucket, key)
    if path is None:
        raise KeyError(f"image {image_id!r}: {bucket}/{key} cannot be a file")
    return path


def rewrite_object(
    root: Path,
    image_id: str,
    *,
    content: bytes | None = None,
    size: int | None = None,
    seed: str | None = None,
) -> ObjectMeta:
    """Give an image new content, as a re-export would: new ETag and CRC-64.

    Default content is sample data of the same size (or ``size``) from ``seed`` (default:
    a fresh seed, so every call changes the bytes).
    """
    entry = _find(load_entries(root), image_id)
    bucket, key = entry.get("Bucket"), entry.get("Key")
    if not isinstance(bucket, str) or not isinstance(key, str):
        raise KeyError(f"image {image_id!r} has no Bucket/Key")
    if content is not None:
        return store_object(root, bucket, key, [content])
    if size is None:
        size = object_path(root, image_id).stat().st_size
    if seed is None:
        seed = f"{image_id}#rewrite-{time.time_ns()}-{next(_rewrites)}"
    return store_object(root, bucket, key, sample_blocks(seed, size))

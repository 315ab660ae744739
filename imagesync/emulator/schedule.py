"""Export-status schedules: catalog entries that change status while the emulator runs.

A catalog entry (usually ``Exporting``, with its Bucket/Key object already written) may say
when it changes, for rehearsing ``imagesync sync --wait``:

* ``ExportedAfterListings: N`` - reported as it is for the first N listings that start after
  the emulator first sees the entry, then ``Exported`` with its URL;
* ``ExportedAt: <unix time>`` - ``Exported`` from that time on;
* ``ErrorAfterListings: N`` / ``ErrorAt: <unix time>`` - the same, to ``ExportError``
  (an error that is due wins over an export that is due).

A listing is a ``DescribeExportImageInfo`` request for page 1 (a client lists page by page,
so later pages of the same listing see the same statuses). The counters live in memory,
so a restarted emulator starts counting again. The schedule fields are never served.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

SCHEDULE_FIELDS = ("ExportedAfterListings", "ExportedAt", "ErrorAfterListings", "ErrorAt")


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


class ExportSchedule:
    """Listing counters and the status each scheduled entry has now."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listings = 0
        self._first_seen: dict[str, int] = {}

    def begin(self, entries: Iterable[Mapping[str, Any]], *, new_listing: bool) -> int:
        """Note entries not seen before; count a new listing; return the listing count."""
        with self._lock:
            for entry in entries:
                image_id = entry.get("ImageId")
                if isinstance(image_id, str) and image_id not in self._first_seen and any(
                    name in entry for name in SCHEDULE_FIELDS
                ):
                    self._first_seen[image_id] = self._listings
            if new_listing:
                self._listings += 1
            return self._listings

    def _due(self, entry: Mapping[str, Any], prefix: str, listings: int, now: float) -> bool:
        after = _number(entry.get(f"{prefix}AfterListings"))
        image_id = entry.get("ImageId")
        if after is not None and isinstance(image_id, str):
            with self._lock:
                first = self._first_seen.setdefault(image_id, listings)
            if listings - first > after:
                return True
        at = _number(entry.get(f"{prefix}At"))
        return at is not None and now >= at

    def effective(self, entry: Mapping[str, Any], listings: int) -> Mapping[str, Any]:
        """The entry as served now: status applied, schedule fields dropped."""
        if not any(name in entry for name in SCHEDULE_FIELDS):
            return entry
        now = time.time()
        served = {k: v for k, v in entry.items() if k not in SCHEDULE_FIELDS}
        if self._due(entry, "Error", listings, now):
            served["ImageExportStatus"] = "ExportError"
        elif self._due(entry, "Exported", listings, now):
            served["ImageExportStatus"] = "Exported"
        return served

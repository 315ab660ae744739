"""The record of what was mirrored and verified: manifest.json and SHA256SUMS, never half written.

Each verified image is appended to ``manifest.journal`` (one JSON line, fsynced: O(1) per
image). Every few seconds, and on close, the journal is compacted: ``manifest.json`` and
``SHA256SUMS`` are rewritten atomically (temporary file, fsync, rename, fsync of the folder)
and only then is the journal emptied. `Manifest.load` reads manifest.json and replays the
journal, so a crash at any point loses nothing that was recorded. The methods block; the
owner runs them in a worker thread. No locks: a single owner calls the writer.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import PurePosixPath
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from . import killpoints
from .destination import ManifestStore
from .errors import DestinationError

VERSION = 1

_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_DECIMAL = re.compile(r"[0-9]{1,20}")
_UNENCODABLE = re.compile("[\ud800-\udfff]")
_FIELDS = ("image_id", "image_name", "architecture", "platform", "creation_time", "source_url",
           "source_etag", "size", "crc64ecma", "sha256", "verified", "path", "mirrored_at")
# How an image was verified (contract): against OSS's CRC-64, its Content-MD5, nothing but the
# size (never called verified), or by OSS itself in a server-side copy (sha256 null unless read back).
VERIFIED_CRC64 = "crc64+sha256"
VERIFIED_MD5 = "md5+sha256"
SIZE_ONLY = "size-only"
VERIFIED_SERVER_SIDE = "crc64-server-side"
VERIFICATIONS = (VERIFIED_CRC64, VERIFIED_MD5, SIZE_ONLY, VERIFIED_SERVER_SIDE)
VERIFY_PROBLEMS = ("missing", "corrupt", "unreadable")
_OPTIONAL = ("missing_since", "verify_problem")


def format_time(when: datetime | str) -> str:
    """`when` as the manifest writes times: ISO-8601 UTC, seconds, ``Z`` (a string is checked)."""
    if isinstance(when, str):
        if not _TIME.fullmatch(when):
            raise ValueError(f"{when!r} is not a manifest time (YYYY-MM-DDTHH:MM:SSZ)")
        return when
    if when.tzinfo is None:
        raise ValueError("a manifest time must be timezone-aware")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplacedCopy:
    """An earlier copy of an image kept aside when a re-export replaced it (destination.keep_replaced)."""

    path: str  # replaced/<path>.<mirrored_at>, relative to the destination root
    mirrored_at: str
    source_etag: str
    sha256: str | None

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "mirrored_at": self.mirrored_at, "source_etag": self.source_etag,
                "sha256": self.sha256}

    @classmethod
    def from_json(cls, data: object, *, where: str) -> ReplacedCopy:
        fields = ("path", "mirrored_at", "source_etag", "sha256")
        if not (isinstance(data, dict) and all(isinstance(data.get(k), str) for k in fields[:3])
                and (data.get("sha256") is None or isinstance(data.get("sha256"), str))
                and _is_relative(data["path"]) and _TIME.fullmatch(data["mirrored_at"])):
            raise DestinationError(f"{where}: a replaced copy is malformed; repair or remove this entry")
        return cls(path=data["path"], mirrored_at=data["mirrored_at"], source_etag=data["source_etag"],
                   sha256=data.get("sha256"))


@dataclass(frozen=True, slots=True, kw_only=True)
class ManifestEntry:
    """One mirrored, verified image. Invalid values raise ValueError; a query string is dropped."""

    image_id: str
    image_name: str
    architecture: str
    platform: str
    creation_time: str
    source_url: str
    source_etag: str
    size: int
    crc64ecma: str
    sha256: str | None  # None only for a server-side copy that was not read back
    path: str
    mirrored_at: str
    verified: str = VERIFIED_CRC64
    missing_since: str | None = None
    verify_problem: str | None = None  # what the last `imagesync verify` found wrong: the next sync refetches
    replaced: tuple[ReplacedCopy, ...] = ()  # earlier copies kept aside, newest first

    def __post_init__(self) -> None:
        url = urlsplit(self.source_url)
        # No query, fragment or user info: nothing that could carry a credential is kept.
        public = url._replace(netloc=url.netloc.rpartition("@")[2], query="", fragment="")
        object.__setattr__(self, "source_url", public.geturl())
        if self.sha256 is not None:
            object.__setattr__(self, "sha256", self.sha256.lower())
        problem = _problem(self)
        if problem:
            raise ValueError(problem)

    def to_json(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in _FIELDS}
        if self.missing_since is not None:
            data["missing_since"] = self.missing_since
        if self.verify_problem is not None:
            data["verify_problem"] = self.verify_problem
        if self.replaced:
            data["replaced"] = [copy.to_json() for copy in self.replaced]
        return data

    @classmethod
    def from_json(cls, data: object, *, where: str) -> ManifestEntry:
        """The entry `data` describes; `where` (file and position) starts any error message."""
        if not isinstance(data, dict):
            raise DestinationError(f"{where} is not a JSON object; repair or remove it")
        if isinstance(data.get("image_id"), str):
            where = f"{where} (image {data['image_id']})"
        values: dict[str, Any] = {name: data.get(name) for name in (*_FIELDS, *_OPTIONAL)}
        values["verified"] = data.get("verified", VERIFIED_CRC64)  # manifests before it was recorded
        for name, value in values.items():
            if name == "size":
                ok, expected = type(value) is int, "an integer"
            else:
                ok = isinstance(value, str) or (name in (*_OPTIONAL, "sha256") and value is None)
                expected = "a string"
            if not ok:
                got = "missing" if value is None else repr(value)
                raise DestinationError(
                    f"{where}: {name} is {got}, expected {expected}; repair or remove this entry"
                )
        replaced = data.get("replaced", [])
        if not isinstance(replaced, list):
            raise DestinationError(f"{where}: replaced is not a list; repair or remove this entry")
        values["replaced"] = tuple(ReplacedCopy.from_json(item, where=where) for item in replaced)
        try:
            return cls(**values)
        except ValueError as error:
            raise DestinationError(f"{where}: {error}; repair or remove this entry") from None


def _problem(entry: ManifestEntry) -> str | None:
    times = "expected YYYY-MM-DDTHH:MM:SSZ"
    checks = (
        (bool(entry.image_id), "image_id is empty"),
        (entry.size >= 0, f"size is {entry.size}, expected a byte count"),
        (bool(_DECIMAL.fullmatch(entry.crc64ecma)) and int(entry.crc64ecma) < 2**64,
         f"crc64ecma is {entry.crc64ecma!r}, expected a 64-bit decimal number"),
        (entry.sha256 is None or bool(_SHA256.fullmatch(entry.sha256)),
         f"sha256 is {entry.sha256!r}, expected 64 hex digits"),
        (entry.verified in VERIFICATIONS,
         f"verified is {entry.verified!r}, expected one of {', '.join(VERIFICATIONS)}"),
        (entry.sha256 is not None or entry.verified == VERIFIED_SERVER_SIDE,
         "sha256 is missing, which only a server-side copy may leave out"),
        (_is_relative(entry.path), f"path {entry.path!r} is not a plain relative path"),
        (bool(_TIME.fullmatch(entry.mirrored_at)), f"mirrored_at is {entry.mirrored_at!r}, {times}"),
        (entry.missing_since is None or bool(_TIME.fullmatch(entry.missing_since)),
         f"missing_since is {entry.missing_since!r}, {times}"),
        (entry.verify_problem in (None, *VERIFY_PROBLEMS),
         f"verify_problem is {entry.verify_problem!r}, expected one of {', '.join(VERIFY_PROBLEMS)}"),
    )
    return next((message for ok, message in checks if not ok), None)


def _is_relative(text: str) -> bool:
    path = PurePosixPath(text)
    return (str(path) == text and not path.is_absolute() and "\0" not in text
            and not _UNENCODABLE.search(text) and all(p not in (".", "..") for p in path.parts))


@dataclass(frozen=True, slots=True)
class Manifest:
    """The mirrored images by image_id, as manifest.json and its journal record them."""

    entries: Mapping[str, ManifestEntry] = field(default_factory=dict)
    updated_at: str | None = None
    last_verify: Mapping[str, Any] | None = None  # {"at", "checked", "problems"} of the last verify

    @classmethod
    def load(cls, store: ManifestStore | None) -> Manifest:
        """The manifest in `store` with its journal replayed; empty if there is none (or no store)."""
        state = _State()
        if store is None:
            return cls(MappingProxyType(state.entries))
        raw = store.read_manifest()
        if raw is not None:
            state = _parse_document(raw, store.where)
        journal = store.read_journal()
        if journal:
            _replay(journal, state, store.journal_where)
        return cls(MappingProxyType(state.entries), state.updated_at, state.last_verify)

    def get(self, image_id: str) -> ManifestEntry | None:
        return self.entries.get(image_id)


def render_manifest(entries: Iterable[ManifestEntry], updated_at: str,
                    last_verify: Mapping[str, Any] | None = None) -> bytes:
    """The bytes of manifest.json: images sorted by image_id."""
    images = [entry.to_json() for entry in sorted(entries, key=lambda entry: entry.image_id)]
    document: dict[str, Any] = {"version": VERSION, "updated_at": updated_at}
    if last_verify is not None:
        document["last_verify"] = dict(last_verify)
    text = json.dumps({**document, "images": images}, indent=2, ensure_ascii=False)
    # A name from the API may hold a lone surrogate; "\udxxx" is then also its JSON escape.
    return (text + "\n").encode("utf-8", "backslashreplace")


def render_sha256sums(entries: Iterable[ManifestEntry]) -> bytes:
    """The bytes of SHA256SUMS, sorted by path, as ``sha256sum -c`` reads them.

    Like GNU coreutils, a name holding a backslash, newline or carriage return is escaped
    and its line starts with a backslash.
    """
    lines = []
    for entry in sorted(entries, key=lambda entry: entry.path):
        if entry.sha256 is None:
            continue
        name = entry.path
        if any(char in name for char in "\\\n\r"):
            name = name.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
            lines.append(f"\\{entry.sha256}  {name}\n")
        else:
            lines.append(f"{entry.sha256}  {name}\n")
    return "".join(lines).encode()


class ManifestWriter:
    """Records verified images durably in O(1) each; compacts every `compact_interval_s`.

    `manifest` must be what `Manifest.load(store)` returned. Call `close` at the end.
    """

    def __init__(
        self,
        manifest: Manifest,
        store: ManifestStore,
        *,
        compact_interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.compactions = 0  # how many times manifest.json was rewritten
        self._store = store
        self._entries = dict(manifest.entries)
        self._last_verify = manifest.last_verify
        self._interval_s = compact_interval_s
        self._clock = clock
        self._last_compaction = clock()
        self._dirty = False
        self._closed = False
        if store.read_journal():  # an earlier run stopped before compacting: fold it in first
            self.compact()

    @property
    def entries(self) -> Mapping[str, ManifestEntry]:
        return MappingProxyType(self._entries)

    def record(self, entry: ManifestEntry) -> None:
        """Add or replace the entry of one verified image; durable when this returns."""
        self._append({"op": "record", "entry": entry.to_json()})
        self._entries[entry.image_id] = entry
        self._maybe_compact()

    def mark_missing(self, image_ids: Iterable[str], when: datetime | str) -> None:
        """Mark entries whose image the API no longer lists; an earlier mark is kept."""
        self._mark(image_ids, format_time(when))

    def mark_present(self, image_ids: Iterable[str]) -> None:
        """Clear the mark of entries whose image the API lists again."""
        self._mark(image_ids, None)

    def record_verify(self, when: datetime | str, problems: Mapping[str, str], checked: int) -> None:
        """What a verify run found: ``problems`` (image_id -> missing/corrupt/unreadable) are
        marked so the next sync fetches them again; every other entry is cleared."""
        at = format_time(when)
        self._append({"op": "verify", "at": at, "checked": checked, "problems": dict(problems)})
        _set_verdicts(self._entries, problems)
        self._last_verify = {"at": at, "checked": checked, "problems": len(problems)}

    def compact(self) -> None:
        """Publish manifest.json and SHA256SUMS atomically, then empty the journal."""
        self._check_open()
        entries = list(self._entries.values())
        killpoints.reached("compaction")
        self._store.publish(render_manifest(entries, format_time(datetime.now(UTC)), self._last_verify),
                            render_sha256sums(entries))
        killpoints.reached("after-publish")
        self._store.clear_journal()
        self._dirty = False
        self._last_compaction = self._clock()
        self.compactions += 1

    def close(self) -> None:
        """Compact if anything was recorded since the last time, and remove the journal."""
        if self._closed:
            return
        try:
            if self._dirty:
                self.compact()
            self._store.remove_journal()
        finally:
            self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the manifest writer is closed")

    def _mark(self, image_ids: Iterable[str], since: str | None) -> None:
        entries = self._entries
        ids = sorted(i for i in set(image_ids)
                     if i in entries and (entries[i].missing_since is None) == (since is not None))
        if ids:
            self._append({"op": "mark", "image_ids": ids, "since": since})
            _set_missing(entries, ids, since)
            self._maybe_compact()

    def _maybe_compact(self) -> None:
        if self._clock() - self._last_compaction > self._interval_s:
            self.compact()

    def _append(self, op: dict[str, Any]) -> None:
        self._check_open()
        self._store.append_journal((json.dumps(op, separators=(",", ":")) + "\n").encode())
        self._dirty = True


@dataclass(slots=True)
class _State:
    """What loading a manifest and replaying its journal builds up."""

    entries: dict[str, ManifestEntry] = field(default_factory=dict)
    updated_at: str | None = None
    last_verify: dict[str, Any] | None = None


def _parse_document(raw: bytes, path: str) -> _State:
    hint = "restore it from a backup or repair it by hand"
    try:
        document = json.loads(raw.decode("utf-8-sig"))
    except json.JSONDecodeError as error:
        where = f"line {error.lineno} column {error.colno}: {error.msg}"
        raise DestinationError(f"{path} is not valid JSON ({where}); {hint}") from None
    except (ValueError, RecursionError):
        raise DestinationError(f"{path} is not valid UTF-8 JSON; {hint}") from None
    if not isinstance(document, dict) or not isinstance(document.get("images"), list):
        raise DestinationError(f"{path} is not an imagesync manifest (no images list); {hint}")
    if document.get("version") != VERSION:
        raise DestinationError(f"{path} has version {document.get('version')!r}; "
                               f"this imagesync reads version {VERSION}")
    state = _State(updated_at=document.get("updated_at") if isinstance(document.get("updated_at"), str)
                   else None, last_verify=_last_verify(document.get("last_verify")))
    for index, raw_entry in enumerate(document["images"]):
        entry = ManifestEntry.from_json(raw_entry, where=f"{path}, images[{index}]")
        if entry.image_id in state.entries:
            raise DestinationError(f"{path}, images[{index}]: image {entry.image_id} is listed "
                                   "twice; remove one of the entries")
        state.entries[entry.image_id] = entry
    return state


def _last_verify(value: object) -> dict[str, Any] | None:
    """The last verify's summary, only when it has the shape we write."""
    if (isinstance(value, dict) and isinstance(value.get("at"), str) and _TIME.fullmatch(value["at"])
            and all(type(value.get(k)) is int for k in ("checked", "problems"))):
        return {"at": value["at"], "checked": value["checked"], "problems": value["problems"]}
    return None


def _replay(raw: bytes, state: _State, path: str) -> None:
    """Apply the journal's lines to `state`; a torn last line (a crash mid-write) is ignored."""
    *lines, torn = raw.split(b"\n")
    for number, line in enumerate(lines, 1):
        if line.strip():
            _apply(line, state, f"{path}, line {number}")
    if torn.strip():
        with contextlib.suppress(DestinationError):
            _apply(torn, state, f"{path}, line {len(lines) + 1}")


def _apply(line: bytes, state: _State, where: str) -> None:
    entries = state.entries
    try:
        op = json.loads(line)
    except (ValueError, RecursionError):
        op = None
    if isinstance(op, dict) and op.get("op") == "record":
        entry = ManifestEntry.from_json(op.get("entry"), where=where)
        entries[entry.image_id] = entry
        return
    if isinstance(op, dict) and op.get("op") == "verify":
        problems, summary = op.get("problems"), _last_verify({**op, "problems": 0})
        if (summary is not None and isinstance(problems, dict)
                and all(isinstance(k, str) and v in VERIFY_PROBLEMS for k, v in problems.items())):
            _set_verdicts(entries, problems)
            state.last_verify = {**summary, "problems": len(problems)}
            return
    if isinstance(op, dict) and op.get("op") == "mark":
        ids, since = op.get("image_ids"), op.get("since")
        if (isinstance(ids, list) and all(isinstance(i, str) for i in ids)
                and (since is None or (isinstance(since, str) and _TIME.fullmatch(since)))):
            _set_missing(entries, ids, since)
            return
    raise DestinationError(f"{where} is not a journal record; repair or remove that line")


def _set_verdicts(entries: dict[str, ManifestEntry], problems: Mapping[str, str]) -> None:
    for image_id, entry in entries.items():
        if entry.verify_problem != problems.get(image_id):
            entries[image_id] = replace(entry, verify_problem=problems.get(image_id))


def _set_missing(entries: dict[str, ManifestEntry], ids: Iterable[str], since: str | None) -> None:
    for image_id in ids:
        entry = entries.get(image_id)
        if entry is not None and (since is None or entry.missing_since is None):
            entries[image_id] = replace(entry, missing_since=since)

"""Fault injection and request statistics, shared by the handler threads under one lock.

Faults are set over HTTP (``POST /_emulator/faults`` with a JSON object whose fields merge
into the current state) and count down atomically as requests consume them:

===================== ====================================================================
field                 effect
===================== ====================================================================
drop_after_bytes      the next object GET whose body is longer closes the connection after
                      that many body bytes; ``drop_times`` (default 1, -1 = always) of them
oss_5xx               the next K object requests (GET or HEAD) answer 503 ServiceUnavailable
oss_403_expired       the next K object GETs answer 403 AccessDenied "Request has expired."
ens_throttle          the next K ENS requests answer 400 Throttling.User, with header
                      ``x-acs-retry-after`` when ``ens_retry_after_ms`` is set
ens_5xx               the next K ENS requests answer 503 ServiceUnavailable
ens_malformed         the next K ENS answers are 200 with a malformed body; variants cycle
                      (text, Images a string, ImageId a number, no TotalCount) unless
                      ``ens_malformed_mode`` names one of them
corrupt_offset        flip the byte at that object offset in the next GET body that includes
                      it; ``corrupt_times`` (default 1, -1 = always) of them
latency_ms            delay before every ENS and OSS response
bandwidth_bps         cap on the rate of each object body (0 = unlimited)
omit_crc64            while non-zero, object answers lack ``x-oss-hash-crc64ecma`` (as objects
                      made by CopyObject may)
ignore_range          the next K ranged GETs answer 200 with the whole object (legacy OSS)
bad_content_range     the next K ranged GETs answer 206 whose Content-Range start is one
                      too high (the body is the right one)
change_etag_after_bytes
                      once N more object body bytes (over any GETs) have been sent, the
                      object is re-exported: new content of the same size, new ETag and
                      CRC (the GET in flight goes on with the old bytes); then cleared
gzip_body             the next K GETs answer ``Content-Encoding: gzip`` and a gzipped body,
                      whatever Accept-Encoding says (a misbehaving proxy)
body_longer           the next K GETs send ``body_delta_bytes`` (default 1) bytes more than
                      their Content-Length, then close the connection
body_shorter          the next K GETs send ``body_delta_bytes`` fewer bytes, then close
stall_after_bytes     the next GET whose body is longer sends that many bytes, then nothing
                      for ``stall_s`` seconds (default 3600; the connection stays open);
                      ``stall_times`` (default 1, -1 = always) of them
crc_header            while set (a string), object GET/HEAD answers carry it verbatim in
                      ``x-oss-hash-crc64ecma`` instead of the true CRC
content_md5           while non-zero, GET/HEAD of Normal objects carry ``Content-MD5``
                      (written objects from PutObject always do); combine with omit_crc64
upload_part_5xx       the next K UploadPart or UploadPartCopy answer 503 (nothing stored)
drop_upload_after_bytes
                      the next UploadPart reads that many body bytes, then closes the
                      connection without answering; ``drop_upload_times`` (default 1)
corrupt_part_crc      the next K UploadParts store the part with one byte flipped, so its
                      ETag and CRC are not the client's (a Content-MD5 sent is then refused
                      with InvalidDigest, as OSS refuses bytes damaged in transit)
complete_5xx          the next K CompleteMultipartUpload answer 503; the upload stays open
put_5xx               the next K PutObject answer 503 (nothing stored)
deny_writes           while non-zero, every write (PUT, POST, DELETE) answers 403 AccessDenied
forget_upload         an action, not a state: an upload id, or ``"*"``, whose multipart
                      upload(s) vanish at once (then NoSuchUpload), as after a lifecycle rule
key                   restrict every object fault above (GET and write side) to that key
===================== ====================================================================

Setting ``drop_after_bytes``, ``corrupt_offset``, ``stall_after_bytes`` or
``drop_upload_after_bytes`` resets its ``*_times`` to 1 unless the same request sets it too.
A null value clears a field. ``POST /_emulator/reset`` goes back to the startup state
(``--latency-ms``/``--bandwidth``) and zeroes the statistics. Each fault applied is counted
in the statistics under ``faults_injected`` (by field name; ``drop`` and ``corrupt`` for the
first two).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MALFORMED_MODES = ("text", "images_string", "image_id_number", "no_total_count")


@dataclass(slots=True)
class FaultState:
    drop_after_bytes: int | None = None
    drop_times: int = 1
    oss_5xx: int = 0
    oss_403_expired: int = 0
    ens_throttle: int = 0
    ens_retry_after_ms: int | None = None
    ens_5xx: int = 0
    ens_malformed: int = 0
    ens_malformed_mode: str = "cycle"
    corrupt_offset: int | None = None
    corrupt_times: int = 1
    latency_ms: int = 0
    bandwidth_bps: int = 0
    omit_crc64: int = 0  # non-zero: answers lack x-oss-hash-crc64ecma, as copied objects may
    ignore_range: int = 0
    bad_content_range: int = 0
    change_etag_after_bytes: int | None = None
    gzip_body: int = 0
    body_longer: int = 0
    body_shorter: int = 0
    body_delta_bytes: int = 1
    stall_after_bytes: int | None = None
    stall_times: int = 1
    stall_s: float = 3600.0
    crc_header: str | None = None
    content_md5: int = 0
    upload_part_5xx: int = 0
    drop_upload_after_bytes: int | None = None
    drop_upload_times: int = 1
    corrupt_part_crc: int = 0
    complete_5xx: int = 0
    put_5xx: int = 0
    deny_writes: int = 0
    key: str | None = None


_NULLABLE = {
    "drop_after_bytes", "ens_retry_after_ms", "corrupt_offset", "key", "change_etag_after_bytes",
    "stall_after_bytes", "crc_header", "drop_upload_after_bytes",
}
_TIMES = {"drop_times", "corrupt_times", "stall_times", "drop_upload_times"}
_LIMITS = {
    "drop_after_bytes": "drop_times", "corrupt_offset": "corrupt_times",
    "stall_after_bytes": "stall_times", "drop_upload_after_bytes": "drop_upload_times",
}
_DEFAULTS = FaultState()


class FaultError(ValueError):
    """A fault request that cannot be applied (unknown field, wrong type or range)."""


def _validate(name: str, value: Any) -> Any:
    if name not in FaultState.__dataclass_fields__:
        known = ", ".join(FaultState.__dataclass_fields__)
        raise FaultError(f"unknown fault field {name!r} (known: {known})")
    if value is None:
        return None if name in _NULLABLE else getattr(_DEFAULTS, name)
    if name in ("key", "crc_header"):
        if not isinstance(value, str):
            raise FaultError(f"{name} must be a string or null")
        if name == "crc_header" and (not value.isprintable() or not all(ord(c) < 256 for c in value)):
            raise FaultError("crc_header must be printable Latin-1 (it is sent as a header value)")
        return value
    if name == "stall_s":
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise FaultError("stall_s must be a number >= 0")
        return float(value)
    if name == "ens_malformed_mode":
        if value not in ("cycle", *MALFORMED_MODES):
            raise FaultError(f"ens_malformed_mode must be one of cycle, {', '.join(MALFORMED_MODES)}")
        return value
    if not isinstance(value, int) or isinstance(value, bool):
        raise FaultError(f"{name} must be an integer")
    if value < (-1 if name in _TIMES else 0):
        raise FaultError(f"{name} must be >= {-1 if name in _TIMES else 0}")
    return value


@dataclass(frozen=True, slots=True)
class BodyFaults:
    """What to do to one object body: offsets are relative to the body's first byte."""

    drop_after: int | None = None
    corrupt_at: int | None = None
    bandwidth_bps: int = 0
    change_at: int | None = None  # re-export the object before body byte N goes out
    stall_at: int | None = None
    stall_s: float = 0.0
    extra_bytes: int = 0  # sent after the declared body

    @property
    def alters_body(self) -> bool:
        return (
            self.drop_after is not None or self.corrupt_at is not None or self.bandwidth_bps > 0
            or self.change_at is not None or self.stall_at is not None or self.extra_bytes > 0
        )


@dataclass(slots=True)
class _Counters:
    ens_requests: int = 0
    oss_requests: int = 0
    object_gets: int = 0
    object_heads: int = 0
    body_bytes_sent: int = 0
    bytes_by_key: dict[str, int] = field(default_factory=dict)
    faults_injected: dict[str, int] = field(default_factory=dict)
    ens_listings: int = 0
    oss_operations: dict[str, int] = field(default_factory=dict)
    body_bytes_received: int = 0
    bytes_received_by_key: dict[str, int] = field(default_factory=dict)
    bytes_copied: int = 0


class Faults:
    """The fault state and the statistics; every method is atomic."""

    def __init__(self, baseline: FaultState | None = None) -> None:
        self._baseline = dataclasses.replace(baseline or FaultState())
        self._lock = threading.Lock()
        self._state = dataclasses.replace(self._baseline)
        self._counters = _Counters()
        self._malformed_served = 0
        self._epoch = 0

    # --- control ---

    def update(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Merge fields into the state (all or nothing) and return the new state."""
        values = {name: _validate(name, value) for name, value in fields.items()}
        for name, times in _LIMITS.items():
            if name in values and times not in values:
                values[times] = 1
        with self._lock:
            for name, value in values.items():
                setattr(self._state, name, value)
            return dataclasses.asdict(self._state)

    def state(self) -> dict[str, Any]:
        with self._lock:
            return dataclasses.asdict(self._state)

    def reset(self) -> None:
        with self._lock:
            self._state = dataclasses.replace(self._baseline)
            self._counters = _Counters()
            self._malformed_served = 0
            self._epoch += 1

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return dataclasses.asdict(self._counters)

    # --- accounting ---

    def count(self, name: str) -> None:
        with self._lock:
            setattr(self._counters, name, getattr(self._counters, name) + 1)

    def add_bytes(self, key: str, sent: int, epoch: int | None = None) -> int:
        """Count body bytes (before they are written, so stats never lag a client).

        Returns the statistics epoch; a later correction (negative ``sent`` for bytes that
        could not be written) passes it back and is dropped if a reset came in between.
        """
        with self._lock:
            if epoch is None or epoch == self._epoch:
                self._counters.body_bytes_sent += sent
                by_key = self._counters.bytes_by_key
                by_key[key] = by_key.get(key, 0) + sent
            return self._epoch

    def _injected(self, kind: str) -> None:
        injected = self._counters.faults_injected
        injected[kind] = injected.get(kind, 0) + 1

    # --- consumption ---

    def latency_s(self) -> float:
        with self._lock:
            return self._state.latency_ms / 1000

    def count_operation(self, name: str) -> None:
        with self._lock:
            ops = self._counters.oss_operations
            ops[name] = ops.get(name, 0) + 1

    def add_received(self, key: str, received: int) -> None:
        with self._lock:
            self._counters.body_bytes_received += received
            by_key = self._counters.bytes_received_by_key
            by_key[key] = by_key.get(key, 0) + received

    def add_copied(self, copied: int) -> None:
        with self._lock:
            self._counters.bytes_copied += copied

    def take(self, name: str, key: str) -> bool:
        """Use one of the countdown fault ``name`` (e.g. ``put_5xx``) if it applies to key."""
        with self._lock:
            state = self._state
            if state.key not in (None, key) or getattr(state, name) <= 0:
                return False
            setattr(state, name, getattr(state, name) - 1)
            self._injected(name)
            return True

    def active(self, name: str, key: str) -> bool:
        """Whether a while-set fault (``deny_writes``, ``content_md5``) applies to key."""
        with self._lock:
            state = self._state
            return state.key in (None, key) and bool(getattr(state, name))

    def crc_header(self, key: str) -> str | None:
        with self._lock:
            state = self._state
            return state.crc_header if state.key in (None, key) else None

    def injected(self, kind: str) -> None:
        with self._lock:
            self._injected(kind)

    def take_upload_drop(self, key: str, length: int) -> int | None:
        """Bytes of an UploadPart body to read before closing, if the drop fault applies."""
        with self._lock:
            state = self._state
            limit = state.drop_upload_after_bytes
            if state.key not in (None, key) or limit is None or state.drop_upload_times == 0:
                return None
            if length <= limit:
                return None
            state.drop_upload_times -= 1 if state.drop_upload_times > 0 else 0
            self._injected("drop_upload_after_bytes")
            return limit

    def omits_crc64(self, key: str) -> bool:
        with self._lock:
            state = self._state
            return bool(state.omit_crc64) and state.key in (None, key)

    def take_object_error(self, key: str, method: str) -> str | None:
        """``"oss_5xx"`` or ``"oss_403_expired"`` if this object request must fail."""
        with self._lock:
            state = self._state
            if state.key is not None and state.key != key:
                return None
            if state.oss_5xx > 0:
                state.oss_5xx -= 1
                self._injected("oss_5xx")
                return "oss_5xx"
            if method == "GET" and state.oss_403_expired > 0:
                state.oss_403_expired -= 1
                self._injected("oss_403_expired")
                return "oss_403_expired"
            return None

    def take_body_faults(self, key: str, start: int, length: int) -> BodyFaults:
        """Faults for a GET body covering object bytes ``[start, start + length)``."""
        with self._lock:
            state = self._state
            if state.key is not None and state.key != key:
                return BodyFaults()
            drop_after = corrupt_at = None
            limit = state.drop_after_bytes
            if limit is not None and state.drop_times != 0 and length > limit:
                drop_after = limit
                state.drop_times -= 1 if state.drop_times > 0 else 0
                self._injected("drop")
            offset = state.corrupt_offset
            if offset is not None and state.corrupt_times != 0 and start <= offset < start + length:
                corrupt_at = offset - start
                state.corrupt_times -= 1 if state.corrupt_times > 0 else 0
                self._injected("corrupt")
            change_at = stall_at = None
            remaining = state.change_etag_after_bytes
            if remaining is not None:
                if remaining <= length:
                    change_at = remaining
                    state.change_etag_after_bytes = None
                    self._injected("change_etag_after_bytes")
                else:
                    state.change_etag_after_bytes = remaining - length
            limit = state.stall_after_bytes
            if limit is not None and state.stall_times != 0 and length > limit:
                stall_at = limit
                state.stall_times -= 1 if state.stall_times > 0 else 0
                self._injected("stall_after_bytes")
            extra = 0
            if state.body_shorter > 0:
                state.body_shorter -= 1
                self._injected("body_shorter")
                cut = max(0, length - state.body_delta_bytes)
                drop_after = cut if drop_after is None else min(drop_after, cut)
            elif state.body_longer > 0:
                state.body_longer -= 1
                self._injected("body_longer")
                extra = state.body_delta_bytes
            return BodyFaults(
                drop_after, corrupt_at, state.bandwidth_bps,
                change_at=change_at, stall_at=stall_at, stall_s=state.stall_s, extra_bytes=extra,
            )

    def take_ens_fault(self) -> tuple[str, int | None] | None:
        """``("throttle", retry_after_ms)``, ``("5xx", None)`` or ``("malformed:<mode>", None)``."""
        with self._lock:
            state = self._state
            if state.ens_throttle > 0:
                state.ens_throttle -= 1
                self._injected("ens_throttle")
                return "throttle", state.ens_retry_after_ms
            if state.ens_5xx > 0:
                state.ens_5xx -= 1
                self._injected("ens_5xx")
                return "5xx", None
            if state.ens_malformed > 0:
                state.ens_malformed -= 1
                self._injected("ens_malformed")
                mode = state.ens_malformed_mode
                if mode == "cycle":
                    mode = MALFORMED_MODES[self._malformed_served % len(MALFORMED_MODES)]
                self._malformed_served += 1
                return f"malformed:{mode}", None
            return None

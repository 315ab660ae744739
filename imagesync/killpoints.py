"""Named points where a crash test may stop the process dead, as a power cut or SIGKILL would.

``IMAGESYNC_KILL_AT=NAME`` (or ``NAME:N`` for its N-th passage) makes the process SIGKILL
itself when it reaches that point, so tests can prove that every crash leaves a mirror the next
run completes. Unset (always, outside tests) each call costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

_ENV = "IMAGESYNC_KILL_AT"
_passages: dict[str, int] = {}


def _target() -> tuple[str, int] | None:
    spec = os.environ.get(_ENV, "")
    if not spec:
        return None
    name, _, count = spec.partition(":")
    return name, int(count) if count.isdigit() else 1


_TARGET = _target()


def reached(name: str) -> None:
    if _TARGET is None or _TARGET[0] != name:
        return
    _passages[name] = _passages.get(name, 0) + 1
    if _passages[name] == _TARGET[1]:
        os.kill(os.getpid(), signal.SIGKILL)

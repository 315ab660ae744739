"""The control API under ``/_emulator/`` (no authentication; the server is loopback only).

* ``POST /_emulator/faults`` - JSON object merged into the fault state (see ``faults``);
  answers the new state; ``GET`` answers the current one. The action ``forget_upload``
  (an upload id or ``"*"``) removes multipart uploads at once; the answer then also has
  ``forgotten`` (how many).
* ``POST /_emulator/reset`` - back to the startup faults, statistics zeroed.
* ``GET /_emulator/stats`` - ``ens_requests``, ``ens_listings`` (page-1 listings),
  ``oss_requests``, ``object_gets``, ``object_heads``, ``body_bytes_sent`` (object bodies),
  ``bytes_by_key``, ``faults_injected``, ``oss_operations`` (count per operation:
  PutObject, DeleteObject, InitiateMultipartUpload, UploadPart, UploadPartCopy, ListParts,
  CompleteMultipartUpload, AbortMultipartUpload, ListMultipartUploads, ListObjects,
  ListObjectsV2), ``body_bytes_received`` and ``bytes_received_by_key`` (PUT bodies),
  ``bytes_copied`` (UploadPartCopy, server-side).
* ``GET /_emulator/buckets`` - ``{"<bucket>": "<region>", ...}``.
* ``GET /_emulator/health`` - ``{"ok": true}``.
"""

from __future__ import annotations

import json
from typing import Any

from .faults import FaultError
from .state import Emulator
from .wire import BodyTooLarge, Request, Response, json_response


def _error(status: int, message: str) -> Response:
    return json_response(status, {"error": message})


def _json_body(req: Request) -> dict[str, Any]:
    try:
        document = json.loads(req.body() or b"{}")
    except (ValueError, BodyTooLarge) as exc:
        raise FaultError(f"the body must be a JSON object: {exc}") from None
    if not isinstance(document, dict):
        raise FaultError("the body must be a JSON object")
    return document


def handle(emu: Emulator, req: Request) -> Response:
    """Answer one control request."""
    route = (req.method, req.path.removeprefix("/_emulator").rstrip("/"))
    try:
        if route == ("POST", "/faults"):
            fields = _json_body(req)
            forget = fields.pop("forget_upload", None)
            if forget is not None and not isinstance(forget, str):
                raise FaultError("forget_upload must be an upload id or \"*\"")
            state = emu.faults.update(fields)
            if forget is not None:
                state["forgotten"] = emu.uploads.forget(forget)
                emu.faults.injected("forget_upload")
            return json_response(200, state)
        if route == ("GET", "/buckets"):
            return json_response(200, emu.buckets.regions())
        if route == ("GET", "/faults"):
            return json_response(200, emu.faults.state())
        if route == ("POST", "/reset"):
            emu.faults.reset()
            return json_response(200, {"ok": True})
        if route == ("GET", "/stats"):
            return json_response(200, emu.faults.stats())
        if route == ("GET", "/health"):
            return json_response(200, {"ok": True})
    except FaultError as exc:
        return _error(400, str(exc))
    return _error(404, f"no control endpoint {req.method} {req.path}")

"""`sync --wait`: keep polling ENS while selected images are still exporting, and hand each one
to the transfers as soon as it turns ``Exported`` (the others keep transferring meanwhile).

An image that turns ``ExportError``, disappears, or is still exporting when ``wait.timeout_s``
runs out becomes a failed outcome; the run then exits 1.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import trio

from .config import WaitConfig
from .ens import ExportedImage
from .plan import EXPORTED, PlannedImage

log = logging.getLogger("imagesync")

EXPORTING = "Exporting"
EXPORT_ERROR = "ExportError"


@dataclass(frozen=True, slots=True, kw_only=True)
class GaveUp:
    """An image the wait ended on without an export to mirror."""

    image: ExportedImage
    reason: str


ListImages = Callable[[], Awaitable[list[ExportedImage]]]
PlanImages = Callable[[Sequence[ExportedImage]], Awaitable[list[PlannedImage]]]


def still_exporting(candidates: Sequence[ExportedImage]) -> list[ExportedImage]:
    """The selected images worth waiting for."""
    return [image for image in candidates if image.status == EXPORTING]


async def wait_for_exports(
    waiting: Sequence[ExportedImage],
    *,
    list_images: ListImages,
    plan_images: PlanImages,
    config: WaitConfig,
    ready: trio.MemorySendChannel[PlannedImage | GaveUp],
) -> None:
    """Poll every ``config.interval_s`` until no image is left waiting; send each as it resolves."""
    pending = {image.image_id: image for image in waiting}
    deadline = trio.current_time() + config.timeout_s
    with ready:  # closed without a checkpoint, where a cancel could hide an error
        while pending:
            log.info("waiting for %d image%s to finish exporting: %s", len(pending),
                     "" if len(pending) == 1 else "s", ", ".join(sorted(pending)))
            await trio.sleep(max(0.0, min(config.interval_s, deadline - trio.current_time())))
            listed = {image.image_id: image for image in await list_images()}
            exported = []
            for image_id, before in sorted(pending.items()):
                now = listed.get(image_id)
                if now is not None and now.status == EXPORTED and now.url:
                    exported.append(now)
                elif now is None or now.status not in (EXPORTING, EXPORTED):
                    status = "no longer listed" if now is None else f"turned {now.status}"
                    await ready.send(GaveUp(image=before, reason=f"image {image_id} {status} while waiting"))
                    del pending[image_id]
            for item in await plan_images(exported) if exported else []:
                del pending[item.image.image_id]
                await ready.send(item)
            if pending and trio.current_time() >= deadline:
                for image_id, image in sorted(pending.items()):
                    await ready.send(GaveUp(image=image, reason=f"image {image_id} is still exporting "
                                            f"after {config.timeout_s:g} s (wait.timeout_s)"))
                pending.clear()

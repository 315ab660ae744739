"""How a plan and a finished run are shown: rows and totals for people, one JSON document for scripts."""

from __future__ import annotations

from collections import Counter
from typing import Any

from .ens import ExportedImage
from .manifest import SIZE_ONLY
from .plan import Plan
from .progress import format_bytes
from .sync import Result, RunResult


def plan_json(result: RunResult) -> dict[str, Any]:
    plan = result.plan
    return {
        "dry_run": True,
        "images": [
            {
                "action": item.action.value,
                "image_id": item.image.image_id,
                "image_name": item.image.image_name,
                "path": str(item.path),
                "size": item.info.size if item.info else None,
                "bytes_to_transfer": item.bytes_to_transfer,
                "route": item.route,
                "reason": item.reason,
            }
            for item in plan.items
        ],
        "totals": {
            "images_to_transfer": len(plan.transfers),
            "bytes_to_transfer": plan.bytes_to_transfer,
            "actions": dict(Counter(item.action.value for item in plan.items)),
        },
        "destination": {"url": result.destination, "free_bytes": plan.free_bytes, "fits": plan.fits},
        **_others_json(plan),
    }


def plan_lines(result: RunResult) -> list[str]:
    plan = result.plan
    lines = [f"destination: {result.destination}"]
    for item in plan.items:
        size = format_bytes(item.info.size) if item.info else "-"
        name = item.image.image_name
        route = f"  via {item.route}" if item.server_side else ""
        lines.append(f"{item.action.value:<8} {item.image.image_id}  {name}  {size}  {item.reason}{route}")
    free = "unlimited" if plan.free_bytes is None else format_bytes(plan.free_bytes)
    lines.append(
        f"to transfer: {_images(len(plan.transfers))}, {format_bytes(plan.bytes_to_transfer)}; "
        f"destination free: {free} ({'enough room' if plan.fits else 'NOT ENOUGH ROOM'})"
    )
    return lines + _unavailable_lines(plan) + _others_lines(plan)


def summary_json(result: RunResult) -> dict[str, Any]:
    counts = Counter(outcome.result for outcome in result.outcomes)
    transferred = sum(outcome.bytes_transferred for outcome in result.outcomes)
    size_only = sum(1 for o in result.outcomes if o.result is Result.MIRRORED and o.verified == SIZE_ONLY)
    return {
        "dry_run": False,
        "exit_code": result.exit_code,
        "destination": result.destination,
        "counts": {key.value: counts.get(key, 0) for key in Result},
        "verification": {"verified": counts.get(Result.MIRRORED, 0) - size_only, "size_only": size_only},
        "bytes_transferred": transferred,
        "wall_s": round(result.wall_s, 3),
        "throughput_bytes_per_s": round(transferred / result.wall_s) if result.wall_s else 0,
        "images": [
            {"image_id": o.image_id, "image_name": o.image_name, "path": o.path,
             "action": o.action.value, "result": o.result.value, "verified": o.verified or None,
             "bytes_transferred": o.bytes_transferred, "seconds": round(o.seconds, 3), "reason": o.reason}
            for o in result.outcomes
        ],
        **_others_json(result.plan),
    }


def summary_lines(result: RunResult) -> list[str]:
    data = summary_json(result)
    counts = data["counts"]
    rate = data["throughput_bytes_per_s"] / 2**20
    unverified = data["verification"]["size_only"]
    size_only = f" ({unverified} checked by size only: no checksum published)" if unverified else ""
    lines = [
        f"mirrored {counts['mirrored']}{size_only}, skipped {counts['skipped']}, failed {counts['failed']}; "
        f"{format_bytes(data['bytes_transferred'])} in {result.wall_s:.1f} s ({rate:.0f} MiB/s) "
        f"to {result.destination}"
    ]
    return lines + _others_lines(result.plan)


def _images(count: int) -> str:
    return f"{count} image" if count == 1 else f"{count} images"


def _unavailable_lines(plan: Plan) -> list[str]:
    """What a dry run would fail on before any transfer (the run itself reports them as failed)."""
    selection = plan.selection
    lines = [f"fail     {i}  not listed by the API" for i in selection.unknown_ids]
    lines += [f"fail     {i.image_id}  {i.image_name}  {i.status}, not exported"
              for i in selection.unavailable]
    return lines


def _others_json(plan: Plan) -> dict[str, Any]:
    selection = plan.selection
    return {
        "not_exported": [_brief(image) for image in selection.not_exported],
        "filtered_out": [_brief(image) for image in selection.filtered_out],
        "unknown_image_ids": selection.unknown_ids,
        "no_longer_listed": [entry.image_id for entry in plan.missing],
    }


def _others_lines(plan: Plan) -> list[str]:
    selection = plan.selection
    lines = []
    if selection.not_exported:
        listed = ", ".join(f"{i.image_id} ({i.status})" for i in selection.not_exported)
        lines.append(f"not exported, so not mirrored: {listed}")
    if selection.filtered_out:
        lines.append(f"left out by the filters: {_images(len(selection.filtered_out))}")
    if plan.missing:
        ids = ", ".join(entry.image_id for entry in plan.missing)
        lines.append(f"no longer listed by the API, kept in the mirror: {ids}")
    return lines


def _brief(image: ExportedImage) -> dict[str, str]:
    return {"image_id": image.image_id, "image_name": image.image_name, "status": image.status}


"""How a plan and a finished run are shown: rows and totals for people, one JSON document for scripts."""

from __future__ import annotations

from collections import Counter
from typing import Any

from .ens import ExportedImage
from .plan import Plan
from .progress import format_bytes, printable
from .sync import RunResult


def plan_json(plan: Plan) -> dict[str, Any]:
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
                "reason": item.reason,
            }
            for item in plan.items
        ],
        "totals": {
            "images_to_transfer": len(plan.transfers),
            "bytes_to_transfer": plan.bytes_to_transfer,
            "actions": dict(Counter(item.action.value for item in plan.items)),
        },
        "destination": {"free_bytes": plan.free_bytes, "fits": plan.fits},
        **_others_json(plan),
    }


def plan_lines(plan: Plan) -> list[str]:
    lines = []
    for item in plan.items:
        size = format_bytes(item.info.size) if item.info else "-"
        name = printable(item.image.image_name)
        lines.append(f"{item.action.value:<8} {item.image.image_id}  {name}  {size}  {item.reason}")
    lines.append(
        f"to transfer: {len(plan.transfers)} images, {format_bytes(plan.bytes_to_transfer)}; "
        f"destination free: {format_bytes(plan.free_bytes)} "
        f"({'enough room' if plan.fits else 'NOT ENOUGH ROOM'})"
    )
    return lines + _others_lines(plan)


def summary_json(result: RunResult) -> dict[str, Any]:
    counts = Counter(outcome.result for outcome in result.outcomes)
    transferred = sum(outcome.bytes_transferred for outcome in result.outcomes)
    return {
        "dry_run": False,
        "exit_code": result.exit_code,
        "counts": {key: counts.get(key, 0) for key in ("mirrored", "skipped", "failed")},
        "bytes_transferred": transferred,
        "wall_s": round(result.wall_s, 3),
        "throughput_bytes_per_s": round(transferred / result.wall_s) if result.wall_s else 0,
        "images": [
            {"image_id": o.image_id, "image_name": o.image_name, "path": o.path, "action": o.action,
             "result": o.result, "bytes_transferred": o.bytes_transferred,
             "seconds": round(o.seconds, 3), "reason": o.reason}
            for o in result.outcomes
        ],
        **_others_json(result.plan),
    }


def summary_lines(result: RunResult) -> list[str]:
    data = summary_json(result)
    counts = data["counts"]
    rate = data["throughput_bytes_per_s"] / 1e6
    lines = [
        f"mirrored {counts['mirrored']}, skipped {counts['skipped']}, failed {counts['failed']}; "
        f"{format_bytes(data['bytes_transferred'])} in {result.wall_s:.1f} s ({rate:.0f} MB/s)"
    ]
    return lines + _others_lines(result.plan)


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
        lines.append(f"left out by the filters: {len(selection.filtered_out)} images")
    if plan.missing:
        ids = ", ".join(entry.image_id for entry in plan.missing)
        lines.append(f"no longer listed by the API, kept in the mirror: {ids}")
    return lines


def _brief(image: ExportedImage) -> dict[str, str]:
    return {"image_id": image.image_id, "image_name": image.image_name, "status": image.status}


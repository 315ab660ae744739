"""Where each image goes: one safe, unique path per image, always inside the destination.

Names come from the API, so every value and every path component is sanitised: no control
characters, no separators smuggled in through a value, no ``.``/``..``/empty or hidden
components, at most 200 bytes of UTF-8 per component, never a name the transfer or the
manifest uses for its own files. Paths are compared case-insensitively (and after Unicode
normalisation), because backup disks may fold case.
"""

from __future__ import annotations

import os
import re
import string
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from .destination import RESERVED_NAMES, RESERVED_SUFFIXES
from .errors import ConfigError, DestinationError

if TYPE_CHECKING:  # only attributes are read; keeps this module free of the HTTP stack
    from .ens import ExportedImage

DEFAULT_TEMPLATE = "{image_id}.qcow2"
FIELDS = ("image_id", "image_name", "platform", "architecture")
MAX_COMPONENT_BYTES = 200

_MAX_EXTENSION_BYTES = 32  # a longer "extension" is just part of the name
_MAX_TAG_ID_BYTES = 64
# C0, DEL, C1, line/paragraph separators, and lone surrogates (which cannot be encoded).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_SUFFIXES = RESERVED_SUFFIXES
_RESERVED_FOLDED = frozenset(name.casefold() for name in RESERVED_NAMES)
_FORMATTER = string.Formatter()
# A string format spec: [[fill]align][0][width][.precision][s], widths of at most 3 digits.
_SPEC = re.compile(r"(?:.?[<>^])?0?[0-9]{0,3}(?:\.[0-9]{1,3})?s?", re.DOTALL)


def template_problem(template: str) -> str | None:
    """What a usable path template would be, when `template` is not one; None when it is.

    The one check of a template, run when the config is loaded (so a bad one stops the run
    before listing) and again by `render_path`. Fields are bare names from `FIELDS`: no
    attribute or index access (``{image_id.__class__}``, ``{image_id[0]}``), no positional
    ``{}``/``{0}``, no conversion but ``!s``, and a plain format spec (``{image_id:.12}``).
    """
    expected = "a template using only {" + "}, {".join(FIELDS) + "}"
    if not template.strip():
        return "a non-empty template"
    try:
        parsed = list(_FORMATTER.parse(template))
    except ValueError as error:
        return f"{expected} (this one is malformed: {error})"
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in FIELDS:
            return f"{expected}, without attribute or index access ({{{name}}} is not one of them)"
        if conversion not in (None, "s"):
            return f"{expected}, with no conversion but !s ({{{name}!{conversion}}} has one)"
        if spec and _SPEC.fullmatch(spec) is None:
            return f"{expected} and a plain format spec like {{{name}:.12}} ({spec!s} is not one)"
    return None


def render_path(template: str, image: ExportedImage) -> PurePosixPath:
    """The relative path `template` gives `image`; only the template's own ``/`` make folders."""
    problem = template_problem(template)
    if problem:
        raise ConfigError(f"the path template {template} is not valid; expected {problem}")
    values = {name: _clean_value(getattr(image, name)) for name in FIELDS}
    pieces: list[str] = []
    for literal, field, spec, conversion in _FORMATTER.parse(template):
        pieces.append(literal)
        if field is None:
            continue
        value = _FORMATTER.convert_field(values[field], conversion)
        pieces.append(_clean_value(_FORMATTER.format_field(value, spec or "")))
    parts = "".join(pieces).split("/")
    return PurePosixPath(*(_clean_component(part, first=i == 0) for i, part in enumerate(parts)))


def assign_paths(
    template: str,
    images: Sequence[ExportedImage],
    existing: Mapping[str, str] | None = None,
) -> dict[str, PurePosixPath]:
    """image_id -> relative path for every image in `images`, unique and never nested.

    An image recorded in `existing` (image_id -> path, from the manifest) keeps its path, so a
    new template neither orphans nor re-downloads it; every existing path stays reserved, even
    for images no longer listed. Others are rendered in image_id order; a collision gets
    ``-<image_id>`` inserted before the extension of the component that collides. An existing
    path that is unsafe or collides with an earlier one is ignored and its image re-rendered.
    """
    taken = _Taken()
    kept: dict[str, PurePosixPath] = {}
    for image_id, text in sorted((existing or {}).items()):
        path = PurePosixPath(text)
        if _is_acceptable(path) and taken.conflict(path.parts) is None:
            taken.add(path.parts)
            kept[image_id] = path
    paths: dict[str, PurePosixPath] = {}
    for image in sorted(images, key=lambda image: image.image_id):
        if image.image_id in paths:
            continue
        if image.image_id in kept:
            paths[image.image_id] = kept[image.image_id]
            continue
        parts = _deconflict(render_path(template, image).parts, image.image_id, taken)
        taken.add(parts)
        paths[image.image_id] = PurePosixPath(*parts)
    return paths


def resolve_inside(root: Path, relative: PurePosixPath) -> Path:
    """``root / relative``, refused with `DestinationError` unless it is lexically inside root.

    The check is on the names alone (``os.path.normpath``): symlinks the user placed under the
    destination are theirs to keep, and only a name from the API could be hostile.
    """
    text = str(relative)
    base = os.path.normpath(root.absolute())
    joined = os.path.normpath(Path(base, text))
    if (
        relative.is_absolute()
        or "\0" in text
        or ".." in relative.parts
        or joined == base
        or os.path.commonpath([base, joined]) != base
    ):
        raise DestinationError(f"refusing the path {text!r}: it does not name a file inside {base}")
    return root.joinpath(*relative.parts)


def _clean_value(value: str) -> str:
    return _UNSAFE.sub("_", value).replace("/", "_").replace("\\", "_")


def _clean_component(text: str, *, first: bool) -> str:
    text = _UNSAFE.sub("_", text).replace("\\", "_").rstrip(" .")
    # Two bytes spare for the "_" that may be put in front or appended below.
    text = _fit(text, MAX_COMPONENT_BYTES - 2).rstrip(" .")
    if not text:
        return "_"
    if text.startswith("."):
        text = "_" + text
    folded = text.casefold()
    if folded.endswith(_SUFFIXES) or (first and folded in _RESERVED_FOLDED):
        text += "_"
    return text


def _utf8_len(text: str) -> int:
    return len(text.encode())


def _extension(name: str) -> str:
    dot = name.rfind(".")
    if dot <= 0 or _utf8_len(name[dot:]) > _MAX_EXTENSION_BYTES:
        return ""
    return name[dot:]


def _fit(text: str, limit: int) -> str:
    """`text` cut to `limit` UTF-8 bytes, keeping its extension."""
    if _utf8_len(text) <= limit:
        return text
    extension = _extension(text)
    stem = text[: len(text) - len(extension)]
    return _truncate(stem, limit - _utf8_len(extension)) + extension


def _truncate(text: str, limit: int) -> str:
    cut = text.encode()[:limit].decode("utf-8", "ignore")
    end = len(cut)
    # Do not separate a base character from its combining marks, unless nothing would be left.
    while 0 < end < len(text) and unicodedata.combining(text[end]):
        end -= 1
    return text[:end] if end else cut


def _is_acceptable(path: PurePosixPath) -> bool:
    parts = path.parts
    return bool(
        parts
        and not path.is_absolute()
        and all(part not in (".", "..") and "\0" not in part for part in parts)
        and not any(part.casefold().endswith(_SUFFIXES) for part in parts)
        and parts[0].casefold() not in _RESERVED_FOLDED
    )


def _deconflict(parts: tuple[str, ...], image_id: str, taken: _Taken) -> tuple[str, ...]:
    original, current, attempt = parts, list(parts), 0
    # Renaming component i never changes a shorter prefix, so the colliding index only grows
    # and each attempt number is fresh: the loop ends.
    while (index := taken.conflict(current)) is not None:
        attempt += 1
        current[index] = _tagged(original[index], image_id, attempt, first=index == 0)
    return tuple(current)


def _tagged(component: str, image_id: str, attempt: int, *, first: bool) -> str:
    tag_id = _clean_component(_clean_value(image_id), first=False)
    tag_id = _truncate(tag_id, _MAX_TAG_ID_BYTES).rstrip(" .")
    tag = f"-{tag_id}" if attempt == 1 else f"-{tag_id}-{attempt}"
    extension = _extension(component)
    stem = component[: len(component) - len(extension)]
    budget = MAX_COMPONENT_BYTES - 2 - _utf8_len(tag) - _utf8_len(extension)
    return _clean_component(_truncate(stem, budget) + tag + extension, first=first)


def _folded(component: str) -> str:
    return unicodedata.normalize("NFC", unicodedata.normalize("NFD", component).casefold())


class _Taken:
    """Paths already handed out, as case-folded keys: files, and the folders above them."""

    def __init__(self) -> None:
        self.files: set[tuple[str, ...]] = set()
        self.folders: set[tuple[str, ...]] = set()

    def conflict(self, parts: Iterable[str]) -> int | None:
        """The index of the first component that collides, or None."""
        key = tuple(_folded(part) for part in parts)
        for length in range(1, len(key)):
            if key[:length] in self.files:
                return length - 1
        if key in self.files or key in self.folders:
            return len(key) - 1
        return None

    def add(self, parts: Iterable[str]) -> None:
        key = tuple(_folded(part) for part in parts)
        self.files.add(key)
        self.folders.update(key[:length] for length in range(1, len(key)))

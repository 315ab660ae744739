"""The manifest: contract shape, sha256sum-compatible SHA256SUMS, journal replay, O(1) records."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imagesync.destination import JOURNAL_NAME, MANIFEST_NAME, SUMS_NAME
from imagesync.errors import DestinationError, DiskFullError
from imagesync.manifest import (
    Manifest,
    ManifestEntry,
    ManifestWriter,
    format_time,
    render_manifest,
    render_sha256sums,
)
from imagesync.sinks.local import LocalDestination

SIGNED = "https://b.oss-cn-beijing.aliyuncs.com/m-1.qcow2?x-oss-signature=SECRET&x-oss-date=1#frag"
KEYS = ["image_id", "image_name", "architecture", "platform", "creation_time", "source_url",
        "source_etag", "size", "crc64ecma", "sha256", "verified", "path", "mirrored_at"]
TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")


def entry(image_id: str = "m-1", content: bytes = b"qcow2", **fields: Any) -> ManifestEntry:
    values: dict[str, Any] = {
        "image_name": "web", "architecture": "x86_64", "platform": "centos",
        "creation_time": "2024-01-01T00:00:00Z",
        "source_url": f"https://b.oss-cn-beijing.aliyuncs.com/{image_id}.qcow2",
        "source_etag": '"5B3C1A2E053D763E1B002CC607C5A0FE"', "size": len(content),
        "crc64ecma": "1234567890123456789", "sha256": hashlib.sha256(content).hexdigest(),
        "path": f"{image_id}.qcow2", "mirrored_at": "2024-02-03T04:05:06Z",
    } | fields
    return ManifestEntry(image_id=image_id, **values)


@pytest.fixture
def writers(tmp_path: Path) -> Iterator[list[ManifestWriter]]:
    """Writers a test opens; their journal descriptors are closed even when one is abandoned."""
    opened: list[ManifestWriter] = []
    yield opened
    for writer in opened:
        store = writer._store
        fd = store._fd  # type: ignore[attr-defined]
        if fd is not None:
            os.close(fd)
            store._fd = None  # type: ignore[attr-defined]


def load(root: Path) -> Manifest:
    """What a run reads from the local destination ``root``."""
    return Manifest.load(LocalDestination(root).manifest_store())


def open_writer(root: Path, opened: list[ManifestWriter], **options: Any) -> ManifestWriter:
    store = LocalDestination(root).manifest_store()
    assert store is not None
    writer = ManifestWriter(Manifest.load(store), store, **options)
    opened.append(writer)
    return writer


def test_entry_round_trip_keeps_every_field() -> None:
    original = entry(missing_since="2024-03-01T00:00:00Z", image_name="漢字 \ud800")
    data = original.to_json()
    assert list(data) == [*KEYS, "missing_since"]
    assert ManifestEntry.from_json(json.loads(json.dumps(data)), where="x") == original
    assert "missing_since" not in entry().to_json()


@pytest.mark.parametrize(
    "url",
    [SIGNED, "https://user:secret@b.oss-cn-beijing.aliyuncs.com/m-1.qcow2?a=1",
     "https://b.oss-cn-beijing.aliyuncs.com/m-1.qcow2?"],
)
def test_source_url_never_keeps_query_fragment_or_user_info(url: str) -> None:
    assert entry(source_url=url).source_url == "https://b.oss-cn-beijing.aliyuncs.com/m-1.qcow2"


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"image_id": ""}, "image_id is empty"),
        ({"size": -1}, "size is -1"),
        ({"crc64ecma": "12a"}, "crc64ecma"),
        ({"crc64ecma": str(2**64)}, "crc64ecma"),
        ({"crc64ecma": "\uff11\uff12"}, "crc64ecma"),  # fullwidth digits
        ({"sha256": "abc"}, "sha256"),
        ({"path": "../x"}, "path"),
        ({"path": "/etc/x"}, "path"),
        ({"path": ""}, "path"),
        ({"path": "a//b"}, "path"),
        ({"path": "a/./b"}, "path"),
        ({"path": "a\0b"}, "path"),
        ({"path": "a\ud800"}, "path"),
        ({"mirrored_at": "2024-01-01 00:00:00"}, "mirrored_at"),
        ({"missing_since": "yesterday"}, "missing_since"),
    ],
)
def test_invalid_entries_are_refused(fields: dict[str, Any], problem: str) -> None:
    image_id = fields.pop("image_id", "m-1")
    with pytest.raises(ValueError, match=problem):
        entry(image_id, **fields)


def test_sha256_is_normalised_to_lower_case() -> None:
    assert entry(sha256="AB" * 32).sha256 == "ab" * 32


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"size": "12"}, r"m.json, images\[0\] \(image m-1\): size is '12', expected an integer"),
        ({"size": True}, "size is True, expected an integer"),
        ({"sha256": None}, "sha256 is missing, which only a server-side copy may leave out"),
        ({"path": "../../x"}, r"\(image m-1\): path '../../x' is not a plain relative path"),
    ],
)
def test_from_json_names_the_file_entry_and_field(change: dict[str, Any], message: str) -> None:
    data = entry().to_json() | change
    with pytest.raises(DestinationError, match=message):
        ManifestEntry.from_json(data, where="m.json, images[0]")


def test_from_json_refuses_a_non_object() -> None:
    with pytest.raises(DestinationError, match=r"images\[3\] is not a JSON object"):
        ManifestEntry.from_json(["m-1"], where="images[3]")


def test_format_time() -> None:
    when = datetime(2024, 5, 6, 9, 8, 7, 654321, tzinfo=timezone(timedelta(hours=8)))
    assert format_time(when) == "2024-05-06T01:08:07Z"
    assert format_time("2024-05-06T01:08:07Z") == "2024-05-06T01:08:07Z"
    with pytest.raises(ValueError, match="timezone"):
        format_time(datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="not a manifest time"):
        format_time("2024-05-06 01:08:07")


def test_render_manifest_has_the_contract_shape() -> None:
    document = json.loads(render_manifest([entry("m-2"), entry("m-1")], "2024-01-01T00:00:00Z"))
    assert list(document) == ["version", "updated_at", "images"]
    assert document["version"] == 1
    assert [image["image_id"] for image in document["images"]] == ["m-1", "m-2"]
    assert all(list(image) == KEYS for image in document["images"])
    assert isinstance(document["images"][0]["size"], int)
    assert isinstance(document["images"][0]["crc64ecma"], str)


def test_render_manifest_survives_a_lone_surrogate_from_the_api() -> None:
    rendered = render_manifest([entry(image_name="x\ud800y")], "2024-01-01T00:00:00Z")
    assert json.loads(rendered.decode("utf-8"))["images"][0]["image_name"] == "x\ud800y"


def test_render_sha256sums_escapes_like_gnu() -> None:
    digest = "ab" * 32
    entries = [entry("m-1", sha256=digest, path="b/plain name.qcow2"),
               entry("m-2", sha256=digest, path="a\\b\nc\rd")]
    assert render_sha256sums(entries) == (
        f"\\{digest}  a\\\\b\\nc\\rd\n{digest}  b/plain name.qcow2\n".encode()
    )


NAMES = ["m-1.qcow2", "centos/x86_64/web 7.qcow2", "-rf.qcow2", "漢字/😀 e\u0301.qcow2",
         "back\\slash.qcow2", "new\nline.qcow2", "carriage\rreturn.qcow2", "  spaced  ",
         "*star", "two  spaces", "trailing\\"]


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="needs GNU sha256sum")
def test_sha256sums_is_verified_by_sha256sum(tmp_path: Path, writers: list[ManifestWriter]
                                             ) -> None:
    writer = open_writer(tmp_path, writers)
    for number, name in enumerate(NAMES):
        content = f"image {number}".encode()
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content)
        writer.record(entry(f"m-{number}", content, path=name))
    writer.close()
    result = subprocess.run(["sha256sum", "--strict", "-c", SUMS_NAME], cwd=tmp_path,
                            capture_output=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(b": OK\n") == len(NAMES)
    (tmp_path / NAMES[4]).write_bytes(b"changed")
    result = subprocess.run(["sha256sum", "-c", SUMS_NAME], cwd=tmp_path, capture_output=True,
                            check=False)
    assert result.returncode == 1


def test_close_writes_both_files_and_removes_the_journal(
    tmp_path: Path, writers: list[ManifestWriter]
) -> None:
    writer = open_writer(tmp_path, writers)
    writer.record(entry("m-2"))
    writer.record(entry("m-1", source_url=SIGNED))
    assert (tmp_path / JOURNAL_NAME).exists()
    writer.close()
    assert not (tmp_path / JOURNAL_NAME).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [SUMS_NAME, MANIFEST_NAME]
    document = json.loads((tmp_path / MANIFEST_NAME).read_bytes())
    assert TIME.fullmatch(document["updated_at"])
    assert [image["image_id"] for image in document["images"]] == ["m-1", "m-2"]
    loaded = load(tmp_path)
    assert loaded.entries == {"m-1": entry("m-1"), "m-2": entry("m-2")}
    assert loaded.get("m-1") == entry("m-1")
    assert loaded.get("m-3") is None
    writer.close()  # a second close does nothing


def test_no_query_string_is_ever_written(tmp_path: Path, writers: list[ManifestWriter]) -> None:
    writer = open_writer(tmp_path, writers)
    writer.record(entry(source_url=SIGNED))
    assert b"SECRET" not in (tmp_path / JOURNAL_NAME).read_bytes()
    writer.close()
    for path in tmp_path.iterdir():
        assert b"SECRET" not in path.read_bytes()
        assert b"?" not in path.read_bytes()


def test_absent_manifest_is_empty(tmp_path: Path) -> None:
    assert load(tmp_path).entries == {}
    assert load(tmp_path / "not-yet").entries == {}


def test_journal_is_replayed_after_a_crash(tmp_path: Path, writers: list[ManifestWriter]) -> None:
    writer = open_writer(tmp_path, writers, compact_interval_s=3600)
    for number in range(3):
        writer.record(entry(f"m-{number}"))
    # Abandoned without close, and the next write was cut short by the crash.
    with open(tmp_path / JOURNAL_NAME, "ab") as journal:
        journal.write(b'{"op":"record","entry":{"image_id":"m-9","ima')
    assert not (tmp_path / MANIFEST_NAME).exists()
    assert sorted(load(tmp_path).entries) == ["m-0", "m-1", "m-2"]

    again = open_writer(tmp_path, writers, compact_interval_s=3600)
    assert again.compactions == 1  # the leftover journal was folded in first
    assert not (tmp_path / JOURNAL_NAME).exists()
    again.record(entry("m-3"))
    assert sorted(load(tmp_path).entries) == ["m-0", "m-1", "m-2", "m-3"]
    again.close()
    assert sorted(json.loads((tmp_path / MANIFEST_NAME).read_bytes())["images"][i]["image_id"]
                  for i in range(4)) == ["m-0", "m-1", "m-2", "m-3"]


def test_crash_between_the_renames_loses_nothing(
    tmp_path: Path, writers: list[ManifestWriter]
) -> None:
    writer = open_writer(tmp_path, writers, compact_interval_s=3600)
    writer.record(entry("m-1"))
    writer.compact()
    writer.record(entry("m-2"))
    writer.record(entry("m-1", b"new content"))
    stale_sums = (tmp_path / SUMS_NAME).read_bytes()
    (tmp_path / MANIFEST_NAME).write_bytes(render_manifest(writer.entries.values(), "2024-01-01T00:00:00Z"))
    # manifest.json is new, SHA256SUMS is old and the journal still holds every record.
    assert (tmp_path / SUMS_NAME).read_bytes() == stale_sums
    assert load(tmp_path).entries == writer.entries
    open_writer(tmp_path, writers).close()
    assert load(tmp_path).entries == {"m-1": entry("m-1", b"new content"),
                                               "m-2": entry("m-2")}
    assert (tmp_path / SUMS_NAME).read_bytes() == render_sha256sums(writer.entries.values())


def test_later_record_replaces_an_earlier_one(tmp_path: Path, writers: list[ManifestWriter]) -> None:
    writer = open_writer(tmp_path, writers)
    writer.record(entry("m-1", b"old"))
    writer.record(entry("m-1", b"new"))
    assert load(tmp_path).get("m-1") == entry("m-1", b"new")


def test_missing_images_are_marked_not_deleted(tmp_path: Path, writers: list[ManifestWriter]
                                               ) -> None:
    writer = open_writer(tmp_path, writers)
    writer.record(entry("m-1"))
    writer.record(entry("m-2"))
    first = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)
    writer.mark_missing(["m-2", "m-404"], first)
    writer.mark_missing(["m-2"], first + timedelta(days=1))  # the first mark is kept
    assert load(tmp_path).get("m-2") == entry("m-2", missing_since="2024-06-01T12:00:00Z")
    writer.close()
    loaded = load(tmp_path)
    assert sorted(loaded.entries) == ["m-1", "m-2"]
    assert loaded.entries["m-2"].missing_since == "2024-06-01T12:00:00Z"
    assert loaded.entries["m-1"].missing_since is None
    document = json.loads((tmp_path / MANIFEST_NAME).read_bytes())
    assert document["images"][1]["missing_since"] == "2024-06-01T12:00:00Z"
    assert "missing_since" not in document["images"][0]

    again = open_writer(tmp_path, writers)
    again.mark_present(["m-2"])
    assert load(tmp_path).get("m-2") == entry("m-2")
    again.mark_missing(["m-1"], "2024-07-01T00:00:00Z")
    assert again.entries["m-1"].missing_since == "2024-07-01T00:00:00Z"


def test_nothing_to_mark_writes_nothing(tmp_path: Path, writers: list[ManifestWriter]) -> None:
    writer = open_writer(tmp_path, writers)
    writer.mark_missing(["m-1"], datetime.now(UTC))
    writer.mark_present(["m-1"])
    writer.close()
    assert list(tmp_path.iterdir()) == []


def test_recording_is_constant_time(tmp_path: Path, writers: list[ManifestWriter]) -> None:
    writer = open_writer(tmp_path, writers)
    entries = [entry(f"m-{number:05}") for number in range(5000)]
    inodes = set()
    costs = []
    for item in entries:
        started = time.perf_counter()
        writer.record(item)
        costs.append(time.perf_counter() - started)
        if (tmp_path / MANIFEST_NAME).exists():
            inodes.add((tmp_path / MANIFEST_NAME).stat().st_ino)
    writer.close()
    # A ratio, not a time, so a slow disk cannot fail it: the 5,000th append (median of the
    # last 25) costs about what the 50th did (median of 25 around it), not a hundred times more.
    early, late = statistics.median(costs[38:63]), statistics.median(costs[-25:])
    assert late < 5 * early, (early, late)
    assert writer.compactions <= 2
    assert len(inodes) <= 1
    assert len(load(tmp_path).entries) == 5000


def test_record_compacts_once_the_interval_has_passed(
    tmp_path: Path, writers: list[ManifestWriter]
) -> None:
    now = [0.0]
    writer = open_writer(tmp_path, writers, compact_interval_s=10, clock=lambda: now[0])
    for number in range(30):
        now[0] = number
        writer.record(entry(f"m-{number}"))
    assert writer.compactions == 2  # at t=11 and at t=22
    assert len(load(tmp_path).entries) == 30
    assert len(json.loads((tmp_path / MANIFEST_NAME).read_bytes())["images"]) == 23


def test_a_failed_append_leaves_no_half_line(
    tmp_path: Path, writers: list[ManifestWriter], monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = open_writer(tmp_path, writers)
    writer.record(entry("m-1"))
    real_write = os.write

    def half_then_full(fd: int, data: Any) -> int:
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(DiskFullError, match=f"cannot append to .*{JOURNAL_NAME}.*free some space"):
        writer.record(entry("m-2"))
    monkeypatch.undo()
    writer.record(entry("m-3"))
    assert sorted(load(tmp_path).entries) == ["m-1", "m-3"]


def test_stale_temporary_files_are_removed_by_the_next_compaction(
    tmp_path: Path, writers: list[ManifestWriter]
) -> None:
    (tmp_path / f".{MANIFEST_NAME}.tmp-0123abcd").write_bytes(b"{")
    (tmp_path / f".{SUMS_NAME}.tmp-0123abcd").write_bytes(b"")
    (tmp_path / "m-1.qcow2").write_bytes(b"qcow2")
    writer = open_writer(tmp_path, writers)
    writer.record(entry("m-1"))
    writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([SUMS_NAME, MANIFEST_NAME, "m-1.qcow2"])


def test_a_closed_writer_refuses_records(tmp_path: Path, writers: list[ManifestWriter]) -> None:
    writer = open_writer(tmp_path, writers)
    writer.close()
    with pytest.raises(RuntimeError, match="closed"):
        writer.record(entry())


def manifest_with(images: Any, **document: Any) -> bytes:
    return json.dumps({"version": 1, "updated_at": "2024-01-01T00:00:00Z", "images": images}
                      | document).encode()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", r"manifest.json is not valid JSON \(line 1 column 1"),
        (b'{"version": 1, "images": [', "manifest.json is not valid JSON"),
        (b"\xff\xfe{}", "manifest.json is not valid UTF-8 JSON"),
        (b"[]", "manifest.json is not an imagesync manifest"),
        (b'{"version": 1}', "manifest.json is not an imagesync manifest"),
        (manifest_with([], version=2), "manifest.json has version 2; this imagesync reads version 1"),
        (manifest_with([42]), r"manifest.json, images\[0\] is not a JSON object"),
        (manifest_with([entry().to_json() | {"size": "big"}]),
         r"images\[0\] \(image m-1\): size is 'big', expected an integer"),
        (manifest_with([entry().to_json(), entry().to_json()]),
         r"images\[1\]: image m-1 is listed twice"),
    ],
)
def test_a_corrupt_manifest_is_one_clear_sentence(tmp_path: Path, content: bytes, message: str
                                                  ) -> None:
    (tmp_path / MANIFEST_NAME).write_bytes(content)
    with pytest.raises(DestinationError, match=message) as caught:
        load(tmp_path)
    assert str(tmp_path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_hand_edited_manifest_with_a_bom_loads(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_NAME).write_bytes(b"\xef\xbb\xbf" + manifest_with([entry().to_json()]))
    assert load(tmp_path).entries == {"m-1": entry()}


def test_a_corrupt_journal_line_before_the_last_is_an_error(tmp_path: Path) -> None:
    good = json.dumps({"op": "record", "entry": entry().to_json()}).encode()
    (tmp_path / JOURNAL_NAME).write_bytes(good + b"\nnot json\n" + good + b"\n")
    with pytest.raises(DestinationError, match=f"{JOURNAL_NAME}, line 2 is not a journal record"):
        load(tmp_path)


def test_an_unreadable_destination_is_a_destination_error(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_NAME).mkdir()
    with pytest.raises(DestinationError, match="cannot read"):
        load(tmp_path)


TEXT = st.text(st.characters(codec=None), max_size=30)


@given(TEXT, TEXT, st.integers(0, 2**63), st.integers(0, 2**64 - 1),
       st.text(st.characters(codec="utf-8", exclude_characters="\0/"), min_size=1, max_size=20))
def test_any_entry_survives_render_and_load(
    name: str, etag: str, size: int, crc: int, path: str
) -> None:
    if path in (".", ".."):
        path = "_"
    original = entry(image_name=name, source_etag=etag, size=size, crc64ecma=str(crc), path=path)
    document = json.loads(render_manifest([original], "2024-01-01T00:00:00Z"))
    assert ManifestEntry.from_json(document["images"][0], where="x") == original

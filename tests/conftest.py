"""Shared fixtures: a real emulator (``python -m imagesync.emulator``) per test.

The emulator runs as a subprocess on a real loopback socket, so the code under test shares
no interpreter (and no GIL) with it. ``start_emulator(images=3, image_size="1MiB",
extra_args=(), root=None, dest_buckets=())`` starts one and returns an
:class:`EmulatorHandle`; ``emulator`` is the default one. ``dest_buckets`` are
``NAME[@REGION]`` specs for ``--dest-bucket``. Its data root is ``<tmp_path>/emulator`` (then ``emulator-2``, ...): write a
catalog there before starting to serve your own images (see ``imagesync.emulator.catalog``).
"""

from __future__ import annotations

import argparse
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import oss2
import pytest

from imagesync.emulator import add_arguments, catalog
from imagesync.emulator.buckets import Buckets
from imagesync.emulator.multipart_store import UploadStore
from imagesync.emulator.objects import ObjectMeta, ObjectStore, key_path
from imagesync.emulator.options import client_config, merge_sections, render_toml

STARTUP_TIMEOUT_S = 30
LISTENING = "imagesync emulator listening on "


@dataclass(frozen=True)
class EmulatorHandle:
    """A running emulator: where it is, its credentials, and its control API."""

    url: str
    port: int
    root: Path
    access_key_id: str
    access_key_secret: str
    region: str
    bucket: str
    public_read: bool = False
    readonly_keys: tuple[tuple[str, str], ...] = ()
    popen: subprocess.Popen[bytes] | None = field(default=None, compare=False, repr=False)

    # --- config for the tool ---

    def config_text(self, mirror: Path | str, **overrides: Mapping[str, Any] | None) -> str:
        """The TOML config pointing at this emulator; ``overrides`` are per-section dicts
        (``transfer={"concurrency": 1}``), a None value removes a key or section.
        ``mirror`` may be ``"oss://bucket/prefix"`` (a bucket of this emulator)."""
        base = client_config(
            url=self.url,
            access_key_id=self.access_key_id,
            access_key_secret=self.access_key_secret,
            region=self.region,
            public_read=self.public_read,
            destination=str(mirror),
        )
        return render_toml(merge_sections(base, overrides))

    def write_config(
        self, path: Path, mirror: Path | str, **overrides: Mapping[str, Any] | None
    ) -> Path:
        """Write :meth:`config_text` to ``path`` with mode 0600."""
        path.write_text(self.config_text(mirror, **overrides))
        path.chmod(0o600)
        return path

    # --- control API ---

    def _control(self, method: str, name: str, body: Any = None) -> Any:
        with httpx.Client(trust_env=False, timeout=30) as client:
            response = client.request(method, f"{self.url}/_emulator/{name}", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    def faults(self, **fields: Any) -> dict[str, Any]:
        """Merge fault fields (see ``imagesync.emulator.faults``); returns the new state."""
        result: dict[str, Any] = self._control("POST", "faults", fields)
        return result

    def reset(self) -> None:
        """Back to no faults, statistics zeroed."""
        self._control("POST", "reset", {})

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._control("GET", "stats")
        return result

    # --- data ---

    def catalog(self) -> list[dict[str, Any]]:
        return catalog.load_entries(self.root)

    def exported(self) -> list[dict[str, Any]]:
        return [e for e in self.catalog() if e.get("ImageExportStatus") == "Exported"]

    def object_path(self, image_id: str) -> Path:
        return catalog.object_path(self.root, image_id)

    def object_url(self, image_id: str) -> str:
        entry = next(e for e in self.catalog() if e.get("ImageId") == image_id)
        return f"{self.url}/{entry['Bucket']}/{entry['Key']}"

    def add_image(self, **fields: Any) -> dict[str, Any]:
        """``catalog.add_image`` into this emulator's bucket."""
        fields.setdefault("bucket", self.bucket)
        return catalog.add_image(self.root, **fields)

    def rewrite_object(self, image_id: str, **fields: Any) -> ObjectMeta:
        return catalog.rewrite_object(self.root, image_id, **fields)

    def add_scheduled_image(self, **fields: Any) -> dict[str, Any]:
        """``catalog.add_scheduled_image``: an Exporting image (object written) that turns
        Exported (``exported_after_listings=N`` / ``exported_at=T``) or ExportError
        (``error_after_listings=N`` / ``error_at=T``) by itself."""
        fields.setdefault("bucket", self.bucket)
        return catalog.add_scheduled_image(self.root, **fields)

    # --- buckets (source and destinations) ---

    def buckets(self) -> dict[str, str]:
        """Every bucket and its region."""
        return Buckets(self.root, self.region).regions()

    def bucket_region(self, name: str) -> str:
        return Buckets(self.root, self.region).region(name)

    def oss_bucket(
        self, name: str | None = None, *, key_id: str | None = None, secret: str | None = None,
        region: str | None = None,
    ) -> oss2.Bucket:
        """An oss2 Bucket (signature V4, the bucket's region) on this emulator."""
        name = name or self.bucket
        auth = oss2.AuthV4(key_id or self.access_key_id, secret or self.access_key_secret)
        return oss2.Bucket(auth, self.url, name, region=region or self.bucket_region(name))

    def dest_bucket(self, name: str, **kwargs: Any) -> oss2.Bucket:
        """``oss_bucket`` for a ``--dest-bucket``."""
        return self.oss_bucket(name, **kwargs)

    def object_file(self, bucket: str, key: str) -> Path:
        """Where ``bucket/key`` lives on disk (it may not exist)."""
        path = key_path(self.root, bucket, key)
        assert path is not None, f"{bucket}/{key} cannot be a file"
        return path

    def read_object(self, bucket: str, key: str) -> bytes:
        return self.object_file(bucket, key).read_bytes()

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """The keys of a bucket, read from disk."""
        return ObjectStore(self.root).keys(bucket, prefix)

    def uploads(self, bucket: str) -> list[str]:
        """Upload ids of the bucket's open multipart uploads, read from disk."""
        return [u.upload_id for u in UploadStore(self.root).uploads(bucket)]


def _parse_options(args: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(args))


class _Process:
    """The subprocess, its stdout drained by a thread, its stderr kept in a file."""

    def __init__(self, command: list[str], stderr_path: Path) -> None:
        self._stderr_path = stderr_path
        self._stderr = open(stderr_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr
        )
        self._lines: queue.Queue[bytes] = queue.Queue()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._lines.put(line)
        self._lines.put(b"")

    def first_line(self) -> str:
        try:
            line = self._lines.get(timeout=STARTUP_TIMEOUT_S)
        except queue.Empty:
            line = b""
        if not line.startswith(LISTENING.encode()):
            self.stop()
            raise RuntimeError(
                f"emulator did not start: {line!r}; stderr: {self._stderr_path.read_text()}"
            )
        return line.decode().strip()

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._reader.join(timeout=10)
        assert self.popen.stdout is not None
        self.popen.stdout.close()
        self._stderr.close()


StartEmulator = Callable[..., EmulatorHandle]


@pytest.fixture
def start_emulator(tmp_path: Path) -> Iterator[StartEmulator]:
    """Factory: ``start_emulator(images=3, image_size="1MiB", extra_args=(), root=None)``."""
    processes: list[_Process] = []

    def start(
        images: int = 3,
        image_size: str = "1MiB",
        extra_args: Sequence[str] = (),
        root: Path | None = None,
        dest_buckets: Sequence[str] = (),
    ) -> EmulatorHandle:
        if root is None:
            suffix = f"-{len(processes) + 1}" if processes else ""
            root = tmp_path / f"emulator{suffix}"
        args = [
            "--port", "0", "--root", str(root), "--images", str(images),
            "--image-size", image_size, *extra_args,
        ]
        for spec in dest_buckets:
            args += ["--dest-bucket", spec]
        options = _parse_options(args)
        process = _Process(
            [sys.executable, "-m", "imagesync.emulator", *args],
            root.parent / f"{root.name}.stderr",
        )
        processes.append(process)
        url = process.first_line().removeprefix(LISTENING)
        return EmulatorHandle(
            url=url,
            port=int(url.rsplit(":", 1)[1]),
            root=root,
            access_key_id=options.access_key_id,
            access_key_secret=options.access_key_secret,
            region=options.region,
            bucket=options.bucket,
            public_read=options.public_read,
            readonly_keys=tuple((k.partition(":")[0], k.partition(":")[2]) for k in options.readonly_key),
            popen=process.popen,
        )

    yield start
    for process in processes:
        process.stop()


@pytest.fixture
def emulator(start_emulator: StartEmulator) -> EmulatorHandle:
    """An emulator with 3 exported 1 MiB images (plus Exporting/ExportError/Unexported)."""
    return start_emulator()



def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Figures a test recorded with ``record_property("summary", ...)`` (the kill matrix), shown
    at the end of the run, also when pytest-xdist ran the test in another process."""
    for report in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", []):
        for name, value in getattr(report, "user_properties", []):
            if name == "summary" and report.when == "call":
                terminalreporter.write_line(str(value))


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Factory: ``small_tmpfs("3m")`` mounts a tmpfs of that size (a real ENOSPC) and returns it.
    Needs root (CI runs as root); skipped, and said so, elsewhere."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        point = tmp_path / f"tmpfs-{len(mounted)}"
        point.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here (needs root): {result.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=True)

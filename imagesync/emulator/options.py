"""Command-line options of the emulator and the ready-to-use config it prints."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .buckets import parse_bucket_spec
from .objects import is_valid_bucket

DEFAULT_PORT = 8790
DEFAULT_SIZES = "16MiB,32MiB,48MiB"

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tib": 1024**4,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*(?:/s)?\s*$")


def parse_size(text: str) -> int:
    """``"512KiB"`` -> 524288; binary units (K, KiB, M, MiB, ...), decimal KB/MB/GB, bytes.

    A trailing ``/s`` is allowed so that bandwidths read naturally (``50MiB/s``).
    """
    match = _SIZE_RE.match(text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise ValueError(f"not a size: {text!r} (examples: 4096, 512KiB, 64MiB, 2GiB)")
    return int(float(match.group(1)) * _UNITS[unit])


def parse_sizes(text: str) -> list[int]:
    sizes = [parse_size(part) for part in text.split(",") if part.strip()]
    if not sizes:
        raise ValueError(f"no sizes in {text!r}")
    return sizes


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _sizes_arg(text: str) -> list[int]:
    try:
        return parse_sizes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``imagesync emulator`` (also used by ``python -m imagesync.emulator``)."""
    _data_options(parser.add_argument_group("data"))
    _service_options(parser.add_argument_group("service"))
    _output_options(parser.add_argument_group("printed config"))
    _fault_options(parser.add_argument_group("faults at startup (more over HTTP: POST /_emulator/faults)"))


def _data_options(data: argparse._ArgumentGroup) -> None:
    data.add_argument(
        "--root", type=Path, default=Path("emulator-data"), metavar="DIR",
        help="directory holding catalog.json and buckets/<bucket>/<key> (default: %(default)s)",
    )
    data.add_argument(
        "--images", type=int, default=3, metavar="N",
        help="when DIR has no catalog yet, create N Exported sample images plus one "
        "Exporting, one ExportError and one Unexported entry (default: %(default)s)",
    )
    data.add_argument(
        "--image-size", type=_sizes_arg, default=parse_sizes(DEFAULT_SIZES),
        metavar="SIZE[,SIZE...]",
        help=f"sizes of generated images, cycled (e.g. 512KiB, 64MiB, 2GiB, bytes; "
        f"default: {DEFAULT_SIZES})",
    )
    data.add_argument(
        "--bucket", default="ens-exports",
        help="bucket that generated images go to, in --region (default: %(default)s)",
    )
    data.add_argument(
        "--dest-bucket", action="append", default=[], metavar="NAME[@REGION]",
        help="an empty writable bucket to mirror into, in REGION (default: --region); "
        "repeatable, so same-region and cross-region copies can both be rehearsed; "
        "buckets and their regions are kept in DIR across restarts",
    )


def _service_options(net: argparse._ArgumentGroup) -> None:
    net.add_argument(
        "--port", type=int, default=DEFAULT_PORT,
        help="TCP port on 127.0.0.1; 0 picks a free one (default: %(default)s)",
    )
    net.add_argument(
        "--region", default="cn-hangzhou",
        help="region of the OSS V4 signing scope (default: %(default)s)",
    )
    net.add_argument(
        "--access-key-id", default="emulator-ak",
        help="the only AccessKey id accepted (default: %(default)s)",
    )
    net.add_argument(
        "--access-key-secret", default="emulator-secret",
        help="its secret (default: %(default)s)",
    )
    net.add_argument(
        "--readonly-key", action="append", default=[], metavar="ID:SECRET",
        help="a further AccessKey that may read and list but not write (repeatable)",
    )
    net.add_argument(
        "--public-read", action="store_true",
        help="allow anonymous object GET/HEAD (the printed config then says sign = false)",
    )
    net.add_argument(
        "-v", "--verbose", action="store_true", help="log every request on stderr",
    )


def _output_options(out: argparse._ArgumentGroup) -> None:
    out.add_argument(
        "--config-out", type=Path, metavar="FILE",
        help="also write the ready-to-use imagesync config to FILE (mode 0600)",
    )
    out.add_argument(
        "--destination", default="./mirror", metavar="URL",
        help="destination url written into the printed config: a directory, or oss://BUCKET/PREFIX "
        "for a bucket of this emulator (created if missing; oss_endpoint is then this emulator) "
        "(default: %(default)s)",
    )


def _fault_options(faults: argparse._ArgumentGroup) -> None:
    faults.add_argument(
        "--latency-ms", type=int, default=0, metavar="MS",
        help="delay before every ENS and OSS response",
    )
    faults.add_argument(
        "--bandwidth", type=_size_arg, default=0, metavar="SIZE",
        help="cap on each object body's rate per second (e.g. 50MiB); 0 = unlimited",
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class Options:
    """The validated options the server runs with."""

    root: Path
    port: int
    images: int
    image_sizes: tuple[int, ...]
    bucket: str
    region: str
    access_key_id: str
    access_key_secret: str
    public_read: bool
    verbose: bool
    config_out: Path | None
    destination: str
    latency_ms: int
    bandwidth_bps: int
    dest_buckets: tuple[tuple[str, str], ...] = ()
    readonly_keys: tuple[tuple[str, str], ...] = ()

    @property
    def destination_bucket(self) -> str | None:
        """The bucket of an ``oss://`` destination, else None."""
        if not self.destination.startswith("oss://"):
            return None
        return self.destination.removeprefix("oss://").split("/", 1)[0]

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        if not 0 <= args.port <= 65535:
            raise ValueError(f"--port {args.port} is not a TCP port (0-65535)")
        if args.images < 0 or args.latency_ms < 0:
            raise ValueError("--images and --latency-ms must not be negative")
        if not is_valid_bucket(args.bucket):
            raise ValueError(f"--bucket {args.bucket!r} is not a valid OSS bucket name")
        dest = []
        for spec in args.dest_bucket:
            try:
                dest.append(parse_bucket_spec(spec, args.region))
            except ValueError as exc:
                raise ValueError(f"--dest-bucket {spec!r}: {exc}") from None
        if args.destination.startswith("oss://"):
            name = args.destination.removeprefix("oss://").split("/", 1)[0]
            if not is_valid_bucket(name):
                raise ValueError(f"--destination {args.destination!r}: {name!r} is not a valid bucket name")
            if name != args.bucket and all(name != bucket for bucket, _ in dest):
                dest.append((name, args.region))
        readonly = []
        for pair in args.readonly_key:
            key_id, sep, secret = pair.partition(":")
            if not sep or not key_id or not secret:
                raise ValueError(f"--readonly-key wants ID:SECRET, not {pair!r}")
            readonly.append((key_id, secret))
        return cls(
            root=Path(args.root),
            port=args.port,
            images=args.images,
            image_sizes=tuple(args.image_size),
            bucket=args.bucket,
            region=args.region,
            access_key_id=args.access_key_id,
            access_key_secret=args.access_key_secret,
            public_read=args.public_read,
            verbose=args.verbose,
            config_out=args.config_out,
            destination=args.destination,
            latency_ms=args.latency_ms,
            bandwidth_bps=args.bandwidth,
            dest_buckets=tuple(dest),
            readonly_keys=tuple(readonly),
        )


# --- the printed config ---------------------------------------------------------------


def client_config(
    *,
    url: str,
    access_key_id: str,
    access_key_secret: str,
    region: str,
    public_read: bool,
    destination: str,
    destination_region: str = "",
) -> dict[str, dict[str, Any]]:
    """The imagesync config (as TOML-ready sections) that points at an emulator.

    An ``oss://`` destination gets ``oss_endpoint`` = the emulator (same credentials) and its
    bucket's region (the emulator's IP address names none).
    """
    target: dict[str, Any] = {"url": destination}
    if destination.startswith("oss://"):
        target["oss_endpoint"] = url
        target["region"] = destination_region or region
    return {
        "ens": {"endpoint": url},
        "credentials": {"access_key_id": access_key_id, "access_key_secret": access_key_secret},
        "source": {"sign": not public_read, "region": region, "allow_hosts": ["127.0.0.1"]},
        "destination": target,
        "transfer": {"concurrency": 4},
    }


def merge_sections(
    base: Mapping[str, Mapping[str, Any]], overrides: Mapping[str, Mapping[str, Any] | None]
) -> dict[str, dict[str, Any]]:
    """Overlay section dicts; a ``None`` value removes that key (or a whole section)."""
    merged = {name: dict(values) for name, values in base.items()}
    for name, values in overrides.items():
        if values is None:
            merged.pop(name, None)
            continue
        section = merged.setdefault(name, {})
        for key, value in values.items():
            if value is None:
                section.pop(key, None)
            else:
                section[key] = value
    return merged


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        # JSON escapes (\" \\ \n \uXXXX for controls) are valid TOML basic-string escapes.
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML: {value!r}")


def render_toml(sections: Mapping[str, Mapping[str, Any]]) -> str:
    """A flat two-level TOML document (``[section]`` then ``key = value``)."""
    blocks = []
    for name, values in sections.items():
        lines = [f"[{name}]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"

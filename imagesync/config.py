"""The TOML config file, read into frozen dataclasses and validated with key paths.

Every key has a default except where a run cannot guess (the destination). An unknown key,
a wrong type or a bad value is a `ConfigError` naming the key path and what was expected,
so a typo never silently changes what gets backed up.
"""

from __future__ import annotations

import dataclasses
import logging
import stat
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import units
from .endpoints import host_allowed, is_region
from .errors import ConfigError
from .layout import template_problem

log = logging.getLogger("imagesync")

DEFAULT_CONFIG_PATH = Path("sync.toml")
MAX_PRESIGN_EXPIRES_S = 604_800  # OSS V4 presigned URLs live at most 7 days (reference B.1.4)
MAX_CONCURRENCY = 64
MAX_SEGMENTS = 64

Check = Callable[[Any], str | None]  # returns what was expected, or None when fine


def _positive(value: Any) -> str | None:
    return None if value > 0 else "a number above 0"


def _non_negative(value: Any) -> str | None:
    return None if value >= 0 else "a number of 0 or more"


def _between(low: int, high: int) -> Check:
    def check(value: Any) -> str | None:
        return None if low <= value <= high else f"a number from {low} to {high}"
    return check


def _one_of(*choices: str) -> Check:
    def check(value: Any) -> str | None:
        return None if value in choices else " or ".join(f'"{c}"' for c in choices)
    return check


def _bare_host(value: Any) -> str | None:
    ok = value == "" or ("/" not in value and ":" not in value and value.strip() == value)
    return None if ok else "a bare host name like oss-cn-beijing-internal.aliyuncs.com"


def _hosts(value: Any) -> str | None:
    return None if all(item and _bare_host(item) is None for item in value) else (
        "a list of bare host names like 127.0.0.1 (no scheme, port or path)")


def _region(value: Any) -> str | None:
    return None if value == "" or is_region(value) else "a region id like cn-hangzhou (not oss-cn-hangzhou)"


def _http_url(value: Any) -> str | None:
    parts = urlsplit(value)
    if parts.scheme in ("http", "https") and parts.hostname and parts.path in ("", "/"):
        return None
    return "an http(s) URL with a host and no path, like https://ens.aliyuncs.com"


def _optional_http_url(value: Any) -> str | None:
    return None if value == "" else _http_url(value)


def _destination_url(value: Any) -> str | None:
    if not value:
        return "a local directory or oss://bucket/prefix"
    if value.startswith("oss://"):
        return None if urlsplit(value).hostname else "oss://bucket/prefix with a bucket name"
    return None if "://" not in value else "a local directory or oss://bucket/prefix"


def _path_template(value: Any) -> str | None:
    return template_problem(value)


def _parses(parse: Callable[[str], int]) -> Check:
    def check(value: Any) -> str | None:
        try:
            parse(value)
        except ValueError as error:
            return str(error)
        return None
    return check


def _check(check: Check) -> dict[str, Check]:
    return {"check": check}


@dataclass(frozen=True, slots=True, kw_only=True)
class EnsConfig:
    endpoint: str = field(default="https://ens.aliyuncs.com", metadata=_check(_http_url))
    timeout_s: float = field(default=30.0, metadata=_check(_positive))
    max_attempts: int = field(default=6, metadata=_check(_positive))


@dataclass(frozen=True, slots=True, kw_only=True)
class CredentialsConfig:
    access_key_id: str = ""
    access_key_secret: str = ""
    security_token: str = ""
    profile: str = ""

    def __repr__(self) -> str:  # never show a secret, even in a debugger or traceback
        return f"CredentialsConfig(access_key_id={self.access_key_id!r}, profile={self.profile!r})"

    @property
    def is_empty(self) -> bool:
        """Nothing set: for [destination.credentials], use the source's credentials."""
        return self == CredentialsConfig()


@dataclass(frozen=True, slots=True, kw_only=True)
class FilterConfig:
    image_ids: tuple[str, ...] = ()
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceConfig:
    sign: bool = True
    region: str = field(default="", metadata=_check(_region))
    allow_hosts: tuple[str, ...] = field(default=(), metadata=_check(_hosts))
    # An OSS endpoint shape or a host in allow_hosts: checked at load and again by source.locate.
    endpoint_override: str = field(default="", metadata=_check(_bare_host))
    presign_expires_s: int = field(default=3600, metadata=_check(_between(1, MAX_PRESIGN_EXPIRES_S)))


@dataclass(frozen=True, slots=True, kw_only=True)
class DestinationConfig:
    url: str = field(default="", metadata=_check(_destination_url))  # made absolute at load
    # An https OSS endpoint, or any http(s) URL on a host in source.allow_hosts.
    oss_endpoint: str = field(default="", metadata=_check(_optional_http_url))
    region: str = field(default="", metadata=_check(_region))
    path_template: str = field(default="{image_id}.qcow2", metadata=_check(_path_template))
    server_side_copy: str = field(default="auto", metadata=_check(_one_of("auto", "never")))
    read_back: str = field(default="auto", metadata=_check(_one_of("auto", "always", "never")))
    state_dir: str = ""  # "" = the user state dir (decided by the OSS sink); else made absolute at load
    keep_replaced: int = field(default=0, metadata=_check(_non_negative))
    refuse_unsafe_permissions: bool = False
    credentials: CredentialsConfig = CredentialsConfig()  # empty = the source's credentials


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferConfig:
    concurrency: int = field(default=4, metadata=_check(_between(1, MAX_CONCURRENCY)))
    max_attempts: int = field(default=8, metadata=_check(_positive))
    retry_delay_s: float = field(default=1.0, metadata=_check(_non_negative))
    retry_max_delay_s: float = field(default=60.0, metadata=_check(_positive))
    connect_timeout_s: float = field(default=10.0, metadata=_check(_positive))
    read_timeout_s: float = field(default=60.0, metadata=_check(_positive))
    segments: int = field(default=1, metadata=_check(_between(1, MAX_SEGMENTS)))
    min_segment_size: str = field(default="32MiB", metadata=_check(_parses(units.parse_size)))
    max_bandwidth: str = field(default="", metadata=_check(_parses(units.parse_rate)))

    @property
    def min_segment_bytes(self) -> int:
        return units.parse_size(self.min_segment_size)

    @property
    def max_bandwidth_bytes_per_s(self) -> int:
        """0 means no limit."""
        return units.parse_rate(self.max_bandwidth)


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitConfig:
    interval_s: float = field(default=60.0, metadata=_check(_positive))
    timeout_s: float = field(default=21600.0, metadata=_check(_positive))


@dataclass(frozen=True, slots=True, kw_only=True)
class RunConfig:
    metrics_file: str = ""  # "" = none; else made absolute at load
    progress_interval_s: float = field(default=60.0, metadata=_check(_positive))


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    ens: EnsConfig = EnsConfig()
    credentials: CredentialsConfig = CredentialsConfig()
    filter: FilterConfig = FilterConfig()
    source: SourceConfig = SourceConfig()
    destination: DestinationConfig = DestinationConfig()
    transfer: TransferConfig = TransferConfig()
    wait: WaitConfig = WaitConfig()
    run: RunConfig = RunConfig()


def load_config(path: Path) -> Config:
    """Read and validate `path`; warn when it holds a secret others can read.

    Relative paths in it (destination.url, destination.state_dir, run.metrics_file) are
    taken relative to the config file's folder, never to the current directory, and ``~``
    is expanded.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} not found; write one with: imagesync example-config > {path} (then edit "
            "it), or pass -c FILE"
        ) from None
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
    config: Config = _build(Config, document, prefix="")
    if not config.destination.url:
        raise ConfigError(f"{path}: destination.url is missing; expected a local directory or "
                          "oss://bucket/prefix")
    _check_hosts(config)
    config = _resolve_paths(config, path.absolute().parent)
    _warn_if_secret_is_exposed(path, config)
    return config


def _check_hosts(config: Config) -> None:
    """Signed requests go only to OSS endpoint shapes or hosts the user listed."""
    source = config.source
    if source.endpoint_override and not host_allowed(source.endpoint_override.lower(), source.allow_hosts):
        raise ConfigError(
            f"source.endpoint_override = {source.endpoint_override!r} is not valid; expected an OSS "
            "endpoint like oss-cn-beijing-internal.aliyuncs.com, or a host listed in source.allow_hosts"
        )
    endpoint = config.destination.oss_endpoint
    if endpoint:
        parts = urlsplit(endpoint)
        host = (parts.hostname or "").lower()
        listed = host in {h.lower() for h in source.allow_hosts}
        if not (listed or (parts.scheme == "https" and host_allowed(host, ()))):
            raise ConfigError(
                f"destination.oss_endpoint = {endpoint!r} is not valid; expected an https OSS endpoint "
                "like https://oss-cn-hangzhou.aliyuncs.com, or a URL on a host listed in source.allow_hosts"
            )


def _resolve_paths(config: Config, base: Path) -> Config:
    def absolute(value: str) -> str:
        return str(base / Path(value).expanduser()) if value else value

    destination = config.destination
    url = destination.url if destination.url.startswith("oss://") else absolute(destination.url)
    destination = dataclasses.replace(destination, url=url, state_dir=absolute(destination.state_dir))
    run = dataclasses.replace(config.run, metrics_file=absolute(config.run.metrics_file))
    return dataclasses.replace(config, destination=destination, run=run)


def _build(cls: type[Any], table: Mapping[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in table:
        if name not in fields:
            where = f"[{prefix.rstrip('.')}]" if prefix else "the top level"
            known = ", ".join(fields)
            raise ConfigError(f"unknown key {prefix}{name} in {where}; known keys: {known}")
    values = {}
    for name, value in table.items():
        key_path = f"{prefix}{name}"
        expected = hints[name]
        if dataclasses.is_dataclass(expected):
            if not isinstance(value, dict):
                raise ConfigError(f"{key_path} must be a table ([{key_path}])")
            values[name] = _build(typing.cast(type, expected), value, f"{key_path}.")
            continue
        values[name] = _coerce(key_path, value, expected)
        check: Check | None = fields[name].metadata.get("check")
        problem = check(values[name]) if check else None
        if problem:
            raise ConfigError(f"{key_path} = {value!r} is not valid; expected {problem}")
    return cls(**values)


def _coerce(key_path: str, value: Any, expected: Any) -> Any:
    if typing.get_origin(expected) is tuple:
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return tuple(value)
        raise ConfigError(f"{key_path} must be a list of strings, got {_toml_type(value)}")
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
        return value
    shown = "" if "credentials" in key_path.split(".") else f" {value!r}"  # may be a secret
    raise ConfigError(f"{key_path} must be {_describe(expected)}, got {_toml_type(value)}{shown}")


def _describe(expected: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    return names.get(expected, str(expected))


def _toml_type(value: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
             list: "an array", dict: "a table"}
    return names.get(type(value), type(value).__name__)


def _warn_if_secret_is_exposed(path: Path, config: Config) -> None:
    tables = (config.credentials, config.destination.credentials)
    if not any(table.access_key_secret or table.security_token for table in tables):
        return
    mode = path.stat().st_mode
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning(
            "%s holds an access key secret and is readable by %s; run: chmod 600 %s",
            path, "others" if mode & stat.S_IROTH else "its group", path,
        )


def with_overrides(config: Config, *, concurrency: int | None = None,
                   image_ids: tuple[str, ...] = (), bwlimit: str | None = None) -> Config:
    """Apply command-line flags on top of the file, with the same checks as the file's keys."""
    transfer = config.transfer
    if concurrency is not None:
        _check_flag("--concurrency", concurrency, TransferConfig, "concurrency")
        transfer = dataclasses.replace(transfer, concurrency=concurrency)
    if bwlimit is not None:
        _check_flag("--bwlimit", bwlimit, TransferConfig, "max_bandwidth")
        transfer = dataclasses.replace(transfer, max_bandwidth=bwlimit)
    config = dataclasses.replace(config, transfer=transfer)
    if image_ids:
        filters = dataclasses.replace(config.filter, image_ids=image_ids)
        config = dataclasses.replace(config, filter=filters)
    return config


def _check_flag(flag: str, value: Any, cls: type[Any], name: str) -> None:
    check: Check = next(f for f in dataclasses.fields(cls) if f.name == name).metadata["check"]
    problem = check(value)
    if problem:
        raise ConfigError(f"{flag} {value} is not valid; expected {problem}")

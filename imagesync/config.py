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

from .errors import ConfigError

log = logging.getLogger("imagesync")

DEFAULT_CONFIG_PATH = Path("sync.toml")
PATH_FIELDS = ("image_id", "image_name", "platform", "architecture")

Check = Callable[[Any], str | None]  # returns what was expected, or None when fine


def _positive(value: Any) -> str | None:
    return None if value > 0 else "a number above 0"


def _non_negative(value: Any) -> str | None:
    return None if value >= 0 else "a number of 0 or more"


def _bare_host(value: Any) -> str | None:
    ok = value == "" or ("/" not in value and ":" not in value and value.strip() == value)
    return None if ok else "a bare host name like oss-cn-beijing-internal.aliyuncs.com"


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
    try:
        value.format(**{name: "x" for name in PATH_FIELDS})
    except (KeyError, IndexError, ValueError):
        return "a template using only {" + "}, {".join(PATH_FIELDS) + "}"
    return None if value.strip() else "a non-empty template"


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


@dataclass(frozen=True, slots=True, kw_only=True)
class FilterConfig:
    image_ids: tuple[str, ...] = ()
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceConfig:
    sign: bool = True
    region: str = ""
    allow_hosts: tuple[str, ...] = ()
    endpoint_override: str = field(default="", metadata=_check(_bare_host))
    presign_expires_s: int = field(default=3600, metadata=_check(_positive))


@dataclass(frozen=True, slots=True, kw_only=True)
class DestinationConfig:
    url: str = field(default="", metadata=_check(_destination_url))
    oss_endpoint: str = field(default="", metadata=_check(_optional_http_url))
    path_template: str = field(default="{image_id}.qcow2", metadata=_check(_path_template))


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferConfig:
    concurrency: int = field(default=4, metadata=_check(_positive))
    max_attempts: int = field(default=8, metadata=_check(_positive))
    retry_delay_s: float = field(default=1.0, metadata=_check(_non_negative))
    retry_max_delay_s: float = field(default=60.0, metadata=_check(_positive))
    connect_timeout_s: float = field(default=10.0, metadata=_check(_positive))
    read_timeout_s: float = field(default=60.0, metadata=_check(_positive))


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    ens: EnsConfig = EnsConfig()
    credentials: CredentialsConfig = CredentialsConfig()
    filter: FilterConfig = FilterConfig()
    source: SourceConfig = SourceConfig()
    destination: DestinationConfig = DestinationConfig()
    transfer: TransferConfig = TransferConfig()


def load_config(path: Path) -> Config:
    """Read and validate `path`; warn when it holds a secret others can read."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} not found; copy sync.example.toml there or pass -c FILE"
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
    _warn_if_secret_is_exposed(path, config)
    return config


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
    shown = "" if key_path.startswith("credentials.") else f" {value!r}"  # may be a secret
    raise ConfigError(f"{key_path} must be {_describe(expected)}, got {_toml_type(value)}{shown}")


def _describe(expected: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    return names.get(expected, str(expected))


def _toml_type(value: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
             list: "an array", dict: "a table"}
    return names.get(type(value), type(value).__name__)


def _warn_if_secret_is_exposed(path: Path, config: Config) -> None:
    if not (config.credentials.access_key_secret or config.credentials.security_token):
        return
    mode = path.stat().st_mode
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning(
            "%s holds an access key secret and is readable by %s; run: chmod 600 %s",
            path, "others" if mode & stat.S_IROTH else "its group", path,
        )


def with_overrides(config: Config, *, concurrency: int | None = None,
                   image_ids: tuple[str, ...] = ()) -> Config:
    """Apply command-line flags on top of the file."""
    if concurrency is not None:
        if concurrency < 1:
            raise ConfigError(f"--concurrency {concurrency} is not valid; expected a number above 0")
        transfer = dataclasses.replace(config.transfer, concurrency=concurrency)
        config = dataclasses.replace(config, transfer=transfer)
    if image_ids:
        filters = dataclasses.replace(config.filter, image_ids=image_ids)
        config = dataclasses.replace(config, filter=filters)
    return config


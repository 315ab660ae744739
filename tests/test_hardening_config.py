"""Config hardening: bounds, one template check, vetted endpoints, paths relative to the file, new keys."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import pytest

from imagesync.config import (
    Config,
    CredentialsConfig,
    RunConfig,
    WaitConfig,
    load_config,
    with_overrides,
)
from imagesync.errors import ConfigError

MINIMAL = '[destination]\nurl = "/srv/backup"\n'
EXAMPLE = Path(__file__).parent.parent / "sync.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sync.toml"
    path.write_text(text)
    path.chmod(0o600)
    return path


def refused(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[source]\npresign_expires_s = 604801\n", "source.presign_expires_s = 604801 is not valid; expected a number from 1 to 604800"),
        ("[transfer]\nconcurrency = 65\n", "transfer.concurrency = 65 is not valid; expected a number from 1 to 64"),
        ("[transfer]\nsegments = 0\n", "transfer.segments = 0 is not valid; expected a number from 1 to 64"),
        ("[transfer]\nsegments = 65\n", "a number from 1 to 64"),
        ('[transfer]\nmin_segment_size = "32 mb"\n', "transfer.min_segment_size = '32 mb' is not valid; expected a size like 32MiB"),
        ('[transfer]\nmin_segment_size = "0MiB"\n', "transfer.min_segment_size"),
        ('[transfer]\nmax_bandwidth = "200MB"\n', "transfer.max_bandwidth = '200MB' is not valid; expected a rate like 200MB/s"),
        ('[transfer]\nmax_bandwidth = "1B/s"\n', "at least 1kB/s"),
        ('[destination]\nserver_side_copy = "always"\n', 'destination.server_side_copy = \'always\' is not valid; expected "auto" or "never"'),
        ('[destination]\nread_back = "sometimes"\n', '"auto" or "always" or "never"'),
        ("[destination]\nkeep_replaced = -1\n", "destination.keep_replaced = -1 is not valid"),
        ('[destination]\nrefuse_unsafe_permissions = "yes"\n', "destination.refuse_unsafe_permissions must be true or false"),
        ('[destination]\nregion = "oss-cn-hangzhou"\n', "expected a region id like cn-hangzhou"),
        ('[source]\nregion = "Beijing"\n', "source.region = 'Beijing' is not valid"),
        ("[wait]\ninterval_s = 0\n", "wait.interval_s = 0 is not valid"),
        ("[wait]\ntimeout = 5\n", "unknown key wait.timeout in [wait]"),
        ("[run]\nprogress_interval_s = -1\n", "run.progress_interval_s = -1 is not valid"),
        ('[run]\nmetrics_file = 3\n', "run.metrics_file must be a string"),
        ('[destination.credentials]\nacess_key_id = "x"\n', "unknown key destination.credentials.acess_key_id"),
        ('[source]\nallow_hosts = ["http://127.0.0.1"]\n', "source.allow_hosts"),
    ],
)
def test_new_and_bounded_keys_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    # MINIMAL's [destination] table and the case's own must not be declared twice.
    body = text.replace("[destination]\n", MINIMAL) if "[destination]\n" in text else MINIMAL + text
    assert message in refused(tmp_path, body)


def test_defaults_of_the_new_keys(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    destination = config.destination
    assert (destination.region, destination.server_side_copy, destination.read_back) == ("", "auto", "auto")
    assert (destination.state_dir, destination.keep_replaced, destination.refuse_unsafe_permissions) == ("", 0, False)
    assert destination.credentials == CredentialsConfig() and destination.credentials.is_empty
    transfer = config.transfer
    assert (transfer.segments, transfer.min_segment_size, transfer.min_segment_bytes) == (1, "32MiB", 32 << 20)
    assert (transfer.max_bandwidth, transfer.max_bandwidth_bytes_per_s) == ("", 0)
    assert config.wait == WaitConfig(interval_s=60.0, timeout_s=21600.0)
    assert config.run == RunConfig(metrics_file="", progress_interval_s=60.0)


def test_new_keys_are_read(tmp_path: Path) -> None:
    text = MINIMAL + (
        'oss_endpoint = "https://oss-cn-hangzhou.aliyuncs.com"\nregion = "cn-hangzhou"\n'
        'server_side_copy = "never"\nread_back = "always"\nstate_dir = "state"\nkeep_replaced = 2\n'
        "refuse_unsafe_permissions = true\n"
        '[destination.credentials]\naccess_key_id = "dest-id"\naccess_key_secret = "dest-s3cret"\n'
        '[transfer]\nsegments = 8\nmin_segment_size = "64MiB"\nmax_bandwidth = "50MiB/s"\n'
        "[wait]\ninterval_s = 5\ntimeout_s = 600\n"
        '[run]\nmetrics_file = "/var/lib/node_exporter/textfile/imagesync.prom"\nprogress_interval_s = 10\n'
    )
    config = load_config(write(tmp_path, text))
    assert config.destination.credentials.access_key_id == "dest-id"
    assert not config.destination.credentials.is_empty
    assert config.destination.state_dir == str(tmp_path / "state")
    assert (config.destination.keep_replaced, config.destination.refuse_unsafe_permissions) == (2, True)
    assert (config.transfer.segments, config.transfer.min_segment_bytes) == (8, 64 << 20)
    assert config.transfer.max_bandwidth_bytes_per_s == 50 << 20
    assert (config.wait.interval_s, config.run.progress_interval_s) == (5.0, 10.0)
    assert "dest-s3cret" not in repr(config)


def test_a_destination_secret_never_reaches_a_message(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    message = refused(tmp_path, MINIMAL + "[destination.credentials]\naccess_key_secret = 12345\n")
    assert "destination.credentials.access_key_secret must be a string" in message
    assert "12345" not in message
    path = write(tmp_path, MINIMAL + '[destination.credentials]\naccess_key_id = "i"\naccess_key_secret = "s"\n')
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="imagesync"):
        load_config(path)
    assert "chmod 600" in caplog.text


@pytest.mark.parametrize(
    "template",
    ["{image_id.__class__}", "{image_id[0]}", "{image_id!r}", "{image_id!a}", "{}", "{0}", "{name}",
     "{image_id:{image_name}}", "{image_id:>99999999}", " ", "{image_id"],
)
def test_a_bad_path_template_stops_the_load(tmp_path: Path, template: str) -> None:
    """Once checked by formatting a dict at load and by the renderer after listing: now one check."""
    message = refused(tmp_path, MINIMAL + f"path_template = {template!r}\n".replace("'", '"'))
    assert "destination.path_template" in message


@pytest.mark.parametrize("template", ["{image_id}.qcow2", "{platform}/{image_name!s}.qcow2", "{image_id:.12}"])
def test_good_path_templates_load(tmp_path: Path, template: str) -> None:
    config = load_config(write(tmp_path, MINIMAL + f'path_template = "{template}"\n'))
    assert config.destination.path_template == template


@pytest.mark.parametrize(
    ("override", "allow_hosts", "ok"),
    [
        ("oss-cn-beijing-internal.aliyuncs.com", [], True),
        ("oss-cn-beijing.aliyuncs.com", [], True),
        ("cn-beijing.oss.aliyuncs.com", [], True),
        ("oss-accelerate.aliyuncs.com", [], True),
        ("oss-accelerate-overseas.aliyuncs.com", [], True),
        ("evil.example.com", [], False),
        ("ecs.aliyuncs.com", [], False),
        ("100.100.100.200", [], False),
        ("127.0.0.1", ["127.0.0.1"], True),
        ("Mirror.Local", ["mirror.local"], True),
    ],
)
def test_endpoint_override_is_vetted_at_load(tmp_path: Path, override: str, allow_hosts: list[str], ok: bool) -> None:
    hosts = ", ".join(f'"{h}"' for h in allow_hosts)
    text = MINIMAL + f'[source]\nendpoint_override = "{override}"\nallow_hosts = [{hosts}]\n'
    if ok:
        assert load_config(write(tmp_path, text)).source.endpoint_override == override
    else:
        assert "source.endpoint_override" in refused(tmp_path, text)


@pytest.mark.parametrize(
    ("endpoint", "ok"),
    [
        ("https://oss-cn-hangzhou.aliyuncs.com", True),
        ("https://oss-cn-hangzhou-internal.aliyuncs.com", True),
        ("https://cn-hangzhou.oss.aliyuncs.com", True),
        ("http://oss-cn-hangzhou.aliyuncs.com", False),  # signed writes over plain http
        ("https://ecs.aliyuncs.com", False),
        ("https://evil.example.com", False),
        ("http://127.0.0.1:8790", True),  # in source.allow_hosts below
        ("http://127.0.0.2:8790", False),
    ],
)
def test_destination_oss_endpoint_is_vetted_at_load(tmp_path: Path, endpoint: str, ok: bool) -> None:
    text = MINIMAL + f'oss_endpoint = "{endpoint}"\n[source]\nallow_hosts = ["127.0.0.1"]\n'
    if ok:
        assert load_config(write(tmp_path, text)).destination.oss_endpoint == endpoint
    else:
        assert "destination.oss_endpoint" in refused(tmp_path, text)


def test_a_relative_destination_is_relative_to_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    config = load_config(write(tmp_path, '[destination]\nurl = "mirror"\n[run]\nmetrics_file = "m/x.prom"\n'))
    assert config.destination.url == str(tmp_path / "mirror")
    assert config.run.metrics_file == str(tmp_path / "m" / "x.prom")
    relative = load_config(Path("..") / "sync.toml")  # the config file named relatively, too
    assert Path(relative.destination.url).resolve() == tmp_path / "mirror"


def test_home_and_oss_destinations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert load_config(write(tmp_path, '[destination]\nurl = "~/mirror"\n')).destination.url == str(tmp_path / "home" / "mirror")
    assert load_config(write(tmp_path, '[destination]\nurl = "oss://bkt/prefix"\n')).destination.url == "oss://bkt/prefix"
    assert load_config(write(tmp_path, '[destination]\nurl = "/abs/path"\n')).destination.url == "/abs/path"


def test_overrides_go_through_the_same_checks(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    with pytest.raises(ConfigError, match="--concurrency 65 is not valid; expected a number from 1 to 64"):
        with_overrides(config, concurrency=65)
    assert with_overrides(config, concurrency=64).transfer.concurrency == 64
    limited = with_overrides(config, bwlimit="200MB/s")
    assert (limited.transfer.max_bandwidth, limited.transfer.max_bandwidth_bytes_per_s) == ("200MB/s", 200_000_000)
    with pytest.raises(ConfigError, match="--bwlimit fast is not valid; expected a rate like 200MB/s"):
        with_overrides(config, bwlimit="fast")
    assert with_overrides(limited, bwlimit="0").transfer.max_bandwidth_bytes_per_s == 0


def test_the_example_documents_every_key_with_its_default() -> None:
    """sync.example.toml shows each key once, with its default value (destination.url aside)."""
    text = EXAMPLE.read_text()
    for section, cls in _sections(Config, "").items():
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(_type_of(cls, f.name)) or f.name == "url":
                continue
            pattern = rf"^#? ?{f.name} = {_toml(f.default)}\s"
            assert re.search(pattern, _section_text(text, section), re.MULTILINE), f"{section}.{f.name}"


def _sections(cls: type, prefix: str) -> dict[str, type]:
    found: dict[str, type] = {}
    for f in dataclasses.fields(cls):
        kind = _type_of(cls, f.name)
        if dataclasses.is_dataclass(kind):
            name = f"{prefix}{f.name}"
            found[name] = kind  # type: ignore[assignment]
            found.update(_sections(kind, f"{name}."))  # type: ignore[arg-type]
    return found


def _type_of(cls: type, name: str) -> object:
    import typing

    return typing.get_type_hints(cls)[name]


def _toml(value: object) -> str:
    """A pattern for ``value`` as TOML (a whole float may be written as an integer)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return re.escape(f'"{value}"')
    if isinstance(value, tuple):
        return re.escape("[" + ", ".join(f'"{v}"' for v in value) + "]")
    if isinstance(value, float) and value.is_integer():
        return rf"{int(value)}(\.0)?"
    return re.escape(str(value))


def _section_text(text: str, section: str) -> str:
    match = re.search(rf"^\[{re.escape(section)}\][^\n]*\n(.*?)(?=^\[|\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"[{section}] is missing from sync.example.toml"
    return match.group(1)

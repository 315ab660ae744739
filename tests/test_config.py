"""Config loading: every mistake is one sentence naming the key path."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from imagesync.config import load_config, with_overrides
from imagesync.errors import ConfigError

MINIMAL = '[destination]\nurl = "/srv/backup"\n'


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "sync.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert config.ens.endpoint == "https://ens.aliyuncs.com"
    assert config.transfer.concurrency == 4
    assert config.filter.include == ("*",)
    assert config.source.sign is True
    assert config.destination.path_template == "{image_id}.qcow2"


def test_full_example_file_loads() -> None:
    config = load_config(Path(__file__).parent.parent / "sync.example.toml")
    assert config.destination.url


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (MINIMAL + "[transfer]\nconcurency = 3\n", "unknown key transfer.concurency in [transfer]"),
        ("colour = 1\n" + MINIMAL, "unknown key colour in the top level"),
        (MINIMAL + "[transfer]\nconcurrency = \"4\"\n", "transfer.concurrency must be an integer"),
        (MINIMAL + "[transfer]\nconcurrency = 0\n", "transfer.concurrency = 0 is not valid"),
        (MINIMAL + "[transfer]\nconcurrency = true\n", "transfer.concurrency must be an integer"),
        (MINIMAL + "[filter]\ninclude = \"*\"\n", "filter.include must be a list of strings"),
        (MINIMAL + "[filter]\nexclude = [1]\n", "filter.exclude must be a list of strings"),
        (MINIMAL + "[ens]\nendpoint = \"ens.aliyuncs.com\"\n", "ens.endpoint = 'ens.aliyuncs.com' is not valid"),
        (MINIMAL + "[source]\nsign = \"yes\"\n", "source.sign must be true or false"),
        ("transfer = 3\n" + MINIMAL, "transfer must be a table"),
        ("[destination]\nurl = \"http://x\"\n", "destination.url = 'http://x' is not valid"),
        ("[ens]\n", "destination.url is missing"),
        (MINIMAL + "[destination]\n", "is not valid TOML"),
        ('[destination]\nurl = "/x"\npath_template = "{name}.qcow2"\n', "destination.path_template"),
        ('[destination]\nurl = "/x"\npath_template = ""\n', "a non-empty template"),
    ],
)
def test_mistakes_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as caught:
        load_config(write(tmp_path, text))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


def test_world_readable_secret_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    text = MINIMAL + '[credentials]\naccess_key_id = "id"\naccess_key_secret = "s3cret"\n'
    with caplog.at_level(logging.WARNING, logger="imagesync"):
        load_config(write(tmp_path, text, mode=0o644))
    assert "chmod 600" in caplog.text
    assert "s3cret" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="imagesync"):
        load_config(write(tmp_path, text, mode=0o600))
    assert caplog.text == ""


def test_secret_not_in_repr(tmp_path: Path) -> None:
    text = MINIMAL + '[credentials]\naccess_key_id = "id"\naccess_key_secret = "s3cret"\n'
    assert "s3cret" not in repr(load_config(write(tmp_path, text)))


def test_overrides(tmp_path: Path) -> None:
    config = with_overrides(load_config(write(tmp_path, MINIMAL)), concurrency=9, image_ids=("m-1",))
    assert config.transfer.concurrency == 9
    assert config.filter.image_ids == ("m-1",)
    with pytest.raises(ConfigError, match="--concurrency 0"):
        with_overrides(config, concurrency=0)

"""The credential chain: config, environment, aliyun CLI profile; never a secret in a message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imagesync.config import CredentialsConfig
from imagesync.credentials import resolve_credentials
from imagesync.errors import CredentialsError

ENV = {"ALIBABA_CLOUD_ACCESS_KEY_ID": "env-id", "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "env-secret"}


def cli_profile(home: Path, profiles: list[dict[str, str]], current: str = "default") -> None:
    (home / ".aliyun").mkdir()
    (home / ".aliyun" / "config.json").write_text(json.dumps({"current": current, "profiles": profiles}))


def test_config_wins(tmp_path: Path) -> None:
    configured = CredentialsConfig(access_key_id="cfg-id", access_key_secret="cfg-secret")
    found = resolve_credentials(configured, environ=ENV, home=tmp_path)
    assert (found.access_key_id, found.origin) == ("cfg-id", "config file")


def test_environment_then(tmp_path: Path) -> None:
    env = {**ENV, "ALIBABA_CLOUD_SECURITY_TOKEN": "tok"}
    found = resolve_credentials(CredentialsConfig(), environ=env, home=tmp_path)
    assert (found.access_key_id, found.access_key_secret, found.security_token) == ("env-id", "env-secret", "tok")


def test_cli_profile_current_and_named(tmp_path: Path) -> None:
    cli_profile(tmp_path, [
        {"name": "default", "mode": "AK", "access_key_id": "a", "access_key_secret": "b"},
        {"name": "sts", "mode": "StsToken", "access_key_id": "c", "access_key_secret": "d", "sts_token": "t"},
    ])
    assert resolve_credentials(CredentialsConfig(), environ={}, home=tmp_path).access_key_id == "a"
    by_env = resolve_credentials(CredentialsConfig(), environ={"ALIBABA_CLOUD_PROFILE": "sts"}, home=tmp_path)
    assert (by_env.access_key_id, by_env.security_token) == ("c", "t")
    by_config = resolve_credentials(CredentialsConfig(profile="sts"), environ={}, home=tmp_path)
    assert by_config.origin == "aliyun CLI profile 'sts'"


@pytest.mark.parametrize(
    ("profiles", "wanted", "message"),
    [
        ([{"name": "default", "mode": "RamRoleArn", "access_key_id": "a", "access_key_secret": "SECRET"}],
         "", "uses mode RamRoleArn"),
        ([{"name": "default", "mode": "AK", "access_key_id": "a"}], "", "lacks access_key_id or access_key_secret"),
        ([{"name": "default", "mode": "AK", "access_key_id": "a", "access_key_secret": "SECRET"}],
         "prod", "profile 'prod' is not in"),
        ([{"name": "default", "mode": "StsToken", "access_key_id": "a", "access_key_secret": "SECRET"}],
         "", "has no sts_token"),
    ],
)
def test_bad_profiles(tmp_path: Path, profiles: list[dict[str, str]], wanted: str, message: str) -> None:
    cli_profile(tmp_path, profiles)
    with pytest.raises(CredentialsError) as caught:
        resolve_credentials(CredentialsConfig(profile=wanted), environ={}, home=tmp_path)
    assert message in str(caught.value)
    assert "SECRET" not in str(caught.value)


def test_nothing_found_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError) as caught:
        resolve_credentials(CredentialsConfig(), environ={}, home=tmp_path)
    text = str(caught.value)
    assert "ALIBABA_CLOUD_ACCESS_KEY_ID" in text and ".aliyun/config.json" in text


def test_half_pairs_are_errors(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match="access_key_secret is missing"):
        resolve_credentials(CredentialsConfig(access_key_id="x"), environ={}, home=tmp_path)
    with pytest.raises(CredentialsError, match="ALIBABA_CLOUD_ACCESS_KEY_SECRET is not set"):
        resolve_credentials(CredentialsConfig(), environ={"ALIBABA_CLOUD_ACCESS_KEY_ID": "x"}, home=tmp_path)


def test_corrupt_profile_file(tmp_path: Path) -> None:
    (tmp_path / ".aliyun").mkdir()
    (tmp_path / ".aliyun" / "config.json").write_text("{not json")
    with pytest.raises(CredentialsError, match="cannot read the aliyun CLI profile file"):
        resolve_credentials(CredentialsConfig(), environ={}, home=tmp_path)


def test_secret_not_in_repr() -> None:
    configured = CredentialsConfig(access_key_id="id", access_key_secret="SECRET")
    assert "SECRET" not in repr(resolve_credentials(configured, environ={}, home=Path("/nonexistent")))

"""The credential chain: config file, then environment, then the aliyun CLI profile.

It never makes a network call: the ECS instance-role metadata address is not probed as a
fallback. A secret never reaches a message, a log line or a ``repr``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import CredentialsConfig
from .errors import CredentialsError

ENV_ID = "ALIBABA_CLOUD_ACCESS_KEY_ID"
ENV_SECRET = "ALIBABA_CLOUD_ACCESS_KEY_SECRET"  # noqa: S105 - a variable name
ENV_TOKEN = "ALIBABA_CLOUD_SECURITY_TOKEN"  # noqa: S105 - a variable name
ENV_PROFILE = "ALIBABA_CLOUD_PROFILE"
CLI_CONFIG = Path(".aliyun") / "config.json"


@dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    access_key_id: str
    access_key_secret: str = field(repr=False)
    security_token: str = field(default="", repr=False)
    origin: str  # where they came from, for messages: "config file", "environment", ...


def resolve_credentials(
    configured: CredentialsConfig,
    *,
    environ: Mapping[str, str] | None = None,
    home: Path | None = None,
) -> Credentials:
    """Return the first complete set of credentials, or say everywhere we looked."""
    environ = os.environ if environ is None else environ
    home = Path.home() if home is None else home
    found = _from_config(configured) or _from_environment(environ)
    if found:
        return found
    profile_path = home / CLI_CONFIG
    found = _from_cli_profile(profile_path, configured.profile or environ.get(ENV_PROFILE, ""))
    if found:
        return found
    raise CredentialsError(
        "no Alibaba Cloud credentials found; looked in the config file's [credentials] "
        f"(access_key_id, access_key_secret), the environment ({ENV_ID}, {ENV_SECRET}) "
        f"and the aliyun CLI profile file {profile_path} (not present)"
    )


def _from_config(configured: CredentialsConfig) -> Credentials | None:
    if bool(configured.access_key_id) != bool(configured.access_key_secret):
        missing = "access_key_secret" if configured.access_key_id else "access_key_id"
        raise CredentialsError(
            f"credentials.{missing} is missing; the config file must set both "
            "access_key_id and access_key_secret, or neither"
        )
    if not configured.access_key_id:
        return None
    return Credentials(
        access_key_id=configured.access_key_id,
        access_key_secret=configured.access_key_secret,
        security_token=configured.security_token,
        origin="config file",
    )


def _from_environment(environ: Mapping[str, str]) -> Credentials | None:
    key_id, secret = environ.get(ENV_ID, ""), environ.get(ENV_SECRET, "")
    if bool(key_id) != bool(secret):
        missing = ENV_SECRET if key_id else ENV_ID
        raise CredentialsError(f"{missing} is not set, but its partner is; set both or neither")
    if not key_id:
        return None
    return Credentials(
        access_key_id=key_id,
        access_key_secret=secret,
        security_token=environ.get(ENV_TOKEN, ""),
        origin="environment",
    )


def _from_cli_profile(path: Path, wanted: str) -> Credentials | None:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if wanted:
            raise CredentialsError(f"profile {wanted!r} was asked for, but {path} does not exist") from None
        return None
    except (OSError, ValueError) as error:
        raise CredentialsError(f"cannot read the aliyun CLI profile file {path}: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("profiles"), list):
        raise CredentialsError(f"{path} has no list of profiles; is it an aliyun CLI config?")
    name = wanted or str(document.get("current") or "default")
    profile = _find_profile(document["profiles"], name, path)
    return _profile_credentials(profile, name, path)


def _find_profile(profiles: list[Any], name: str, path: Path) -> dict[str, Any]:
    for profile in profiles:
        if isinstance(profile, dict) and profile.get("name") == name:
            return profile
    names = ", ".join(str(p.get("name")) for p in profiles if isinstance(p, dict)) or "none"
    raise CredentialsError(f"profile {name!r} is not in {path} (profiles there: {names})")


def _profile_credentials(profile: dict[str, Any], name: str, path: Path) -> Credentials:
    mode = str(profile.get("mode", "AK"))
    if mode.lower() not in ("ak", "ststoken"):
        raise CredentialsError(
            f"profile {name!r} in {path} uses mode {mode}; imagesync reads modes AK and "
            "StsToken, so pick such a profile or set credentials in the config file"
        )
    key_id, secret = profile.get("access_key_id"), profile.get("access_key_secret")
    token = profile.get("sts_token", "") if mode.lower() == "ststoken" else ""
    if not (isinstance(key_id, str) and key_id and isinstance(secret, str) and secret):
        raise CredentialsError(f"profile {name!r} in {path} lacks access_key_id or access_key_secret")
    if not isinstance(token, str) or (mode.lower() == "ststoken" and not token):
        raise CredentialsError(f"profile {name!r} in {path} is StsToken but has no sts_token")
    return Credentials(
        access_key_id=key_id,
        access_key_secret=secret,
        security_token=token,
        origin=f"aliyun CLI profile {name!r}",
    )

"""An OSS bucket as destination (``oss://bucket/prefix``): being built; refused for now."""

from __future__ import annotations

from ..config import Config
from ..credentials import Credentials
from ..destination import Destination
from ..errors import ConfigError


def open_oss_destination(config: Config, credentials: Credentials | None) -> Destination:
    raise ConfigError("destination.url: oss:// destinations are not supported yet; use a local directory")

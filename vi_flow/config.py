"""Client settings and the config file: the public face of how a client is configured.

Every setting comes from the argument, else a ``VI_FLOW_*`` environment variable, else
the TOML config file (``vi-flow config set KEY VALUE``), else a default. Tools that show
or change settings (the CLI's ``config`` and ``server`` commands) use these names.
"""

from __future__ import annotations

from ._config import (
    CONFIG_KEYS,
    LOCAL,
    LOCAL_SERVER_MODES,
    NOT_GIVEN,
    ConfigFileError,
    ConfigWriteError,
    NotGiven,
    Settings,
    Timeout,
    config_dir,
    config_path,
    default_home,
    read_config_file,
    resolve_settings,
    shown_url,
    write_config_value,
)

__all__ = [
    "CONFIG_KEYS",
    "LOCAL",
    "LOCAL_SERVER_MODES",
    "NOT_GIVEN",
    "ConfigFileError",
    "ConfigWriteError",
    "NotGiven",
    "Settings",
    "Timeout",
    "config_dir",
    "config_path",
    "default_home",
    "read_config_file",
    "resolve_settings",
    "shown_url",
    "write_config_value",
]

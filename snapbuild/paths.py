"""Where snapbuild keeps things: shipped data, user config, state (ledgers, logs) and caches."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """A shipped data folder ("cloudinit" or "recipes").

    Installed wheels carry them as snapbuild/_data/NAME; a source checkout has them at the top level.
    """
    installed = _PACKAGE / "_data" / name
    if installed.is_dir():
        return installed
    return _PACKAGE.parent / name


def _xdg(var: str, default: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else Path.home() / default


def config_dir() -> Path:
    return _xdg("XDG_CONFIG_HOME", ".config") / "snapbuild"


def state_dir() -> Path:
    """Ledgers and build logs; SNAPBUILD_STATE_DIR overrides (tests use it)."""
    override = os.environ.get("SNAPBUILD_STATE_DIR")
    return Path(override) if override else _xdg("XDG_STATE_HOME", ".local/state") / "snapbuild"


def cache_dir() -> Path:
    override = os.environ.get("SNAPBUILD_CACHE_DIR")
    return Path(override) if override else _xdg("XDG_CACHE_HOME", ".cache") / "snapbuild"

"""Shared test set-up: each test gets its own snapbuild state and cache directories."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def isolated_state(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Ledgers, logs and the installation id go to a per-test folder, never to the user's."""
    state = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("SNAPBUILD_STATE_DIR", str(state))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config")))
    return state

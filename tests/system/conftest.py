"""Fixtures for the system tier: the cached Debian 12 base image (built once per code version)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import imagecache


@pytest.fixture(scope="session")
def debian_base_image() -> Path:
    """A sealed Debian 12 base image (qcow2). Read-only: boot or modify it through an overlay."""
    return imagecache.debian_base_image()

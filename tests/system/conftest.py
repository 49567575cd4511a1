"""Fixtures for the system tier: the cached base images (built once per code version)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import imagecache


@pytest.fixture(scope="session")
def tier_base_image() -> Path:
    """The sealed base image the tiers boot (debian-13, qcow2). Read-only: boot or modify it through an overlay."""
    return imagecache.tier_base_image()


@pytest.fixture(scope="session")
def debian12_base_image() -> Path:
    """A sealed Debian 12 base image, for `tox -e full`'s checks of what differs on it. Read-only."""
    return imagecache.base_image("debian-12")

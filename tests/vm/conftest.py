"""Fixtures for the vm tier."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import imagecache


@pytest.fixture(scope="session")
def tier_base_image() -> Path:
    """The sealed base image the tiers boot (debian-13, qcow2). Read-only: boot or modify it through an overlay."""
    return imagecache.tier_base_image()


@pytest.fixture(scope="module")
def base_image(request: pytest.FixtureRequest) -> Path:
    """What `local` builds start from: the tiers' base image (read only: a build copies it), or
    SNAPBUILD_TEST_LOCAL_BASE (any sealed qcow2 of the same distro) when set."""
    override = os.environ.get("SNAPBUILD_TEST_LOCAL_BASE")
    if override:
        return Path(override)
    return Path(request.getfixturevalue("tier_base_image"))

"""Fixtures for the vm tier."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import imagecache


@pytest.fixture(scope="session")
def debian_base_image() -> Path:
    """A sealed Debian 12 base image (qcow2). Read-only: boot or modify it through an overlay."""
    return imagecache.debian_base_image()


@pytest.fixture(scope="module")
def base_image(request: pytest.FixtureRequest) -> Path:
    """What `local` builds start from: the shared Debian base image (read only: a build copies it), or
    SNAPBUILD_TEST_LOCAL_BASE (any sealed Debian qcow2) when set."""
    override = os.environ.get("SNAPBUILD_TEST_LOCAL_BASE")
    if override:
        return Path(override)
    return Path(request.getfixturevalue("debian_base_image"))

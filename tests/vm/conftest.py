"""Fixtures for the vm tier."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ holds the shared imagecache helper

import imagecache


@pytest.fixture(scope="session")
def debian_base_image() -> Path:
    """A sealed Debian 12 base image (qcow2). Read-only: boot or modify it through an overlay."""
    return imagecache.debian_base_image()

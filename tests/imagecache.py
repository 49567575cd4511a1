"""The test suite's base images: built once, cached across runs, rebuilt when the builder changes.

Both tests/system and tests/vm use `debian_base_image()` (Debian 12, the tiers' base today); `base_image("debian-13")`
is the Ubuntu-shaped one. The cache key is a hash of the builder's code, so an edit to baseimage.py, baselayout.py or
loopdisk.py invalidates the cached images.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from pathlib import Path

from snapbuild.host import loopdisk as disk
from snapbuild.local import baseimage, baselayout

DEFAULT_CACHE = Path("/var/cache/snapbuild-test")
STABLE_NAME = "debian-12-base.qcow2"   # the latest good image, for people and tools that want a fixed path


def cache_root() -> Path:
    return Path(os.environ.get("SNAPBUILD_TEST_IMAGE_CACHE", str(DEFAULT_CACHE)))


def builder_hash() -> str:
    digest = hashlib.sha256()
    for module in (baseimage, baselayout, disk):
        digest.update(Path(module.__file__ or "").read_bytes())
    return digest.hexdigest()[:12]


def debian_base_image() -> Path:
    """Path of a cached, sealed Debian 12 base image for the current builder code (builds it if missing).

    Callers must not modify it: boot it through a qcow2 overlay (`qemu-img create -b … -F qcow2`).
    """
    return base_image("debian-12")


def base_image(distro: str) -> Path:
    """Path of a cached, sealed base image of `distro` (a key of baseimage.DISTROS) for the current builder code."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    image = root / f"{distro}-base-{builder_hash()}.qcow2"
    # One builder at a time, also across concurrent pytest runs.
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not image.exists():
            if os.geteuid() != 0:
                raise RuntimeError(f"{image} is not cached and building it needs root")
            baseimage.build_base_image(distro=distro, output=image, cache_dir=root / "packages")
            for old in root.glob(f"{distro}-base-*.qcow2"):
                if old != image:
                    old.unlink()
            stable_name = f"{distro}-base.qcow2"
            stable = root / stable_name
            partial = root / f".{stable_name}.partial"
            shutil.copyfile(image, partial)
            os.replace(partial, stable)
    return image

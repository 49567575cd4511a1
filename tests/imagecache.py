"""The test suite's base images: built once, cached across runs, rebuilt when the builder changes.

The system, vm and integration tiers boot one base, `tier_base_image()`: debian-13, the Ubuntu-shaped one (one base
image per CI run); `base_image("debian-12")` is built only for `tox -e full`'s debian-12 checks. The cache key is a
hash of the builder's code, so an edit to baseimage.py, baselayout.py or loopdisk.py invalidates the cached images;
each is also copied to `<distro>-base.qcow2`, a fixed path for people and tools (the last good image).
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
TIER_DISTRO = "debian-13"   # the base every tier boots


def cache_root() -> Path:
    return Path(os.environ.get("SNAPBUILD_TEST_IMAGE_CACHE", str(DEFAULT_CACHE)))


def builder_hash() -> str:
    digest = hashlib.sha256()
    for module in (baseimage, baselayout, disk):
        digest.update(Path(module.__file__ or "").read_bytes())
    return digest.hexdigest()[:12]


def tier_base_image() -> Path:
    """Path of the cached, sealed base image the tiers boot, for the current builder code (builds it if missing).

    Callers must not modify it: boot it through a qcow2 overlay (`qemu-img create -b … -F qcow2`).
    """
    return base_image(TIER_DISTRO)


def stable_path(distro: str) -> Path:
    """The last good image of `distro` under a fixed name (it may be of older builder code, or missing)."""
    return cache_root() / f"{distro}-base.qcow2"


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
            stable = stable_path(distro)
            partial = root / f".{stable.name}.partial"
            shutil.copyfile(image, partial)
            os.replace(partial, stable)
    return image

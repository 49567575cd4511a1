"""The names the integration tier relies on in the cloud it is pointed at: the project's test cloud's by default,
each replaced by a variable for DevStack, a staging cloud or any other OpenStack (README, "Running the tests
against your own cloud").

    SNAPBUILD_TEST_BASE_IMAGE       base image the builds start from              debian-12
    SNAPBUILD_TEST_DISTRO           snapbuild's name for what that image is        debian-12
    SNAPBUILD_TEST_FLAVOR           a flavor whose servers boot                    m1.small
    SNAPBUILD_TEST_LARGE_FLAVOR     a flavor big enough for the k8s recipe        m1.large
    SNAPBUILD_TEST_NETWORK          the member's network for builders             private
    SNAPBUILD_TEST_EXTERNAL_NETWORK external network for floating IPs             public
    SNAPBUILD_TEST_REAL_BASE_IMAGE  base image for the real-guest tests: the      debian-13-real
                                    Ubuntu-shaped base the other tiers boot too
    SNAPBUILD_TEST_REAL_DISTRO      snapbuild's name for what that image is        debian-13
    SNAPBUILD_TEST_REAL_FLAVOR      flavor whose servers really boot that image    r1.small
    SNAPBUILD_TEST_K8S_BASE_IMAGE   Ubuntu-shaped base the shipped recipes are     the real-guest base
                                    built on in real guests
    SNAPBUILD_TEST_K8S_DISTRO       snapbuild's name for what that image is        the real-guest distro
    SNAPBUILD_TEST_K8S_FLAVOR       a real-guest flavor with the 2 GB RAM the      r1.medium
                                    k8s image asks for (image.min_ram_mb)
"""

from __future__ import annotations

import os


def _name(variable: str, default: str) -> str:
    return os.environ.get(variable) or default


BASE = _name("SNAPBUILD_TEST_BASE_IMAGE", "debian-12")
DISTRO = _name("SNAPBUILD_TEST_DISTRO", "debian-12")
FLAVOR = _name("SNAPBUILD_TEST_FLAVOR", "m1.small")
LARGE_FLAVOR = _name("SNAPBUILD_TEST_LARGE_FLAVOR", "m1.large")
NETWORK = _name("SNAPBUILD_TEST_NETWORK", "private")
EXTERNAL = _name("SNAPBUILD_TEST_EXTERNAL_NETWORK", "public")
REAL_BASE = _name("SNAPBUILD_TEST_REAL_BASE_IMAGE", "debian-13-real")
REAL_FLAVOR = _name("SNAPBUILD_TEST_REAL_FLAVOR", "r1.small")
REAL_DISTRO = _name("SNAPBUILD_TEST_REAL_DISTRO", "debian-13")
K8S_BASE = _name("SNAPBUILD_TEST_K8S_BASE_IMAGE", REAL_BASE)
K8S_DISTRO = _name("SNAPBUILD_TEST_K8S_DISTRO", REAL_DISTRO)
K8S_FLAVOR = _name("SNAPBUILD_TEST_K8S_FLAVOR", "r1.medium")

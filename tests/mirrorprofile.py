"""The mirror profile the mirror tests hand to snapbuild: apt through a proxy, registry.k8s.io through a registry,
the public registries marked blocked. Guest addresses are what the builder reaches (QEMU guestfwd)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path


def write_mirror_profile(path: Path, *, description: str, apt_guest: str, registry_guest: str,
                         forwards: Sequence[dict[str, str]] = ()) -> Path:
    profile: dict[str, object] = {
        "description": description,
        "build_apt_proxy": f"http://{apt_guest}",
        "registries": {"registry.k8s.io": [f"http://{registry_guest}"]},
        "blocked": ["registry.k8s.io", "quay.io", "ghcr.io", "gcr.io"],
    }
    if forwards:
        profile["forwards"] = list(forwards)
    path.write_text(json.dumps(profile))
    return path

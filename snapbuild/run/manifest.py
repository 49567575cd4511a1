"""The manifest every build writes: one schema for every builder (snapbuild/schemas/manifest.schema.json).

What is common (recipe, content digest, base, output, what the guest reported, the seal checks, the steps) has
one name everywhere; what only one builder knows goes under `details`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import snapbuild
from snapbuild.run.context import BuildContext

if TYPE_CHECKING:
    from snapbuild.plan import Plan
    from snapbuild.provision import ProvisionResult

SCHEMA = "urn:snapbuild:schema:manifest:1"
BUILDERS = ("openstack-snapshot", "local", "chroot")


def build_manifest(ctx: BuildContext, *, builder: str, plan: Plan, base_checksum: str | None,
                   base: Mapping[str, Any], output: Mapping[str, Any], provisioned: ProvisionResult | None,
                   seal: Mapping[str, str], details: Mapping[str, Any]) -> dict[str, Any]:
    """`base_checksum` is what the content digest takes for the base (`sha256:…`, Glance's multihash)."""
    assert builder in BUILDERS, builder
    content = plan.content_digest(base_checksum)
    return {
        "$schema": SCHEMA,
        "snapbuild_version": snapbuild.__version__,
        "build_id": ctx.build_id,
        "builder": builder,
        "recipe": {"name": plan.recipe_name, "digest": plan.recipe_digest, "variant": plan.variant,
                   "distro": plan.distro.name, "image_name": plan.image.name,
                   "components": dict(plan.components)},
        "content_digest": {"value": content.value, "inputs": content.as_dict()},
        "base": dict(base),
        "output": dict(output),
        "packages": dict(provisioned.packages) if provisioned else {},
        "pulled_images": dict(provisioned.pulled_images) if provisioned else {},
        "seal": dict(seal),
        "steps": [{"name": t.name, "seconds": round(t.seconds, 2), "ok": t.ok} for t in ctx.timings],
        "details": dict(details),
    }


def write_manifest(path: Path, manifest: Mapping[str, Any]) -> None:
    """Atomically: a manifest exists only complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def manifest_path_for(output: Path) -> Path:
    """Beside a file output: `IMAGE.qcow2.manifest.json`."""
    return output.with_name(output.name + ".manifest.json")

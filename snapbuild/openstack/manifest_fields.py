"""The manifest of a snapshot build: inputs, versions, digests and the output, as one dict."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import snapbuild
from snapbuild.openstack.model import Flavor, Image
from snapbuild.openstack.settings import SnapshotSettings

if TYPE_CHECKING:
    from snapbuild.plan import Plan
    from snapbuild.run.context import StepTiming


def snapshot_manifest(*, settings: SnapshotSettings, plan: Plan, build_id: str, flavor: Flavor, base_image: Image,
                      image: Image, patch: Sequence[Mapping[str, Any]], pulled_images: Mapping[str, str],
                      timings: Sequence[StepTiming]) -> dict[str, Any]:
    content = plan.content_digest(base_image.content_checksum)     # as recorded in the image's properties
    return {
        "snapbuild_version": snapbuild.__version__,
        "builder": "openstack-snapshot",
        "build_id": build_id,
        "recipe": {"name": plan.recipe_name, "digest": plan.recipe_digest},
        "variant": plan.variant,
        "content_digest": content.value,
        "content_digest_inputs": content.as_dict(),
        "distro": plan.distro.name,
        "components": dict(plan.components),
        "pulled_images": dict(pulled_images),
        "inputs": {
            "cloud": settings.cloud, "region": settings.region, "flavor": asdict(flavor),
            "base_image": {"id": base_image.id, "name": base_image.name, "checksum": base_image.checksum},
            "volume_size_gb": settings.volume_size_gb, "no_provision": settings.no_provision,
        },
        "output": {
            "image_id": image.id, "image_name": image.name, "size": image.size, "checksum": image.checksum,
            "visibility": image.visibility, "properties": dict(image.properties), "tags": list(image.tags),
            "min_disk": image.min_disk, "min_ram": image.min_ram, "property_patch": [dict(op) for op in patch],
        },
        "steps": [{"name": t.name, "seconds": round(t.seconds, 1), "ok": t.ok} for t in timings],
    }

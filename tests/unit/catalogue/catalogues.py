"""Catalogue files and the fake builder shared by the catalogue's unit tests."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fakeregions import Regions

from snapbuild.catalogue.load import load_catalogue
from snapbuild.catalogue.model import Catalogue, Target
from snapbuild.openstack import properties
from snapbuild.openstack.cloud import Cloud
from snapbuild.openstack.settings import SnapshotResult, SnapshotSettings
from snapbuild.paths import data_dir
from snapbuild.recipes import Library

LIBRARY = Library([data_dir("recipes")])

TWO_REGIONS = """\
images:
  docker-ce:
    recipe: docker-ce
    mirrors: upstream
    properties: {os_type: linux}
    visibility: public
  k8s-full:
    recipe: k8s
    variant: full
    mirrors: upstream
  k8s-slim:
    recipe: k8s
    variant: slim
    mirrors: upstream
targets:
  one:
    cloud: fake
    region: RegionOne
    build: {flavor: m1.large, network: private, floating_network: public}
  two:
    cloud: fake
    region: RegionTwo
    role: receive
policy:
  keep: 1
  grace_period: 1d
  claim_settle: 0
  concurrency: 4
  per_cloud: 2
"""


def write(tmp_path: Path, text: str = TWO_REGIONS, name: str = "catalogue.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load(tmp_path: Path, text: str = TWO_REGIONS) -> Catalogue:
    return load_catalogue(write(tmp_path, text), library=LIBRARY, known_clouds=["fake"])


def seed_bases(regions: Regions) -> None:
    """The same Ubuntu base in both regions (same bytes: same os_hash_value), as a public image of the admin."""
    for region in ("RegionOne", "RegionTwo"):
        if regions.glances[region].images and region == "RegionTwo" and regions.glances["RegionTwo"] is \
                regions.glances["RegionOne"]:
            continue
        regions.add_image(region, "ubuntu-24.04", data=b"noble base", owner="admin", os_distro="ubuntu",
                          os_version="24.04")


def connector(regions: Regions) -> Any:
    def connect(target: Target) -> Cloud:
        return regions.cloud(target.region or "RegionOne")
    return connect


class FakeBuilder:
    """Stands in for build_snapshot at its boundary: what it leaves in Glance is what a snapshot build leaves (the
    provenance properties, the catalogue's, snapbuild's tag), made through the real adapter and the HTTP fake."""

    def __init__(self, fail: set[str] | None = None) -> None:
        self.built: list[tuple[str, str | None]] = []
        self.fail = fail or set()

    def __call__(self, settings: SnapshotSettings, plan: Any, monitor: Any, cloud: Cloud) -> SnapshotResult:
        from snapbuild.errors import BuildError

        self.built.append((plan.recipe_name + (f"-{plan.variant}" if plan.variant else ""), settings.region))
        if plan.recipe_name in self.fail:
            raise BuildError(f"{plan.recipe_name}: provisioning failed")
        base = cloud.resolve_image(str(settings.base_image))
        digest = plan.content_digest(base.content_checksum).value
        props = properties.final_properties(recipe=plan.image.properties, user=settings.properties,
                                            provenance_props=properties.provenance(
                                                recipe=plan.recipe_name, recipe_digest=plan.recipe_digest,
                                                base_image_id=base.id, base_image_name=base.name, build_id="b1",
                                                build_date=datetime.now(UTC).isoformat(), components={},
                                                content_digest=digest, variant=plan.variant))
        # Finished as a real build finishes: provenance in, the `snapbuild` tag (in-progress mark) gone.
        record = cloud.create_image_record(name=str(settings.image_name), disk_format="qcow2", properties=props,
                                           tags=list(settings.tags), visibility=settings.visibility)
        cloud.upload_image_stream(record.id, iter([b"image of ", digest.encode()]), None)
        image = cloud.image_data(record.id)
        return SnapshotResult(image_id=image.id, image_name=image.name, build_id="b1", properties=image.properties,
                              seconds=time.monotonic() % 1, manifest={})

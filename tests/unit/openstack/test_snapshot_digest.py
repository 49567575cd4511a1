"""A snapshot build records the content digest (with the base image's checksum) and the variant: in Glance's
properties and in the manifest, at the HTTP edge."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from httpcloud import HTTPCloud

from snapbuild.openstack.cloud import Cloud
from snapbuild.openstack.settings import SnapshotSettings
from snapbuild.openstack.snapshot import build_snapshot
from snapbuild.plan import Plan, plan_from_names, shipped_recipes_dir
from snapbuild.recipes import Library
from snapbuild.run.context import Reporter
from tests.manifestcheck import check_manifest


def _settings(**kw: Any) -> SnapshotSettings:
    values: dict[str, Any] = {"flavor": "m1.small", "networks": ("private",), "floating_network": "public",
                              "no_provision": True}
    values.update(kw)
    return SnapshotSettings(**values)


def _k8s(variant: str | None) -> Plan:
    return plan_from_names(library=Library([shipped_recipes_dir()]), recipe_name="k8s", distro_name="ubuntu-24.04",
                           profile_name="upstream", config_variables={}, set_values={}, variant=variant)


def test_the_image_carries_the_digest_with_its_base(cloud: Cloud, api: HTTPCloud, plan: Plan,
                                                    isolated_state: Path) -> None:
    result = build_snapshot(_settings(), plan, Reporter(io.StringIO()), cloud=cloud)
    image = api.images[result.image_id]
    base = api.images["base-2"]                                # the base the build chose (newest by name)
    base_checksum = f"{base['os_hash_algo']}:{base['os_hash_value']}"   # Glance's multihash, not the md5
    expected = plan.content_digest(base_checksum)
    assert image["snapbuild_content_digest"] == expected.value
    assert expected.value != plan.content_digest().value          # the base counts
    assert "snapbuild_variant" not in image                        # docker-ce has no variants
    manifest = check_manifest(dict(result.manifest), builder="openstack-snapshot")
    assert manifest["content_digest"] == {"value": expected.value, "inputs": expected.as_dict()}
    assert manifest["recipe"]["variant"] is None
    assert result.manifest_path is not None and check_manifest(result.manifest_path, builder="openstack-snapshot")


def test_a_variant_build_is_named_and_marked_as_such(cloud: Cloud, api: HTTPCloud, isolated_state: Path) -> None:
    slim = _k8s("slim")
    result = build_snapshot(_settings(properties={"snapbuild_variant": "not-mine"}), slim, Reporter(io.StringIO()),
                            cloud=cloud)
    image = api.images[result.image_id]
    assert slim.image.name == "Ubuntu 24.04 - Kubernetes (slim)"
    assert image["name"].startswith(slim.image.name)               # plus the build's date
    assert image["snapbuild_variant"] == "slim"                    # provenance: a --property cannot change it
    assert image["snapbuild_content_digest"] == slim.content_digest(_multihash(api, "base-2")).value
    assert image["snapbuild_content_digest"] != _k8s("full").content_digest(_multihash(api, "base-2")).value
    assert check_manifest(dict(result.manifest), builder="openstack-snapshot")["recipe"]["variant"] == "slim"


def _multihash(api: HTTPCloud, image_id: str) -> str:
    return f"{api.images[image_id]['os_hash_algo']}:{api.images[image_id]['os_hash_value']}"

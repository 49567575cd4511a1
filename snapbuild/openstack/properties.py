"""Which properties a finished image carries and which Nova's snapshot copied in that must go.

Nova copies the server's system metadata into a snapshot: `image_type=snapshot`, `instance_uuid`,
`base_image_ref`, the owner's names, boot roles, block-device mappings, and the base image's own properties.
The finished image should look like a published image, not like a snapshot of someone's server.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import snapbuild
from snapbuild.openstack import marks

NOVA_COPIES = (
    "instance_uuid", "base_image_ref", "owner_project_name", "owner_user_name", "owner_id", "user_id",
    "boot_roles", "image_location", "image_state", "clean_attempts", "block_device_mapping", "bdm_v2",
    "root_device_name", "instance_type_id", "instance_type_name", "instance_type_memory_mb",
    "instance_type_vcpus", "instance_type_root_gb", "instance_type_ephemeral_gb", "instance_type_flavorid",
    "instance_type_swap", "instance_type_rxtx_factor", "network_allocated", "image_owner_id", "image_base_image_ref",
)
# Marks that only matter while the image is a temporary, partial one.
TEMPORARY_MARKS = tuple(marks.PREFIX + key for key in ("installation_id", "host", "created_at", "expires_at"))
# What every image snapbuild built from a recipe carries (and a base image never does): the marks by which such an
# image is told apart once finished (the `snapbuild` tag is only on what is still being made).
CONTENT_DIGEST = marks.PREFIX + "content_digest"
BUILT_FROM_RECIPE = (CONTENT_DIGEST, marks.PREFIX + "recipe_digest")
# Glance reserves these; a patch touching them is refused.
_RESERVED = re.compile(r"^(os_glance_|stores$)")


def built_from_recipe(props: Mapping[str, object]) -> bool:
    """Whether an image's properties say snapbuild built it from a recipe (so it is nobody's base by default)."""
    return any(key in props for key in BUILT_FROM_RECIPE)


def provenance(*, recipe: str, recipe_digest: str, base_image_id: str, base_image_name: str, build_id: str,
               build_date: str, components: Mapping[str, str], content_digest: str | None = None,
               variant: str | None = None) -> dict[str, str]:
    """What snapbuild records about how an image was made; `content_digest` is snapbuild.digest's, base included
    (what a catalogue compares to decide whether an image is current)."""
    props = {
        "snapbuild_version": snapbuild.__version__,
        "snapbuild_recipe": recipe,
        "snapbuild_recipe_digest": recipe_digest,
        "snapbuild_base_image_id": base_image_id,
        "snapbuild_base_image_name": base_image_name,
        "snapbuild_build_id": build_id,
        "snapbuild_build_date": build_date,
    }
    if content_digest:
        props[CONTENT_DIGEST] = content_digest
    if variant:
        props["snapbuild_variant"] = variant
    for name, version in components.items():
        props["snapbuild_component_" + re.sub(r"[^a-z0-9_]", "_", name.lower())] = str(version)[:255]
    return props


def final_properties(*, recipe: Mapping[str, str], user: Mapping[str, str],
                     provenance_props: Mapping[str, str]) -> dict[str, str]:
    """Recipe's, then the user's (--property wins over the recipe), then provenance (nobody overrides it)."""
    props = {**{k: str(v) for k, v in recipe.items()}, **{k: str(v) for k, v in user.items()}}
    props.update(provenance_props)
    props["image_type"] = "image"   # Nova said "snapshot"
    return props


def to_remove(current: Iterable[str], *, keep: Iterable[str], base_properties: Iterable[str]) -> list[str]:
    """Keys on the snapshot that must go: Nova's copies, the base image's inherited properties, temporary marks."""
    keep_set = set(keep)
    current_set = set(current)
    unwanted = set(NOVA_COPIES) | set(TEMPORARY_MARKS) | set(base_properties)
    return sorted(k for k in current_set & unwanted if k not in keep_set and not _RESERVED.match(k))

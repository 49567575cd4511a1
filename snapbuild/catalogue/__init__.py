"""The image catalogue: many images on many clouds and regions, rebuilt only when something changed.

    catalogue.yaml ─► load (model.Catalogue, validated) ─► planner (one Decision per entry × target, from the
    content digests and what Glance holds) ─► apply (claim, build, copy, rotate) ─► summary

Everything that talks to a cloud goes through snapbuild.openstack.cloud.Cloud; the planner and the rotation policy
are pure functions over what the adapter reported, so they are tested without a cloud.
"""

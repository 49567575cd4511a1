"""Show a Plan to people: `snapbuild render` (everything) and `snapbuild plan` (the steps)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from snapbuild.actions import AptSource, PrePull
from snapbuild.errors import UserError
from snapbuild.outputs import prepare_output_dir
from snapbuild.plan import Plan
from snapbuild.sealing.policy import POLICY_STEPS
from snapbuild.userdata import BUILDER_USER, PlaceholderKey, render_builder_userdata


def builder_userdata(plan: Plan) -> str:
    key = PlaceholderKey()
    return render_builder_userdata(plan, builder_user=BUILDER_USER, builder_public_key=key.public_openssh,
                                   host_key=key)


def steps_text(plan: Plan) -> str:
    lines = [f"# {plan.recipe_name} on {plan.distro.pretty}, mirror profile {plan.profile.name}",
             f"# image: {plan.image.name!r} ({plan.image.disk_size_gb} GB disk)",
             *([f"# variant: {plan.variant}"] if plan.variant else []),
             f"# content digest: {plan.content_digest().value} (before the base image; the image records it "
             "with the base's checksum)", "",
             "provision:"]
    for number, action in enumerate(plan.actions, 1):
        lines.append(f"  {number:>2}. {action.describe()}")
        if isinstance(action, AptSource):
            lines.extend(f"        key: {line}" for line in action.details())
        if isinstance(action, PrePull):
            lines.extend(f"        - {line}" for line in action.details())
    lines.append("seal:")
    for number, step in enumerate(POLICY_STEPS, 1):
        lines.append(f"  {number:>2}. {step}")
    lines.append("capture: power off, create the image, set properties, remove every temporary resource")
    return "\n".join(lines) + "\n"


def plan_summary(plan: Plan) -> dict[str, Any]:
    return {
        "recipe": plan.recipe_name, "recipe_digest": plan.recipe_digest, "distro": plan.distro.name,
        "variant": plan.variant, "content_digest": plan.content_digest().as_dict(),
        "mirrors": plan.profile.name, "variables": dict(plan.variables),
        "steps": [a.describe() for a in plan.actions], "seal": list(POLICY_STEPS),
        "image": {"name": plan.image.name, "properties": dict(plan.image.properties),
                  "min_disk": plan.image.min_disk_gb, "min_ram": plan.image.min_ram_mb,
                  "disk_size_gb": plan.image.disk_size_gb},
        "components": dict(plan.components),
        "blocked_without_mirror": list(plan.blocked_without_mirror),
        "verify_checks": [list(c) for c in plan.verify_checks],
        "prepull": [prepull_summary(p) for p in plan.prepulls],
    }


def prepull_summary(pull: PrePull) -> dict[str, Any]:
    """A pre-pull step for machines: every image known before the build and where it is pulled from."""
    expected = {e.ref: e for e in pull.expect}
    images = []
    for ref in pull.known_images:
        route = pull.route(ref)
        images.append({"image": ref, "expected": ref in expected, "extra": ref in pull.images and ref not in expected,
                       "variables": [name for name, _ in expected[ref].variables] if ref in expected else [],
                       "registry": ref.split("/", 1)[0], "mirrors": list(route.mirrors) if route else [],
                       "upstream": route.server if route else None, "blocked": bool(route and route.blocked)})
    return {"namespace": pull.namespace, "hosts_dir": pull.hosts_dir, "list_command": list(pull.list_command),
            "checked": bool(pull.list_command and pull.expect), "images": images}


def render_text(plan: Plan) -> str:
    out = ["# ===== builder user-data (cloud-config; keys are generated at build time) =====",
           builder_userdata(plan).rstrip("\n"), ""]
    out.append("# ===== files written into the image =====")
    for item in plan.files:
        out.append(f"# ----- {item.path} (mode {item.mode:04o}, {item.owner}, from {item.origin or 'snapbuild'})")
        out.append(item.content.decode(errors="replace").rstrip("\n"))
    out.append("")
    out.append("# ===== cloud-init drop-ins baked into the image =====")
    out.extend(f"# {d.path}" for d in plan.dropins)
    out.append("")
    for pull in plan.prepulls:
        out.append(f"# ===== images pre-pulled into containerd namespace {pull.namespace} (fill your mirrors "
                   "with these first) =====")
        out.extend(f"# {line}" for line in pull.details())
        if pull.list_command and not pull.expect:
            out.append(f"# plus whatever {' '.join(pull.list_command)} prints during the build")
        out.append("")
    out.append("# ===== provisioning and sealing steps =====")
    out.append(steps_text(plan).rstrip("\n"))
    out.append("")
    out.append("# ===== image =====")
    out.append(json.dumps({"name": plan.image.name, "min_disk": plan.image.min_disk_gb,
                           "min_ram": plan.image.min_ram_mb, "properties": dict(plan.image.properties)}, indent=2))
    return "\n".join(out) + "\n"


def write_rendered(plan: Plan, directory: Path, *, option: str = "-o") -> list[Path]:
    """Write the user-data, every file (under files/ by absolute path), steps and image properties.

    Everything is rendered first and the directory checked (and made) before the first file is written, so a
    wrong `-o` is a UserError that leaves nothing behind.
    """
    contents: list[tuple[str, bytes]] = [("user-data", builder_userdata(plan).encode())]
    contents += [("files" + item.path, item.content) for item in plan.files]
    contents += [
        ("steps.txt", steps_text(plan).encode()),
        ("image.json", (json.dumps({"name": plan.image.name, "min_disk": plan.image.min_disk_gb,
                                    "min_ram": plan.image.min_ram_mb, "properties": dict(plan.image.properties)},
                                   indent=2) + "\n").encode()),
        ("plan.json", (json.dumps(plan_summary(plan), indent=2) + "\n").encode()),
    ]
    prepare_output_dir(directory, option=option)
    written = []
    for relative, data in contents:
        target = directory / relative
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        except OSError as exc:   # e.g. a file already where a folder of the plan's files goes
            raise UserError(f"{option} {directory}: cannot write {target}: {exc.strerror or exc}",
                            hint=f"give {option} a new, empty directory") from None
        written.append(target)
    return written

"""Show a Plan to people: `snapbuild render` (everything) and `snapbuild plan` (the steps)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from snapbuild.plan import Plan
from snapbuild.seal import POLICY_STEPS
from snapbuild.userdata import BUILDER_USER, PlaceholderKey, render_builder_userdata


def builder_userdata(plan: Plan) -> str:
    key = PlaceholderKey()
    return render_builder_userdata(plan, builder_user=BUILDER_USER, builder_public_key=key.public_openssh,
                                   host_key=key)


def steps_text(plan: Plan) -> str:
    lines = [f"# {plan.recipe_name} on {plan.distro.pretty}, mirror profile {plan.profile.name}",
             f"# image: {plan.image.name!r} ({plan.image.disk_size_gb} GB disk)", "",
             "provision:"]
    for number, action in enumerate(plan.actions, 1):
        lines.append(f"  {number:>2}. {action.describe()}")
    lines.append("seal:")
    for number, step in enumerate(POLICY_STEPS, 1):
        lines.append(f"  {number:>2}. {step}")
    lines.append("capture: power off, create the image, set properties, remove every temporary resource")
    return "\n".join(lines) + "\n"


def plan_summary(plan: Plan) -> dict[str, Any]:
    return {
        "recipe": plan.recipe_name, "recipe_digest": plan.recipe_digest, "distro": plan.distro.name,
        "mirrors": plan.profile.name, "variables": dict(plan.variables),
        "steps": [a.describe() for a in plan.actions], "seal": list(POLICY_STEPS),
        "image": {"name": plan.image.name, "properties": dict(plan.image.properties),
                  "min_disk": plan.image.min_disk_gb, "min_ram": plan.image.min_ram_mb,
                  "disk_size_gb": plan.image.disk_size_gb},
        "components": dict(plan.components),
        "blocked_without_mirror": list(plan.blocked_without_mirror),
        "verify_checks": [list(c) for c in plan.verify_checks],
    }


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
    out.append("# ===== provisioning and sealing steps =====")
    out.append(steps_text(plan).rstrip("\n"))
    out.append("")
    out.append("# ===== image =====")
    out.append(json.dumps({"name": plan.image.name, "min_disk": plan.image.min_disk_gb,
                           "min_ram": plan.image.min_ram_mb, "properties": dict(plan.image.properties)}, indent=2))
    return "\n".join(out) + "\n"


def write_rendered(plan: Plan, directory: Path) -> list[Path]:
    """Write the user-data, every file (under files/ by absolute path), steps and image properties."""
    written = []

    def put(relative: str, data: bytes) -> None:
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        written.append(target)

    put("user-data", builder_userdata(plan).encode())
    for item in plan.files:
        put("files" + item.path, item.content)
    put("steps.txt", steps_text(plan).encode())
    put("image.json", (json.dumps({"name": plan.image.name, "min_disk": plan.image.min_disk_gb,
                                   "min_ram": plan.image.min_ram_mb, "properties": dict(plan.image.properties)},
                                  indent=2) + "\n").encode())
    put("plan.json", (json.dumps(plan_summary(plan), indent=2) + "\n").encode())
    return written

"""`snapbuild validate`: a build's inputs checked, the cloud's included, creating nothing; every problem listed.

The recipe is checked as `render` and `plan` check it; with a cloud, `build`'s own preflight runs
(snapbuild.openstack.snapshot.preflight), so validate and build can never disagree about what is wrong.
Only click at module level: `snapbuild --help` stays fast.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from snapbuild.cli import Session, blocked_problem, cli, pass_session, with_recipe_options
from snapbuild.cli.cloud_options import settings_from_options, snapshot_options
from snapbuild.cli.completion import complete_recipe
from snapbuild.cli.output import Output, Result, choose
from snapbuild.errors import EXIT_USAGE, RecipeError, UserError

if TYPE_CHECKING:
    from snapbuild.openstack.cloud import Cloud
    from snapbuild.openstack.settings import SnapshotSettings
    from snapbuild.openstack.snapshot import Inputs
    from snapbuild.plan import Plan

# What no check before a build can know: said in --help and in every verdict.
NOT_CHECKED = (
    "packages and versions on the mirrors",
    "whether the mirrors and registries answer from inside the cloud",
    "whether the base image boots and runs cloud-init",
    "whether SSH reaches the builder (routes, floating IP, bastion)",
    "volume quota and availability zones",
)

HELP = f"""Check RECIPE's build inputs without building: nothing is created.

Always: the recipe loads, its variables resolve, the distro and the mirror profile are valid, no host is blocked
without a mirror (unless --allow-blocked), the builder's user-data renders and fits Nova's limit; the plan's
warnings are shown.

With a cloud (--os-cloud, OS_CLOUD, or clouds.yaml's only cloud): everything `build` checks before it creates
anything, by the same code: flavor (then required), base image, networks, port, security groups, floating
network, the root disk against the recipe, quotas, the user-data with a build's real keys. Without one, only the
recipe is checked, and the output says so.

Takes `build`'s options and snapbuild.yaml's `build:` defaults. Exit 0 prints what was checked and resolved;
exit 2 lists every problem, one line each with its hint.

Not checked (only the builder can find these): {"; ".join(NOT_CHECKED)}."""


@dataclass
class Verdict:
    """What validate found: problems (exit 2), warnings, and what the cloud resolved."""

    recipe: str
    problems: list[UserError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    recipe_checked: dict[str, Any] = field(default_factory=dict)
    cloud: dict[str, Any] = field(default_factory=lambda: {"checked": False})
    resolved: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        return {"ok": not self.problems, "recipe": self.recipe, "checked": self.recipe_checked, "cloud": self.cloud,
                "problems": [problem_json(p) for p in self.problems], "warnings": self.warnings,
                "resolved": self.resolved, "not_checked": list(NOT_CHECKED)}


def problem_json(problem: UserError) -> dict[str, Any]:
    out: dict[str, Any] = {"message": problem.message, "hint": problem.hint}
    if isinstance(problem, RecipeError):
        out.update(file=problem.path, line=problem.line)
    return out


# validate's result, one row: what -c picks and -f prints (the keys of `Verdict.as_json`).
VALIDATE_COLUMNS = ("ok", "recipe", "checked", "cloud", "problems", "warnings", "resolved", "not_checked")


def optional_flavor_options(func: Any) -> Any:
    return snapshot_options(func, require_flavor=False, columns=VALIDATE_COLUMNS)


@cli.command("validate", help=HELP, short_help="Check a build's inputs, the cloud's included, creating nothing.")
@click.argument("recipe", shell_complete=complete_recipe)
@with_recipe_options
@optional_flavor_options
@pass_session
def validate_command(session: Session, /, recipe: str, distro: str | None, mirrors: str | None,
                     sets: tuple[str, ...], **options: Any) -> None:
    options["flavor"] = options["flavor"] or ""       # "": none given (preflight lists it when a cloud is checked)
    output = choose(options.pop("fmt"), options.pop("columns"), options["as_json"])
    settings = settings_from_options(cloud=session.os_cloud, region=session.os_region, auth_args=session.auth_args,
                                     **options)
    verdict = Verdict(recipe=recipe)
    try:
        plan = session.plan(recipe, distro=distro, mirrors=mirrors, sets=sets)
    except UserError as exc:          # nothing more can be checked without a plan
        verdict.problems.append(exc)
        verdict.cloud = {"checked": False, "reason": "the recipe must load first"}
        report(verdict, output)
        return
    check_recipe(plan, settings, verdict)
    cloud = connect(session, verdict)
    if cloud is not None:
        try:
            check_cloud(cloud, plan, settings, verdict)
        finally:
            cloud.close()
    report(verdict, output)


def check_recipe(plan: Plan, settings: SnapshotSettings, verdict: Verdict) -> None:
    from snapbuild.render import builder_userdata
    from snapbuild.userdata import encode_for_nova

    verdict.recipe_checked = {"recipe": plan.recipe_name, "file": plan.recipe_file, "distro": plan.distro.name,
                              "mirrors": plan.profile.name, "variant": plan.variant,
                              "variables": dict(plan.variables)}
    if plan.blocked_without_mirror:
        if settings.allow_blocked:
            verdict.warnings.extend(f"blocked without a mirror (allowed by --allow-blocked): {line}"
                                    for line in plan.blocked_without_mirror)
        else:
            verdict.problems.append(blocked_problem(plan))
    verdict.warnings.extend(f"{host} is unreliable where the image is used" for host in plan.unreliable_hosts)
    verdict.warnings.extend(plan.warnings)
    if settings.transport == "console":
        from snapbuild.openstack.snapshot import console_conflicts, console_user_data

        verdict.problems.extend(console_conflicts(settings))
    try:
        if settings.transport == "console":    # the runner and the plan, credentials refused, as the build's
            user_data = console_user_data(plan, settings, build_id="validate")[1]
        else:   # placeholder keys are as long as the build's: the size is the build's (preflight redoes it)
            user_data = encode_for_nova(builder_userdata(plan))
        verdict.recipe_checked["user_data_chars"] = len(user_data)
    except UserError as exc:
        verdict.problems.append(exc)


def connect(session: Session, verdict: Verdict) -> Cloud | None:
    """The cloud `build` would use, or None (and why) when none is selected: then only the recipe is checked."""
    from snapbuild.openstack.cloud import Cloud, NoCloudSelected

    try:
        cloud = Cloud.connect(session.os_cloud, session.os_region, auth_args=session.auth_args)
    except NoCloudSelected as exc:
        known = f"; clouds.yaml has: {', '.join(exc.known)}" if exc.known else ""
        verdict.cloud = {"checked": False,
                         "reason": f"no cloud selected (pass --os-cloud NAME or set OS_CLOUD{known})"}
        return None
    except UserError as exc:        # a cloud was named, but cannot be used (not in clouds.yaml, 401, bad auth_url)
        verdict.problems.append(exc)
        verdict.cloud = {"checked": False, "name": session.os_cloud, "reason": "cannot connect"}
        return None
    verdict.cloud = {"checked": True, "name": cloud.name, "region": session.os_region}
    return cloud


def check_cloud(cloud: Cloud, plan: Plan, settings: SnapshotSettings, verdict: Verdict) -> None:
    from snapbuild.ledger import new_build_id
    from snapbuild.openstack.snapshot import PreflightFailed, preflight

    # Blocked hosts are the recipe's problem, listed above already (with the mirror profile's hint).
    try:
        inputs = preflight(cloud, dataclasses.replace(settings, allow_blocked=True), plan, build_id=new_build_id())
    except PreflightFailed as exc:
        verdict.problems.extend(exc.problems)
        return
    verdict.resolved = resolved(inputs, settings, plan)


def resolved(inputs: Inputs, settings: SnapshotSettings, plan: Plan) -> dict[str, Any]:
    from snapbuild.openstack.snapshot import root_disk_need

    need, reason = root_disk_need(inputs.base_image, plan, min_disk_gb=settings.min_disk_gb)
    groups: Any = [{"name": name, "id": gid} for name, gid in zip(settings.security_groups,
                                                                  inputs.security_group_ids, strict=True)]
    if not settings.security_groups and not inputs.port_id:
        groups = {"temporary": True, "ssh_cidr": settings.ssh_cidr}
    flavor = inputs.flavor
    return {
        "flavor": {"id": flavor.id, "name": flavor.name, "vcpus": flavor.vcpus, "ram_mb": flavor.ram_mb,
                   "disk_gb": flavor.disk_gb},
        "base_image": {"id": inputs.base_image.id, "name": inputs.base_image.name,
                       "min_disk": inputs.base_image.min_disk},
        "networks": [{"name": name, "id": nid} for name, nid in zip(settings.networks, inputs.network_ids,
                                                                     strict=True)] or "auto",
        "port": inputs.port_id,
        "security_groups": groups,
        "floating_network": ({"name": inputs.floating_network.name, "id": inputs.floating_network.id}
                             if inputs.floating_network else None),
        "ssh_network": ({"name": inputs.ssh_network.name, "id": inputs.ssh_network.id}
                        if inputs.ssh_network else None),
        "root_disk": {"gb": settings.volume_size_gb or flavor.disk_gb,
                      "from": "volume" if settings.volume_size_gb else "flavor", "needs_gb": need, "because": reason},
        "quota": "fits",
        "user_data_chars": len(inputs.user_data),
        "image_name": inputs.image_name,
    }


# -- output -------------------------------------------------------------------------------------------------------

def report(verdict: Verdict, output: Output) -> None:
    """-f/--json: the verdict as one row on stdout, as that format prints it (-f json is the object --json always
    printed). Otherwise the summary on stdout, warnings and problems on stderr. Exit 2 on a problem."""
    if output.format is not None or output.columns:
        document = verdict.as_json()
        click.echo(output.render(Result(rows=document, document=json.dumps(document, indent=2))))
    else:
        for warning in verdict.warnings:
            click.echo(f"WARNING: {warning}", err=True)
        if verdict.problems:
            for problem in verdict.problems:
                click.echo(f"snapbuild: error: {problem}", err=True)
            count = len(verdict.problems)
            unchecked = "" if verdict.cloud["checked"] else f" (cloud not checked: {verdict.cloud['reason']})"
            click.echo(f"snapbuild: validate {verdict.recipe}: {count} problem{'s' if count > 1 else ''}{unchecked}; "
                       "nothing was created", err=True)
        else:
            click.echo(summary_text(verdict), nl=False)
    if verdict.problems:
        sys.exit(EXIT_USAGE)


def summary_text(verdict: Verdict) -> str:
    checked = verdict.recipe_checked
    lines = [f"recipe {checked['recipe']} ({checked['file']}): OK on {checked['distro']}, mirror profile "
             f"{checked['mirrors']}" + (f", variant {checked['variant']}" if checked["variant"] else "")
             + f"; builder user-data {checked['user_data_chars']} characters"]
    cloud = verdict.cloud
    if not cloud["checked"] or verdict.resolved is None:
        lines.append(f"cloud: not checked: {cloud.get('reason', '')}; only the recipe was validated")
    else:
        r = verdict.resolved
        flavor, base, disk = r["flavor"], r["base_image"], r["root_disk"]
        where = f"cloud {cloud['name']}" + (f" (region {cloud['region']})" if cloud.get("region") else "")
        lines.append(f"{where}: OK, nothing created")
        lines.append(f"  flavor        {flavor['name']} ({flavor['id']}): {flavor['vcpus']} vCPU, "
                     f"{flavor['ram_mb']} MiB, {flavor['disk_gb']} GB disk")
        lines.append(f"  base image    {base['name']} ({base['id']})")
        lines.append(f"  root disk     {disk['gb']} GB from the {disk['from']}; needs {disk['needs_gb']} GB "
                     f"({disk['because']})")
        networks = r["networks"]
        lines.append("  networks      " + (", ".join(f"{n['name']} ({n['id']})" for n in networks)
                                          if isinstance(networks, list) else "auto (Nova picks)"))
        if r["port"]:
            lines.append(f"  port          {r['port']}")
        groups = r["security_groups"]
        lines.append("  security      " + (f"a temporary group, SSH from {groups['ssh_cidr']}" if isinstance(
            groups, dict) else ", ".join(f"{g['name']} ({g['id']})" for g in groups) or "the port's own"))
        floating = r["floating_network"]
        lines.append("  floating IP   " + (f"from {floating['name']} ({floating['id']})" if floating else "none"))
        if r["ssh_network"]:
            lines.append(f"  SSH network   {r['ssh_network']['name']} ({r['ssh_network']['id']})")
        lines.append(f"  quota         {r['quota']}")
        lines.append(f"  image name    {r['image_name']}")
    lines.append("not checked: what only the builder finds (packages on the mirrors, mirrors answering from inside "
                 "the cloud, boot, SSH); see --help")
    return "\n".join(lines) + "\n"

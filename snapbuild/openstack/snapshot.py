"""The snapshot build on OpenStack: boot a builder from a base image, provision, seal, snapshot, finish.

    preflight ─► boot builder ─► connect ─► provision ─► seal ─► power off ─► capture ─► finish image ─► remove builder

Every resource is written to the ledger before it is made and gets its undo the moment it exists; on any
failure or Ctrl-C the build context undoes everything in reverse (or keeps it with --keep-on-failure).
No keypair is made: the builder's public key and host key travel in the user-data, so nothing in Nova needs
cleaning up for them (keypairs cannot carry tags or metadata either).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from snapbuild.errors import BuildError, UserError
from snapbuild.ledger import Ledger, installation_id, new_build_id
from snapbuild.openstack import manifest_fields, marks, properties
from snapbuild.openstack.cloud import Cloud
from snapbuild.openstack.model import Address, Flavor, FloatingIP, Image, Network, SecurityGroup, Server, ServerSpec
from snapbuild.openstack.settings import SnapshotResult, SnapshotSettings
from snapbuild.run.context import BuildContext, Reporter, running_build

if TYPE_CHECKING:
    from snapbuild.guest.ssh import Bastion, SSHGuest
    from snapbuild.plan import Plan
    from snapbuild.sshkeys import KeyPair

log = logging.getLogger(__name__)

CONSOLE_TAIL_LINES = 30
DELETE_TIMEOUT = 300.0


@dataclass(frozen=True, kw_only=True)
class Inputs:
    """Everything preflight proved exists, resolved to ids."""

    build_id: str
    flavor: Flavor
    base_image: Image
    network_ids: tuple[str, ...]
    port_id: str | None
    security_group_ids: tuple[str, ...]
    floating_network: Network | None
    ssh_network: Network | None
    client_key: KeyPair
    host_key: KeyPair
    user_data: str
    image_name: str
    marks: marks.Marks


@dataclass
class Machine:
    """What exists right now (filled in as the build goes)."""

    server: Server | None = None
    floating_ip: FloatingIP | None = None
    security_group: SecurityGroup | None = None
    volume_id: str | None = None
    image_id: str | None = None
    handed_over: bool = False        # the image is the build's result: no longer undone
    server_gone: bool = False        # deleted early (boot-from-volume capture)
    pulled_images: dict[str, str] = field(default_factory=dict)
    patch: list[dict[str, Any]] = field(default_factory=list)


def build_snapshot(settings: SnapshotSettings, plan: Plan, reporter: Reporter, *,
                   cloud: Cloud | None = None) -> SnapshotResult:
    started = time.monotonic()
    build_id = new_build_id()
    reporter.heading("preflight")
    try:
        if cloud is None:
            cloud = Cloud.connect(settings.cloud, settings.region)
        inputs = preflight(cloud, settings, plan, build_id=build_id)
    except BaseException:
        reporter.done("preflight", time.monotonic() - started, ok=False)
        raise
    reporter.line(f"flavor {inputs.flavor.name}, base image {inputs.base_image.name} ({inputs.base_image.id})")
    reporter.done("preflight", time.monotonic() - started)

    ledger = Ledger.create(build_id=build_id, builder="openstack-snapshot", recipe=plan.recipe_name)
    ctx = BuildContext(build_id=build_id, ledger=ledger, reporter=reporter, log_path=settings.log_path,
                       keep_on_failure=settings.keep_on_failure)
    machine = Machine()
    try:
        with running_build(ctx):
            try:
                run_steps(ctx, cloud, settings, plan, inputs, machine)
            except BaseException as exc:
                report_failure(ctx, cloud, machine, exc)
                raise
    except BaseException:
        report_kept(ctx, ledger)
        raise
    assert machine.image_id is not None
    image = cloud.get_image(machine.image_id)
    manifest = manifest_fields.snapshot_manifest(
        settings=settings, plan=plan, build_id=build_id, flavor=inputs.flavor, base_image=inputs.base_image,
        image=image, patch=machine.patch, pulled_images=machine.pulled_images, timings=ctx.timings)
    _write_manifest(settings, manifest)
    for leftover in ctx.kept:
        reporter.line(f"warning: not removed: {leftover}")
    return SnapshotResult(image_id=image.id, image_name=image.name, build_id=build_id,
                          properties=dict(image.properties), seconds=time.monotonic() - started, manifest=manifest)


def run_steps(ctx: BuildContext, cloud: Cloud, settings: SnapshotSettings, plan: Plan, inputs: Inputs,
              machine: Machine) -> None:
    with ctx.step("boot builder"):
        launch_builder(ctx, cloud, settings, inputs, machine)
    if settings.no_provision:
        with ctx.step("power off (no provisioning)"):
            assert machine.server is not None
            cloud.stop(machine.server.id)
            cloud.wait_shutoff(machine.server.id, settings.timeout_boot)
    else:
        with ctx.step("connect"):
            guest = connect_guest(ctx, cloud, settings, inputs, machine)
        with ctx.step("provision"):
            provision_guest(plan, guest, ctx.reporter, machine, settings.timeout_provision)
        with ctx.step("seal"):
            seal_guest(guest, plan, settings, inputs, ctx.reporter)
        with ctx.step("power off"):
            power_off(cloud, guest, settings, machine)
    with ctx.step("capture"):
        capture(ctx, cloud, settings, inputs, machine)
    with ctx.step("finish image"):
        finish(cloud, settings, plan, inputs, machine)
    # The image is the result now: it leaves the ledger and its undo becomes a no-op.
    machine.handed_over = True
    assert machine.image_id is not None
    ctx.ledger.forget("image", machine.image_id)
    with ctx.step("remove builder"):
        ctx.undo.close()
    ctx.reporter.line(f"image {machine.image_id} ({inputs.image_name})")


# ---- 1. preflight: everything checked before anything exists --------------------------------------------

def preflight(cloud: Cloud, settings: SnapshotSettings, plan: Plan, *, build_id: str) -> Inputs:
    """Resolve every input and check quotas; one UserError naming every problem, nothing created."""
    from snapbuild.sshkeys import KeyPair
    from snapbuild.userdata import encode_for_nova, render_builder_userdata

    problems: list[UserError] = []

    def check(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UserError as exc:
            problems.append(exc)
            return None

    if plan.blocked_without_mirror and not settings.allow_blocked:
        problems.append(UserError(
            "the recipe downloads from hosts that are blocked without a mirror: "
            + "; ".join(plan.blocked_without_mirror),
            hint="use a mirror profile that covers them, or pass --allow-blocked if this cloud can reach them"))
    flavor = check(cloud.resolve_flavor, settings.flavor)
    if settings.base_image:
        base = check(cloud.resolve_image, settings.base_image)
    else:
        base = check(cloud.default_image, plan.distro.id, plan.distro.version)
    networks = tuple(n for n in (check(cloud.resolve_network, name) for name in settings.networks) if n)
    groups = tuple(g for g in (check(cloud.resolve_security_group, name) for name in settings.security_groups) if g)
    floating = check(cloud.resolve_network, settings.floating_network, external=True) \
        if settings.floating_network else None
    ssh_network = check(cloud.resolve_network, settings.ssh_interface) if settings.ssh_interface else None
    port_id = check(cloud.resolve_port, settings.port) if settings.port else None
    if settings.ssh_ip_version not in (None, 4, 6):
        problems.append(UserError(f"--ssh-ip-version must be 4 or 6, not {settings.ssh_ip_version}"))
    if settings.visibility not in ("private", "shared", "community", "public"):
        problems.append(UserError(f"unknown visibility {settings.visibility!r}",
                                  hint="private, shared, community or public"))
    if flavor and base:
        check(check_root_disk, flavor, base, plan, settings.volume_size_gb)
    if not problems and flavor:
        check(cloud.check_fits, flavor, floating_ips=1 if floating else 0,
              security_groups=0 if groups else 1)

    client_key = KeyPair.generate(comment=f"snapbuild-{build_id}")
    host_key = KeyPair.generate(comment=f"snapbuild-host-{build_id}")
    user_data = check(lambda: encode_for_nova(render_builder_userdata(
        plan, builder_user=settings.ssh_user, builder_public_key=client_key.public_openssh, host_key=host_key,
        build_id=build_id)))
    if problems:
        if len(problems) == 1:
            raise problems[0]
        raise UserError("; ".join(p.message for p in problems),
                        hint=" | ".join(p.hint for p in problems if p.hint) or None)
    assert flavor is not None and base is not None and user_data is not None
    recipe_marks = marks.Marks.new(build_id=build_id, installation_id=installation_id(), recipe=plan.recipe_name,
                                   host=socket.gethostname())
    image_name = settings.image_name or f"{plan.image.name}-{datetime.now(UTC):%Y%m%d-%H%M}"
    return Inputs(build_id=build_id, flavor=flavor, base_image=base, network_ids=tuple(n.id for n in networks),
                  port_id=port_id, security_group_ids=tuple(g.id for g in groups), floating_network=floating,
                  ssh_network=ssh_network, client_key=client_key, host_key=host_key, user_data=user_data,
                  image_name=image_name, marks=recipe_marks)


def check_root_disk(flavor: Flavor, base: Image, plan: Plan, volume_size_gb: int | None) -> None:
    """The builder's root disk must hold what the recipe installs and what the image will promise (min_disk).

    The image inherits the builder's disk size, and is published with the recipe's min_disk: a smaller disk
    either fills up mid-build or yields an image whose min_disk no server of that flavor can satisfy.
    """
    needs = {f"recipe {plan.recipe_name!r} disk_size_gb": plan.image.disk_size_gb,
             f"recipe {plan.recipe_name!r} min_disk_gb": plan.image.min_disk_gb,
             f"image {base.name} min_disk": base.min_disk}
    reason, need = max(needs.items(), key=lambda item: item[1])
    if volume_size_gb:
        if volume_size_gb < need:
            raise UserError(f"--volume-size {volume_size_gb} GB is smaller than the {need} GB the build needs "
                            f"({reason})", hint=f"pass --volume-size {need} or more")
        return
    if flavor.disk_gb == 0:
        # Nova sizes a zero-disk flavor's root disk to the image alone: nothing is left for the recipe.
        raise UserError(f"flavor {flavor.name} has no root disk of its own (disk 0); the build needs {need} GB "
                        f"({reason})", hint=f"pass --volume-size {need}, or a flavor with a disk of {need} GB or more")
    if flavor.disk_gb < need:
        raise UserError(f"flavor {flavor.name} has a {flavor.disk_gb} GB disk; the build needs {need} GB ({reason})",
                        hint=f"pick a flavor with a disk of {need} GB or more, or pass --volume-size {need}")


# ---- 2. boot: each resource in the ledger first, its undo the moment it exists ---------------------------

def _tracked_create(ctx: BuildContext, kind: str, label: str, create: Callable[[], Any],
                    sweep: Callable[[], list[str]], delete: Callable[[str], None]) -> Any:
    """Create once. If the create fails mid-air it may still have made the thing: find it by name and undo it."""
    pending = f"pending:{label}"
    ctx.ledger.record(kind, pending, name=label)
    try:
        made = create()
    except BaseException:
        try:
            for rid in sweep():
                log.warning("the failed create of %s %s still made %s: deleting it", kind, label, rid)
                delete(rid)
            ctx.ledger.forget(kind, pending)
        except Exception as exc:  # noqa: BLE001 - the create's error is the one to show
            log.error("could not check for a half-made %s %s: %s (the ledger keeps it)", kind, label, exc)
        raise
    rid = made if isinstance(made, str) else made.id
    ctx.ledger.record(kind, rid, name=label)
    ctx.ledger.forget(kind, pending)
    return made


def launch_builder(ctx: BuildContext, cloud: Cloud, settings: SnapshotSettings, inputs: Inputs,
                   machine: Machine) -> None:
    base_name = f"snapbuild-{inputs.marks.recipe}-{inputs.build_id}"
    group_ids = inputs.security_group_ids
    if not group_ids and not inputs.port_id:
        name = f"{base_name}-ssh"
        group = _tracked_create(
            ctx, "security_group", name,
            lambda: cloud.create_security_group(name, ssh_cidr=settings.ssh_cidr, tags=inputs.marks.tags(),
                                                description=f"snapbuild build {inputs.build_id}: SSH to builder"),
            lambda: cloud.security_groups_named(name), cloud.delete_security_group)
        machine.security_group = group
        ctx.add_undo(f"security group {group.id}", cloud.delete_security_group, group.id,
                     forget=("security_group", group.id))
        ctx.reporter.line(f"security group {group.name} (SSH from {settings.ssh_cidr})")
        group_ids = (group.id,)

    boot_volume = None
    if settings.volume_size_gb:
        vol_name = f"{base_name}-root"
        volume = _tracked_create(
            ctx, "volume", vol_name,
            lambda: cloud.create_volume(name=vol_name, size_gb=int(settings.volume_size_gb or 0),
                                        image_id=inputs.base_image.id, metadata=inputs.marks.metadata()),
            lambda: cloud.volumes_named(vol_name), cloud.delete_volume)
        machine.volume_id = boot_volume = volume.id
        ctx.add_undo(f"volume {volume.id}", cloud.delete_volume, volume.id, forget=("volume", volume.id))
        cloud.wait_volume_available(volume.id, settings.timeout_boot)
        ctx.reporter.line(f"volume {volume.id} ({settings.volume_size_gb} GB from the base image)")

    spec = ServerSpec(name=base_name, flavor_id=inputs.flavor.id,
                      image_id=None if boot_volume else inputs.base_image.id,
                      network_ids=inputs.network_ids, port_ids=(inputs.port_id,) if inputs.port_id else (),
                      security_group_ids=group_ids, user_data=inputs.user_data, tags=(marks.TAG,),
                      metadata=inputs.marks.metadata(), availability_zone=settings.availability_zone,
                      config_drive=settings.config_drive, boot_volume_id=boot_volume)
    server = _tracked_create(ctx, "server", base_name, lambda: cloud.boot(spec),
                             lambda: cloud.servers_named(base_name),
                             lambda rid: cloud.delete_server(rid, DELETE_TIMEOUT))
    machine.server = server

    def delete_server(server_id: str) -> None:
        if not machine.server_gone:
            cloud.delete_server(server_id, DELETE_TIMEOUT)

    ctx.add_undo(f"server {server.id}", delete_server, server.id, forget=("server", server.id))
    ctx.reporter.line(f"server {server.name} ({server.id})")
    machine.server = cloud.wait_active(server.id, settings.timeout_boot)

    if inputs.floating_network:
        description = f"snapbuild build {inputs.build_id}"
        port_id = inputs.port_id or cloud.server_port(server.id, inputs.ssh_network.id if inputs.ssh_network else None)
        floating_network = inputs.floating_network
        ip = _tracked_create(
            ctx, "floating_ip", description,
            lambda: cloud.create_floating_ip(floating_network_id=floating_network.id, port_id=port_id,
                                             tags=inputs.marks.tags(), description=description),
            lambda: cloud.floating_ips_described(description), cloud.delete_floating_ip)
        machine.floating_ip = ip
        ctx.add_undo(f"floating IP {ip.address}", cloud.delete_floating_ip, ip.id, forget=("floating_ip", ip.id))
        ctx.reporter.line(f"floating IP {ip.address}")


# ---- 3. SSH --------------------------------------------------------------------------------------------

def ssh_address(server: Server, floating_ip: FloatingIP | None, *, network: str | None,
                ip_version: int | None) -> str:
    """Floating IP first; then the named network's address of the wanted IP version (IPv4 unless asked)."""
    if floating_ip is not None:
        return floating_ip.address
    candidates: list[Address] = [a for a in server.addresses
                                 if (network is None or a.network == network)
                                 and (ip_version is None or a.version == ip_version)]
    if not candidates:
        seen = ", ".join(f"{a.network}:{a.ip}" for a in server.addresses) or "none"
        raise BuildError(f"server {server.name} has no address to SSH to (network={network or 'any'}, "
                         f"IP version={ip_version or 'any'}; addresses: {seen})",
                         hint="use --ssh-interface / --ssh-ip-version, or --floating-network")
    candidates.sort(key=lambda a: (a.kind != "floating", a.version != 4))
    return candidates[0].ip


BASTION_DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")


def parse_bastion(text: str | None, key_file: Path | None, *, accept_any_host_key: bool) -> Bastion | None:
    """The jump host, logged into with the user's own key (the build key exists only on the builder)."""
    if not text:
        return None
    import paramiko

    from snapbuild.guest.ssh import Bastion

    user, _, hostport = text.rpartition("@")
    host, _, port = hostport.partition(":")
    candidates = [key_file] if key_file else [Path.home() / ".ssh" / n for n in BASTION_DEFAULT_KEYS]
    found = next((p for p in candidates if p and p.is_file()), None)
    if found is None:
        raise UserError(f"--ssh-bastion {text}: no key to log in with",
                        hint="pass --ssh-bastion-key FILE (or have ~/.ssh/id_ed25519)")
    try:
        pkey = paramiko.PKey.from_path(found)
    except (paramiko.SSHException, OSError) as exc:
        raise UserError(f"--ssh-bastion-key {found}: cannot load it: {exc}",
                        hint="an unencrypted OpenSSH private key is needed (ssh-agent is not used)") from None
    return Bastion(user=user or "root", host=host, port=int(port or 22), key=pkey,
                   accept_any_host_key=accept_any_host_key)


def connect_guest(ctx: BuildContext, cloud: Cloud, settings: SnapshotSettings, inputs: Inputs,
                  machine: Machine) -> SSHGuest:
    from snapbuild.guest.cloudinit_wait import wait_for_cloud_init
    from snapbuild.guest.ssh import HostKeyMismatch, SSHGuest
    from snapbuild.sshkeys import parse_console_host_keys

    assert machine.server is not None
    server = machine.server
    address = ssh_address(server, machine.floating_ip,
                          network=inputs.ssh_network.name if inputs.ssh_network else None,
                          ip_version=settings.ssh_ip_version)
    ctx.reporter.line(f"SSH to {settings.ssh_user}@{address}:{settings.ssh_port}")
    deadline = time.monotonic() + settings.timeout_ssh

    def console() -> str:
        return cloud.console_log(server.id, 200)

    def attempt(host_keys: list[str]) -> SSHGuest:
        return SSHGuest.connect(host=address, port=settings.ssh_port, user=settings.ssh_user, key=inputs.client_key,
                                host_keys=host_keys, deadline=deadline,
                                bastion=parse_bastion(settings.ssh_bastion, settings.ssh_bastion_key,
                                                      accept_any_host_key=settings.accept_any_host_key),
                                accept_any_host_key=settings.accept_any_host_key, console=console,
                                name=server.name)

    try:
        guest = attempt([inputs.host_key.public_openssh])
    except HostKeyMismatch:
        # cloud-init did not apply our host key: the keys it printed on the console are the fallback pin
        printed = list(parse_console_host_keys(console()))
        if not printed:
            raise
        log.warning("%s: host key differs from the one handed to cloud-init; pinning the console's keys",
                    server.name)
        guest = attempt(printed)
    ctx.add_undo("SSH connection", guest.close)
    wait_for_cloud_init(guest, timeout=max(deadline - time.monotonic(), 60.0))
    return guest


# ---- 4-5. provision, seal, power off ------------------------------------------------------------------

def provision_guest(plan: Plan, guest: SSHGuest, reporter: Reporter, machine: Machine, timeout: float) -> None:
    from snapbuild.provision import provision

    result = provision(plan, guest, reporter, step_timeout=timeout)
    machine.pulled_images.update(getattr(result, "pulled_images", {}) or {})


def seal_guest(guest: SSHGuest, plan: Plan, settings: SnapshotSettings, inputs: Inputs, reporter: Reporter) -> None:
    from snapbuild.sealing.policy import check_sealed, seal

    # The whole policy, as on the local path: resolv.conf back to the distro's symlink included.
    seal(guest, reporter=reporter, resolv_symlink=plan.distro.resolv_conf_symlink)
    violations = check_sealed(guest, builder_user=settings.ssh_user, builder_keys=(inputs.client_key.public_openssh,))
    if violations:
        raise BuildError("the sealed builder still has: " + "; ".join(str(v) for v in violations),
                         hint="a recipe step may write these after sealing; the image was not captured")


def power_off(cloud: Cloud, guest: SSHGuest, settings: SnapshotSettings, machine: Machine) -> None:
    """The last seal step removes the builder user and powers off; the connection dropping is expected."""
    import paramiko

    from snapbuild.errors import CommandFailed
    from snapbuild.sealing.policy import power_off_sealed

    assert machine.server is not None
    try:
        power_off_sealed(guest, builder_user=settings.ssh_user)
    except CommandFailed as exc:
        if not exc.timed_out:
            raise           # the script itself failed (e.g. the builder user could not be removed)
        log.info("poweroff script timed out as the guest went down: %s", exc)
    except (BuildError, OSError, EOFError, paramiko.SSHException) as exc:
        log.info("connection ended by poweroff: %s", exc)
    guest.close()
    # Nova learns of a guest's own poweroff only from a lifecycle event (libvirt delays it 15 s) or its periodic
    # power-state sync (every 10 min by default): ask Nova to stop the server now, as Packer does. The guest is
    # already going down, so the ACPI request changes nothing; a 409 means Nova got there first.
    cloud.stop(machine.server.id)
    cloud.wait_shutoff(machine.server.id, min(settings.timeout_boot, 300.0))


# ---- 6. capture and finish ------------------------------------------------------------------------------

def capture(ctx: BuildContext, cloud: Cloud, settings: SnapshotSettings, inputs: Inputs, machine: Machine) -> None:
    assert machine.server is not None
    name = inputs.image_name
    if machine.volume_id:
        # A Nova snapshot of a volume-backed server is a 0-byte pointer to a Cinder snapshot: upload instead.
        cloud.delete_server(machine.server.id, DELETE_TIMEOUT)
        machine.server_gone = True
        ctx.ledger.forget("server", machine.server.id)
        cloud.wait_volume_available(machine.volume_id, settings.timeout_boot)
        volume_id = machine.volume_id
        image_id = _tracked_create(
            ctx, "image", name,
            lambda: cloud.upload_volume(volume_id, image_name=name, disk_format=settings.volume_disk_format),
            lambda: cloud.images_named(name), cloud.delete_image)
    else:
        server_id = machine.server.id
        image_id = _tracked_create(ctx, "image", name,
                                   lambda: cloud.snapshot(server_id, name, inputs.marks.metadata()),
                                   lambda: cloud.images_named(name), cloud.delete_image)
    machine.image_id = image_id

    def delete_partial(image: str) -> None:
        if not machine.handed_over:
            cloud.delete_image(image)

    ctx.add_undo(f"partial image {image_id}", delete_partial, image_id, forget=("image", image_id))
    ctx.reporter.line(f"image {image_id}")
    cloud.tag_image(image_id, [marks.TAG])
    image = cloud.wait_image_active(image_id, settings.timeout_snapshot)
    ctx.reporter.line(f"active: {image.size} bytes")
    if machine.volume_id:
        cloud.wait_volume_available(machine.volume_id, settings.timeout_snapshot)   # "uploading" until done
    else:
        cloud.wait_task_idle(machine.server.id, settings.timeout_snapshot)


def finish(cloud: Cloud, settings: SnapshotSettings, plan: Plan, inputs: Inputs, machine: Machine) -> None:
    assert machine.image_id is not None
    image = cloud.get_image(machine.image_id)
    provenance = properties.provenance(
        recipe=plan.recipe_name, recipe_digest=plan.recipe_digest, base_image_id=inputs.base_image.id,
        base_image_name=inputs.base_image.name, build_id=inputs.build_id,
        build_date=datetime.now(UTC).replace(microsecond=0).isoformat(), components=plan.components,
        content_digest=plan.content_digest(inputs.base_image.content_checksum).value, variant=plan.variant)
    wanted = properties.final_properties(recipe=plan.image.properties, user=settings.properties,
                                         provenance_props=provenance)
    remove = properties.to_remove(image.properties, keep=wanted, base_properties=inputs.base_image.properties)
    visibility = "shared" if settings.share_with and settings.visibility == "private" else settings.visibility
    machine.patch = cloud.finish_image(machine.image_id, properties=wanted, remove=remove, tags=list(settings.tags),
                                       visibility=visibility, min_disk=plan.image.min_disk_gb,
                                       min_ram=plan.image.min_ram_mb)
    cloud.share_image(machine.image_id, settings.share_with)


# ---- 7. reporting -------------------------------------------------------------------------------------------

def report_failure(ctx: BuildContext, cloud: Cloud, machine: Machine, exc: BaseException) -> None:
    """Before any undo runs (the server still exists): failing step, console tail, log path."""
    reporter = ctx.reporter
    what = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"failed: {exc}"
    reporter.line(f"step {ctx.current_step or '?'!r} {what}")
    if machine.server is not None and not isinstance(exc, KeyboardInterrupt):
        try:
            tail = cloud.console_log(machine.server.id, CONSOLE_TAIL_LINES)
        except Exception as err:  # noqa: BLE001 - a report must not hide the real error
            tail = f"(console log unavailable: {err})"
        if tail.strip():
            reporter.line("console log (last lines):")
            for line in tail.rstrip().splitlines()[-CONSOLE_TAIL_LINES:]:
                reporter.line("  | " + line)
    if machine.handed_over and machine.image_id:
        reporter.line(f"image {machine.image_id} was already finished: it is kept")
    if ctx.log_path:
        reporter.line(f"full log: {ctx.log_path}")


def report_kept(ctx: BuildContext, ledger: Ledger) -> None:
    entries = [e for e in ledger.entries() if not e.ref.startswith("pending:")] if ledger.path.exists() else []
    if ctx.keep_on_failure:
        ctx.reporter.line("kept for debugging (--keep-on-failure):")
        for entry in entries:
            ctx.reporter.line(f"  {entry.kind} {entry.ref} {entry.info.get('name', '')}".rstrip())
        ctx.reporter.line(f"remove them with: snapbuild cleanup --build-id {ctx.build_id}")
    elif ctx.kept:
        for leftover in ctx.kept:
            ctx.reporter.line(f"NOT removed: {leftover}")
        ctx.reporter.line(f"retry the removal with: snapbuild cleanup --build-id {ctx.build_id}")


def _write_manifest(settings: SnapshotSettings, manifest: dict[str, Any]) -> None:
    if settings.manifest_path is None:
        return
    import json

    settings.manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")




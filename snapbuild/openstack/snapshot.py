"""The snapshot build on OpenStack: boot a builder from a base image, provision, seal, snapshot, finish.

    preflight ─► boot builder ─► connect ─► provision ─► seal ─► power off ─► capture ─► finish image ─► manifest

The frame (ledger, undo, --keep-on-failure, the monitor) is snapbuild.run; the connect … power off tail is the
one the local builder runs too (snapbuild.run.tail). No keypair is made: the builder's public key and host key
travel in the user-data, so nothing in Nova needs cleaning up for them (keypairs carry no tags or metadata).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from snapbuild import paths
from snapbuild.console.report import guest_lines
from snapbuild.errors import BuildError, UserError
from snapbuild.ledger import installation_id
from snapbuild.openstack import faults, marks, properties
from snapbuild.openstack.cloud import Cloud, close_matches
from snapbuild.openstack.model import Address, Flavor, FloatingIP, Image, Network, Server, ServerSpec
from snapbuild.openstack.settings import SnapshotResult, SnapshotSettings
from snapbuild.run.context import Asker, BuildContext, Undo, new_context, running_build
from snapbuild.run.manifest import build_manifest, write_manifest
from snapbuild.run.monitor import Monitor
from snapbuild.run.progress import progress
from snapbuild.run.tail import BuilderAccess, Timeouts, drive_booted

if TYPE_CHECKING:
    from snapbuild.guest.ssh import Bastion, SSHGuest
    from snapbuild.plan import Plan
    from snapbuild.provision import ProvisionResult

log = logging.getLogger(__name__)

CONSOLE_TAIL_LINES = 30
DELETE_TIMEOUT = 300.0
SNAPSHOT_SETTLE_S = 15.0   # how long an interrupted createImage may still make its image (Nova API under load)


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
    access: BuilderAccess
    user_data: str
    console_nonce: str | None          # --transport console: the runner's protocol nonce
    image_name: str
    marks: marks.Marks


@dataclass
class Machine:
    """What exists right now (filled in as the build goes)."""

    server: Server | None = None
    server_undo: Undo | None = None
    floating_ip: FloatingIP | None = None
    volume_id: str | None = None
    image_id: str | None = None
    image_undo: Undo | None = None
    provisioned: ProvisionResult | None = None
    patch: list[dict[str, Any]] = field(default_factory=list)


def build_snapshot(settings: SnapshotSettings, plan: Plan, monitor: Monitor, *,
                   cloud: Cloud | None = None, ask: Asker | None = None) -> SnapshotResult:
    started = time.monotonic()
    where = f" --os-cloud {settings.cloud}" if settings.cloud else ""
    ctx = new_context(builder="openstack-snapshot", recipe=plan.recipe_name, monitor=monitor,
                      on_error=settings.on_error, ask=ask, log_path=settings.log_path,
                      cleanup_command=f"snapbuild{where} cleanup --build-id {{build_id}}")
    machine = Machine()
    with running_build(ctx, variant=plan.variant):
        with ctx.step("preflight"):
            cloud = cloud or Cloud.connect(settings.cloud, settings.region, auth_args=settings.auth_args)
            inputs = preflight(cloud, settings, plan, build_id=ctx.build_id)
            ctx.monitor.line(f"flavor {inputs.flavor.name}, base image {inputs.base_image.name} "
                             f"({inputs.base_image.id})")
        ctx.on_failure.append(lambda exc: report_console(ctx, cloud, machine, exc))
        with ctx.step("boot builder"):
            launch_builder(ctx, cloud, settings, inputs, machine)
        if settings.transport == "console":
            machine.provisioned = follow_runner(ctx, cloud, settings, inputs, machine)
        elif settings.no_provision:
            with ctx.step("power off (no provisioning)"):
                assert machine.server is not None
                cloud.stop(machine.server.id)
                cloud.wait_shutoff(machine.server.id, settings.timeout_boot)
        else:
            server = CloudServer(cloud, settings, inputs, machine)
            machine.provisioned = drive_booted(ctx, plan, server, inputs.access, timeouts=Timeouts(
                cloud_init_s=settings.timeout_ssh, step_s=settings.timeout_provision))
        with ctx.step("capture"):
            capture(ctx, cloud, settings, inputs, machine)
        with ctx.step("finish image"):
            finish(cloud, settings, plan, inputs, machine)
            image = cloud.get_image(str(machine.image_id))
            # The image is the result now: it leaves the ledger and its undo becomes a no-op.
            assert machine.image_undo is not None
            machine.image_undo.release()
        with ctx.step("manifest"):
            manifest, manifest_path = write_snapshot_manifest(ctx, settings, plan, inputs, machine, image)
        ctx.outcome.update(image_id=image.id, image_name=image.name, manifest=str(manifest_path))
        ctx.monitor.line(f"image {image.id} ({image.name})")
    return SnapshotResult(image_id=image.id, image_name=image.name, build_id=ctx.build_id,
                          properties=dict(image.properties), seconds=time.monotonic() - started, manifest=manifest,
                          manifest_path=manifest_path)


def write_snapshot_manifest(ctx: BuildContext, settings: SnapshotSettings, plan: Plan, inputs: Inputs,
                            machine: Machine, image: Image) -> tuple[dict[str, Any], Path]:
    manifest = build_manifest(
        ctx, builder="openstack-snapshot", plan=plan, base_checksum=inputs.base_image.content_checksum,
        base={"id": inputs.base_image.id, "name": inputs.base_image.name, "checksum": inputs.base_image.checksum},
        output={"image_id": image.id, "image_name": image.name, "size": image.size, "checksum": image.checksum,
                "visibility": image.visibility, "properties": dict(image.properties), "tags": list(image.tags),
                "min_disk": image.min_disk, "min_ram": image.min_ram},
        provisioned=machine.provisioned,
        # On the console transport "clean" is the runner's verdict: the same seal check, run in the guest.
        seal={"in_guest": "not run (no provisioning)" if settings.no_provision else "clean",
              "offline": "not run (the image stays in Glance; `snapbuild verify` boots it)"},
        details={"cloud": settings.cloud, "region": settings.region, "flavor": inputs.flavor.__dict__,
                 "volume_size_gb": settings.volume_size_gb, "no_provision": settings.no_provision,
                 "transport": settings.transport,
                 "property_patch": [dict(op) for op in machine.patch]})
    path = settings.manifest_path or default_manifest_path(ctx.build_id, image.name)
    write_manifest(path, manifest)
    ctx.monitor.line(f"manifest {path}")
    return manifest, path


def default_manifest_path(build_id: str, image_name: str) -> Path:
    """A cloud build has no output file to sit beside: its manifest goes to the state directory."""
    safe = re.sub(r"[^\w.-]+", "-", image_name).strip("-") or "image"
    return paths.state_dir() / "manifests" / f"{safe}-{build_id}.manifest.json"


# ---- 1. preflight: everything checked before anything exists --------------------------------------------

class PreflightFailed(UserError):
    """Every problem preflight found, each with its own hint; as one error, the problems joined (exit 2)."""

    def __init__(self, problems: Sequence[UserError]) -> None:
        self.problems = tuple(problems)
        if len(self.problems) == 1:
            super().__init__(self.problems[0].message, hint=self.problems[0].hint)
        else:
            super().__init__("; ".join(p.message for p in self.problems),
                             hint=" | ".join(p.hint for p in self.problems if p.hint) or None)


def preflight(cloud: Cloud, settings: SnapshotSettings, plan: Plan, *, build_id: str) -> Inputs:
    """Resolve every input and check quotas, nothing created; PreflightFailed lists every problem, not the first."""
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
    if settings.flavor:
        flavor = check(cloud.resolve_flavor, settings.flavor)
    else:   # `build` requires --flavor; `validate` lists its absence with the rest
        flavor = None
        problems.append(UserError("no flavor for the builder server",
                                  hint="pass --flavor NAME|ID (or set build.flavor in snapbuild.yaml); "
                                       + close_matches("", cloud.flavor_names())))
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
    if settings.transport == "console":
        problems += console_conflicts(settings)
    # The temporary group (made when neither groups nor a port are given) opens SSH to --ssh-cidr.
    temporary_group = needs_ssh_group(settings)
    if temporary_group:
        check(check_cidr, settings.ssh_cidr)
    if settings.ssh_ip_version not in (None, 4, 6):
        problems.append(UserError(f"--ssh-ip-version must be 4 or 6, not {settings.ssh_ip_version}"))
    if settings.visibility not in ("private", "shared", "community", "public"):
        problems.append(UserError(f"unknown visibility {settings.visibility!r}",
                                  hint="private, shared, community or public"))
    if flavor and base:
        check(check_root_disk, flavor, base, plan, settings.volume_size_gb,
              min_disk_gb=image_minimums(settings, plan)[0])
    if flavor:
        # Counted from the options, not from what resolved: a misspelt --floating-network still means one
        # floating IP once it is fixed. Read even beside other problems, so validate lists a full quota too.
        check(cloud.check_fits, flavor, floating_ips=1 if settings.floating_network else 0,
              security_groups=1 if temporary_group else 0)

    access = BuilderAccess.generate(build_id, user=settings.ssh_user)
    nonce = None
    if settings.transport == "console":
        nonce, user_data = check(console_user_data, plan, settings, build_id=build_id) or (None, None)
    else:
        user_data = check(lambda: encode_for_nova(render_builder_userdata(
            plan, builder_user=access.user, builder_public_key=access.client_key.public_openssh,
            host_key=access.host_key, build_id=build_id)))
    if problems:
        raise PreflightFailed(problems)
    assert flavor is not None and base is not None and user_data is not None
    recipe_marks = marks.Marks.new(build_id=build_id, installation_id=installation_id(), recipe=plan.recipe_name,
                                   host=socket.gethostname())
    image_name = settings.image_name or f"{plan.image.name}-{datetime.now(UTC):%Y%m%d-%H%M}"
    return Inputs(build_id=build_id, flavor=flavor, base_image=base, network_ids=tuple(n.id for n in networks),
                  port_id=port_id, security_group_ids=tuple(g.id for g in groups), floating_network=floating,
                  ssh_network=ssh_network, access=access, user_data=user_data, console_nonce=nonce,
                  image_name=image_name, marks=recipe_marks)


def needs_ssh_group(settings: SnapshotSettings) -> bool:
    """A temporary group opening SSH to --ssh-cidr: for SSH builds given neither groups nor a port."""
    return settings.transport == "ssh" and not settings.security_groups and not settings.port


# What only an SSH build uses, with the value that means "not asked for".
SSH_ONLY: tuple[tuple[str, str, Any], ...] = (
    ("floating_network", "--floating-network", None), ("ssh_interface", "--ssh-interface", None),
    ("ssh_ip_version", "--ssh-ip-version", None), ("ssh_bastion", "--ssh-bastion", None),
    ("ssh_bastion_key", "--ssh-bastion-key", None), ("accept_any_host_key", "--insecure-accept-any-host-key", False),
    ("ssh_port", "--ssh-port", 22), ("ssh_cidr", "--ssh-cidr", "0.0.0.0/0"), ("ssh_user", "--ssh-user", "snapbuild"),
    ("no_provision", "--no-provision", False),
)


def console_conflicts(settings: SnapshotSettings) -> list[UserError]:
    """Options a console build cannot honour: each one refused by name rather than ignored."""
    given = [option for attr, option, unset in SSH_ONLY if getattr(settings, attr) != unset]
    if not given:
        return []
    return [UserError(f"--transport console does not use SSH, so {', '.join(given)} cannot apply",
                      hint="drop " + ", ".join(given) + " (a console build needs no route to the builder), or "
                           "build with --transport ssh")]


def console_user_data(plan: Plan, settings: SnapshotSettings, *, build_id: str) -> tuple[str, str]:
    """The runner's nonce and Nova user-data (credentials refused, the 64 KiB limit checked: UserErrors)."""
    from snapbuild.console.payload import console_user_data as user_data

    made = user_data(plan, build_id=build_id, step_timeout=settings.timeout_provision,
                     cloud_init_timeout=settings.timeout_ssh)
    return made.nonce, made.nova


def check_cidr(cidr: str) -> None:
    try:
        ipaddress.ip_network(cidr, strict=False)
    except ValueError as exc:
        raise UserError(f"--ssh-cidr {cidr!r} is not a network: {exc}",
                        hint="give an address range such as 203.0.113.0/24 (0.0.0.0/0: anyone)") from None


def image_minimums(settings: SnapshotSettings, plan: Plan) -> tuple[int, int]:
    """The image's (min_disk, min_ram): --min-disk/--min-ram where given, else the recipe's."""
    return (plan.image.min_disk_gb if settings.min_disk_gb is None else settings.min_disk_gb,
            plan.image.min_ram_mb if settings.min_ram_mb is None else settings.min_ram_mb)


def check_root_disk(flavor: Flavor, base: Image, plan: Plan, volume_size_gb: int | None, *,
                    min_disk_gb: int | None = None) -> None:
    """The builder's root disk must hold what the recipe installs and what the image will promise (min_disk).

    The image inherits the builder's disk size, and is published with its min_disk (the recipe's, or --min-disk):
    a smaller disk either fills up mid-build or yields an image whose min_disk no server of that flavor can satisfy.
    """
    need, reason = root_disk_need(base, plan, min_disk_gb=min_disk_gb)
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


def root_disk_need(base: Image, plan: Plan, *, min_disk_gb: int | None = None) -> tuple[int, str]:
    """The GB the builder's root disk needs, and what asks for them (`min_disk_gb`: --min-disk, if given)."""
    promised = plan.image.min_disk_gb if min_disk_gb is None else min_disk_gb
    where = "--min-disk" if min_disk_gb is not None and min_disk_gb != plan.image.min_disk_gb \
        else f"recipe {plan.recipe_name!r} min_disk_gb"
    needs = {f"recipe {plan.recipe_name!r} disk_size_gb": plan.image.disk_size_gb,
             where: promised,
             f"image {base.name} min_disk": base.min_disk}
    reason, need = max(needs.items(), key=lambda item: item[1])
    return need, reason


# ---- 2. boot: each resource in the ledger first, its undo the moment it exists ---------------------------

def launch_builder(ctx: BuildContext, cloud: Cloud, settings: SnapshotSettings, inputs: Inputs,
                   machine: Machine) -> None:
    base_name = f"snapbuild-{inputs.marks.recipe}-{inputs.build_id}"
    group_ids = inputs.security_group_ids
    if needs_ssh_group(settings):
        name = f"{base_name}-ssh"
        group, _ = ctx.track(
            "security_group", name,
            lambda: cloud.create_security_group(name, ssh_cidr=settings.ssh_cidr, tags=inputs.marks.tags(),
                                                description=f"snapbuild build {inputs.build_id}: SSH to builder"),
            lambda: cloud.security_groups_named(name), cloud.delete_security_group)
        ctx.monitor.line(f"security group {group.name} (SSH from {settings.ssh_cidr})")
        group_ids = (group.id,)

    boot_volume = None
    if settings.volume_size_gb:
        vol_name = f"{base_name}-root"
        volume, _ = ctx.track(
            "volume", vol_name,
            lambda: cloud.create_volume(name=vol_name, size_gb=int(settings.volume_size_gb or 0),
                                        image_id=inputs.base_image.id, metadata=inputs.marks.metadata()),
            lambda: cloud.volumes_named(vol_name), cloud.delete_volume)
        machine.volume_id = boot_volume = volume.id
        cloud.wait_volume_available(volume.id, settings.timeout_boot)
        ctx.monitor.line(f"volume {volume.id} ({settings.volume_size_gb} GB from the base image)")

    spec = ServerSpec(name=base_name, flavor_id=inputs.flavor.id,
                      image_id=None if boot_volume else inputs.base_image.id,
                      network_ids=inputs.network_ids, port_ids=(inputs.port_id,) if inputs.port_id else (),
                      security_group_ids=group_ids, user_data=inputs.user_data, tags=(marks.TAG,),
                      metadata=inputs.marks.metadata(), availability_zone=settings.availability_zone,
                      config_drive=settings.config_drive, boot_volume_id=boot_volume)
    server, machine.server_undo = ctx.track("server", base_name, lambda: cloud.boot(spec),
                                            lambda: cloud.servers_named(base_name),
                                            lambda rid: cloud.delete_server(rid, DELETE_TIMEOUT))
    machine.server = server
    ctx.monitor.line(f"server {server.name} ({server.id})")
    machine.server = cloud.wait_active(server.id, settings.timeout_boot)

    if inputs.floating_network:
        description = f"snapbuild build {inputs.build_id}"
        port_id = inputs.port_id or cloud.server_port(server.id, inputs.ssh_network.id if inputs.ssh_network else None)
        floating_network = inputs.floating_network
        ip, _ = ctx.track(
            "floating_ip", description,
            lambda: cloud.create_floating_ip(floating_network_id=floating_network.id, port_id=port_id,
                                             tags=inputs.marks.tags(), description=description),
            lambda: cloud.floating_ips_described(description), cloud.delete_floating_ip)
        machine.floating_ip = ip
        ctx.monitor.line(f"floating IP {ip.address}")


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


class CloudServer:
    """The builder server as the booted-guest tail sees it: reached over SSH, stopped through Nova."""

    def __init__(self, cloud: Cloud, settings: SnapshotSettings, inputs: Inputs, machine: Machine) -> None:
        assert machine.server is not None
        self.cloud = cloud
        self.settings = settings
        self.inputs = inputs
        self.server = machine.server
        self.name = machine.server.name
        self.address = ssh_address(machine.server, machine.floating_ip,
                                   network=inputs.ssh_network.name if inputs.ssh_network else None,
                                   ip_version=settings.ssh_ip_version)

    def console(self) -> str:
        return self.cloud.console_log(self.server.id, 200)

    def connect(self, access: BuilderAccess) -> SSHGuest:
        from snapbuild.guest.ssh import HostKeyMismatch, SSHGuest
        from snapbuild.sshkeys import parse_console_host_keys

        s = self.settings
        log.info("SSH to %s@%s:%s", access.user, self.address, s.ssh_port)
        deadline = time.monotonic() + s.timeout_ssh
        bastion = parse_bastion(s.ssh_bastion, s.ssh_bastion_key, accept_any_host_key=s.accept_any_host_key)

        def attempt(host_keys: list[str]) -> SSHGuest:
            return SSHGuest.connect(host=self.address, port=s.ssh_port, user=access.user, key=access.client_key,
                                    host_keys=host_keys, deadline=deadline, bastion=bastion,
                                    accept_any_host_key=s.accept_any_host_key, console=self.console,
                                    name=self.name)

        try:
            return attempt([access.host_key.public_openssh])
        except HostKeyMismatch:
            # cloud-init did not apply our host key: the keys it printed on the console are the fallback pin
            printed = list(parse_console_host_keys(self.console()))
            if not printed:
                raise
            log.warning("%s: host key differs from the one handed to cloud-init; pinning the console's keys",
                        self.name)
            return attempt(printed)

    def after_connect(self, guest: SSHGuest) -> None:
        return None

    def wait_powered_off(self) -> None:
        # Nova learns of a guest's own poweroff only from a lifecycle event (libvirt delays it 15 s) or its
        # periodic power-state sync (every 10 min by default): ask Nova to stop the server now, as Packer does.
        # The guest is already going down, so the ACPI request changes nothing; a 409 means Nova got there first.
        self.cloud.stop(self.server.id)
        self.cloud.wait_shutoff(self.server.id, min(self.settings.timeout_boot, 300.0))

    def ssh_command(self, key_file: Path, access: BuilderAccess) -> str:
        port = f" -p {self.settings.ssh_port}" if self.settings.ssh_port != 22 else ""
        jump = f" -J {self.settings.ssh_bastion}" if self.settings.ssh_bastion else ""
        return f"ssh -i {key_file}{port}{jump} {access.user}@{self.address}"


# ---- 5b. the console transport: no SSH, the runner reports on the console ------------------------------------

def follow_runner(ctx: BuildContext, cloud: Cloud, settings: SnapshotSettings, inputs: Inputs,
                  machine: Machine) -> ProvisionResult:
    """The runner cloud-init started applies the plan, seals, checks and powers off; its console lines become
    this build's steps. Capture follows only a sealed-and-checked verdict."""
    from snapbuild.console.follow import FollowLimits, follow_console
    from snapbuild.console.reader import ConsoleReader, ConsoleWindow

    assert machine.server is not None and inputs.console_nonce is not None
    server_id = machine.server.id
    window = ConsoleWindow(ConsoleReader(inputs.console_nonce), lambda lines: cloud.console_log(server_id, lines))
    with ctx.step("console runner"):
        verdict = follow_console(window, ctx.monitor, is_off=lambda: cloud.get_server(server_id).status == "SHUTOFF",
                                 limits=FollowLimits(timeout_s=settings.timeout_ssh + settings.timeout_provision))
        verdict.raise_unless_capturable()
    with ctx.step("power off"):
        # The runner powers the guest off after its verdict; Nova hears of it late (see CloudServer).
        cloud.stop(server_id)
        cloud.wait_shutoff(server_id, min(settings.timeout_boot, 300.0))
    return verdict.provisioned()


# ---- 6. capture and finish ------------------------------------------------------------------------------

def capture(ctx: BuildContext, cloud: Cloud, settings: SnapshotSettings, inputs: Inputs, machine: Machine) -> None:
    assert machine.server is not None
    name = inputs.image_name
    if machine.volume_id:
        # A Nova snapshot of a volume-backed server is a 0-byte pointer to a Cinder snapshot: upload instead.
        assert machine.server_undo is not None
        machine.server_undo.now()
        cloud.wait_volume_available(machine.volume_id, settings.timeout_boot)
        volume_id = machine.volume_id
        # Cinder's API makes the Glance image record while it handles the upload: the same window as below.
        image_id, machine.image_undo = ctx.track(
            "image", name,
            lambda: cloud.upload_volume(volume_id, image_name=name, disk_format=settings.volume_disk_format),
            lambda: cloud.images_named(name), cloud.delete_image,
            settle_s=SNAPSHOT_SETTLE_S, unsettled=faults.may_still_be_made)
    else:
        server_id = machine.server.id
        # Nova makes the Glance image while it handles createImage: interrupted in flight, the request can still
        # make it after a first look (a CI run leaked one so), hence the settle window.
        image_id, machine.image_undo = ctx.track("image", name,
                                                 lambda: cloud.snapshot(server_id, name, inputs.marks.metadata()),
                                                 lambda: cloud.images_named(name), cloud.delete_image,
                                                 description=f"partial image of {name}",
                                                 settle_s=SNAPSHOT_SETTLE_S, unsettled=faults.may_still_be_made)
    machine.image_id = image_id
    ctx.monitor.line(f"image {image_id}")
    cloud.tag_image(image_id, [marks.TAG])
    # Nova and Glance give no byte count while the snapshot uploads: the status (queued, saving) and the time.
    with progress(ctx.monitor, "snapshot upload", unit="") as wait:
        image = cloud.wait_image_active(image_id, settings.timeout_snapshot, on_poll=lambda i: wait.status(i.status))
    ctx.monitor.line(f"active: {image.size} bytes")
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
    min_disk, min_ram = image_minimums(settings, plan)
    machine.patch = cloud.finish_image(machine.image_id, properties=wanted, remove=remove, tags=list(settings.tags),
                                       visibility=visibility, min_disk=min_disk, min_ram=min_ram,
                                       protected=settings.protected, hidden=settings.hidden)
    cloud.share_image(machine.image_id, settings.share_with)


# ---- 7. reporting -------------------------------------------------------------------------------------------

def report_console(ctx: BuildContext, cloud: Cloud, machine: Machine, exc: BaseException) -> None:
    """Before any undo runs (the server still exists): the console's last lines."""
    if machine.server is None or isinstance(exc, KeyboardInterrupt):
        return
    if machine.server_undo is not None and machine.server_undo.done:
        return
    try:
        tail = cloud.console_log(machine.server.id, CONSOLE_TAIL_LINES)
    except Exception as err:  # noqa: BLE001 - a report must not hide the real error
        tail = f"(console log unavailable: {err})"
    lines = guest_lines(tail, CONSOLE_TAIL_LINES)
    if lines:
        ctx.monitor.line("console log (last lines):")
        for line in lines:
            ctx.monitor.line("  | " + line)

"""What every builder does once it has a Guest: provision, enforce the sealing policy; for a booted machine also
connect first and power off last. One copy for the cloud server, the local VM and (without the ends) the chroot.

    booted:  connect ─► wait for cloud-init ─► provision ─► seal + check ─► power off
    chroot:                                    provision ─► seal + check
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from snapbuild import paths
from snapbuild.errors import BuildError, CommandFailed
from snapbuild.guest.base import Guest
from snapbuild.run.context import BuildContext

if TYPE_CHECKING:
    from snapbuild.guest.ssh import SSHGuest
    from snapbuild.plan import Plan
    from snapbuild.provision import ProvisionResult
    from snapbuild.sshkeys import KeyPair

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class BuilderAccess:
    """How the build logs into its builder: a temporary user whose key and host key exist for this build only
    (they travel in the user-data; the sealing policy removes both)."""

    user: str
    client_key: KeyPair
    host_key: KeyPair

    @classmethod
    def generate(cls, build_id: str, *, user: str) -> BuilderAccess:
        from snapbuild.sshkeys import KeyPair

        return cls(user=user, client_key=KeyPair.generate(comment=f"snapbuild-{build_id}"),
                   host_key=KeyPair.generate(comment=f"snapbuild-host-{build_id}"))


class BootedMachine(Protocol):
    """A machine that boots from the build's disk: a cloud server or a local QEMU VM."""

    name: str

    def connect(self, access: BuilderAccess) -> SSHGuest:
        """Reach the machine over SSH as the builder user (waiting for it to boot)."""
        ...

    def after_connect(self, guest: SSHGuest) -> None:
        """Checks and measurements right after the first login (the distro of the running guest)."""
        ...

    def wait_powered_off(self) -> None:
        """The guest has started to power itself off: wait until the machine is off (or make it so)."""
        ...

    def ssh_command(self, key_file: Path, access: BuilderAccess) -> str:
        """The command an operator types to log into a kept builder."""
        ...


@dataclass(frozen=True, kw_only=True)
class Timeouts:
    cloud_init_s: float = 900.0
    step_s: float | None = None        # one provisioning step; None: each action's own


def drive_booted(ctx: BuildContext, plan: Plan, machine: BootedMachine, access: BuilderAccess, *,
                 timeouts: Timeouts) -> ProvisionResult:
    """The booted-guest tail, as steps of the build."""
    from snapbuild.guest.cloudinit_wait import wait_for_cloud_init

    ctx.on_keep.append(lambda: keep_access(ctx, machine, access))

    def connect() -> SSHGuest:
        guest = machine.connect(access)
        ctx.add_undo(f"close SSH to {machine.name}", guest.close)
        machine.after_connect(guest)
        wait_for_cloud_init(guest, timeout=timeouts.cloud_init_s)
        return guest

    def stop(guest: SSHGuest) -> None:
        power_off(guest, access.user)
        machine.wait_powered_off()

    guest = ctx.attempt("connect", connect)
    result = apply_plan(ctx, plan, guest, access=access, step_timeout=timeouts.step_s)
    ctx.attempt("power off", stop, guest)
    return result


def apply_plan(ctx: BuildContext, plan: Plan, guest: Guest, *, access: BuilderAccess | None = None,
               step_timeout: float | None = None,
               before_seal: Callable[[], None] | None = None) -> ProvisionResult:
    """Provision, then the one sealing policy (seal, check, fail): identical on every path.

    `before_seal` gives the image back what the build lent it (a chroot's resolv.conf and policy-rc.d), so the
    check sees the image as it will ship."""
    from snapbuild.provision import provision
    from snapbuild.sealing.policy import enforce

    def seal() -> None:
        if before_seal is not None:
            before_seal()
        enforce(guest, monitor=ctx.monitor, resolv_symlink=plan.distro.resolv_conf_symlink,
                builder_user=access.user if access else "snapbuild",
                builder_keys=(access.client_key.public_openssh,) if access else ())

    # Retriable (--on-error ask): a provisioning run is idempotent (packages, files, pulls), and so is the seal.
    result = ctx.attempt("provision", provision, plan, guest, ctx.monitor, step_timeout=step_timeout)
    ctx.attempt("seal", seal)
    return result


def power_off(guest: SSHGuest, builder_user: str) -> None:
    """The seal's last script removes the builder user and powers off; the connection dropping is expected."""
    import paramiko

    from snapbuild.sealing.policy import power_off_sealed

    try:
        power_off_sealed(guest, builder_user=builder_user)
    except CommandFailed as exc:
        if not exc.timed_out:
            raise           # the script itself failed (e.g. the builder user could not be removed)
        log.info("power off: the final script timed out as the guest went down (%s)", exc)
    except BuildError as exc:
        if "connection was lost" not in exc.message:
            raise
        log.info("power off: connection ended as expected (%s)", exc.message)
    except (OSError, EOFError, paramiko.SSHException) as exc:
        log.info("power off: connection ended as expected (%s)", exc)
    finally:
        guest.close()


def keep_access(ctx: BuildContext, machine: BootedMachine, access: BuilderAccess) -> list[str]:
    """A kept builder must be reachable: its key was only in memory, so write it (0600) and print the command."""
    key_file = paths.state_dir() / "builds" / f"{ctx.build_id}.key"
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.unlink(missing_ok=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(access.client_key.private_openssh)
    # Asked at a failure (--on-error ask) the build may still clean up: the key goes with the builder then.
    ctx.add_undo(f"remove {key_file}", key_file.unlink, True)
    return [f"builder key: {key_file} (0600; delete it with the builder)",
            f"log in with: {machine.ssh_command(key_file, access)}"]


"""The one generalisation (sealing) policy, applied through any Guest, and its in-guest check.

The checks live in snapbuild.sealing.checker, which runs unchanged offline (`snapbuild inspect`) and inside
the guest (its source is piped to the guest's python3, which every cloud-init image has).
"""

from __future__ import annotations

import inspect as pyinspect
import json
import logging
import shlex
from collections.abc import Callable
from dataclasses import dataclass

from snapbuild.errors import BuildError
from snapbuild.guest.base import Guest
from snapbuild.run.monitor import Monitor
from snapbuild.sealing import checker

log = logging.getLogger(__name__)

POLICY_STEPS = (
    "cloud-init clean --logs --seed (plus --machine-id and --configs all where this cloud-init has them)",
    "machine-id emptied; /var/lib/dbus/machine-id removed unless it is a symlink",
    "SSH host keys removed",
    "authorized_keys and shell history removed for root and every user",
    "resolv.conf back to the systemd-resolved stub symlink where resolved is installed (Ubuntu, debian-13)",
    "policy-rc.d, apt proxy and temporary apt configuration removed",
    "apt lists and package caches cleaned",
    "/tmp and /var/tmp emptied",
    "logs truncated, rotated logs and the journal removed, random seed removed",
    "free space trimmed (fstrim)",
    "VM guests, last: builder user, its sudoers entry and home removed, loggers stopped, power off",
)

_LOG_CLEAN = (
    "find /var/log -type f \\( -name '*.gz' -o -name '*.xz' -o -name '*.old' -o -name '*.[0-9]' \\) -delete; "
    "find /var/log/journal -mindepth 1 -delete 2>/dev/null; "
    "find /var/log -type f -exec truncate -s 0 {} +; "
    "rm -f /var/lib/systemd/random-seed /var/lib/urandom/random-seed"
)


@dataclass(frozen=True, kw_only=True)
class Violation:
    code: str
    path: str
    detail: str

    def __str__(self) -> str:
        return f"{self.code}: {self.path}: {self.detail}"


def _sh(guest: Guest, script: str, *, timeout: float = 300) -> None:
    guest.run(["sh", "-c", script], timeout=timeout)


# Which flags this cloud-init's `clean` has, read from its source: `cloud-init clean --help` starts Python and
# imports cloud-init (6 s under TCG). Prints "cloud-init" first when it is installed; --help where the source
# is not where distributions put it.
_CLEAN_PROBE = (
    "command -v cloud-init >/dev/null || exit 0; echo cloud-init; "
    "for f in /usr/lib/python3/dist-packages/cloudinit/cmd/clean.py "
    "/usr/lib/python3*/site-packages/cloudinit/cmd/clean.py; do "
    "if [ -f \"$f\" ]; then grep -o -e --machine-id -e --configs \"$f\" | sort -u; exit 0; fi; done; "
    "cloud-init clean --help"
)


def clean_flags(help_text: str) -> list[str]:
    """cloud-init clean's flags, probing for the ones older releases lack (Debian 12 has 22.4)."""
    flags = ["--logs", "--seed"]
    if "--machine-id" in help_text:
        flags.append("--machine-id")
    if "--configs" in help_text:
        flags += ["--configs", "all"]
    return flags


def seal_script(*, resolv_symlink: str | None) -> str:
    """Everything after `cloud-init clean` but the trim, as one script: each step a block, the next runs only
    if the previous succeeded (as separate commands would). One round trip instead of five: each costs a
    second or two of sudo and SSH under TCG."""
    blocks = [
        "rm -f /etc/machine-id && : > /etc/machine-id && chmod 0444 /etc/machine-id",
        "if [ -e /var/lib/dbus/machine-id ] && [ ! -L /var/lib/dbus/machine-id ]; then "
        "rm -f /var/lib/dbus/machine-id; fi; rm -f /etc/ssh/ssh_host_*key*; "
        "for h in /root /home/*; do rm -f \"$h/.ssh/authorized_keys\" \"$h/.ssh/authorized_keys2\" "
        + " ".join(f"\"$h/{n}\"" for n in checker.HISTORY_NAMES) + "; done",
    ]
    if resolv_symlink:
        # Only where systemd-resolved is installed: on an image without it the link would dangle (no DNS at all).
        blocks.append(f"[ ! -e /usr/lib/systemd/systemd-resolved ] || "
                      f"[ \"$(readlink /etc/resolv.conf)\" = {shlex.quote(resolv_symlink)} ] || "
                      f"ln -sfn {shlex.quote(resolv_symlink)} /etc/resolv.conf")
    # 90cloud-init-aptproxy: cloud-init writes the builder user-data's build-time proxy there.
    blocks += [
        "rm -f /usr/sbin/policy-rc.d /etc/apt/apt.conf.d/*snapbuild* /etc/apt/apt.conf.d/90cloud-init-aptproxy; "
        "apt-get clean; rm -rf /var/lib/apt/lists/*; mkdir -p /var/lib/apt/lists/partial",
        "find /tmp /var/tmp -mindepth 1 -maxdepth 1 ! -name 'systemd-private-*' ! -name 'snapbuild-*' "
        "-exec rm -rf {} +; " + _LOG_CLEAN,
    ]
    return " && ".join(f"{{ {block}; }}" for block in blocks)


def seal(guest: Guest, *, monitor: Monitor | None = None, resolv_symlink: str | None = None) -> None:
    """Generalise the guest. On VM guests, `power_off_sealed` completes it (builder user, loggers)."""
    say = monitor.line if monitor else log.info
    probe = guest.run(["sh", "-c", _CLEAN_PROBE], check=False).stdout
    if probe.startswith("cloud-init"):
        flags = clean_flags(probe)
        say("cloud-init clean " + " ".join(flags))
        guest.run(["cloud-init", "clean", *flags], timeout=120)
    say("machine-id, host keys, authorized keys, history; temporary apt configuration, apt lists and caches; "
        "temporary files and logs")
    _sh(guest, seal_script(resolv_symlink=resolv_symlink if guest.kind == "vm" else None))
    if guest.kind == "vm":
        say("trim free space")
        guest.run(["fstrim", "-av"], check=False, timeout=600)


def check_sealed(guest: Guest, *, builder_user: str = "snapbuild", builder_keys: tuple[str, ...] = (),
                 live: bool | None = None, gone: tuple[str, ...] = ()) -> list[Violation]:
    """Run the policy checker inside the guest (python3 from the image) and return its violations."""
    live = guest.kind == "vm" if live is None else live
    if guest.host_root is not None:
        # A chroot's tree is right here: check it with this host's python3 (a minimal image may have none).
        return [Violation(**v) for v in checker.check_root(str(guest.host_root), builder_user=builder_user,
                                                             builder_keys=tuple(builder_keys), live=live, gone=gone)]
    args = json.dumps({"root": "/", "builder_user": builder_user, "builder_keys": list(builder_keys), "live": live,
                       "gone": list(gone)})
    source = pyinspect.getsource(checker).encode()
    done = guest.run(["python3", "-", args], stdin=source, timeout=120)
    return [Violation(**item) for item in json.loads(done.stdout.strip().splitlines()[-1])]


def enforce(guest: Guest, *, monitor: Monitor, resolv_symlink: str | None, builder_user: str,
            builder_keys: tuple[str, ...] = (), before_check: Callable[[], None] | None = None,
            gone: tuple[str, ...] = ()) -> None:
    """The sealing policy, the same on every path: seal, check inside the guest, fail on any violation.

    On a VM guest the builder user and its key are still needed for the last step (`power_off_sealed`), which
    removes them; the check knows them and leaves them for it. `before_check` removes what the build itself
    brought (the console runner removes itself and its plan), and the check verifies that `gone` is gone."""
    seal(guest, monitor=monitor, resolv_symlink=resolv_symlink)
    if before_check is not None:
        before_check()
    violations = check_sealed(guest, builder_user=builder_user, builder_keys=builder_keys, gone=gone)
    if violations:
        raise BuildError("the sealed guest still has:\n  " + "\n  ".join(str(v) for v in violations),
                         hint="a recipe step may write these after sealing; nothing was captured")


def power_off_script(builder_user: str, *, power_off: bool = True) -> str:
    """The last thing a VM guest runs: what the running system keeps writing, then the builder itself.
    Without `power_off` it stops before the power off (the console runner reports its verdict first)."""
    user = shlex.quote(builder_user)
    return "\n".join([
        "set -u",
        # Stop what writes at shutdown (random seed, utmp/wtmp records, syslog) and move the journal to /run.
        "systemctl stop systemd-random-seed.service systemd-update-utmp.service rsyslog.service syslog.socket "
        ">/dev/null 2>&1 || true",
        "journalctl --relinquish-var >/dev/null 2>&1 || true",
        _LOG_CLEAN,
        # What shutdown itself still writes (wtmp records, unit logs) goes to RAM, not into the image.
        "mount -t tmpfs -o size=16m,mode=0755 snapbuild-log /var/log",
        f"userdel --force --remove {user} >/dev/null 2>&1 || true",
        f"grep -rl -- {user} /etc/sudoers.d 2>/dev/null | xargs -r rm -f",
        f"rm -rf /home/{user}",
        ": > /etc/machine-id",
        f"if id {user} >/dev/null 2>&1; then echo 'builder user still present' >&2; exit 1; fi",
        "sync",
        *(["systemctl poweroff --no-block"] if power_off else []),
    ]) + "\n"


def power_off_sealed(guest: Guest, *, builder_user: str) -> None:
    """Remove the builder user and power off; the connection dropping afterwards is expected."""
    # On stdin rather than written first: one round trip less (a second or two under TCG); sh has read the whole
    # script by the time the last line powers off.
    guest.run(["sh", "-s"], stdin=power_off_script(builder_user).encode(), timeout=180)

"""provision and seal against a Guest that really runs commands: a ChrootGuest over a copy of the cached
tiers' base image's root file system (debian-13), mounted the way the chroot builder mounts it
(host.mounts.mount_chroot: /dev, /proc, /sys, /run, and a resolv.conf and policy-rc.d of the build's own, all put
back on the way out).

Every assertion reads the tree on disk (or what the guest's own python3 reports), never a recording of calls.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from snapbuild import actions
from snapbuild.errors import BuildError, CommandFailed
from snapbuild.guest.chroot import ChrootGuest
from snapbuild.host.mounts import mount_chroot, mount_points
from snapbuild.paths import data_dir
from snapbuild.plan import APT_PROXY_FILE, Plan, plan_from_names
from snapbuild.provision import provision
from snapbuild.recipes import Library
from snapbuild.run.monitor import EventStream, Monitors, TerminalMonitor
from snapbuild.run.scope import undo_scope
from snapbuild.sealing.policy import Violation, check_sealed, power_off_script, seal
from tests import imagecache
from tests.sealplants import PLANTS, code_of

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(os.geteuid() != 0, reason="loop devices, mounts and chroot need root"),
    pytest.mark.skipif(shutil.which("losetup") is None or shutil.which("sfdisk") is None
                       or shutil.which("qemu-img") is None, reason="needs losetup, sfdisk and qemu-img"),
]

RECIPE = "real-provision"
# What mount_chroot itself puts into the root for the length of the build (and puts back on the way out).
MOUNT_STACK_CODES = {"resolv.conf", "policy-rc.d"}
# Plants whose violation `seal` must remove on a chroot guest. The others are not seal's to fix: the builder
# user goes in power_off_script (VM guests), a password or a recipe's own apt proxy fails the build's check,
# and resolv.conf is the mount stack's (see test_enforce_passes_in_the_chroot_builders_mount_stack).
SEALED_PLANTS = ("machine-id", "dbus-machine-id", "ssh-host-key", "authorized-keys", "cloud-init", "policy-rc.d",
                 "tmp", "logs", "rotated-logs", "history", "random-seed", "apt-lists", "apt-cache")
LEFT_FOR_THE_CHECK = ("builder-user", "builder-sudoers", "password", "apt-config")


@dataclass(frozen=True, kw_only=True)
class RootPartition:
    raw: Path          # the whole base disk, raw (read-only: each test copies it)
    offset: int        # bytes
    size: int          # bytes


@pytest.fixture(scope="module")
def root_partition(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> RootPartition:
    """The base image as one raw file, and where its root partition is, once per module (≈ 3 s)."""
    # The last good image under its stable name: what this module needs (python3, cloud-init, a Debian 13 root)
    # does not change with the base-image builder's code, which would otherwise rebuild it first.
    stable = imagecache.stable_path(imagecache.TIER_DISTRO)
    base = stable if stable.is_file() else request.getfixturevalue("tier_base_image")
    raw = tmp_path_factory.mktemp("provision-seal") / "base.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(base), str(raw)], check=True, timeout=300)
    raw.chmod(0o444)
    layout = json.loads(subprocess.run(["sfdisk", "-J", str(raw)], check=True, capture_output=True, text=True,
                                       timeout=60).stdout)["partitiontable"]
    sector = int(layout.get("sectorsize", 512))
    root = next(p for p in layout["partitions"] if p.get("name") == "cloudimg-rootfs")
    return RootPartition(raw=raw, offset=int(root["start"]) * sector, size=int(root["size"]) * sector)


@pytest.fixture
def lent() -> list[Callable[[], None]]:
    """What the mount stack lent the image (its resolv.conf, policy-rc.d): the callables that give it back."""
    return []


@pytest.fixture
def guest(root_partition: RootPartition, tmp_path: Path, lent: list[Callable[[], None]]) -> Iterator[ChrootGuest]:
    """A private copy of the root, on a loop device, mounted and wrapped as the chroot builder does."""
    disk = tmp_path / "disk.raw"
    subprocess.run(["cp", "--sparse=always", str(root_partition.raw), str(disk)], check=True, timeout=300)
    disk.chmod(0o644)
    loop = subprocess.run(["losetup", "--find", "--show", "--offset", str(root_partition.offset), "--sizelimit",
                           str(root_partition.size), str(disk)],
                          check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    try:
        with undo_scope(None) as scope:
            yield ChrootGuest(mount_chroot(scope, loop, tmp_path / "root", build_files=lent), name="chroot-test")
    finally:
        subprocess.run(["losetup", "-d", loop], check=True, timeout=60)
    assert not [m for m in mount_points() if m.startswith(str(tmp_path))], "mounts left behind"
    assert subprocess.run(["losetup", "-j", str(disk)], capture_output=True, text=True).stdout == ""


@pytest.fixture
def monitor() -> Monitors:
    return Monitors(TerminalMonitor(io.StringIO()), EventStream(io.StringIO()))


def terminal(monitor: Monitors) -> str:
    term = monitor.monitors[0]
    assert isinstance(term, TerminalMonitor) and isinstance(term.stream, io.StringIO)
    return term.stream.getvalue()


def events(monitor: Monitors) -> list[dict[str, object]]:
    stream = monitor.monitors[1]
    assert isinstance(stream, EventStream) and isinstance(stream.stream, io.StringIO)
    return [json.loads(line) for line in stream.stream.getvalue().splitlines()]


def on_disk(guest: ChrootGuest, path: str) -> Path:
    return guest.root / path.lstrip("/")


def ids(guest: ChrootGuest, database: str, name: str) -> int:
    """The image's own id for `name` (passwd or group), not this host's."""
    for line in on_disk(guest, f"/etc/{database}").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2])
    raise AssertionError(f"no {name} in the image's {database}")


def codes(violations: list[Violation]) -> set[str]:
    return {v.code for v in violations}


def a_plan(tmp_path: Path, steps: str, **sets: str) -> Plan:
    """A Plan from a recipe file, through the same machinery as the CLI (plan_from_names, shipped profiles)."""
    folder = tmp_path / "recipes" / RECIPE
    folder.mkdir(parents=True)
    (folder / "recipe.yaml").write_text(
        "description: test recipe - action kinds that need no network, applied to a real chroot\n"
        "distros: [debian-13]\n"
        "variables:\n  greeting:\n    default: hello\n"
        "image:\n  name: \"{{ distro.pretty }} - provision test\"\n  category: test\n"
        "steps:\n" + steps)
    return plan_from_names(library=Library([tmp_path / "recipes", data_dir("recipes")]), recipe_name=RECIPE,
                           distro_name=None, profile_name="upstream", config_variables={}, set_values=sets)


# ---- provision ---------------------------------------------------------------------------------------------

STEPS = """\
  - file:
      path: /etc/snapbuild-test/greeting.conf
      content: "{{ greeting }}\\n"
      mode: "0640"
      owner: root:adm
  - command: [sh, -c, 'echo "/swap.img none swap sw 0 0" >> /etc/fstab && echo to-stdout && echo to-stderr >&2']
  - script:
      name: add-user
      content: |
        set -eu
        useradd --create-home --shell /bin/bash appuser
        install -d -o appuser -g appuser -m 0700 /home/appuser/data
        echo "$DEBIAN_FRONTEND" > /home/appuser/data/frontend
  - file:
      path: /home/appuser/data/owned
      content: "mine\\n"
      mode: "0600"
      owner: appuser
  - command: {argv: [touch, /etc/snapbuild-test/vm-only], only: vm}
  - swap_off: true
"""


def test_a_recipe_plan_changes_the_tree_as_each_action_says(guest: ChrootGuest, monitor: Monitors,
                                                             tmp_path: Path) -> None:
    plan = a_plan(tmp_path, STEPS, greeting="hello from a real chroot")
    kinds = [type(a).__name__ for a in plan.actions]
    assert {"WriteFile", "RemoveFiles", "RunCommand", "RunScript", "SwapOff"} <= set(kinds), kinds
    legacy = on_disk(guest, "/etc/apt/sources.list")
    legacy.write_text("deb http://deb.debian.org/debian trixie main\n")   # for RemoveFiles to remove

    result = provision(plan, guest, monitor)

    assert result.seconds > 0
    # The distro sources (WriteFile from the mirror profile) and the legacy file gone (RemoveFiles).
    sources = on_disk(guest, plan.distro.sources_file).read_text()
    assert "URIs: http://deb.debian.org/debian" in sources and "Suites: trixie trixie-updates" in sources
    assert not legacy.exists()
    # WriteFile: content rendered from the recipe variable, mode and owner as the recipe says (the image's adm).
    greeting = on_disk(guest, "/etc/snapbuild-test/greeting.conf")
    assert greeting.read_text() == "hello from a real chroot\n"
    st = greeting.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 0, ids(guest, "group", "adm"))
    # RunScript: the user exists in the image, the script ran under bash with the apt environment, and its
    # temporary file is gone.
    uid = ids(guest, "passwd", "appuser")
    data = on_disk(guest, "/home/appuser/data")
    assert (data.stat().st_uid, stat.S_IMODE(data.stat().st_mode)) == (uid, 0o700)
    assert (data / "frontend").read_text() == "noninteractive\n"
    assert not list(on_disk(guest, "/var/tmp").glob("snapbuild-script-*"))
    # WriteFile owned by a user the plan itself created: resolved through the image's passwd, primary group.
    owned = (data / "owned").stat()
    assert (stat.S_IMODE(owned.st_mode), owned.st_uid, owned.st_gid) == (0o600, uid, ids(guest, "group", "appuser"))
    # RunCommand only for VM guests: skipped here, and said so.
    assert not on_disk(guest, "/etc/snapbuild-test/vm-only").exists()
    assert "skipped: only on vm guests" in terminal(monitor)
    # SwapOff: the swap line the command added is commented out, the rest of fstab kept, swap.target masked.
    fstab = on_disk(guest, "/etc/fstab").read_text().splitlines()
    assert "# swap disabled by snapbuild: /swap.img none swap sw 0 0" in fstab
    assert not [line for line in fstab if line.split()[2:3] == ["swap"] and not line.startswith("#")]
    assert any(line.split()[1:2] == ["/"] for line in fstab)
    assert os.readlink(on_disk(guest, "/etc/systemd/system/swap.target")) == "/dev/null"


def test_command_output_streams_to_the_monitor_under_its_own_action(guest: ChrootGuest, monitor: Monitors,
                                                                     tmp_path: Path) -> None:
    plan = a_plan(tmp_path, STEPS)
    provision(plan, guest, monitor)

    text = terminal(monitor)
    assert "│ to-stdout" in text and "│ to-stderr" in text   # stdout and stderr, both live
    number = next(n for n, a in enumerate(plan.actions, 1) if isinstance(a, actions.RunCommand))
    step = f"[{number}/{len(plan.actions)}] {plan.actions[number - 1].describe()}"
    assert f"▸ {step}" in text
    lines = {str(e["text"]): e["step"] for e in events(monitor) if e["event"] == "output"}
    assert lines["│ to-stdout"] == step and lines["│ to-stderr"] == step
    finished = [e for e in events(monitor) if e["event"] == "step_finished"]
    assert len(finished) == len(plan.actions) and all(e["ok"] for e in finished)


@pytest.mark.parametrize("failing", [
    actions.RunCommand(argv=("sh", "-c", "echo about to fail; exit 3")),
    actions.RunScript(name="fails", content=b"echo about to fail\nexit 3\n"),
], ids=["command", "script"])
def test_a_failing_step_stops_provisioning_and_the_next_action_never_runs(
        guest: ChrootGuest, monitor: Monitors, failing: actions.Action, tmp_path: Path) -> None:
    plan = a_plan_of(tmp_path, (
        actions.WriteFile(path="/etc/snapbuild-test/before", content=b"1\n"),
        failing,
        actions.WriteFile(path="/etc/snapbuild-test/after", content=b"2\n"),
        actions.RunCommand(argv=("touch", "/etc/snapbuild-test/after-command")),
    ))

    with pytest.raises(BuildError) as raised:
        provision(plan, guest, monitor)

    assert isinstance(raised.value, CommandFailed) and raised.value.returncode == 3
    assert "about to fail" in raised.value.output_tail
    assert on_disk(guest, "/etc/snapbuild-test/before").read_text() == "1\n"
    assert not on_disk(guest, "/etc/snapbuild-test/after").exists()
    assert not on_disk(guest, "/etc/snapbuild-test/after-command").exists()
    assert not list(on_disk(guest, "/var/tmp").glob("snapbuild-script-*"))   # removed on failure too
    text = terminal(monitor)
    assert "│ about to fail" in text
    assert f"✗ [2/4] {failing.describe()}" in text
    assert "[3/4]" not in text


def a_plan_of(tmp_path: Path, steps: tuple[actions.Action, ...]) -> Plan:
    """The recipe machinery's Plan with its actions replaced: provision reads nothing else for these kinds."""
    return dataclasses.replace(a_plan(tmp_path, "  - command: [\"true\"]\n"), actions=steps)


# ---- seal and check ----------------------------------------------------------------------------------------

def test_seal_removes_each_planted_violation_and_the_check_then_finds_none_of_them(
        guest: ChrootGuest, monitor: Monitors) -> None:
    baseline = check_sealed(guest, live=False)
    assert codes(baseline) == MOUNT_STACK_CODES, baseline   # the base image itself is sealed
    root = guest.root
    for name in SEALED_PLANTS:
        PLANTS[name](root)
    proxy = on_disk(guest, APT_PROXY_FILE)                  # the plan's build-time proxy (profile build_apt_proxy)
    proxy.write_text('Acquire::http::Proxy "http://127.0.0.1:3142";\n')
    on_disk(guest, "/tmp/build-scratch").mkdir()
    (on_disk(guest, "/tmp/build-scratch") / "file").write_text("x")

    before = check_sealed(guest, live=False)
    assert codes(before) == {code_of(n) for n in SEALED_PLANTS} | {"apt-config"} | MOUNT_STACK_CODES
    assert {v.path for v in before} >= {"/etc/machine-id", "/var/lib/dbus/machine-id", APT_PROXY_FILE, "/tmp",
                                        "/etc/ssh/ssh_host_ed25519_key", "/root/.ssh/authorized_keys",
                                        "/root/.bash_history", "/var/lib/systemd/random-seed"}

    seal(guest, monitor=monitor)

    after = check_sealed(guest, live=False)
    # resolv.conf is the mount stack's file, put back when the build unmounts: see the enforce test below.
    assert [v for v in after if v.code != "resolv.conf"] == []
    # Removed on disk, not only unreported.
    assert on_disk(guest, "/etc/machine-id").read_bytes() == b""
    for path in ("/var/lib/dbus/machine-id", "/etc/ssh/ssh_host_ed25519_key", "/root/.ssh/authorized_keys",
                 "/root/.bash_history", "/var/lib/systemd/random-seed", "/usr/sbin/policy-rc.d", APT_PROXY_FILE,
                 "/var/tmp/leftover", "/tmp/build-scratch", "/var/log/syslog.1", "/var/lib/cloud/instance",
                 "/var/cache/apt/archives/curl_1_amd64.deb"):
        assert not os.path.lexists(on_disk(guest, path)), path
    assert on_disk(guest, "/var/log/syslog").stat().st_size == 0        # truncated, kept
    assert sorted(p.name for p in on_disk(guest, "/var/lib/apt/lists").iterdir()) == ["partial"]
    assert "cloud-init clean --logs --seed" in terminal(monitor)


def test_seal_keeps_what_the_plan_installed(guest: ChrootGuest, monitor: Monitors, tmp_path: Path) -> None:
    provision(a_plan(tmp_path, STEPS), guest, monitor)
    seal(guest, monitor=monitor)
    assert on_disk(guest, "/etc/snapbuild-test/greeting.conf").read_text() == "hello\n"
    assert (on_disk(guest, "/home/appuser/data/owned")).read_text() == "mine\n"
    assert os.readlink(on_disk(guest, "/etc/systemd/system/swap.target")) == "/dev/null"


def test_the_check_still_reports_what_seal_leaves_to_others(guest: ChrootGuest, monitor: Monitors) -> None:
    for name in LEFT_FOR_THE_CHECK:
        PLANTS[name](guest.root)
    seal(guest, monitor=monitor)
    after = check_sealed(guest, live=False)
    assert codes(after) - MOUNT_STACK_CODES == {code_of(n) for n in LEFT_FOR_THE_CHECK}
    assert {v.path for v in after} >= {"/etc/passwd", "/etc/sudoers.d/90-cloud-init-users", "/etc/shadow",
                                       "/etc/apt/apt.conf.d/01proxy"}


def test_power_off_script_removes_the_builder_user_its_sudoers_entry_and_home(guest: ChrootGuest) -> None:
    guest.run(["useradd", "--create-home", "--shell", "/bin/bash", "snapbuild"])
    guest.write_file("/etc/sudoers.d/90-cloud-init-users", b"snapbuild ALL=(ALL) NOPASSWD:ALL\n", mode=0o440)
    guest.write_file("/home/snapbuild/.ssh/authorized_keys", b"ssh-ed25519 AAAAbuilder builder\n", mode=0o600,
                     owner="snapbuild")
    on_disk(guest, "/var/log/syslog").write_text("written while the builder ran\n")
    assert codes(check_sealed(guest, live=False)) >= {"builder-user", "logs"}

    # The real script but its last line, the poweroff (a chroot has no systemd to ask); the stops before it
    # fail in a chroot and the script goes on, as it must on a VM where a unit is missing.
    *script, last = power_off_script("snapbuild").splitlines()
    assert last == "systemctl poweroff --no-block"
    guest.run(["sh", "-s"], stdin="\n".join(script).encode() + b"\n", timeout=120)

    assert "snapbuild:" not in on_disk(guest, "/etc/passwd").read_text()
    assert not on_disk(guest, "/home/snapbuild").exists()
    assert not on_disk(guest, "/etc/sudoers.d/90-cloud-init-users").exists()
    assert on_disk(guest, "/etc/machine-id").read_bytes() == b""
    # /var/log is a tmpfs from here on (what shutdown writes stays out of the image); the disk's logs are
    # truncated underneath it.
    log_dir = on_disk(guest, "/var/log")
    assert str(log_dir) in mount_points()
    subprocess.run(["umount", str(log_dir)], check=True, timeout=60)
    assert (log_dir / "syslog").stat().st_size == 0
    left = check_sealed(guest, live=False)
    assert not codes(left) & {"builder-user", "logs", "authorized-keys"}, left


def test_enforce_passes_in_the_chroot_builders_mount_stack(guest: ChrootGuest, monitor: Monitors,
                                                           lent: list[Callable[[], None]], tmp_path: Path) -> None:
    """The tail every builder runs (run.tail.apply_plan): provision, give back what the build lent the image, then
    seal + check + fail on violations — on a real tree, with the check run by this host's python3."""
    from snapbuild.ledger import Ledger
    from snapbuild.run.context import BuildContext
    from snapbuild.run.tail import apply_plan

    plan = a_plan(tmp_path, STEPS)
    ledger = Ledger.create(build_id="20261204000000-00000001", builder="test", recipe="x", directory=tmp_path)
    ctx = BuildContext(build_id=ledger.build_id, ledger=ledger, monitor=monitor)
    assert "resolv.conf" in codes(check_sealed(guest, live=False))     # the build's own, lent by the mount stack

    def give_back() -> None:
        for restore in lent:
            restore()

    apply_plan(ctx, plan, guest, before_seal=give_back)
    assert [t.name for t in ctx.timings] == ["provision", "seal"] and all(t.ok for t in ctx.timings)
    assert check_sealed(guest, live=False) == []
    assert not (guest.root / "etc/resolv.conf.snapbuild-orig").exists()        # the image's own is back

"""Every bad base is refused before a VM boots or a copy is made: the offline probe on the tiers' real base (debian-13),
and `snapbuild local|chroot|verify` with a base of the wrong distro, an empty qcow2 and a file of random bytes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from snapbuild.host import baseprobe

pytestmark = pytest.mark.system

SNAPBUILD = Path(sys.executable).with_name("snapbuild")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        pytest.skip("the system tier runs as root (loop devices, mounts)")


def _loops() -> set[str]:
    found = set()
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            found.add(backing.read_text().strip())
        except OSError:
            continue
    return found


def _mounts() -> set[str]:
    return {line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()}


def _processes_mentioning(marker: str, names: tuple[str, ...]) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and any(Path(cmdline.split(" ", 1)[0]).name.startswith(n) for n in names):
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Path]:
    """A directory for one test's inputs and outputs; afterwards nothing under it is mounted, attached or running."""
    yield tmp_path
    assert not [m for m in _mounts() if m.startswith(str(tmp_path))]
    assert not [b for b in _loops() if b.startswith(str(tmp_path))]
    assert not _processes_mentioning(str(tmp_path), ("qemu",))


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stderr: str
    log: str
    qemu_seen: tuple[str, ...]


def run_cli(args: list[str], workspace: Path) -> Outcome:
    """The real CLI in a subprocess; while it runs, watch for any QEMU it starts (its temp dirs are in workspace)."""
    env = {**os.environ, "SNAPBUILD_STATE_DIR": str(workspace / "state"), "TMPDIR": str(workspace)}
    proc = subprocess.Popen([str(SNAPBUILD), *args], env=env, cwd=workspace, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen: set[str] = set()
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        seen.update(_processes_mentioning(str(workspace), ("qemu-system",)))
        time.sleep(0.02)   # polling the process table while the CLI runs; bounded by the deadline
    _, stderr = proc.communicate(timeout=60)
    match = re.search(r"full log: (\S+)", stderr)
    log = Path(match.group(1)).read_text() if match else ""
    return Outcome(proc.returncode, stderr, log, tuple(sorted(seen)))


def _assert_refused_before_boot(outcome: Outcome, message: str) -> None:
    assert outcome.returncode == 2, outcome.stderr
    assert re.search(message, outcome.stderr), outcome.stderr
    assert not outcome.qemu_seen
    assert "boot builder" not in outcome.stderr and "boot 1" not in outcome.stderr
    assert "; qemu: " not in outcome.log      # the launcher logs every QEMU command line it starts


@pytest.fixture
def empty_qcow2(workspace: Path) -> Path:
    path = workspace / "empty.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "2G"], check=True)
    return path


@pytest.fixture
def random_bytes(workspace: Path) -> Path:
    path = workspace / "random.img"
    path.write_bytes(os.urandom(4 << 20))
    return path


# ---------------------------------------------------------------- the probe itself

def test_the_probe_reads_debian_13_from_the_real_base_offline(tier_base_image: Path) -> None:
    probe = baseprobe.probe_base(tier_base_image, "qcow2", mount_if_root=False)
    assert (probe.table, probe.root.fstype, probe.method) == ("gpt", "ext4", "offline reader")
    assert probe.os_release is not None
    assert (probe.os_release["ID"], probe.os_release["VERSION_ID"]) == ("debian", "13")
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("snapbuild-probe-*/nbd.sock"))


def test_the_offline_reader_agrees_with_a_read_only_mount(tier_base_image: Path, workspace: Path) -> None:
    from snapbuild.sealing.offline import mounted_root

    probe = baseprobe.probe_base(tier_base_image, "qcow2", mount_if_root=False)
    with mounted_root(tier_base_image, fmt="qcow2") as top:
        mounted = baseprobe.read_os_release(baseprobe.DirTree(top))
        etc_link = os.readlink(top / "etc/os-release") if (top / "etc/os-release").is_symlink() else None
    assert probe.os_release == mounted
    with baseprobe.open_image(tier_base_image, "qcow2") as reader:
        fs = baseprobe.ExtFS(lambda o, n: reader.read(probe.root.start + o, n))
        node = baseprobe.resolve(fs, "/etc")
        assert node is not None
        entry = fs.lookup(node, "os-release")
        assert entry is not None
        assert fs.link_target(entry) == etc_link


def test_the_probe_works_without_root(tier_base_image: Path) -> None:
    """The same probe as `nobody`: qemu-nbd on a private socket, no loop device, no mount."""
    python = Path("/usr/bin/python3")
    if not python.exists() or shutil.which("setpriv") is None:
        pytest.skip("needs the system python3 and setpriv to run as nobody")
    code = ("from pathlib import Path; from snapbuild.host import baseprobe; "
            f"p = baseprobe.probe_base(Path({str(tier_base_image)!r}), 'qcow2'); "
            "print(p.os_release['ID'], p.os_release['VERSION_ID'], p.method, p.root.fstype)")
    done = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", str(python), "-c", code],
                          env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), "HOME": "/tmp"},
                          capture_output=True, text=True, timeout=120, check=False)
    if "Permission denied" in done.stderr and "snapbuild" not in done.stderr:
        pytest.skip(f"nobody cannot read the repo or the image here: {done.stderr.strip()[-200:]}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["debian", "13", "offline", "reader", "ext4"]


def test_the_ext_reader_on_file_systems_made_here(workspace: Path) -> None:
    """Symlink chains, a hashed (htree) directory, and ext3's block maps with an indirect block."""
    tree = workspace / "tree"
    (tree / "usr/lib").mkdir(parents=True)
    (tree / "etc").mkdir()
    for number in range(3000):   # a directory big enough for an htree index
        (tree / "usr/lib" / f"entry-{number:05d}").write_text("")
    (tree / "usr/lib/os-release").write_text("ID=testos\nVERSION_ID=1\n" + "#" * 100_000 + "\n")
    (tree / "usr/lib/os-release-link").symlink_to("os-release")
    (tree / "etc/os-release").symlink_to("/usr/lib/" + "x/../" * 20 + "os-release-link")   # a slow symlink
    for kind in ("ext4", "ext3"):
        image = workspace / f"{kind}.img"
        subprocess.run([f"mkfs.{kind}", "-q", "-F", "-b", "4096", "-d", str(tree), str(image), "64M"], check=True)
        (tree / "usr/lib/x").mkdir(exist_ok=True)
        with image.open("rb") as handle:
            fs = baseprobe.ExtFS(baseprobe._FileReader(handle, image.stat().st_size).read)
            found = baseprobe.read_os_release(fs)
        assert found == {"ID": "testos", "VERSION_ID": "1"}, kind
        (tree / "usr/lib/x").rmdir()


# ---------------------------------------------------------------- a base of another distro

def test_local_refuses_a_debian_base_for_an_ubuntu_recipe_before_booting(tier_base_image: Path,
                                                                          workspace: Path) -> None:
    outcome = run_cli(["local", "base", "--base", str(tier_base_image), "-o", str(workspace / "out.qcow2")],
                      workspace)
    _assert_refused_before_boot(outcome, r"is Debian GNU/Linux 13 \(trixie\), but recipe 'base' is for Ubuntu 24.04")
    assert "hint: pass --distro debian-13" in outcome.stderr
    assert re.search(r"GPT table, root partition \d+ \(ext4", outcome.log)
    assert not (workspace / "out.qcow2").exists()


def test_chroot_refuses_a_debian_base_for_an_ubuntu_recipe_and_leaves_nothing(tier_base_image: Path,
                                                                              workspace: Path) -> None:
    outcome = run_cli(["chroot", "base", "--base", str(tier_base_image), "-o", str(workspace / "out.qcow2")],
                      workspace)
    _assert_refused_before_boot(outcome, r"is Debian GNU/Linux 13 \(trixie\), but recipe 'base' is for Ubuntu 24.04")
    assert "hint: pass --distro debian-13" in outcome.stderr
    assert "provision" not in outcome.stderr and "copy base image" not in outcome.stderr
    assert sorted(p.name for p in workspace.iterdir()) == ["state"]
    assert not list((workspace / "state").glob("builds/*.json"))   # every ledger entry was undone


def test_verify_with_a_recipe_refuses_an_image_of_another_distro(tier_base_image: Path, workspace: Path) -> None:
    outcome = run_cli(["verify", str(tier_base_image), "--recipe", "base", "--distro", "ubuntu-24.04"], workspace)
    _assert_refused_before_boot(outcome, r"image .* is Debian GNU/Linux 13 \(trixie\), but recipe 'base' is for "
                                         r"Ubuntu 24.04")


# ---------------------------------------------------------------- not a disk image at all

@pytest.mark.parametrize("command", ["local", "chroot", "verify"])
@pytest.mark.parametrize("kind", ["empty_qcow2", "random_bytes"])
def test_a_file_that_is_not_a_disk_image_is_refused_before_booting(command: str, kind: str, workspace: Path,
                                                                   request: pytest.FixtureRequest) -> None:
    bad: Path = request.getfixturevalue(kind)
    if command == "verify":
        args = ["verify", str(bad)]
    else:
        args = [command, "base", "--distro", "debian-12", "--base", str(bad), "-o", str(workspace / "out.qcow2")]
    outcome = run_cli(args, workspace)
    _assert_refused_before_boot(outcome, r"is not a disk image \(no partition table\)")
    assert sorted(p.name for p in workspace.iterdir() if p.name != "state") == [bad.name]


# ---------------------------------------------------------------- the matching distro goes on

def _debian_plan() -> Any:
    from snapbuild.plan import plan_from_names
    from snapbuild.recipes import Library

    return plan_from_names(library=Library([REPO / "recipes"]), recipe_name="base", distro_name="debian-13",
                           profile_name=str(REPO / "recipes/profiles/upstream.yaml"), config_variables={},
                           set_values={})


def test_a_matching_base_passes_the_local_preflight(tier_base_image: Path, workspace: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    from snapbuild.local.build import LocalSettings, _Run, preflight

    plan = _debian_plan()
    state = _Run(settings=LocalSettings(base=tier_base_image, output=workspace / "out.qcow2", work_root=workspace),
                 plan=plan)
    with caplog.at_level("INFO", logger="snapbuild.host.baseprobe"):
        preflight(state)
    assert any("Debian GNU/Linux 13 (trixie); offline reader" in r.getMessage() for r in caplog.records)


def test_a_matching_base_passes_the_chroot_inspect_step(tier_base_image: Path, workspace: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from snapbuild.chroot import build
    from snapbuild.chroot.workdir import make_workdir
    from snapbuild.ledger import Ledger, new_build_id
    from snapbuild.run.context import BuildContext, Reporter, running_build

    monkeypatch.setenv("SNAPBUILD_STATE_DIR", str(workspace / "state"))
    plan = _debian_plan()
    job = build.check_inputs(plan, build.ChrootSettings(base=tier_base_image, output=workspace / "out.qcow2"))
    build_id = new_build_id()
    ctx = BuildContext(build_id=build_id, monitor=Reporter(),
                       ledger=Ledger.create(build_id=build_id, builder="chroot", recipe="base"))
    with running_build(ctx):
        work_dir = make_workdir(ctx, job.output, build_id)
        root = build.find_root_partition(ctx, job, work_dir, plan)
    assert root.fstype == "ext4"
    assert not (workspace / "out.qcow2").exists()

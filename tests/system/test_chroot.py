"""System tier for the chroot builder: real loop devices, FUSE exports, mounts, chroot, apt from the archive.

The test image is made here, once per session: a 1 GiB GPT disk (BIOS boot partition 14 + ext4 root 1
labelled cloudimg-rootfs, like Ubuntu's cloud images) holding a debootstrap'd Debian 12 minbase, with
/etc/resolv.conf a dangling symlink into /run as on Ubuntu. The debootstrap tarball is cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from snapbuild.chroot import build
from snapbuild.errors import BuildError, CommandFailed, UserError
from snapbuild.guest.chroot import ChrootGuest, Daemon
from snapbuild.host import attach as attaching
from snapbuild.host import grow, mounts, procs
from snapbuild.host.compact import compact
from snapbuild.host.sweep import sweep
from snapbuild.ledger import all_ledgers
from snapbuild.run.context import Reporter
from snapbuild.run.scope import undo_scope
from tests.manifestcheck import check_manifest

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (loop devices, mounts, chroot)"),
]

CACHE = Path(os.environ.get("SNAPBUILD_TEST_IMAGE_CACHE", "/var/cache/snapbuild-test"))
MINBASE_TAR = CACHE / "chroot-minbase.tar"
MIRROR = "http://deb.debian.org/debian"
STUB_LINK = "../run/systemd/resolve/stub-resolv.conf"
DISK_BYTES = 1 << 30

log = logging.getLogger(__name__)


def sh(*argv: str | Path, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], check=check, capture_output=True, text=True, timeout=timeout)


def minbase_tar() -> Path:
    """debootstrap --variant=minbase bookworm, cached as a tarball (first run ≈ 2 min, then free)."""
    if MINBASE_TAR.exists():
        return MINBASE_TAR
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        root = Path(tmp) / "root"
        sh("debootstrap", "--variant=minbase", "bookworm", root, MIRROR, timeout=1800)
        part = Path(tmp) / "minbase.tar"
        sh("tar", "-C", root, "--numeric-owner", "-cpf", part, ".")
        os.replace(part, MINBASE_TAR)
    return MINBASE_TAR


def make_test_image(dest: Path) -> None:
    """GPT: p14 BIOS boot (4 MiB), p1 ext4 'cloudimg-rootfs' (rest); converted to qcow2.

    No loop device: mkfs.ext4 fills the file system from a directory at the partition's offset, so making
    the image cannot race with other builds on the host's loop devices.
    """
    raw = dest.with_suffix(".raw")
    with open(raw, "wb") as handle:
        handle.truncate(DISK_BYTES)
    sh("sgdisk", "-n", "14:2048:+4M", "-t", "14:ef02", "-n", "1:0:0", "-t", "1:8300", "-c", "1:root", raw)
    rows = [line.split() for line in sh("partx", "-g", "-o", "NR,START,SECTORS", raw).stdout.splitlines()]
    start, sectors = next((int(r[1]), int(r[2])) for r in rows if r[0] == "1")
    tree = dest.parent / "tree"
    tree.mkdir()
    try:
        sh("tar", "-C", tree, "--numeric-owner", "-xpf", minbase_tar())
        resolv = tree / "etc/resolv.conf"
        resolv.unlink(missing_ok=True)
        resolv.symlink_to(STUB_LINK)
        (tree / "etc/hostname").write_text("snapbuild-test\n")
        sh("mkfs.ext4", "-q", "-F", "-L", "cloudimg-rootfs", "-d", tree, "-E", f"offset={start * 512}", raw,
           f"{sectors * 512 // 4096 * 4}k")
    finally:
        shutil.rmtree(tree)
    sh("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, dest)
    raw.unlink()


@pytest.fixture(scope="session")
def test_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    image = tmp_path_factory.mktemp("chroot-image") / "minbase.qcow2"
    make_test_image(image)
    image.chmod(0o444)
    return image


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- what a test may leave behind: nothing ---------------------------------------------------------------

def _mounts() -> set[str]:
    return {line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()}


def _loops() -> set[str]:
    """Loop devices and their backing files, read from sysfs (`losetup --list` fails when a device goes
    away while it lists, and other builds on this host attach and detach all the time)."""
    found = set()
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            found.add(f"{backing.parents[1].name} {backing.read_text().strip()}")
        except OSError:
            continue
    return found


def _our_processes(marker: str) -> list[str]:
    """Processes whose root, cwd or command line mention `marker` (our temp dirs)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            where = " ".join(os.readlink(entry / n) for n in ("root", "cwd"))
        except OSError:
            continue
        if marker in cmdline or marker in where:
            found.append(f"{entry.name}: {cmdline.strip()} [{where}]")
    return found


@pytest.fixture
def no_leftovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """State dir per test; afterwards: no new mount, loop device or process of ours, and an empty ledger."""
    monkeypatch.setenv("SNAPBUILD_STATE_DIR", str(tmp_path / "state"))
    marker = str(tmp_path)
    mounts_before, loops_before = _mounts(), _loops()
    yield tmp_path
    # Other builds may run on this host at the same time: only what is ours counts.
    assert {m for m in _mounts() - mounts_before if marker in m} == set()
    assert {line for line in _loops() - loops_before if marker in line} == set()
    assert _our_processes(marker) == []
    leftovers = [e for ledger in all_ledgers(tmp_path / "state" / "builds") for e in ledger.entries()]
    assert leftovers == []


def free_bytes(root: Path) -> int:
    st = os.statvfs(root)
    return st.f_bavail * st.f_frsize


# ---- helpers over the real pieces ------------------------------------------------------------------------

class Recorder(Reporter):
    def __init__(self) -> None:
        super().__init__(stream=open(os.devnull, "w"))   # closed with the process
        self.lines: list[str] = []

    def line(self, text: str) -> None:
        self.lines.append(text)


def attached_copy(scope: Any, image: Path, work_dir: Path, size: int | None = None) -> attaching.Attached:
    work = work_dir / "work.qcow2"
    grow.copy_base(image, "qcow2", work)
    if size:
        grow.resize_image(work, size)
    return attaching.attach(scope, work, work_dir, backend="loop")


# ---- grow ------------------------------------------------------------------------------------------------

def test_grow_fills_partition_and_file_system_to_the_new_size(test_image: Path, no_leftovers: Path) -> None:
    new_size = 2 << 30
    with undo_scope(None) as scope:
        attached = attached_copy(scope, test_image, no_leftovers, new_size)
        root = grow.choose_root(grow.probe(attached), test_image)
        assert (root.number, root.label) == (1, "cloudimg-rootfs")
        grow.grow_root(attached, root)

        table = sh("sgdisk", "-p", attached.device).stdout
        assert "Problem" not in sh("sgdisk", "-v", attached.device).stdout
        sectors = int(table.split("Disk ")[1].split(":")[1].split()[0])
        assert sectors == new_size // 512
        last_usable = int(table.split("last usable sector is ")[1].split()[0])
        assert last_usable == sectors - 34          # backup GPT header moved to the end
        grown = {p.number: p for p in grow.probe(attached)}
        assert grown[1].size >= new_size - (8 << 20)   # everything but the BIOS boot partition and GPT
        dump = sh("dumpe2fs", "-h", attached.partition(1)).stdout
        fields = dict(line.split(":", 1) for line in dump.splitlines() if ":" in line)
        fs_bytes = int(fields["Block count"]) * int(fields["Block size"])
        assert grown[1].size - fs_bytes < 4096
        root_dir = mounts.mount_chroot(scope, attached.partition(1), no_leftovers / "root")
        df = ChrootGuest(root_dir).run(["df", "--output=size", "-B1", "/"]).stdout.split()
        assert int(df[-1]) > 1.9 * 2**30


def test_root_partition_choice_refuses_images_without_a_partition_table(no_leftovers: Path) -> None:
    empty = no_leftovers / "empty.qcow2"
    sh("qemu-img", "create", "-f", "qcow2", empty, "64M")
    with pytest.raises(UserError, match="no partition table"), undo_scope(None) as scope:
        attached = attaching.attach(scope, empty, no_leftovers, backend="loop", read_only=True)
        grow.choose_root(grow.probe(attached), empty)


# ---- mount stack, DNS, policy-rc.d, resolv.conf -----------------------------------------------------------

def test_mount_stack_gives_working_dns_and_apt_and_puts_everything_back(test_image: Path,
                                                                        no_leftovers: Path) -> None:
    with undo_scope(None) as scope:
        attached = attached_copy(scope, test_image, no_leftovers)
        root = mounts.mount_chroot(scope, attached.partition(1), no_leftovers / "root")
        guest = ChrootGuest(root)
        assert {str(root / p) for p in ("dev", "dev/pts", "dev/shm", "proc", "sys", "run")} | {str(root)} <= _mounts()
        assert guest.read_file("/usr/sbin/policy-rc.d").endswith(b"exit 101\n")
        assert guest.run(["/usr/sbin/policy-rc.d"], check=False).returncode == 101
        assert not (root / "etc/resolv.conf").is_symlink()
        assert "nameserver" in guest.read_file("/etc/resolv.conf").decode()
        assert "deb.debian.org" in guest.run(["getent", "hosts", "deb.debian.org"]).stdout
        lines: list[tuple[str, str]] = []
        guest.run(["apt-get", "update"], timeout=600, on_output=lambda s, t: lines.append((s, t)))
        assert any("bookworm" in text for _, text in lines)   # streamed as it came
        assert list((root / "var/lib/apt/lists").glob("*_Packages*"))
    # Put back: byte-identical resolv.conf symlink, no policy-rc.d, image clean of our files.
    with undo_scope(None) as scope:
        attached = attaching.attach(scope, no_leftovers / "work.qcow2", no_leftovers, backend="loop", read_only=True)
        mnt = no_leftovers / "check"
        mnt.mkdir()
        sh("mount", "-o", "ro", attached.partition(1), mnt)
        try:
            assert os.readlink(mnt / "etc/resolv.conf") == STUB_LINK
            assert not (mnt / "usr/sbin/policy-rc.d").exists()
            assert not list((mnt / "etc").glob("*snapbuild*"))
            assert list((mnt / "var/lib/apt/lists").glob("*_Packages*"))   # the work itself stayed
        finally:
            sh("umount", mnt)


def test_symlinks_in_the_image_cannot_reach_the_host(test_image: Path, no_leftovers: Path) -> None:
    with undo_scope(None) as scope:
        attached = attached_copy(scope, test_image, no_leftovers)
        root = mounts.mount_chroot(scope, attached.partition(1), no_leftovers / "root")
        guest = ChrootGuest(root)
        os.symlink("/etc/hostname", root / "tmp/abs-link")
        os.symlink("../../../../../../../../etc/hostname", root / "tmp/rel-link")
        assert guest.read_file("/tmp/abs-link") == b"snapbuild-test\n"
        assert guest.read_file("/tmp/rel-link") == b"snapbuild-test\n"
        os.symlink("/host-must-not-see-this", root / "tmp/out")
        guest.write_file("/tmp/out", b"inside\n", mode=0o600, owner="nobody:nogroup")
        assert not Path("/host-must-not-see-this").exists()
        written = root / "host-must-not-see-this"
        assert written.read_bytes() == b"inside\n"
        assert (written.stat().st_mode & 0o777, written.stat().st_uid) == (0o600, 65534)
        assert guest.run(["cat", "/tmp/out"]).stdout == "inside\n"
        assert guest.exists("/tmp/out") and not guest.exists("/tmp/nothing")


def test_a_service_started_in_the_chroot_is_stopped_after(test_image: Path, no_leftovers: Path) -> None:
    # A tiny daemon in the image's own perl: listens on a unix socket, ignores nothing.
    daemon = Daemon(argv=("perl", "-MIO::Socket::UNIX", "-e",
                          ("my $s = IO::Socket::UNIX->new(Local => '/run/testd.sock', Listen => 1) or die $!;"
                          " while (my $c = $s->accept) { print $c \"ok\\n\"; close $c }")),
                    socket="/run/testd.sock", stop_timeout=5)
    with undo_scope(None) as scope:
        attached = attached_copy(scope, test_image, no_leftovers)
        root = mounts.mount_chroot(scope, attached.partition(1), no_leftovers / "root")
        guest = ChrootGuest(root, daemons={"testd": daemon})
        with guest.service("testd"):
            running = [h for h in procs.holders(root) if h.comm == "perl"]
            assert len(running) == 1 and running[0].why == "root"
        assert [h for h in procs.holders(root) if h.comm == "perl"] == []
        with pytest.raises(BuildError, match="cannot run service"):
            guest.service("nope")


def test_containerd_runs_for_the_block_and_is_stopped_after(test_image: Path, no_leftovers: Path) -> None:
    with undo_scope(None) as scope:
        attached = attached_copy(scope, test_image, no_leftovers, 2 << 30)
        grow.grow_root(attached, grow.choose_root(grow.probe(attached), test_image))
        guest = ChrootGuest(mounts.mount_chroot(scope, attached.partition(1), no_leftovers / "root"))
        guest.run(["apt-get", "update"], timeout=600)
        guest.run(["apt-get", "install", "-y", "--no-install-recommends", "containerd"], timeout=900)
        assert not [h for h in procs.holders(guest.root) if h.comm == "containerd"]   # policy-rc.d held it back
        with guest.service("containerd"):
            assert "Server:" in guest.run(["ctr", "version"], timeout=60).stdout
            guest.run(["ctr", "-n", "k8s.io", "namespaces", "ls"], timeout=60)
        assert not [h for h in procs.holders(guest.root) if h.comm == "containerd"]
        assert not guest.exists("/run/containerd/containerd.sock") or not procs.holders(guest.root)


def test_command_output_timeout_and_failure_inside_the_chroot(test_image: Path, no_leftovers: Path) -> None:
    with undo_scope(None) as scope:
        attached = attached_copy(scope, test_image, no_leftovers)
        guest = ChrootGuest(mounts.mount_chroot(scope, attached.partition(1), no_leftovers / "root"))
        done = guest.run(["sh", "-c", "echo out; echo err >&2; echo \"$HOME $LANG $DEBIAN_FRONTEND $FOO\""],
                         env={"FOO": "bar"})
        assert done.stdout == "out\n/root C.UTF-8 noninteractive bar\n" and done.stderr == "err\n"
        assert guest.run(["cat"], stdin=b"fed\n").stdout == "fed\n"
        with pytest.raises(CommandFailed, match="exited 3") as failed:
            guest.run(["sh", "-c", "echo why >&2; exit 3"])
        assert "why" in str(failed.value)
        start = time.monotonic()
        with pytest.raises(CommandFailed, match="timed out"):
            guest.run(["sleep", "60"], timeout=1)
        assert time.monotonic() - start < 45    # ended by the timeout, not by sleep finishing


# ---- unmount retries -----------------------------------------------------------------------------------

def _tmpfs(path: Path) -> Path:
    path.mkdir()
    sh("mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", path)
    return path


def test_busy_mount_is_retried_until_the_holder_is_gone(no_leftovers: Path) -> None:
    mnt = _tmpfs(no_leftovers / "busy")
    holder = subprocess.Popen(["sleep", "600"], cwd=mnt)
    calls: list[list[procs.Holder]] = []

    def on_busy(holders: list[procs.Holder]) -> None:
        calls.append(holders)
        holder.kill()
        holder.wait()

    try:
        mounts.unmount(mnt, on_busy=on_busy)
    finally:
        holder.kill()
        holder.wait()
    assert calls and calls[0][0].pid == holder.pid and calls[0][0].why == "cwd"
    assert not mounts.mounted(mnt)


def test_busy_mount_falls_back_to_lazy_unmount_and_says_so(no_leftovers: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    mnt = _tmpfs(no_leftovers / "busy")
    holder = subprocess.Popen(["sleep", "600"], cwd=mnt)
    try:
        with caplog.at_level(logging.WARNING):
            mounts.unmount(mnt, patience=0.5)
        assert not mounts.mounted(mnt)
        assert "lazy unmount" in caplog.text and f"pid {holder.pid} sleep (cwd)" in caplog.text
    finally:
        holder.kill()
        holder.wait()


# ---- the whole build, and its failures ----------------------------------------------------------------

PROFILE = Path(__file__).resolve().parents[2] / "recipes" / "profiles" / "upstream.yaml"


def recipe_plan(steps: list[dict[str, Any]]) -> Any:
    """A real plan from a real (throw-away) recipe: the real provisioner, seal and inspect run on it."""
    import yaml

    from snapbuild.plan import plan_from_names
    from snapbuild.recipes import Library

    folder = Path(tempfile.mkdtemp(prefix="snapbuild-test-recipe-"))
    try:
        (folder / "chroot-test").mkdir()
        (folder / "chroot-test" / "recipe.yaml").write_text(yaml.safe_dump({
            "description": "chroot drill", "distros": ["debian-12"],
            "image": {"name": "drill", "category": "test", "min_disk_gb": 2, "disk_size_gb": 2},
            "steps": steps}))
        return plan_from_names(library=Library([folder]), recipe_name="chroot-test", distro_name="debian-12",
                               profile_name=str(PROFILE), config_variables={}, set_values={})
    finally:
        shutil.rmtree(folder)


def run_build(image: Path, out: Path, steps: list[dict[str, Any]], **options: Any) -> build.ChrootResult:
    settings = build.ChrootSettings(base=image, output=out, size=options.pop("size", "2G"), **options)
    return build.build_chroot(recipe_plan(steps), settings, Recorder())


def test_build_produces_an_independent_grown_compressed_image(test_image: Path, no_leftovers: Path) -> None:
    base_digest = sha256(test_image)
    out = no_leftovers / "out.qcow2"
    # The command step fails the build unless policy-rc.d is in place while the recipe runs.
    result = run_build(test_image, out, [{"packages": ["less"]},
                                         {"command": ["test", "-x", "/usr/sbin/policy-rc.d"]}])
    info = json.loads(sh("qemu-img", "info", "--output=json", out).stdout)
    assert info["format"] == "qcow2" and info["virtual-size"] == 2 << 30
    assert info.get("format-specific", {}).get("data", {}).get("compression-type") == "zstd"
    assert "backing-filename" not in info
    sh("qemu-img", "check", out)
    assert sha256(test_image) == base_digest
    assert result.backend == "loop-fuse"
    manifest = check_manifest(result.manifest, builder="chroot")
    assert manifest["output"]["sha256"] == sha256(out) and manifest["base"]["sha256"] == base_digest
    assert manifest["seal"] == {"in_guest": "clean", "offline": "clean"}
    assert [p.name for p in no_leftovers.iterdir() if p.name.startswith(".out")] == []
    with undo_scope(None) as scope:
        attached = attaching.attach(scope, out, no_leftovers, backend="loop", read_only=True)
        mnt = no_leftovers / "check"
        mnt.mkdir()
        sh("mount", "-o", "ro", attached.partition(1), mnt)
        try:
            assert (mnt / "usr/bin/less").exists()
            assert os.readlink(mnt / "etc/resolv.conf") == STUB_LINK
            assert not (mnt / "usr/sbin/policy-rc.d").exists()
        finally:
            sh("umount", mnt)
        mnt.rmdir()


def test_build_refuses_bad_inputs_before_creating_anything(test_image: Path, no_leftovers: Path) -> None:
    out = no_leftovers / "out.qcow2"
    not_a_disk = no_leftovers / "notes.txt"
    not_a_disk.write_text("hello\n" * 1000)
    with pytest.raises(UserError, match="not a disk image"):
        run_build(not_a_disk, out, [])
    with pytest.raises(UserError, match="smaller than the base"):
        run_build(test_image, out, [], size="512M")
    with pytest.raises(UserError, match="no /dev/nbd0"):
        run_build(test_image, out, [], attach="nbd")
    out.write_bytes(b"")
    with pytest.raises(UserError, match="exists"):
        run_build(test_image, out, [])
    assert not (no_leftovers / "state" / "builds").exists() or not list((no_leftovers / "state/builds").iterdir())


def test_build_refuses_a_disk_without_a_partition_table_and_cleans_up(no_leftovers: Path) -> None:
    empty = no_leftovers / "empty.qcow2"
    sh("qemu-img", "create", "-f", "qcow2", empty, "64M")
    with pytest.raises(UserError, match="no partition table"):
        run_build(empty, no_leftovers / "out.qcow2", [], size=None)
    # Refused by check_inputs' offline look at the layout, before even a ledger exists.
    assert sorted(p.name for p in no_leftovers.iterdir() if p.name != "state") == ["empty.qcow2"]


def _assert_failed_build_left_nothing(directory: Path) -> None:
    assert sorted(p.name for p in directory.iterdir() if p.name != "state") == []
    for ledger in all_ledgers(directory / "state" / "builds"):
        assert ledger.entries() == []


def test_failing_command_in_the_chroot_fails_the_build_and_leaves_nothing(test_image: Path,
                                                                         no_leftovers: Path) -> None:
    with pytest.raises(CommandFailed, match="exited 7"):
        run_build(test_image, no_leftovers / "out.qcow2", [{"command": ["sh", "-c", "echo boom >&2; exit 7"]}])
    _assert_failed_build_left_nothing(no_leftovers)


def test_sigint_during_a_chroot_command_undoes_everything(test_image: Path, no_leftovers: Path) -> None:
    def interrupt_when_running() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            for root in no_leftovers.glob(".out.qcow2.snapbuild-*/root"):
                if any(h.comm == "sleep" for h in procs.holders(root)):
                    os.kill(os.getpid(), signal.SIGINT)
                    return
            time.sleep(0.05)

    threading.Thread(target=interrupt_when_running, daemon=True).start()
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_build(test_image, no_leftovers / "out.qcow2", [{"command": ["sleep", "300"]}])
    assert time.monotonic() - start < 120
    _assert_failed_build_left_nothing(no_leftovers)


def test_processes_and_mounts_left_in_the_chroot_are_removed_so_unmount_succeeds(test_image: Path,
                                                                                 no_leftovers: Path) -> None:
    pidfile = no_leftovers.parent / f"{no_leftovers.name}-stray.pid"
    run_build(test_image, no_leftovers / "out.qcow2", [
        # A stray daemon that ignores SIGTERM and holds a file in the image open; its pid goes to the host
        # through /proc/<this test process>/root, which is outside the chroot.
        {"script": {"name": "stray", "content": (
            "setsid sh -c 'trap \"\" TERM; exec sleep 600 < /etc/passwd' >/dev/null 2>&1 &\n"
            "echo $! > /run/stray.pid\n")}},
        {"command": ["sh", "-c", f"cat /run/stray.pid > /proc/{os.getpid()}/root{pidfile}"]},
        # A mount made inside the chroot, as package scripts do (binfmt_misc, containerd's snapshots).
        {"command": ["mount", "-t", "tmpfs", "stray", "/mnt"]},
    ])
    pid = int(pidfile.read_text())
    pidfile.unlink()
    assert not procs.alive(pid)


def test_full_disk_fails_the_build_and_leaves_nothing(test_image: Path, no_leftovers: Path) -> None:
    fill = ("fallocate -l $(( $(stat -f -c '%f*%S' /) )) /fill; "
            "dd if=/dev/zero of=/more bs=1M count=64")
    with pytest.raises(CommandFailed, match="No space left"):
        run_build(test_image, no_leftovers / "out.qcow2", [{"command": ["sh", "-c", fill]}], size=None)
    _assert_failed_build_left_nothing(no_leftovers)


def test_keep_on_failure_keeps_the_mounts_and_the_ledger_names_them(test_image: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SNAPBUILD_STATE_DIR", str(tmp_path / "state"))
    with pytest.raises(CommandFailed):
        run_build(test_image, tmp_path / "out.qcow2", [{"command": ["false"]}], on_error="abort")
    (ledger,) = all_ledgers(tmp_path / "state" / "builds")
    kinds = {e.kind for e in ledger.entries()}
    assert ledger.status == "failed-kept" and {"mount", "loop", "process", "tempdir"} <= kinds
    assert sweep(ledger)
    assert ledger.entries() == []
    assert not [m for m in _mounts() if str(tmp_path) in m]
    assert not [line for line in _loops() if str(tmp_path) in line]
    assert _our_processes(str(tmp_path)) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]


_KILLED_BUILD = """
import os
import sys
from pathlib import Path
from snapbuild.chroot import build
from snapbuild.run.context import Reporter
from test_chroot import recipe_plan

# A real recipe: it tells the host it is running (through /proc/<this process>/root), then waits.
plan = recipe_plan([{"command": ["sh", "-c", f"touch /proc/{os.getpid()}/root{sys.argv[3]}; exec sleep 600"]}])
build.build_chroot(plan, build.ChrootSettings(base=Path(sys.argv[1]), output=Path(sys.argv[2]), size="2G"), Reporter())
"""


def test_after_kill_9_the_ledger_is_enough_to_remove_everything(test_image: Path, no_leftovers: Path) -> None:
    ready = no_leftovers / "ready"
    child = subprocess.Popen([sys.executable, "-c", _KILLED_BUILD, str(test_image), str(no_leftovers / "out.qcow2"),
                              str(ready)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                 [str(Path(__file__).parent), str(Path(__file__).resolve().parents[2])])})
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        child.kill()
        child.wait()
    assert [m for m in _mounts() if str(no_leftovers) in m]          # the build really left things behind
    (ledger,) = all_ledgers(no_leftovers / "state" / "builds")
    assert ledger.status == "running"
    swept = sweep(ledger)
    assert not [line for line in swept if "failed" in line]
    assert sorted(p.name for p in no_leftovers.iterdir()) == ["ready", "state"]


RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_real_recipe_on_the_debian_cloud_base_installs_through_dns_and_passes_inspect(
        tier_base_image: Path, no_leftovers: Path) -> None:
    """The real provisioner and seal on the real base: apt-get through the host's DNS, a templated file, an
    enabled service; the real inspect passes; the base is untouched."""
    from snapbuild.plan import plan_from_names
    from snapbuild.recipes import Library

    plan = plan_from_names(library=Library([RECIPES]), recipe_name="chroot-demo", distro_name="debian-13",
                           profile_name=str(RECIPES.parents[1] / "recipes/profiles/upstream.yaml"),
                           config_variables={}, set_values={"greeting": "hi there"})
    base_digest = sha256(tier_base_image)
    out = no_leftovers / "debian.qcow2"
    result = build.build_chroot(plan, build.ChrootSettings(base=tier_base_image, output=out), Recorder())
    assert json.loads(sh("qemu-img", "info", "--output=json", out).stdout)["virtual-size"] == 3 << 30
    assert sha256(tier_base_image) == base_digest
    with undo_scope(None) as scope:
        attached = attaching.attach(scope, out, no_leftovers, backend="loop", read_only=True)
        root = grow.choose_root(grow.probe(attached), out)
        mnt = no_leftovers / "check"
        mnt.mkdir()
        sh("mount", "-o", "ro", root.device, mnt)
        try:
            from snapbuild.sealing import checker
            assert checker.check_root(str(mnt)) == []
            assert (mnt / "usr/bin/less").exists()
            conf = mnt / "etc/snapbuild-demo/greeting.conf"
            assert "greeting = hi there" in conf.read_text() and (conf.stat().st_mode & 0o777) == 0o640
            wants = mnt / "etc/systemd/system/multi-user.target.wants/snapbuild-demo.service"
            assert wants.is_symlink()
        finally:
            sh("umount", mnt)
        mnt.rmdir()
    print(f"debian base → {out.stat().st_size >> 20} MiB, steps:",
          ", ".join(f"{t.name} {t.seconds:.1f}s" for t in result.timings))


# ---- compaction figures --------------------------------------------------------------------------------

def test_compaction_shrinks_and_keeps_content(test_image: Path, no_leftovers: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Figures for real images: benchmarks/compaction.py."""
    source, which = test_image, "test image"
    results = {c: compact(source, no_leftovers / f"{c}.qcow2", c) for c in ("none", "zlib", "zstd")}
    with capsys.disabled():
        print(f"\ncompaction of the {which} ({results['none'].before_bytes / 2**20:.0f} MiB on disk):")
        for name, result in results.items():
            print(f"  {name:5} {result.after_bytes / 2**20:7.1f} MiB  {result.seconds:5.2f} s")
    assert results["zstd"].after_bytes < results["none"].after_bytes * 0.8
    assert results["zlib"].after_bytes < results["none"].after_bytes * 0.8
    for result in results.values():
        assert sh("qemu-img", "compare", source, result.path).returncode == 0

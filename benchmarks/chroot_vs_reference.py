"""`snapbuild chroot` against the reference sequence of the original shell pipeline (issue #6), side by side.

Both sides start from the same base image, grow it to the same size and apply the same customisation: the
actions of the test recipe tests/recipes/chroot-demo for debian-12 with mirror profile `upstream` (every download
from deb.debian.org) — its files (apt sources, /etc/snapbuild-demo/greeting.conf, the unit, a cloud-init drop-in),
its packages (`less`) and its enabled service. The reference reads them from the same Plan, so both sides stay
the same when the recipe changes.

The reference sequence, step by step as the old pipeline ran it: cp the base, `qemu-img resize`, attach, grow
(`sgdisk -e`, `growpart`, `e2fsck -f -y`, `resize2fs`), mount the root and bind /dev /dev/pts /proc /sys, copy the
host's /etc/resolv.conf in, `chroot apt-get update && apt-get install -y PACKAGES` (plus the files and
`systemctl enable`), `apt-get clean`, unmount, detach, `qemu-img convert -O qcow2 -c` (zlib, the default; no
trimming). Without nbd (as on the test host) the old pipeline attached a raw copy: `qemu-img convert -O raw`, then
`losetup -P` (+ `partx -a` where the kernel does not scan loop devices), and captured from that raw file.

snapbuild's side is `python3 -m snapbuild --recipes-dir tests/recipes chroot chroot-demo --distro debian-12
--mirrors upstream --base BASE --size SIZE -o OUT --force`, run from the repository with PYTHONPATH set to it.

Runs alternate (reference, snapbuild, reference, snapbuild, …) so that drift on the host (load, mirror speed)
hits both. Figures: wall time, output file size, snapbuild's peak memory; medians and the ratios
snapbuild/reference against the goals of the issue: time ≤ 0.5×, size ≤ 0.9×, snapbuild's peak memory < 150 MB.
Everything happens in a temporary directory under /var/tmp that is removed at the end; the base is only read.

    sudo python3 benchmarks/chroot_vs_reference.py [--runs 2] [--base IMAGE] [--size 3G]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from snapbuild import actions
from snapbuild.plan import Plan, plan_from_names, shipped_recipes_dir
from snapbuild.recipes import Library

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "tests" / "recipes"
RECIPE = "chroot-demo"
DISTRO = "debian-12"
PROFILE = "upstream"
DEFAULT_BASE = Path("/var/cache/snapbuild-test/debian-12-base.qcow2")
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
BINDS = ("dev", "dev/pts", "proc", "sys")
GOAL_TIME, GOAL_SIZE, GOAL_MEMORY = 0.5, 0.9, 150 * 10**6
MIB = 2**20


class BenchError(Exception):
    """A side failed: the message says what, the run is over (after cleanup)."""


@dataclass(kw_only=True)
class Run:
    side: str                       # "reference" or "snapbuild"
    number: int
    seconds: float
    size: int                       # output file, bytes
    virtual_size: int
    steps: list[tuple[str, float]] = field(default_factory=list)
    peak_rss: int | None = None     # snapbuild's python process: VmHWM, bytes
    tree_rss: int | None = None     # largest process in snapbuild's tree (wait4's ru_maxrss), bytes
    attach: str = ""


# ---- host commands ---------------------------------------------------------------------------------------

def sh(argv: Sequence[str | Path], *, check: bool = True, env: dict[str, str] | None = None,
       timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env, timeout=timeout,
                          check=False)
    if check and done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise BenchError(f"{' '.join(map(str, argv))} exited {done.returncode}:\n{tail}")
    return done


class Steps:
    """Times the named steps of the reference sequence."""

    def __init__(self) -> None:
        self.timings: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.timings.append((name, time.monotonic() - started))


def mounts_under(top: Path) -> list[str]:
    prefix = str(top).rstrip("/") + "/"
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        target = line.split()[1].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        if target.startswith(prefix) or target == str(top):
            found.append(target)
    return found


def loops_under(top: Path) -> list[str]:
    listing = sh(["losetup", "--list", "--noheadings", "--raw", "--output", "NAME,BACK-FILE"], check=False).stdout
    prefix = str(top).rstrip("/") + "/"
    return [line for line in listing.splitlines() if " " in line and line.split(" ", 1)[1].startswith(prefix)]


def umount(target: Path, patience: float = 10.0) -> None:
    """umount, retrying while busy; a lazy unmount as the last resort (said out loud)."""
    deadline = time.monotonic() + patience
    while True:
        done = sh(["umount", target], check=False, timeout=60)
        if done.returncode == 0 or str(target) not in mounts_under(target.parent):
            return
        if "busy" not in done.stderr or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    print(f"  warning: {target} stays busy ({done.stderr.strip()}): lazy unmount", file=sys.stderr)
    sh(["umount", "-l", target], timeout=60)


def scan_partitions(device: str, timeout: float = 10.0) -> None:
    """Make the kernel show every partition of `device`: `partx -u`, then `partx -a` for each one missing (the
    kernel here does not scan loop devices itself, and drops partitions when the table is rewritten)."""
    sh(["partx", "-u", device], check=False, timeout=60)
    in_table = {int(n) for n in sh(["partx", "-g", "-o", "NR", device], check=False).stdout.split() if n.isdigit()}
    name = Path(device).name
    deadline = time.monotonic() + timeout
    while missing := sorted(n for n in in_table if not Path(f"/sys/block/{name}/{name}p{n}").exists()):
        if time.monotonic() > deadline:
            raise BenchError(f"{device}: the kernel does not show partitions {missing}")
        for number in missing:
            sh(["partx", "-a", "--nr", str(number), device], check=False, timeout=60)
        time.sleep(0.05)
    deadline = time.monotonic() + timeout
    while not all(Path(f"/dev/{name}p{n}").exists() for n in in_table):
        if time.monotonic() > deadline:
            raise BenchError(f"{device}: no device nodes for partitions {sorted(in_table)}")
        time.sleep(0.05)


def virtual_size(image: Path) -> int:
    return int(json.loads(sh(["qemu-img", "info", "--output=json", "-U", image]).stdout)["virtual-size"])


# ---- the reference sequence --------------------------------------------------------------------------------

def reference(plan: Plan, base: Path, size: str, tmp: Path, number: int) -> Run:
    work = tmp / f"ref{number}"
    work.mkdir()
    out = work / "out.qcow2"
    steps = Steps()
    started = time.monotonic()
    with contextlib.ExitStack() as undo:
        with steps.step("cp base"):
            sh(["cp", base, work / "work.qcow2"])
        with steps.step("qemu-img resize"):
            sh(["qemu-img", "resize", work / "work.qcow2", size])
        with steps.step("attach (convert to raw, losetup -P)"):
            raw = work / "disk.raw"
            sh(["qemu-img", "convert", "-O", "raw", work / "work.qcow2", raw])
            device = sh(["losetup", "--find", "--show", "--partscan", raw]).stdout.strip()
            undo.callback(sh, ["losetup", "--detach", device], timeout=60)
            scan_partitions(device)
            root_number = root_partition(device)
        part = f"{device}p{root_number}"
        with steps.step("grow (sgdisk, growpart, e2fsck, resize2fs)"):
            sh(["sgdisk", "-e", device])
            scan_partitions(device)
            done = sh(["growpart", device, str(root_number)], check=False)
            if done.returncode != 0 and "NOCHANGE" not in done.stdout:
                raise BenchError(f"growpart {device} {root_number}: {done.stdout.strip()} {done.stderr.strip()}")
            scan_partitions(device)
            fsck = sh(["e2fsck", "-f", "-y", part], check=False)
            if fsck.returncode >= 4:                        # 1 and 2: errors corrected
                raise BenchError(f"e2fsck {part} exited {fsck.returncode}: {fsck.stdout.strip()[-500:]}")
            sh(["resize2fs", part])
        with steps.step("mount + binds"):
            mnt = work / "root"
            mnt.mkdir()
            sh(["mount", part, mnt])
            undo.callback(umount, mnt)
            for inside in BINDS:
                sh(["mount", "--bind", f"/{inside}", mnt / inside])
                undo.callback(umount, mnt / inside)
                # Not in the old pipeline, costs nothing: keeps mounts below from propagating to the host.
                sh(["mount", "--make-rslave", mnt / inside])
            undo.enter_context(host_resolv_conf(mnt))
        with steps.step("write files"):
            write_files(plan, mnt)
        with steps.step("apt-get update"):
            sh(["chroot", mnt, "apt-get", "update"], env=APT_ENV)
        with steps.step("apt-get install -y"):
            packages = [p for a in plan.actions if isinstance(a, actions.InstallPackages) for p in a.packages]
            sh(["chroot", mnt, "apt-get", "install", "-y", *packages], env=APT_ENV)
        with steps.step("systemctl enable"):
            for action in plan.actions:
                if isinstance(action, actions.Service) and action.enabled:
                    sh(["chroot", mnt, "systemctl", "enable", action.name], env=APT_ENV)
        with steps.step("apt-get clean"):
            sh(["chroot", mnt, "apt-get", "clean"], env=APT_ENV)
        with steps.step("unmount + detach"):
            undo.close()
    with steps.step("qemu-img convert -c (zlib)"):
        sh(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-c", raw, out])
    seconds = time.monotonic() - started
    return Run(side="reference", number=number, seconds=seconds, size=out.stat().st_size,
               virtual_size=virtual_size(out), steps=steps.timings, attach="raw copy + losetup -P")


def root_partition(device: str) -> int:
    """The partition whose file system is labelled cloudimg-rootfs, else the largest ext4 one."""
    name = Path(device).name
    found: list[tuple[int, int, str]] = []          # (size, number, label)
    for part in sorted(Path(f"/sys/block/{name}").glob(f"{name}p*")):
        number = int(part.name.removeprefix(f"{name}p"))
        probe = sh(["blkid", "-p", "-o", "export", f"/dev/{part.name}"], check=False).stdout
        values = dict(line.split("=", 1) for line in probe.splitlines() if "=" in line)
        if values.get("TYPE") == "ext4":
            found.append((int((part / "size").read_text()), number, values.get("LABEL", "")))
    for _, number, label in found:
        if label == "cloudimg-rootfs":
            return number
    if not found:
        raise BenchError(f"{device}: no ext4 partition")
    return max(found)[1]


@contextlib.contextmanager
def host_resolv_conf(mnt: Path) -> Iterator[None]:
    """The host's resolv.conf in the image while apt runs; the image's own (a symlink or a file) comes back
    after, so the reference image carries no host resolver (restoring was not in the old pipeline; it is free)."""
    target = mnt / "etc/resolv.conf"
    aside = target.with_name("resolv.conf.bench-orig")
    had = os.path.lexists(target)
    if had:
        os.rename(target, aside)
    try:
        shutil.copyfile("/etc/resolv.conf", target)      # follows the host's symlink: its real servers
        yield
    finally:
        if os.path.lexists(target):
            target.unlink()
        if had:
            os.rename(aside, target)


def write_files(plan: Plan, mnt: Path) -> None:
    """The plan's files (and removals), copied in before apt runs, as the pipeline copied its overlay."""
    for action in plan.actions:
        if isinstance(action, actions.WriteFile):
            write_in(mnt, action)
        elif isinstance(action, actions.RemoveFiles):
            for path in action.paths:
                (mnt / path.lstrip("/")).unlink(missing_ok=True)
        elif not isinstance(action, actions.AptUpdate | actions.InstallPackages | actions.Service):
            raise BenchError(f"the reference sequence cannot do {type(action).__name__}: use a simpler recipe")


def write_in(mnt: Path, action: actions.WriteFile) -> None:
    path = mnt / action.path.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, action.mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(action.content)
    os.chmod(path, action.mode)
    if action.owner != "root:root":
        sh(["chroot", mnt, "chown", action.owner, action.path])


# ---- snapbuild's side ----------------------------------------------------------------------------------------

def snapbuild(python: str, base: Path, size: str, tmp: Path, number: int) -> Run:
    work = tmp / f"snap{number}"
    work.mkdir()
    out = work / "out.qcow2"
    argv = [python, "-m", "snapbuild", "--recipes-dir", str(RECIPES), "chroot", RECIPE, "--distro", DISTRO,
            "--mirrors", PROFILE, "--base", str(base), "--size", size, "-o", str(out), "--force"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = work / "snapbuild.stderr"
    started = time.monotonic()
    with log.open("wb") as err:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err)
    try:
        peak, tree, status = watch(proc, argv)
    finally:
        if proc.returncode is None:                         # interrupted: let snapbuild run its own undo
            proc.terminate()
            try:
                proc.wait(timeout=180)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    seconds = time.monotonic() - started
    if status != 0:
        tail = "\n".join(log.read_text(errors="replace").strip().splitlines()[-40:])
        raise BenchError(f"snapbuild chroot exited {status} after {seconds:.1f} s:\n  $ {' '.join(argv)}\n{tail}")
    manifest = json.loads(out.with_name(out.name + ".manifest.json").read_text())
    return Run(side="snapbuild", number=number, seconds=seconds, size=out.stat().st_size,
               virtual_size=virtual_size(out), peak_rss=peak, tree_rss=tree, attach=str(manifest.get("attach")),
               steps=[(s["name"], float(s["seconds"])) for s in manifest.get("steps", [])])


def watch(proc: subprocess.Popen[bytes], argv: list[str]) -> tuple[int, int, int]:
    """Wait for `proc`; return (peak RSS of that python process, largest RSS in its process tree, exit code).

    Peak RSS: VmHWM from /proc/PID/status, polled every 20 ms. VmHWM is the kernel's high-water mark of the
    process's own resident set, so the last sample already holds every earlier peak; only growth in the last
    20 ms before exit could be missed (snapbuild is printing its result then). Not RUSAGE_CHILDREN nor
    `/usr/bin/time -v`: their ru_maxrss is the largest of the process *and its waited-for descendants*
    (qemu-img, apt-get, dpkg...), not snapbuild's own. That figure is still shown, from wait4(), as "largest in
    tree". A sample counts only once /proc/PID/cmdline is our argv (before exec the child still has our
    memory), and the child is reaped only after the sampler stopped (waitid WNOWAIT), so its pid cannot be reused
    under the sampler.
    """
    status_file, cmdline_file = Path(f"/proc/{proc.pid}/status"), Path(f"/proc/{proc.pid}/cmdline")
    wanted = "\0".join(argv) + "\0"
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            try:
                if cmdline_file.read_text() == wanted:
                    for line in status_file.read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            peak = max(peak, int(line.split()[1]) * 1024)
            except OSError:
                pass
            stop.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)   # exited, not reaped: the pid stays ours
    finally:
        stop.set()
        sampler.join()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return peak, usage.ru_maxrss * 1024, proc.returncode


# ---- report -----------------------------------------------------------------------------------------------------

def mib(n: float) -> str:
    return f"{n / MIB:7.1f} MiB"


def print_run(run: Run) -> None:
    memory = ""
    if run.peak_rss is not None and run.tree_rss is not None:
        memory = f"   peak RSS {mib(run.peak_rss)} (largest in tree {mib(run.tree_rss).strip()})"
    print(f"run {run.number} {run.side:9}  {run.seconds:7.1f} s  {mib(run.size)}{memory}", flush=True)
    for name, seconds in run.steps:
        print(f"      {name:44} {seconds:7.1f} s")


def report(runs: list[Run]) -> None:
    ref = [r for r in runs if r.side == "reference"]
    snap = [r for r in runs if r.side == "snapbuild"]
    ref_time, snap_time = statistics.median(r.seconds for r in ref), statistics.median(r.seconds for r in snap)
    ref_size, snap_size = statistics.median(r.size for r in ref), statistics.median(r.size for r in snap)
    peaks = [r.peak_rss or 0 for r in snap]
    time_ratio, size_ratio = snap_time / ref_time, snap_size / ref_size
    print(f"\nmedians over {len(ref)} run(s) each:")
    print(f"  reference  {ref_time:7.1f} s  {mib(ref_size)}")
    print(f"  snapbuild  {snap_time:7.1f} s  {mib(snap_size)}   peak RSS median {mib(statistics.median(peaks))},"
          f" max {mib(max(peaks)).strip()}")
    virtual = {r.virtual_size for r in runs}
    if len(virtual) != 1:
        print(f"  warning: the outputs differ in virtual size: {sorted(virtual)}")
    print("goals (issue #6), snapbuild / reference:")
    print(f"  time    {time_ratio:5.2f}×  (goal ≤ {GOAL_TIME}×)   {'met' if time_ratio <= GOAL_TIME else 'NOT met'}")
    print(f"  size    {size_ratio:5.2f}×  (goal ≤ {GOAL_SIZE}×)   {'met' if size_ratio <= GOAL_SIZE else 'NOT met'}")
    print(f"  memory  {max(peaks) / 10**6:5.1f} MB peak (goal < {GOAL_MEMORY // 10**6} MB)   "
          f"{'met' if max(peaks) < GOAL_MEMORY else 'NOT met'}")


# ---- main ---------------------------------------------------------------------------------------------------------

def interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def remove_tmp(tmp: Path) -> None:
    """Never recurse into a mount (a bind of /dev would take the host's /dev along) or under a loop device."""
    left = mounts_under(tmp) + loops_under(tmp)
    if left:
        print(f"NOT removing {tmp}: still in use: {', '.join(left)}", file=sys.stderr)
        return
    sh(["rm", "-rf", "--one-file-system", "--", tmp], timeout=600)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2, help="runs per side, alternating (default 2)")
    parser.add_argument("--base", type=Path, default=DEFAULT_BASE, help=f"base qcow2 (default {DEFAULT_BASE})")
    parser.add_argument("--size", default="3G", help="virtual size of the result (default 3G)")
    parser.add_argument("--python", default="python3", help="interpreter for `-m snapbuild` (default python3)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (loop devices, mounts, chroot): run it with sudo")
    if args.runs < 1:
        sys.exit("--runs must be at least 1")
    base = args.base.absolute()
    if not base.is_file():
        sys.exit(f"base image not found: {base}")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)
    plan = plan_from_names(library=Library([RECIPES, shipped_recipes_dir()]), recipe_name=RECIPE,
                           distro_name=DISTRO, profile_name=PROFILE, config_variables={}, set_values={})
    packages = [p for a in plan.actions if isinstance(a, actions.InstallPackages) for p in a.packages]
    before = base.stat()
    tmp = Path(tempfile.mkdtemp(prefix="snapbuild-bench-", dir="/var/tmp"))
    runs: list[Run] = []
    try:
        print(f"base {base} ({mib(before.st_size).strip()}, {virtual_size(base) / 2**30:.1f} GiB virtual), "
              f"target {args.size}, recipe {RECIPE} ({DISTRO}, mirrors {PROFILE}): packages {' '.join(packages)},"
              f" {len(plan.files)} files")
        print("reference: cp, qemu-img resize; no nbd here, so it attaches as the old pipeline had to without nbd:"
              " qemu-img convert -O raw + losetup -P/partx -a, and compresses that raw file"
              " (qemu-img convert -O qcow2 -c, zlib, no trim)")
        print(f"snapbuild: {args.python} -m snapbuild chroot (default compression zstd; seals and trims)")
        print(f"peak RSS: VmHWM of the snapbuild python process itself; load average at start "
              f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs\n", flush=True)
        for n in range(1, args.runs + 1):
            runs.append(reference(plan, base, args.size, tmp, n))
            print_run(runs[-1])
            runs.append(snapbuild(args.python, base, args.size, tmp, n))
            print_run(runs[-1])
        report(runs)
        print(f"snapbuild attached with: {', '.join(sorted({r.attach for r in runs if r.side == 'snapbuild'}))}")
    except BenchError as error:
        sys.exit(f"benchmark failed: {error}")
    finally:
        remove_tmp(tmp)
        after = base.stat()
        if (after.st_size, after.st_mtime_ns, after.st_ino) != (before.st_size, before.st_mtime_ns, before.st_ino):
            print(f"WARNING: the base {base} changed during the benchmark", file=sys.stderr)


if __name__ == "__main__":
    main()

"""`snapbuild local` against Packer's `qemu` builder: same base image, same sealing work, wall time and size.

Usage (root; the hygiene check mounts the outputs read-only):

    python3 benchmarks/packer_vs_local.py [--runs N] [--base IMAGE]

Both sides boot the same Debian 12 cloud image under TCG with QEMU user networking restricted to the host
(`restrict=on`, SSH forwarded on 127.0.0.1 only), both write a compressed qcow2 of the same disk size:

- snapbuild: `python3 -m snapbuild local base --distro debian-12 --mirrors upstream …` (the `base` recipe has
  no provisioning of its own, so this is snapbuild's sealing alone; zstd compression, its default).
- Packer (Debian's 1.6.6, JSON template below): `disk_image`, a NoCloud seed that gives the image's default
  user a per-run key, a shell provisioner with the sealing a Packer user typically writes (SEAL_SCRIPT),
  `disk_compression` (qemu-img's zlib). Packer's default netdev forwards SSH on every interface, so the
  template replaces it through `qemuargs`; VNC is disabled and `-display none` keeps QEMU from falling back
  to a VNC server of its own. The QEMU command line Packer ran is checked while it runs.

Runs alternate (packer, snapbuild, packer, …). Printed: the commands, per-run wall time and bytes on disk,
medians, the ratios against the goals (time ≤ 0.9×, size ≤ 0.6× Packer's), and the violation codes
`snapbuild inspect` finds in each output. Everything lives in one temp dir that is removed at the end; a
QEMU left behind by a failed run (same process group as the command this script started) is killed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_BASE = Path("/var/cache/snapbuild-test/debian-12-base.qcow2")
PACKER = "/usr/bin/packer"
DISK_SIZE = "4096M"        # the base recipe's disk_size_gb (`snapbuild plan base --distro debian-12`: 4 GB)
MEMORY_MB = 2048
CPUS = 2
COMMAND_TIMEOUT = 45 * 60  # one whole build under TCG on a busy host
GOAL_TIME = 0.9
GOAL_SIZE = 0.6

# The Packer user's typical sealing script: what an image meant for a marketplace needs at the least.
SEAL_SCRIPT = """\
#!/bin/sh
# Typical last provisioner of a Packer qemu build: make the image safe to boot as many instances.
set -eu
cloud-init status --wait >/dev/null || true   # first boot must be finished before its state is cleaned
cloud-init clean --logs --seed                # next boot is a first boot again
truncate -s 0 /etc/machine-id                 # a new machine-id per instance
rm -f /etc/ssh/ssh_host_*                     # new host keys per instance
rm -f /home/debian/.ssh/authorized_keys       # the builder key (the SSH session stays open for shutdown)
sync
"""

# Cloud-init user-data on the NoCloud seed: the image's default user (debian) gets this run's key.
USER_DATA = """\
#cloud-config
locale: C.UTF-8
ssh_pwauth: false
ssh_authorized_keys:
  - {public_key}
"""

PACKER_TEMPLATE: dict[str, object] = {
    "variables": {"base_url": "", "seed_iso": "", "ssh_key": "", "output_dir": "", "seal_script": ""},
    "builders": [{
        "type": "qemu",
        "disk_image": True,
        "iso_url": "{{user `base_url`}}",
        "iso_checksum": "none",
        "format": "qcow2",
        "disk_size": DISK_SIZE,
        "disk_compression": True,
        "accelerator": "tcg",
        "memory": MEMORY_MB,
        "cpus": CPUS,
        "headless": True,
        "disable_vnc": True,
        "vnc_bind_address": "127.0.0.1",
        "communicator": "ssh",
        "ssh_username": "debian",
        "ssh_private_key_file": "{{user `ssh_key`}}",
        "ssh_timeout": "30m",
        "shutdown_command": "sudo poweroff",
        "shutdown_timeout": "10m",
        "output_directory": "{{user `output_dir`}}",
        "vm_name": "packer.qcow2",
        "qemuargs": [
            # Replaces Packer's `user,id=user.0,hostfwd=tcp::PORT-:22` (every interface, unrestricted).
            ["-netdev", "user,id=user.0,restrict=on,hostfwd=tcp:127.0.0.1:{{ .SSHHostPort }}-:22"],
            ["-device", "virtio-net,netdev=user.0"],
            # -cdrom, not -drive: a -drive here would replace Packer's own -drive for the disk.
            ["-cdrom", "{{user `seed_iso`}}"],
            ["-display", "none"],
            ["-vnc", "none"],   # Packer 1.6.6 adds `-vnc 127.0.0.1:N` even with disable_vnc
        ],
    }],
    "provisioners": [{
        "type": "shell",
        "script": "{{user `seal_script`}}",
        "execute_command": "chmod +x {{ .Path }}; sudo env {{ .Vars }} {{ .Path }}",
    }],
}


@dataclass(frozen=True, kw_only=True)
class Result:
    tool: str
    run: int
    seconds: float
    output: Path
    size: int                   # bytes on disk
    violations: tuple[str, ...] = ()


@dataclass(kw_only=True)
class Bench:
    base: Path
    work: Path
    results: list[Result] = field(default_factory=list)
    commands: dict[str, str] = field(default_factory=dict)
    packer_qemu_argv: str = ""


# ---------------------------------------------------------------- running commands

class CommandFailed(RuntimeError):
    pass


def own_group_pids(pgid: int) -> list[int]:
    """Processes still in the process group this script created for one command (QEMU left behind)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid:      # fields after "(comm)": state, ppid, pgrp, …
            pids.append(int(entry.name))
    return pids


def kill_leftovers(pgid: int) -> None:
    for pid in own_group_pids(pgid):
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            print(f"  killing leftover {name} (pid {pid})", file=sys.stderr)
            os.kill(pid, signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


def run_timed(argv: Sequence[str], *, log: Path, env: Mapping[str, str] | None = None, cwd: Path | None = None,
              watch: Path | None = None) -> float:
    """Run one whole command, output to `log`; its wall time. `watch` is Packer's log, checked as it grows."""
    start = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                env=dict(env) if env is not None else None, start_new_session=True)
    try:
        while proc.poll() is None:
            if time.monotonic() - start > COMMAND_TIMEOUT:
                raise CommandFailed(f"{argv[0]} still running after {COMMAND_TIMEOUT} s")
            if watch is not None:
                check_packer_qemu(watch)
            time.sleep(0.2)
        seconds = time.monotonic() - start
    except BaseException:
        stop(proc)
        raise
    finally:
        kill_leftovers(proc.pid)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise CommandFailed(f"{shlex.join(argv)} exited {proc.returncode}:\n{tail}")
    return seconds


def stop(proc: subprocess.Popen[bytes]) -> None:
    """TERM (both tools clean up on it), then KILL whatever is left of the command's process group."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


QEMU_LINE = re.compile(r"Executing /\S*qemu-system-x86_64: \[\]string\{(.*)\}")


def packer_qemu_argv(log: Path) -> str | None:
    try:
        match = QEMU_LINE.search(log.read_text(errors="replace"))
    except OSError:
        return None
    return match.group(1) if match else None


def check_packer_qemu(log: Path) -> None:
    """Stop at once if Packer started QEMU with anything but restricted, loopback-only networking."""
    argv = packer_qemu_argv(log)
    if argv is None:
        return
    netdevs = re.findall(r'"-netdev", "([^"]*)"', argv)
    vnc = re.findall(r'"-vnc", "([^"]*)"', argv)
    if (not netdevs or any("restrict=on" not in n or "hostfwd=tcp:127.0.0.1:" not in n for n in netdevs)
            or any(v != "none" and not v.startswith("127.") for v in vnc)):
        raise CommandFailed(f"Packer started QEMU with networking this host forbids: {argv}")


# ---------------------------------------------------------------- the two sides

def packer_run(bench: Bench, n: int, base_copy: Path) -> Result:
    run_dir = bench.work / f"packer-{n}"
    run_dir.mkdir()
    key = run_dir / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"packer-bench-{n}", "-f", str(key)],
                   check=True)
    seed_dir = run_dir / "seed"
    seed_dir.mkdir()
    (seed_dir / "user-data").write_text(USER_DATA.format(public_key=key.with_suffix(".pub").read_text().strip()))
    (seed_dir / "meta-data").write_text(f"instance-id: iid-packer-bench-{uuid.uuid4()}\n"
                                        f"local-hostname: packer-bench\n")
    seed = run_dir / "seed.iso"
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-o", str(seed), "-V", "cidata", "-J", "-r",
                    str(seed_dir)], check=True, capture_output=True)
    template = bench.work / "packer.json"
    script = bench.work / "seal.sh"
    out_dir = run_dir / "out"
    log = run_dir / "packer-debug.log"
    extra = {"CHECKPOINT_DISABLE": "1", "PACKER_CONFIG_DIR": str(bench.work / "packer-config"),
             "PACKER_CACHE_DIR": str(bench.work / "packer-cache"), "TMPDIR": str(run_dir),
             "PACKER_LOG": "1", "PACKER_LOG_PATH": str(log)}
    argv = [PACKER, "build", "-color=false", "-var", f"base_url=file://{base_copy}", "-var", f"seed_iso={seed}",
            "-var", f"ssh_key={key}", "-var", f"output_dir={out_dir}", "-var", f"seal_script={script}",
            str(template)]
    bench.commands.setdefault("packer", " ".join(f"{k}={shlex.quote(v)}" for k, v in extra.items())
                              + f" {shlex.join(argv)}")
    seconds = run_timed(argv, log=run_dir / "packer.out", env={**os.environ, **extra}, watch=log)
    bench.packer_qemu_argv = bench.packer_qemu_argv or (packer_qemu_argv(log) or "")
    output = out_dir / "packer.qcow2"
    return Result(tool="packer", run=n, seconds=seconds, output=output, size=bytes_on_disk(output))


def snapbuild_run(bench: Bench, n: int) -> Result:
    output = bench.work / f"snapbuild-{n}.qcow2"
    # --network isolated: restrict=on, as Packer's template here (and the network rule for this machine).
    argv = [sys.executable, "-m", "snapbuild", "local", "base", "--distro", "debian-12", "--mirrors", "upstream",
            "--network", "isolated", "--base", str(bench.base), "-o", str(output), "--force"]
    # SNAPBUILD_ACCEL=tcg: straight to TCG, as Packer's `accelerator: tcg` (no KVM attempt on this host).
    env = {**os.environ, "PYTHONPATH": str(REPO), "SNAPBUILD_ACCEL": "tcg"}
    bench.commands.setdefault("snapbuild", f"cd {REPO} && SNAPBUILD_ACCEL=tcg PYTHONPATH={REPO} "
                              f"{shlex.join(argv)}")
    seconds = run_timed(argv, log=bench.work / f"snapbuild-{n}.out", env=env, cwd=REPO)
    return Result(tool="snapbuild", run=n, seconds=seconds, output=output, size=bytes_on_disk(output))


def bytes_on_disk(path: Path) -> int:
    return path.stat().st_blocks * 512


def inspect_codes(image: Path) -> tuple[str, ...]:
    """Violation codes `snapbuild inspect --json` finds (it exits non-zero when there are any)."""
    done = subprocess.run([sys.executable, "-m", "snapbuild", "inspect", "--json", str(image)], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=600)
    try:
        report = json.loads(done.stdout)
    except ValueError:
        return (f"inspect failed (exit {done.returncode}): {done.stderr.strip()[-300:]}",)
    return tuple(v["code"] for v in report["violations"])


# ---------------------------------------------------------------- report

def mib(size: float) -> str:
    return f"{size / 2**20:8.1f} MiB"


def report(bench: Bench) -> None:
    print("\ncommands:")
    for tool, command in bench.commands.items():
        print(f"  {tool}: {command}")
    if bench.packer_qemu_argv:
        print(f"  QEMU as Packer ran it: {bench.packer_qemu_argv}")
    print(f"\nPacker template:\n{json.dumps(PACKER_TEMPLATE, indent=2)}")
    print(f"\nPacker provisioner (the sealing a Packer user typically writes):\n{SEAL_SCRIPT}")

    print(f"per run (base {bench.base}, {DISK_SIZE} disk, {MEMORY_MB} MiB, {CPUS} CPUs, TCG):")
    for r in bench.results:
        print(f"  {r.tool:9} run {r.run}: {r.seconds:8.1f} s  {mib(r.size)} ({r.size} bytes)")

    medians: dict[str, tuple[float, float]] = {}
    for tool in ("packer", "snapbuild"):
        mine = [r for r in bench.results if r.tool == tool]
        if mine:
            medians[tool] = (statistics.median(r.seconds for r in mine), statistics.median(r.size for r in mine))
    print("\nmedians:")
    for tool, (seconds, size) in medians.items():
        print(f"  {tool:9} {seconds:8.1f} s  {mib(size)}")
    if len(medians) == 2:
        time_ratio = medians["snapbuild"][0] / medians["packer"][0]
        size_ratio = medians["snapbuild"][1] / medians["packer"][1]
        print("\nratios snapbuild / packer:")
        print(f"  time {time_ratio:5.2f}x  (goal ≤ {GOAL_TIME}x: {'met' if time_ratio <= GOAL_TIME else 'MISSED'})")
        print(f"  size {size_ratio:5.2f}x  (goal ≤ {GOAL_SIZE}x: {'met' if size_ratio <= GOAL_SIZE else 'MISSED'})")

    print("\nhygiene (`snapbuild inspect --json`, violation codes):")
    for r in bench.results:
        codes = ", ".join(sorted(set(r.violations))) or "none"
        print(f"  {r.tool:9} run {r.run}: {len(r.violations)} violation(s): {codes}")


# ---------------------------------------------------------------- main

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="runs per tool, alternating (default 1)")
    parser.add_argument("--base", type=Path, default=DEFAULT_BASE, help=f"base image (default {DEFAULT_BASE})")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("run as root: `snapbuild inspect` mounts the outputs")
    for tool in (PACKER, "qemu-system-x86_64", "qemu-img", "xorriso", "ssh-keygen"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found (apt-get install packer qemu-system-x86 qemu-utils xorriso openssh-client)")
    if not args.base.is_file():
        sys.exit(f"base image {args.base} not found")

    work = Path(tempfile.mkdtemp(prefix="packer-vs-local-"))
    bench = Bench(base=args.base.resolve(), work=work)
    failed = False
    try:
        (work / "packer.json").write_text(json.dumps(PACKER_TEMPLATE, indent=2))
        (work / "seal.sh").write_text(SEAL_SCRIPT)
        base_copy = work / "base.qcow2"      # Packer reads its "ISO" from here; the real base stays untouched
        shutil.copyfile(bench.base, base_copy)
        for n in range(1, args.runs + 1):
            for tool in ("packer", "snapbuild"):
                print(f"{tool} run {n} …", file=sys.stderr, flush=True)
                result = packer_run(bench, n, base_copy) if tool == "packer" else snapbuild_run(bench, n)
                print(f"  {result.seconds:.1f} s, {result.size} bytes; inspecting …", file=sys.stderr, flush=True)
                bench.results.append(replace(result, violations=inspect_codes(result.output)))  # not timed
    except CommandFailed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        failed = True
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        failed = True
    finally:
        report(bench)
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

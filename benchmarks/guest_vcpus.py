"""How long a TCG guest of the tiers' base image takes to finish cloud-init with one vCPU and with two, alone and
beside a neighbour: another two-vCPU guest booting over and over, as the vm tier's guests run beside the
integration tier's in .ci/run. It weighed the test cloud's real-guest flavors (r1.*): QEMU runs each vCPU on a
thread of its own (MTTCG), which helps while the other tier waits. (They stay at one vCPU: on QEMU 7.2 a 2-vCPU
guest's kernel panicked at boot in a CI run, an int3 oops while it patched its own code across CPUs.)

Each run boots a fresh overlay of the base with a NoCloud seed (restrict=on, no forward: the guest sends nothing)
and times launch to cloud-init's "finished at" line on the serial console. Runs alternate (1, 2, 1, 2, ...);
medians and the ratio are printed.

    PYTHONPATH=. python benchmarks/guest_vcpus.py [--runs 3] [--neighbour] [--base PATH]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from snapbuild.local.qemu import VMSpec, build_argv
from tests import imagecache

FINISHED = b"finished at"
USER_DATA = "#cloud-config\n{}\n"
DEADLINE_S = 900.0


def seed_iso(directory: Path) -> Path:
    (directory / "user-data").write_text(USER_DATA)
    (directory / "meta-data").write_text("instance-id: iid-bench-vcpus\nlocal-hostname: bench\n")
    seed = directory / "seed.iso"
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-V", "cidata", "-J", "-r", "-o", str(seed),
                    str(directory / "user-data"), str(directory / "meta-data")], check=True, capture_output=True)
    return seed


def boot_seconds(base: Path, seed: Path, work: Path, cpus: int, name: str,
                 stop: threading.Event | None = None) -> float:
    """Launch to cloud-init's final line (or until `stop`), then the guest is killed; seconds, or nan."""
    disk, serial = work / f"{name}.qcow2", work / f"{name}.serial"
    disk.unlink(missing_ok=True)
    serial.unlink(missing_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(disk)], check=True)
    spec = VMSpec(disk=disk, memory_mb=1536, cpus=cpus, seed=seed, serial_log=serial, network="isolated",
                  forward_ssh=False, name=f"snapbuild-bench-{name}")
    argv = build_argv(spec, accel="tcg", ssh_port=0, qmp_socket=work / f"{name}.qmp")
    started = time.monotonic()
    proc = subprocess.Popen(argv, cwd=work, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while time.monotonic() - started < DEADLINE_S and not (stop is not None and stop.is_set()):
            if serial.exists() and FINISHED in serial.read_bytes():
                return time.monotonic() - started
            if proc.poll() is not None:
                break
            time.sleep(0.25)
        return float("nan")
    finally:
        proc.kill()
        proc.wait()


def neighbour(base: Path, seed: Path, work: Path, stop: threading.Event, measuring: list[int],
              times: dict[int, list[float]]) -> None:
    """Boots in a loop; each boot's seconds filed under the vCPUs of the measured guest it ran beside."""
    while not stop.is_set():
        beside = measuring[0]
        seconds = boot_seconds(base, seed, work, 2, "neighbour", stop)
        if not stop.is_set() and beside == measuring[0] and beside in times:
            times[beside].append(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--neighbour", action="store_true", help="boot another 2-vCPU guest in a loop meanwhile")
    parser.add_argument("--base", type=Path, default=None, help="base image (default: the tiers' debian-13)")
    args = parser.parse_args()
    base = args.base or imagecache.tier_base_image()
    with tempfile.TemporaryDirectory(prefix="bench-vcpus-") as tmp:
        work = Path(tmp)
        seed = seed_iso(work)
        stop = threading.Event()
        measuring = [0]
        beside: dict[int, list[float]] = {1: [], 2: []}
        other = threading.Thread(target=neighbour, args=(base, seed, work, stop, measuring, beside), daemon=True)
        if args.neighbour:
            other.start()
            time.sleep(30)    # the neighbour past its firmware, into its kernel and userspace
        figures: dict[int, list[float]] = {1: [], 2: []}
        try:
            for run in range(args.runs):
                for cpus in (1, 2):
                    measuring[0] = cpus
                    seconds = boot_seconds(base, seed, work, cpus, f"measured-{cpus}")
                    figures[cpus].append(seconds)
                    print(f"run {run + 1}: {cpus} vCPU: {seconds:.1f} s to cloud-init's final stage", flush=True)
        finally:
            stop.set()
            if other.is_alive():
                other.join(timeout=60)
    one, two = statistics.median(figures[1]), statistics.median(figures[2])
    print(f"{'beside a 2-vCPU neighbour' if args.neighbour else 'alone'}, {args.runs} runs each, medians: "
          f"1 vCPU {one:.1f} s, 2 vCPUs {two:.1f} s: {two / one:.2f}x")
    if args.neighbour:
        for cpus, times in beside.items():
            shown = ", ".join(f"{t:.0f} s" for t in times) or "none finished within one measured boot"
            print(f"the neighbour's boots beside the {cpus}-vCPU guest: {shown}")


if __name__ == "__main__":
    main()

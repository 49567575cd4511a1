"""ship over broken links vs an unbroken rsync (needs root: network namespaces from tests/netns.py).

Chain: here → relay → controller (network namespaces, real sshd, real rsync). The file goes to the controller
through the relay (ProxyJump). During `ship` each link is broken twice by killing its ssh session by PID:
link 1 (here → relay) at 30 % and 70 %, link 2 (relay → controller) at 15 % and 50 %.

Figures: bytes on each link (the namespaces' rx counters, TCP/SSH overhead included) and rsync's own count vs
the file size (goal ≤ 1.15×), and ship's wall time (hashing and verification included) vs one plain unbroken
`rsync` of the same file over the same chain (goal ≤ 1.3×).

    sudo python3 benchmarks/ship_resume.py [--mb 300] [--bwlimit 20m]
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from snapbuild.sshkeys import KeyPair
from snapbuild.transfer.ship import ShipRequest, ship
from snapbuild.transfer.sshchain import Hop, SSHOptions, render_config
from tests.netns import NetnsHost, host_chain, netns_available


def size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def breaker(target: Path, size: int, plan: list[tuple[float, NetnsHost]], stop: threading.Event,
            log: list[str]) -> None:
    for fraction, host in sorted(plan, key=lambda p: p[0]):
        while size_of(target) < fraction * size:
            if stop.wait(0.02):
                return
        log.append(f"{fraction:.0%}: killed {host.kill_sessions()} session process(es) on {host.name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=300)
    parser.add_argument("--bwlimit", help="rsync --bwlimit for both runs (e.g. 20m: a WAN-like link)")
    args = parser.parse_args()
    if reason := netns_available():
        sys.exit(f"cannot run: {reason}")
    logging.basicConfig(level=logging.DEBUG if os.environ.get("BENCH_DEBUG") else logging.WARNING,
                        format="  %(relativeCreated)8.0f ms %(message)s")
    size = args.mb * 1024 * 1024
    key = KeyPair.generate("bench")
    with tempfile.TemporaryDirectory(prefix="sb-bench-") as tmp:
        directory = Path(tmp)
        file = directory / "image.qcow2"
        with file.open("wb") as out:
            for _ in range(args.mb):
                out.write(os.urandom(1024 * 1024))
        with key.write_private(directory) as key_path, \
                host_chain(directory, 2, authorized=[key.public_openssh]) as chain:
            relay, controller = chain.hosts
            options = SSHOptions(identity=key_path, known_hosts=chain.known_hosts, connect_timeout=5,
                                 alive_interval=2, alive_count=3)
            hops = (Hop(host=relay.address, user="root"), Hop(host=controller.address, user="root"))

            # baseline: one plain rsync, same chain, nothing broken
            config = directory / "ssh_config"
            config.write_text(render_config(hops, options))
            plain_dest = directory / "plain"
            plain_dest.mkdir()
            rx0 = (relay.rx_bytes(), controller.rx_bytes())
            started = time.monotonic()
            limit = [f"--bwlimit={args.bwlimit}"] if args.bwlimit else []
            subprocess.run(["rsync", "--stats", *limit, "-e", f"ssh -F {config}", "--", str(file),
                            f"snapbuild-hop1:{plain_dest}/"], check=True, capture_output=True)
            plain_seconds = time.monotonic() - started
            plain_wire = (relay.rx_bytes() - rx0[0], controller.rx_bytes() - rx0[1])

            dest = directory / "ship"
            request = ShipRequest(file=file, via=hops[:1], to=hops[1], dest=str(dest), ssh=options,
                                  io_timeout=30, bwlimit=args.bwlimit)
            events: list[str] = []
            stop = threading.Event()
            watcher = threading.Thread(target=breaker, daemon=True, args=(
                dest / file.name, size, [(0.15, controller), (0.3, relay), (0.5, controller), (0.7, relay)],
                stop, events))
            rx0 = (relay.rx_bytes(), controller.rx_bytes())
            watcher.start()
            started = time.monotonic()
            try:
                result = ship(request)
            finally:
                stop.set()
                watcher.join(timeout=10)
            ship_seconds = time.monotonic() - started
            wire = (relay.rx_bytes() - rx0[0], controller.rx_bytes() - rx0[1])

    hop = result.hops[-1]
    print(f"file: {size / 2**20:.0f} MiB, chain: here → relay → controller, "
          f"rate limit: {args.bwlimit or 'none (veth, CPU-bound)'}")
    for line in events:
        print(f"  break at {line}")
    print(f"plain rsync, unbroken:   {plain_seconds:6.1f} s   link bytes {plain_wire[0] / size:.3f}× / "
          f"{plain_wire[1] / size:.3f}× the file")
    print(f"ship, {len(events)} breaks:          {ship_seconds:6.1f} s   link bytes {wire[0] / size:.3f}× / "
          f"{wire[1] / size:.3f}× the file   (goal ≤ 1.15×)")
    print(f"  rsync attempts {hop.attempts}, rsync-counted bytes {hop.sent / size:.3f}× the file (goal ≤ 1.15×)")
    print(f"  time ratio ship/plain: {ship_seconds / plain_seconds:.2f}  (goal ≤ 1.3; ship also hashes the "
          f"file here and at the controller)")


if __name__ == "__main__":
    main()

"""Test hosts as network namespaces on this machine, in a chain (needs root, iproute2, openssh-server):

    root ns ── veth ── host0 ── veth ── host1 ── veth ── host2

Link k is the private subnet 10.231.(B+k).0/24 (B picked free at random): the left end is .1, the right .2, so
host k is `10.231.(B+k).2` to its left neighbour. Only the root namespace and host0 share a link: host1 and
beyond are reachable from here only THROUGH host0's sshd (ProxyJump), which is the point. No forwarding is
enabled anywhere. Each host runs its own `sshd -D` (port 22 in its namespace) with a test host key.

    with host_chain(tmp, 2, authorized=[client.public_openssh]) as chain:
        chain.hosts[0].address, chain.known_hosts, chain.hosts[1].drop_input() …

Everything (sshd by PID, veths, namespaces, iptables rules) goes away on exit, also when the body fails.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.sshd import SSHD, LocalSSHD, descendants, prepare_sshd

PREFIX = "10.231"


def netns_available() -> str | None:
    """None when namespaces with sshd can be made here, else why not (for pytest.skip)."""
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    for tool in ("ip", "iptables", "rsync"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    if not os.access(SSHD, os.X_OK):
        return f"{SSHD} not installed (apt-get install openssh-server)"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _free_base(count: int) -> int:
    """A third octet B such that 10.231.B…B+count-1 are not in use on this machine (other tests may run)."""
    routes = subprocess.run(["ip", "-4", "route", "show"], check=True, capture_output=True, text=True).stdout
    names = subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, text=True).stdout
    for _ in range(200):
        base = random.randrange(10, 250 - count)
        if all(f"{PREFIX}.{base + k}." not in routes for k in range(count)) and f"sbn{base}-" not in names:
            return base
    raise RuntimeError("no free 10.231.x.0/24 subnet")


@dataclass
class NetnsHost:
    name: str                      # namespace name
    address: str                   # where its left neighbour reaches it
    left_if: str                   # its interface towards the left neighbour
    sshd: LocalSSHD | None = None
    drops: int = 0

    def argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(argv), check=check, capture_output=True, text=True)

    def in_mounts(self, argv: Sequence[str]) -> list[str]:
        """`argv` in this host's mount namespace (`ip netns exec` gives each host its own: a mount made there,
        e.g. a tiny tmpfs as a full disk, is invisible from the root namespace)."""
        assert self.sshd and self.sshd.process
        return ["nsenter", "-t", str(self.sshd.process.pid), "-m", *argv]

    def path(self, path: Path) -> Path:
        """`path` as this host sees it, reachable from here (through /proc/PID/root)."""
        assert self.sshd and self.sshd.process
        return Path(f"/proc/{self.sshd.process.pid}/root") / path.relative_to("/")

    def rx_bytes(self) -> int:
        """Bytes received on the link from the left neighbour (the wire, TCP/IP and SSH overhead included)."""
        return int(self.run(["cat", f"/sys/class/net/{self.left_if}/statistics/rx_bytes"]).stdout)

    def drop_input(self) -> None:
        """Silently drop every packet arriving here (a dead link, not a refused one)."""
        self.run(["iptables", "-I", "INPUT", "-j", "DROP"])
        self.drops += 1

    def restore_input(self) -> None:
        while self.drops:
            self.run(["iptables", "-D", "INPUT", "-j", "DROP"], check=False)
            self.drops -= 1

    def kill_sessions(self) -> int:
        """Kill every ssh session this host's sshd serves (by PID), keeping the listener: a broken connection."""
        assert self.sshd and self.sshd.process
        pids = descendants(self.sshd.process.pid)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        return len(pids)

    def session_count(self) -> int:
        assert self.sshd and self.sshd.process
        return len(descendants(self.sshd.process.pid))


@dataclass
class HostChain:
    hosts: list[NetnsHost]
    known_hosts: Path
    root_if: str
    directory: Path
    veths: list[str] = field(default_factory=list)


def _start_sshd(host: NetnsHost, directory: Path, authorized: Sequence[str], listen: Sequence[str]) -> None:
    sshd = prepare_sshd(directory, authorized={"root": list(authorized)}, port=22,
                        extra_config=[*(f"ListenAddress {a}" for a in listen),
                                      "ClientAliveInterval 2", "ClientAliveCountMax 3"])
    with sshd.log_path.open("ab") as log:
        sshd.process = subprocess.Popen(host.argv([SSHD, "-D", "-e", "-f", str(directory / "sshd_config")]),
                                        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
    host.sshd = sshd
    deadline = time.monotonic() + 15
    while not all(f"Server listening on {a} port 22" in sshd.log() for a in listen):
        if sshd.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"sshd in {host.name} did not start:\n{sshd.log()}")
        time.sleep(0.05)  # polling a daemon's start-up, bounded by the deadline


@contextlib.contextmanager
def host_chain(directory: Path, count: int, *, authorized: Sequence[str]) -> Iterator[HostChain]:
    base = _free_base(count)
    tag = f"sbn{base}-{os.getpid() % 10000}"
    hosts: list[NetnsHost] = []
    root_if = f"{tag}r"
    chain = HostChain(hosts=hosts, known_hosts=directory / "known_hosts", root_if=root_if, directory=directory)
    try:
        for k in range(count):
            name = f"{tag}h{k}"
            _ip("netns", "add", name)
            host = NetnsHost(name=name, address=f"{PREFIX}.{base + k}.2", left_if=f"{tag}{k}L")
            hosts.append(host)
            host.run(["ip", "link", "set", "lo", "up"])
        for k, host in enumerate(hosts):
            left = root_if if k == 0 else f"{tag}{k - 1}R"
            _ip("link", "add", left, "type", "veth", "peer", "name", host.left_if)
            chain.veths.append(left)
            _ip("link", "set", host.left_if, "netns", host.name)
            left_argv = ["ip"] if k == 0 else ["ip", "netns", "exec", hosts[k - 1].name, "ip"]
            if k > 0:
                _ip("link", "set", left, "netns", hosts[k - 1].name)
            subprocess.run([*left_argv, "addr", "add", f"{PREFIX}.{base + k}.1/24", "dev", left], check=True)
            subprocess.run([*left_argv, "link", "set", left, "up"], check=True)
            host.run(["ip", "addr", "add", f"{host.address}/24", "dev", host.left_if])
            host.run(["ip", "link", "set", host.left_if, "up"])
        lines = []
        for k, host in enumerate(hosts):
            listen = [host.address, *([f"{PREFIX}.{base + k + 1}.1"] if k + 1 < count else [])]
            _start_sshd(host, directory / host.name, authorized, listen)
            assert host.sshd
            lines += [f"{a} {host.sshd.host_key.public_openssh}" for a in listen]
        chain.known_hosts.write_text("\n".join(lines) + "\n")
        yield chain
    finally:
        for host in hosts:
            host.restore_input()
            if host.sshd:
                host.sshd.stop()
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", root_if)
        for host in hosts:
            subprocess.run(["ip", "netns", "del", host.name], check=False, capture_output=True)


@contextlib.contextmanager
def loopback_netns(tag: str) -> Iterator[NetnsHost]:
    """A network namespace with nothing but its loopback (up): whatever runs inside reaches only servers that run
    inside too. A QEMU with user-mode NAT in it can therefore send nothing off this machine.

    On exit every process still in the namespace (ours: it is new) is killed by PID, then the namespace goes.
    """
    name = f"sb{tag}{os.getpid() % 100000}"
    _ip("netns", "add", name)
    host = NetnsHost(name=name, address="127.0.0.1", left_if="lo")
    try:
        host.run(["ip", "link", "set", "lo", "up"])
        yield host
    finally:
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, check=False).stdout
        for pid in pids.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), 9)
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@contextlib.contextmanager
def bridge_in(host: NetnsHost, *, port: int, to_port: int, socket_dir: Path) -> Iterator[None]:
    """Port `port` on the namespace's loopback leads to 127.0.0.1:`to_port` of the root namespace, and to
    nothing else: two socat processes joined by a unix socket (a file, which crosses network namespaces). The
    namespace gains exactly one service; no route, no veth, no forwarding."""
    sock = socket_dir / f"bridge-{port}.sock"
    outside = subprocess.Popen(["socat", f"UNIX-LISTEN:{sock},fork,unlink-early", f"TCP:127.0.0.1:{to_port}"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    inside = subprocess.Popen(host.argv(["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr",
                                         f"UNIX-CONNECT:{sock}"]),
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not (sock.exists() and host.run(["sh", "-c", f"ss -Hltn 'sport = :{port}' | grep -q ."],
                                              check=False).returncode == 0):
            if time.monotonic() > deadline or outside.poll() is not None or inside.poll() is not None:
                raise RuntimeError(f"the bridge to 127.0.0.1:{to_port} did not come up")
            time.sleep(0.1)   # socat starts in milliseconds; bounded by the deadline
        yield
    finally:
        for proc in (inside, outside):
            proc.kill()
            proc.wait(timeout=10)
        sock.unlink(missing_ok=True)

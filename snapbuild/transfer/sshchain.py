"""The SSH side of `ship`: hops (`user@host[:port]`) and one generated ssh_config in which hop N is reached with
`ProxyJump` through hops 0…N-1. Every connection starts on this host; relays only forward TCP (sshd's
direct-tcpip), so no key, agent or credential is ever placed on a relay."""

from __future__ import annotations

import re
import shlex
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from snapbuild.errors import UserError

_HOP = re.compile(r"(?:(?P<user>[^@\s:]+)@)?(?P<host>[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\])(?::(?P<port>\d+))?")


@dataclass(frozen=True, kw_only=True)
class Hop:
    host: str
    user: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text: str, *, default_port: int | None = None) -> Hop:
        m = _HOP.fullmatch(text.strip())
        if not m:
            raise UserError(f"not a host: {text!r}", hint="use user@host or user@host:port")
        port = int(m.group("port")) if m.group("port") else default_port
        if port is not None and not 0 < port < 65536:
            # ssh would refuse its config with "Badly formatted port number" on every retry
            raise UserError(f"port {port} of {text.strip()!r} is out of range",
                            hint="a TCP port is 1-65535 (user@host:port, or --port for hops without one)")
        return cls(host=m.group("host").strip("[]"), user=m.group("user"), port=port)

    def __str__(self) -> str:
        where = f"{self.user}@{self.host}" if self.user else self.host
        return f"{where}:{self.port}" if self.port else where


def parse_hops(text: str, *, default_port: int | None = None) -> tuple[Hop, ...]:
    """`user@relay1,user@relay2` → hops, in order."""
    return tuple(Hop.parse(part, default_port=default_port) for part in text.split(",") if part.strip())


@dataclass(frozen=True, kw_only=True)
class SSHOptions:
    identity: Path | None = None
    known_hosts: Path | None = None       # None: the user's own known_hosts; host keys are always checked
    connect_timeout: int = 20
    alive_interval: int = 15
    alive_count: int = 3


class SSHChain:
    """hop i is `alias(i)` in a private ssh_config; `ssh_argv(i, remote_argv)` runs a command there."""

    def __init__(self, hops: Sequence[Hop], config: Path) -> None:
        self.hops = tuple(hops)
        self.config = config
        # hops that answered during this run: a refused connection to one of them later is a restarting sshd
        # or a flaky link (retried); to one that never answered, a wrong address (fails at once)
        self.reached: set[int] = set()

    def mark_reached(self, index: int) -> None:
        """Hop `index` answered, so every hop on the way to it did too."""
        self.reached.update(range(index + 1))

    def hop_in(self, text: str) -> int | None:
        """The hop ssh's message `text` names (`connect to host H port P`, `user@H:`), if any."""
        for i, hop in enumerate(self.hops):
            if f"connect to host {hop.host} port {hop.port or 22}:" in text:
                return i
        for i, hop in enumerate(self.hops):
            if f"@{hop.host}:" in text or f"hostname {hop.host}:" in text:
                return i
        return None

    @staticmethod
    def alias(index: int) -> str:
        return f"snapbuild-hop{index}"

    def describe(self, index: int) -> str:
        """How error messages name a hop: `root@10.0.0.5 (hop 2 of 2, via root@relay)`."""
        via = ", ".join(str(h) for h in self.hops[:index])
        return f"{self.hops[index]} (hop {index + 1} of {len(self.hops)}{', via ' + via if via else ''})"

    @property
    def ssh_command(self) -> list[str]:
        return ["ssh", "-F", str(self.config)]

    def rsh(self) -> str:
        """rsync's `-e` value (rsync splits it on spaces, honouring quotes)."""
        return shlex.join(self.ssh_command)

    def ssh_argv(self, index: int, remote_argv: Sequence[str] | None = None, *, script: str | None = None) -> list[str]:
        """ssh to hop `index`; the remote side gets a shell line made from an argv (quoted) or a small script."""
        line = script if script is not None else shlex.join(remote_argv or ["true"])
        return [*self.ssh_command, self.alias(index), "--", line]


def render_config(hops: Sequence[Hop], options: SSHOptions) -> str:
    """ssh_config text for the chain; ssh passes `-F` on to the ProxyJump children, so they read it too."""
    lines: list[str] = []
    for i, hop in enumerate(hops):
        lines += [f"Host {SSHChain.alias(i)}", f"  HostName {hop.host}"]
        if hop.user:
            lines.append(f"  User {hop.user}")
        if hop.port:
            lines.append(f"  Port {hop.port}")
        jump = ",".join(SSHChain.alias(j) for j in range(i))
        lines.append(f"  ProxyJump {jump or 'none'}")
        if i < len(hops) - 1:
            # a relay's onward connection failing ("channel 0: open failed: connect failed: Connection
            # refused") is logged at INFO: without it only "stdio forwarding failed" says anything went wrong
            lines.append("  LogLevel INFO")
    lines += [
        "Host *",
        "  BatchMode yes",                       # never prompt: a missing key is an error, not a hang
        "  StrictHostKeyChecking yes",           # host keys pinned in known_hosts (DESIGN rule 6)
        f"  ConnectTimeout {options.connect_timeout}",
        f"  ServerAliveInterval {options.alive_interval}",
        f"  ServerAliveCountMax {options.alive_count}",
        "  ControlMaster no",
        "  ForwardAgent no",                     # relays get nothing to log in elsewhere with
        "  LogLevel ERROR",
    ]
    if options.identity:
        lines += [f"  IdentityFile {options.identity}", "  IdentitiesOnly yes"]
    if options.known_hosts:
        lines.append(f"  UserKnownHostsFile {options.known_hosts}")
    return "\n".join(lines) + "\n"


@contextmanager
def ssh_chain(hops: Sequence[Hop], options: SSHOptions) -> Iterator[SSHChain]:
    """The chain with its config in a 0700 temp dir, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="snapbuild-ship-") as tmp:
        config = Path(tmp) / "ssh_config"
        config.write_text(render_config(hops, options))
        config.chmod(0o600)
        yield SSHChain(hops, config)

"""A real OpenSSH sshd on 127.0.0.1 for tests (needs root and openssh-server); reusable by any tier.

    with running_sshd(tmp_path, authorized={"root": [client.public_openssh]}) as sshd:
        guest = SSHGuest.connect(host="127.0.0.1", port=sshd.port, user="root", key=client,
                                 host_keys=[sshd.host_key.public_openssh], deadline=time.monotonic() + 10)

Every sshd started here is stopped by PID; `throwaway_user` makes a user with passwordless sudo and removes
it (and its sudoers drop-in and home) afterwards.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from snapbuild.sshkeys import KeyPair

SSHD = "/usr/sbin/sshd"


def descendants(pid: int) -> list[int]:
    """PIDs of all living descendants of `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sshd_available() -> str | None:
    """None when a test sshd can run here, else the reason it cannot (for pytest.skip)."""
    if os.geteuid() != 0:
        return "needs root to run sshd"
    if not os.access(SSHD, os.X_OK):
        return f"{SSHD} not installed (apt-get install openssh-server)"
    return None


@dataclass
class LocalSSHD:
    """A running sshd: where it listens, its host key, its log, and how to stop it."""

    port: int
    host_key: KeyPair
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.directory / "sshd.log"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def authorize(self, user: str, keys: Sequence[str]) -> None:
        """Let `user` log in with `keys` (read by sshd at each login, so this works while it runs)."""
        path = self.directory / "authorized_keys" / user
        path.write_text("".join(k + "\n" for k in keys))
        os.chmod(path, 0o644)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, *, timeout: float = 15.0) -> None:
        """Start sshd (in the foreground, -D) and wait until it answers with its banner."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.directory / "sshd_config")],
                                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited with {self.process.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                if s.recv(64).startswith(b"SSH-"):
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sshd on port {self.port} not ready after {timeout} s:\n{self.log()}")
            time.sleep(0.05)  # polling a local daemon's start-up, bounded by the deadline above

    def stop(self) -> None:
        """Stop the listener and every session process it forked, by PID."""
        if self.process is None:
            return
        # sessions call setsid(), so collect the whole tree before the listener dies and they are orphaned
        pids = [self.process.pid, *descendants(self.process.pid)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None


def prepare_sshd(directory: Path, *, authorized: Mapping[str, Sequence[str]], port: int | None = None,
                 host_key: KeyPair | None = None, extra_config: Sequence[str] = ()) -> LocalSSHD:
    """Write the config, host key and authorized_keys for an sshd in `directory`; do not start it yet.

    sshd reads authorized_keys as the user logging in: for non-root users every parent of `directory`
    must be traversable by them (pytest's tmp_path is not; use `tempfile.mkdtemp()` under /tmp).
    """
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir (Debian)
    host_key = host_key or KeyPair.generate("test-sshd-host")
    key_path = directory / "ssh_host_ed25519_key"
    key_path.write_text(host_key.private_openssh)
    os.chmod(key_path, 0o600)
    (directory / "ssh_host_ed25519_key.pub").write_text(host_key.public_openssh + "\n")
    keys_dir = directory / "authorized_keys"
    keys_dir.mkdir(exist_ok=True)
    for user, keys in authorized.items():
        (keys_dir / user).write_text("".join(k + "\n" for k in keys))
    os.chmod(keys_dir, 0o755)
    for f in keys_dir.iterdir():
        os.chmod(f, 0o644)
    os.chmod(directory, 0o755)  # sshd reads authorized_keys as the target user
    port = port or free_port()
    config = [
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {key_path}",
        f"PidFile {directory / 'sshd.pid'}",
        f"AuthorizedKeysFile {keys_dir}/%u",
        "StrictModes no",            # the temp dir is not a home directory
        "UsePAM no",                 # PAM session modules (loginuid) fail in containers
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes",
        "PermitRootLogin prohibit-password",
        "AllowTcpForwarding yes",    # for bastion tests
        "UseDNS no",
        "PrintMotd no",
        "MaxStartups 100",
        "LogLevel VERBOSE",
        "Subsystem sftp internal-sftp",
        *extra_config,
    ]
    (directory / "sshd_config").write_text("\n".join(config) + "\n")
    return LocalSSHD(port=port, host_key=host_key, directory=directory)


@contextlib.contextmanager
def running_sshd(directory: Path, *, authorized: Mapping[str, Sequence[str]], port: int | None = None,
                 host_key: KeyPair | None = None, extra_config: Sequence[str] = ()) -> Iterator[LocalSSHD]:
    sshd = prepare_sshd(directory, authorized=authorized, port=port, host_key=host_key, extra_config=extra_config)
    sshd.start()
    try:
        yield sshd
    finally:
        sshd.stop()


@contextlib.contextmanager
def throwaway_user(*, sudo: bool = True) -> Iterator[str]:
    """A fresh local user (own home, shell /bin/sh, no password, optional passwordless sudo); removed after."""
    name = f"sbt-{secrets.token_hex(4)}"
    home = Path(tempfile.mkdtemp(prefix=f"{name}-home-"))
    sudoers = Path("/etc/sudoers.d") / name
    # '*' (not '!'): sshd with UsePAM=no treats '!' as a locked account and refuses even key logins
    subprocess.run(["useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/bin/sh",
                    "--password", "*", "--user-group", name], check=True, capture_output=True)
    try:
        shutil.chown(home, name, name)
        if sudo:
            sudoers.write_text(f"{name} ALL=(ALL) NOPASSWD: ALL\n")
            os.chmod(sudoers, 0o440)
        yield name
    finally:
        sudoers.unlink(missing_ok=True)
        left = subprocess.run(["pgrep", "-u", name], check=False, capture_output=True, text=True).stdout.split()
        for pid in left:  # only this fresh user's processes, by PID
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["userdel", name], check=False, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)

"""`--on-error ask` as an operator meets it: `snapbuild build` on a real pseudo-terminal, a build that fails at
'connect' (this cloud's m1.small servers never run sshd), the question, and each answer carried out against the
real cloud: retry runs the step again, clean up leaves nothing, keep leaves the builder and a key to reach it,
and the printed cleanup command removes it. Every check of "nothing left" is made as admin."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cloudnames import BASE, DISTRO, EXTERNAL, FLAVOR, NETWORK
from openstack.connection import Connection

PROMPT = re.compile(r"step 'connect' failed: \[c\]lean up, \[r\]etry the step, \[k\]eep everything\? ")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


class Terminal:
    """A command on a pseudo-terminal (stdin, stdout and stderr): what it wrote so far, and typing into it."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        self.process = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                        start_new_session=True, close_fds=True)
        os.close(slave)
        self.text = ""

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.master, 65536)
        except OSError:          # EIO: the command ended and closed its side
            return False
        if not chunk:
            return False
        self.text += ANSI.sub("", chunk.decode(errors="replace"))
        return True

    def expect(self, pattern: re.Pattern[str], after: int, timeout: float) -> re.Match[str]:
        """The first match of `pattern` in what was written past offset `after`."""
        deadline = time.monotonic() + timeout
        while True:
            found = pattern.search(self.text, after)
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern.pattern!r} within {timeout:.0f} s; the terminal shows:\n"
                                     f"{self.text[-3000:]}")
            if not self._read(1.0) and self.process.poll() is not None:
                raise AssertionError(f"the command ended ({self.process.returncode}) before {pattern.pattern!r}:\n"
                                     f"{self.text[-3000:]}")

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\n")

    def finish(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            self._read(1.0)
        while self._read(0.2):      # what it wrote last
            if not select.select([self.master], [], [], 0)[0]:
                break
        if self.process.poll() is None:
            self.process.kill()
            raise AssertionError(f"still running after {timeout:.0f} s:\n{self.text[-3000:]}")
        return self.process.returncode

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        os.close(self.master)


@pytest.fixture
def terminal_build(tmp_path: Path, unique_name: str) -> Iterator[Terminal]:
    env = {**os.environ, "SNAPBUILD_STATE_DIR": str(tmp_path / "state"), "TERM": "dumb", "COLUMNS": "200"}
    term = Terminal([sys.executable, "-m", "snapbuild", "build", "docker-ce", "--distro", DISTRO,
                     "--mirrors", "upstream", "--base-image", BASE, "--flavor", FLAVOR, "--network", NETWORK,
                     "--floating-network", EXTERNAL, "--timeout-ssh", "15", "--name", unique_name,
                     "--on-error", "ask"], env)
    try:
        yield term
    finally:
        term.close()


def _build_id(text: str) -> str:
    """The build id (UTC stamp and 8 hex digits) in the names of the build's resources, as the ledger keeps it."""
    found = re.search(r"snapbuild-docker-ce-(\d{14}-[0-9a-f]{8})\b", text)
    assert found, text[-3000:]
    return found.group(1)


def _builders(admin: Connection, build_id: str) -> list[str]:
    found = [f"server {s.id} {s.status}" for s in admin.compute.servers(all_projects=True, tags="snapbuild")
             if (s.metadata or {}).get("snapbuild_build_id") == build_id]
    found += [f"floating IP {ip.id}" for ip in admin.network.ips(tags="snapbuild")
              if f"snapbuild:build_id={build_id}" in (ip.tags or [])]
    found += [f"security group {g.id}" for g in admin.network.security_groups(tags="snapbuild")
              if f"snapbuild:build_id={build_id}" in (g.tags or [])]
    return found


def test_ask_shows_how_to_get_in_retries_the_step_and_cleans_up_on_request(
        terminal_build: Terminal, admin_conn: Connection, tmp_path: Path) -> None:
    term = terminal_build
    first = term.expect(PROMPT, 0, timeout=600)
    before = term.text[:first.start()]
    build_id = _build_id(before)
    # How to reach the builder, before the question: the key written 0600 and the exact ssh command.
    key_line = re.search(r"builder key: (\S+) \(0600", before)
    assert key_line, before[-3000:]
    key_file = Path(key_line.group(1))
    assert key_file.parent == tmp_path / "state" / "builds" and key_file.stat().st_mode & 0o777 == 0o600
    assert key_file.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    login = re.search(r"log in with: (ssh .*)", before)
    assert login and f"-i {key_file}" in login.group(1), before[-3000:]
    assert _builders(admin_conn, build_id), "the builder must still exist while the operator decides"

    # retry: 'connect' runs again (and fails again: nothing ever answers); the question comes back once more.
    term.type("r")
    second = term.expect(PROMPT, first.end(), timeout=300)
    assert "step 'connect' failed" in term.text[first.end():second.start()]
    assert "builder key:" not in term.text[first.end():second.start()]   # said once is enough

    term.type("c")
    code = term.finish(timeout=600)
    assert code == 3, term.text[-3000:]
    assert _builders(admin_conn, build_id) == []
    assert not key_file.exists()            # the key went with the builder
    assert not list((tmp_path / "state" / "builds").glob("*.json"))   # the ledger is closed


def test_ask_keep_leaves_the_builder_reachable_and_the_printed_cleanup_removes_it(
        terminal_build: Terminal, admin_conn: Connection, tmp_path: Path) -> None:
    term = terminal_build
    asked = term.expect(PROMPT, 0, timeout=600)
    build_id = _build_id(term.text[:asked.start()])
    term.type("k")
    code = term.finish(timeout=300)
    assert code == 3, term.text[-3000:]
    after = term.text[asked.end():]
    assert "kept for debugging" in after
    command = re.search(r"remove them with: (snapbuild .*cleanup .*)", after)
    assert command and f"--build-id {build_id}" in command.group(1), after
    kept = _builders(admin_conn, build_id)
    assert any(k.startswith("server ") for k in kept), kept
    assert (tmp_path / "state" / "builds" / f"{build_id}.key").exists()

    env = {**os.environ, "SNAPBUILD_STATE_DIR": str(tmp_path / "state")}
    words = command.group(1).split()
    done = subprocess.run([sys.executable, "-m", "snapbuild", *words[1:]], capture_output=True, text=True, env=env,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    deadline = time.monotonic() + 120     # deletes are asynchronous in Nova
    while _builders(admin_conn, build_id) and time.monotonic() < deadline:
        time.sleep(2)
    assert _builders(admin_conn, build_id) == []

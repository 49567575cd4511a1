"""SSHGuest logic that needs no sshd: the remote command line, what counts as transient, connect deadlines."""

from __future__ import annotations

import shlex
import socket
import subprocess
import time

import paramiko
import pytest

from snapbuild.errors import BuildError
from snapbuild.guest.ssh import Bastion, HostKeyMismatch, SSHGuest, _is_transient, command_line
from snapbuild.sshkeys import KeyPair

NASTY = ["printf", "%s|", "a b", "it's", '"q"', "$HOME", "`id`", "x;y", "*", "", "new\nline"]


def test_command_line_quotes_every_argument_for_a_posix_shell() -> None:
    line = command_line(NASTY)
    assert line.endswith("; exit $?")
    out = subprocess.run(["sh", "-c", line], capture_output=True, check=True).stdout.decode()
    assert out == "".join(f"{a}|" for a in NASTY[2:])


def test_command_line_roundtrips_through_shlex() -> None:
    assert shlex.split(command_line(NASTY).removesuffix("; exit $?")) == NASTY


def test_non_root_commands_go_through_sudo_without_a_tty_prompt() -> None:
    assert shlex.split(command_line(["id"], as_root=True).removesuffix("; exit $?")) == ["sudo", "-n", "--", "id"]
    assert "sudo" not in command_line(["id"])


def test_env_goes_through_env_1_with_quoted_values() -> None:
    line = command_line(["sh", "-c", 'printf %s "$GREETING"'], env={"GREETING": "hello; world $x"})
    assert shlex.split(line.removesuffix("; exit $?"))[:2] == ["env", "GREETING=hello; world $x"]
    out = subprocess.run(["sh", "-c", line], capture_output=True, check=True).stdout.decode()
    assert out == "hello; world $x"


def test_env_names_that_are_not_identifiers_are_refused() -> None:
    with pytest.raises(ValueError, match="invalid environment"):
        command_line(["true"], env={"A=B": "x"})
    with pytest.raises(ValueError):
        command_line(["true"], env={"X; rm -rf /": "x"})


def test_timeout_wraps_the_remote_command_with_kill_after() -> None:
    line = command_line(["sleep", "9"], as_root=True, env={"A": "1"}, timeout=2.5, kill_after=10)
    assert shlex.split(line.removesuffix("; exit $?")) == [
        "sudo", "-n", "--", "env", "A=1", "timeout", "--kill-after=10", "2.5", "sleep", "9"]


def test_the_shell_reports_a_status_even_when_the_command_dies_by_a_signal() -> None:
    done = subprocess.run(["sh", "-c", command_line(["sh", "-c", "kill -KILL $$"])], check=False)
    assert done.returncode == 137


def test_empty_argv_is_refused() -> None:
    with pytest.raises(ValueError):
        command_line([])


@pytest.mark.parametrize("exc", [
    ConnectionRefusedError(111, "Connection refused"),
    ConnectionResetError(104, "Connection reset by peer"),
    TimeoutError("timed out"),
    EOFError(),
    paramiko.ssh_exception.NoValidConnectionsError({("127.0.0.1", 22): ConnectionRefusedError()}),
    paramiko.SSHException("Error reading SSH protocol banner[Errno 104] Connection reset by peer"),
    paramiko.AuthenticationException("Authentication failed."),
    paramiko.ChannelException(2, "Connect failed"),
])
def test_boot_time_failures_are_retried(exc: BaseException) -> None:
    assert _is_transient(exc)


@pytest.mark.parametrize("exc", [
    paramiko.BadHostKeyException("h", KeyPair.generate().to_paramiko(), KeyPair.generate().to_paramiko()),
    HostKeyMismatch("mismatch"),
    paramiko.SSHException("Incompatible ssh peer (no acceptable kex algorithm)"),
    socket.gaierror(-2, "Name or service not known"),
    ValueError("bug"),
])
def test_real_failures_are_not_retried(exc: BaseException) -> None:
    assert not _is_transient(exc)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket is closed


def test_connect_without_any_host_key_to_pin_fails_before_connecting() -> None:
    with pytest.raises(BuildError, match="no host key to pin"):
        SSHGuest.connect(host="127.0.0.1", port=_closed_port(), user="root", key=KeyPair.generate(),
                         host_keys=[], deadline=time.monotonic() + 5)


def test_connect_deadline_names_the_last_error_and_the_console_tail() -> None:
    sleeps: list[float] = []
    port = _closed_port()

    def recording_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        time.sleep(seconds)  # real time: the deadline is real

    start = time.monotonic()
    deadline = start + 4
    with pytest.raises(BuildError) as caught:
        SSHGuest.connect(host="127.0.0.1", port=port, user="root", key=KeyPair.generate(),
                         host_keys=[KeyPair.generate().public_openssh], deadline=deadline,
                         console=lambda: "boot line 1\nLogin prompt: builder login:", sleep=recording_sleep)
    text = str(caught.value)
    assert f"SSH to 127.0.0.1:{port} not ready after" in text
    assert "Connection refused" in text
    assert "builder login:" in text
    assert time.monotonic() <= deadline + 1  # gives up at the deadline, not after another full wait
    assert len(sleeps) >= 1 and all(s >= 1 for s in sleeps)  # never polls faster than once a second


def test_an_unreachable_bastion_is_named_in_the_error() -> None:
    bastion_port = _closed_port()
    bastion = Bastion(user="jump", host="127.0.0.1", port=bastion_port, key=KeyPair.generate(),
                      host_keys=(KeyPair.generate().public_openssh,))
    with pytest.raises(BuildError) as caught:
        SSHGuest.connect(host="10.0.0.5", port=22, user="root", key=KeyPair.generate(),
                         host_keys=[KeyPair.generate().public_openssh], bastion=bastion,
                         deadline=time.monotonic() + 2)
    text = str(caught.value)
    assert "SSH to 10.0.0.5:22 not ready after" in text
    assert f"bastion 127.0.0.1:{bastion_port}: " in text and "Connection refused" in text

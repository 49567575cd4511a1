"""SSHGuest against a real OpenSSH sshd on 127.0.0.1 (root: sshd, a throwaway sudo user, host-side checks)."""

from __future__ import annotations

import grp
import hashlib
import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapbuild.errors import BuildError, CommandFailed
from snapbuild.guest.cloudinit_wait import wait_for_cloud_init
from snapbuild.guest.ssh import Bastion, HostKeyMismatch, SSHGuest
from snapbuild.sshkeys import KeyPair
from tests import sshd as sshd_helper

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(sshd_helper.sshd_available() is not None, reason=str(sshd_helper.sshd_available())),
]

CLIENT = KeyPair.generate("snapbuild-test-client")


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    # not pytest's tmp_path: sshd reads authorized_keys as the login user, who must traverse every parent
    path = Path(tempfile.mkdtemp(prefix="snapbuild-sshd-test-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def sshd(workdir: Path) -> Iterator[sshd_helper.LocalSSHD]:
    with sshd_helper.running_sshd(workdir / "main", authorized={"root": [CLIENT.public_openssh]}) as server:
        yield server


def connect(server: sshd_helper.LocalSSHD, *, user: str = "root", key: KeyPair = CLIENT,
            within: float = 15.0, **kwargs: object) -> SSHGuest:
    return SSHGuest.connect(host="127.0.0.1", port=server.port, user=user, key=key,
                            host_keys=[server.host_key.public_openssh], deadline=time.monotonic() + within,
                            **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def guest(sshd: sshd_helper.LocalSSHD) -> Iterator[SSHGuest]:
    with connect(sshd) as g:
        yield g


@pytest.fixture
def scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="snapbuild-ssh-scratch-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def wait_until_gone(marker: str, within: float = 20.0) -> bool:
    """Poll the host's process table (the sshd is local) until no process mentions `marker`."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if subprocess.run(["pgrep", "-f", marker], check=False, capture_output=True).returncode != 0:
            return True
        time.sleep(0.2)
    return False


# --- commands -----------------------------------------------------------------------------------------


def test_output_streams_line_by_line_while_the_command_runs(guest: SSHGuest, tmp_path: Path) -> None:
    """A handshake, not a stopwatch: the command only goes on once we have received its early lines (the
    sshd is local, so the flag file we write is what the remote command waits for)."""
    flag = tmp_path / "early-lines-received"
    seen: list[tuple[str, str]] = []

    def on_output(stream: str, line: str) -> None:
        seen.append((stream, line))
        if line == "two":
            flag.touch()

    script = (f"echo one; echo two >&2; i=0; while [ ! -e {flag} ] && [ $i -lt 600 ]; do sleep 0.1; "
              "i=$((i+1)); done; [ -e " + str(flag) + " ] || echo 'not streamed'; echo three; echo four >&2")
    done = guest.run(["sh", "-c", script], on_output=on_output)
    assert seen == [("stdout", "one"), ("stderr", "two"), ("stdout", "three"), ("stderr", "four")]
    assert done.stdout == "one\nthree\n" and done.stderr == "two\nfour\n"


def test_exit_code_is_returned_without_check(guest: SSHGuest) -> None:
    done = guest.run(["sh", "-c", "echo out; echo err >&2; exit 3"], check=False)
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")


def test_failure_with_check_raises_with_the_last_lines_and_the_exit_code(guest: SSHGuest) -> None:
    with pytest.raises(CommandFailed) as caught:
        guest.run(["sh", "-c", "for i in $(seq 1 40); do echo line $i; done; exit 7"])
    err = caught.value
    assert err.returncode == 7 and not err.timed_out
    assert "exited 7" in str(err) and guest.name in str(err)
    assert "line 40" in err.output_tail and "line 21" in err.output_tail
    assert "line 20\n" not in err.output_tail + "\n"


def test_stdin_reaches_the_command_byte_for_byte(guest: SSHGuest) -> None:
    data = secrets.token_bytes(3 * 1024 * 1024)  # larger than the SSH window: exercises flow control
    done = guest.run(["sha256sum"], stdin=data)
    assert done.stdout.split()[0] == hashlib.sha256(data).hexdigest()


def test_stdin_is_closed_when_none_is_given(guest: SSHGuest) -> None:
    done = guest.run(["cat"], timeout=10)  # would hang until the timeout if stdin stayed open
    assert done.stdout == ""


def test_env_reaches_the_command(guest: SSHGuest) -> None:
    done = guest.run(["sh", "-c", 'printf "%s|%s" "$GREETING" "$OTHER"'],
                     env={"GREETING": "hello; 'world' $HOME", "OTHER": ""})
    assert done.stdout == "hello; 'world' $HOME|"


def test_arguments_arrive_unchanged(guest: SSHGuest) -> None:
    args = ["a b", "it's", '"q"', "$HOME", "`id`", "x;y", "*", "", "new\nline"]
    done = guest.run(["python3", "-c", "import json, sys; print(json.dumps(sys.argv[1:]))", *args])
    assert done.stdout.strip() == json.dumps(args)


def test_timeout_raises_timed_out_and_leaves_nothing_running(guest: SSHGuest) -> None:
    marker = f"300.{secrets.randbelow(10**6)}"
    start = time.monotonic()
    with pytest.raises(CommandFailed) as caught:
        guest.run(["sleep", marker], timeout=1)
    assert caught.value.timed_out
    assert time.monotonic() - start < 60    # the 300 s command did not run to its end
    assert wait_until_gone(f"sleep {marker}")


def test_a_command_that_ignores_sigterm_is_killed_after_the_grace(guest: SSHGuest) -> None:
    guest.kill_after = 1
    marker = f"301.{secrets.randbelow(10**6)}"
    with pytest.raises(CommandFailed) as caught:
        guest.run(["sh", "-c", f"trap '' TERM; sleep {marker}; echo survived"], timeout=1)
    assert caught.value.timed_out
    assert "survived" not in caught.value.output_tail.splitlines()
    assert wait_until_gone(f"sleep {marker}")


def test_a_dropped_connection_is_reported_as_lost(sshd: sshd_helper.LocalSSHD) -> None:
    with connect(sshd) as g:
        # killing the session's sshd process (the nearest sshd ancestor) drops the connection
        script = ('p=$$; while [ "$(ps -o comm= -p "$p")" != sshd ]; do p=$(ps -o ppid= -p "$p" | tr -d " "); done; '
                  'echo before; kill -KILL "$p"; sleep 5')
        with pytest.raises(BuildError, match="connection was lost") as caught:
            g.run(["sh", "-c", script], timeout=30)
        assert not isinstance(caught.value, CommandFailed)


class _Stop(KeyboardInterrupt):
    pass


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop


@pytest.mark.parametrize("work", ["output", "stdin", "idle"])
def test_an_interrupt_during_a_command_ends_it_at_once_and_never_inside_paramiko(sshd: sshd_helper.LocalSSHD,
                                                                                 work: str) -> None:
    """Ctrl-C while a command streams output, takes a large stdin, or sleeps: the interrupt surfaces within
    seconds, from snapbuild's own wait (an exception raised inside paramiko can leave its locks held, and the
    next close then hangs: a real build once ignored SIGINT for 15 minutes that way) and the connection is
    closed. Ten interrupts at different moments of each kind of work."""
    payload = b"x" * (256 << 20)    # made before any timer runs: the interrupt must land in the command
    old = signal.signal(signal.SIGINT, _raise_stop)
    try:
        for attempt in range(10):
            marker = f"302.{secrets.randbelow(10**6)}"
            with connect(sshd) as g:
                timer = threading.Timer(0.2 + attempt * 0.07, os.kill, (os.getpid(), signal.SIGINT))
                timer.start()
                start = time.monotonic()
                with pytest.raises(_Stop) as caught:
                    if work == "output":
                        g.run(["sh", "-c", f"yes streamed-line | head -c 400000000; sleep {marker}"], timeout=120)
                    elif work == "stdin":
                        g.write_file(f"/tmp/snapbuild-interrupt-{marker}", payload)
                    else:
                        g.run(["sleep", marker], timeout=120)
                timer.join()
                assert time.monotonic() - start < 15, f"attempt {attempt}: the interrupt took too long"
                frames = [f.f_code.co_filename for f, _ in traceback.walk_tb(caught.value.__traceback__)]
                assert not [f for f in frames if "/paramiko/" in f], frames
                assert not g.connected
    finally:
        signal.signal(signal.SIGINT, old)
        # without a terminal, sshd leaves a session's processes running when its client goes (a build deletes
        # the server instead); these are this test's own
        subprocess.run(["pkill", "-f", "sleep 302[.]"], check=False)
        for leftover in Path("/tmp").glob("snapbuild-interrupt-*"):
            leftover.unlink()
        for leftover in Path("/tmp").glob(".snapbuild-interrupt-*"):
            leftover.unlink()


# --- files --------------------------------------------------------------------------------------------


def test_write_file_then_read_file_roundtrip_with_mode_and_owner(guest: SSHGuest, scratch: Path) -> None:
    target = scratch / "deep" / "er" / "file.bin"
    data = bytes(range(256)) * 64 + b"\r\nno newline at end"
    guest.write_file(str(target), data, mode=0o640, owner="nobody:nogroup")
    info = target.stat()  # the sshd is local: check on the host directly
    assert (info.st_mode & 0o7777, info.st_uid, info.st_gid) == (
        0o640, pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid)
    assert target.read_bytes() == data
    assert guest.read_file(str(target)) == data
    assert guest.exists(str(target))


def test_write_file_replaces_a_file_and_leaves_no_temp_files(guest: SSHGuest, scratch: Path) -> None:
    target = scratch / "config"
    target.write_text("old\n")
    guest.write_file(str(target), b"new\n", mode=0o600)
    assert target.read_text() == "new\n"
    assert target.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in scratch.iterdir()) == ["config"]


def test_read_file_of_a_missing_path_raises_file_not_found(guest: SSHGuest, scratch: Path) -> None:
    with pytest.raises(FileNotFoundError):
        guest.read_file(str(scratch / "missing"))


def test_exists_counts_a_dangling_symlink(guest: SSHGuest, scratch: Path) -> None:
    (scratch / "dangling").symlink_to(scratch / "nowhere")
    assert guest.exists(str(scratch / "dangling"))
    assert not guest.exists(str(scratch / "nowhere"))


# --- connecting ---------------------------------------------------------------------------------------


def test_a_wrong_pinned_host_key_is_refused_at_once(sshd: sshd_helper.LocalSSHD) -> None:
    impostor = KeyPair.generate()
    start = time.monotonic()
    with pytest.raises(HostKeyMismatch) as caught:
        SSHGuest.connect(host="127.0.0.1", port=sshd.port, user="root", key=CLIENT,
                         host_keys=[impostor.public_openssh], deadline=time.monotonic() + 60)
    assert time.monotonic() - start < 30  # no retries until the 60 s deadline
    text = str(caught.value)
    assert "does not match the pinned host key" in text and "man-in-the-middle" in text
    assert sshd.host_key.fingerprint_sha256 in text and impostor.fingerprint_sha256 in text


def test_accepting_any_host_key_is_possible_but_loud(sshd: sshd_helper.LocalSSHD,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="snapbuild.guest.ssh")
    with SSHGuest.connect(host="127.0.0.1", port=sshd.port, user="root", key=CLIENT, host_keys=[],
                          accept_any_host_key=True, deadline=time.monotonic() + 15) as g:
        assert g.run(["true"]).returncode == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("UNVERIFIED HOST KEY" in w and sshd.host_key.fingerprint_sha256 in w for w in warnings)


def test_connect_waits_for_an_sshd_that_starts_late(workdir: Path) -> None:
    late = sshd_helper.prepare_sshd(workdir / f"late-{secrets.token_hex(3)}",
                                    authorized={"root": [CLIENT.public_openssh]})
    starter = threading.Timer(2.5, late.start)  # the scenario: the port opens 2.5 s after we begin
    start = time.monotonic()
    starter.start()
    try:
        with connect(late, within=30) as g:
            assert g.run(["echo", "up"]).stdout == "up\n"
        assert time.monotonic() - start >= 2.5
    finally:
        starter.join()
        late.stop()


def test_deadline_names_the_last_error_when_the_key_is_refused(sshd: sshd_helper.LocalSSHD) -> None:
    stranger = KeyPair.generate()  # as if cloud-init never installed the builder key
    with pytest.raises(BuildError) as caught:
        connect(sshd, key=stranger, within=3, console=lambda: "cloud-init[1]: ERROR ssh_authkey_fingerprints")
    text = str(caught.value)
    assert f"SSH to 127.0.0.1:{sshd.port} not ready after" in text
    assert "Authentication failed" in text
    assert "ssh_authkey_fingerprints" in text
    assert caught.value.hint and "cloud-init" in caught.value.hint


def test_connect_through_a_bastion(sshd: sshd_helper.LocalSSHD, workdir: Path) -> None:
    target_key = KeyPair.generate("target-host")
    with sshd_helper.running_sshd(workdir / f"target-{secrets.token_hex(3)}", host_key=target_key,
                                  authorized={"root": [CLIENT.public_openssh]}) as target:
        bastion = Bastion(user="root", host="127.0.0.1", port=sshd.port, key=CLIENT,
                          host_keys=(sshd.host_key.public_openssh,))
        with SSHGuest.connect(host="127.0.0.1", port=target.port, user="root", key=CLIENT,
                              host_keys=[target_key.public_openssh], bastion=bastion,
                              deadline=time.monotonic() + 15) as g:
            assert g.run(["echo", "via bastion"]).stdout == "via bastion\n"
            # the target sees a client socket that belongs to the bastion's sshd, not to this process
            client_port = g.run(["sh", "-c", "echo $SSH_CONNECTION"]).stdout.split()[1]
            owners = subprocess.run(["ss", "-tnpH", "state", "established", f"sport = :{client_port}"],
                                    capture_output=True, text=True, check=True).stdout
            assert sshd.pid is not None
            jump_pids = {sshd.pid, *sshd_helper.descendants(sshd.pid)}
            assert any(f"pid={pid}," in owners for pid in jump_pids), owners
            assert f"pid={os.getpid()}," not in owners


def test_through_a_bastion_connect_waits_for_a_target_that_starts_late(sshd: sshd_helper.LocalSSHD,
                                                                        workdir: Path) -> None:
    late = sshd_helper.prepare_sshd(workdir / f"late-target-{secrets.token_hex(3)}",
                                    authorized={"root": [CLIENT.public_openssh]})
    bastion = Bastion(user="root", host="127.0.0.1", port=sshd.port, key=CLIENT,
                      host_keys=(sshd.host_key.public_openssh,))
    starter = threading.Timer(2.0, late.start)  # the bastion refuses the channel until then
    start = time.monotonic()
    starter.start()
    try:
        with connect(late, bastion=bastion, within=30) as g:
            assert g.run(["echo", "late"]).stdout == "late\n"
        assert time.monotonic() - start >= 2.0
    finally:
        starter.join()
        late.stop()


def test_a_bastion_with_the_wrong_host_key_is_refused(sshd: sshd_helper.LocalSSHD) -> None:
    bastion = Bastion(user="root", host="127.0.0.1", port=sshd.port, key=CLIENT,
                      host_keys=(KeyPair.generate().public_openssh,))
    with pytest.raises(HostKeyMismatch, match="bastion"):
        SSHGuest.connect(host="127.0.0.1", port=sshd.port, user="root", key=CLIENT,
                         host_keys=[sshd.host_key.public_openssh], bastion=bastion,
                         deadline=time.monotonic() + 30)


# --- as a non-root user with sudo ---------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("sudo") is None, reason="sudo not installed (apt-get install sudo)")
def test_a_non_root_user_runs_everything_as_root_through_sudo(sshd: sshd_helper.LocalSSHD,
                                                               scratch: Path) -> None:
    with sshd_helper.throwaway_user() as user:
        sshd.authorize(user, [CLIENT.public_openssh])
        with connect(sshd, user=user) as g:
            assert g.run(["id", "-u"]).stdout == "0\n"
            assert g.run(["sh", "-c", 'echo "$A"'], env={"A": "through sudo"}).stdout == "through sudo\n"
            target = scratch / "etc" / "owned-by-root"
            g.write_file(str(target), b"secret\n", mode=0o600)
            assert (target.stat().st_uid, target.stat().st_mode & 0o777) == (0, 0o600)
            assert g.read_file(str(target)) == b"secret\n"
            assert g.run(["cat"], stdin=b"piped\n").stdout == "piped\n"
            marker = f"302.{secrets.randbelow(10**6)}"
            with pytest.raises(CommandFailed) as caught:
                g.run(["sleep", marker], timeout=1)
            assert caught.value.timed_out
            assert wait_until_gone(f"sleep {marker}")


# --- cloud-init wait (the host's real cloud-init has never run, so `--wait` never returns) --------------


def test_wait_for_cloud_init_fails_at_its_timeout_with_the_reason(guest: SSHGuest) -> None:
    start = time.monotonic()
    with pytest.raises(BuildError, match="cloud-init did not finish within 2 s"):
        wait_for_cloud_init(guest, timeout=2)
    assert time.monotonic() - start < 60    # bounded by its timeout, not waiting forever
    assert wait_until_gone("cloud-init status --wait")

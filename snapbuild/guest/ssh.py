"""A Guest over SSH (paramiko): a local QEMU VM or a cloud server, with a pinned host key.

Waiting for SSH after boot retries only what is transient (DESIGN rule 7): refused/reset connections,
banner timeouts, and authentication while cloud-init has not installed the builder key yet. A host key
that does not match the pin fails at once (DESIGN rule 6). Commands are argv lists quoted for the remote
POSIX shell; they run as root (`sudo -n` for a non-root user), their output streams line by line, and a
timeout is enforced on both ends (`timeout --kill-after` remotely, a deadline locally).
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import select
import shlex
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import paramiko
from tenacity import Retrying, retry_if_exception, stop_before_delay, wait_exponential_jitter

from snapbuild import netcause
from snapbuild.errors import BuildError, CommandFailed
from snapbuild.guest.base import Completed, OutputCallback, systemd_service
from snapbuild.sshkeys import KeyPair, fingerprint_of_blob, public_key_blob

log = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 15
TAIL_LINES = 20
CONSOLE_TAIL_LINES = 30
_ATTEMPT_TIMEOUT = 15.0  # one TCP connect + handshake + auth; a live sshd answers in well under a second
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# paramiko raises bare SSHException for these while sshd is starting or restarting (cloud-init restarts it
# after writing host keys); anything else from paramiko is a real failure.
_TRANSIENT_SSH_MESSAGES = ("Error reading SSH protocol banner", "Negotiation failed", "No existing session",
                           "Connection reset", "Unable to connect")
_RSA_SIGNATURES = ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")
# While a machine boots, paramiko logs every refused banner at ERROR, with a traceback of one record per line
# (757 of 836 lines of a local build's log). Those are expected while polling: the transports of connection
# attempts log to this channel, which goes nowhere, and `connect` writes one line per attempt instead. A
# connected transport goes back to paramiko's usual channel, so a real failure later is logged in full.
_POLL_LOG_CHANNEL = "paramiko.transport.snapbuild-poll"
_PARAMIKO_LOG_CHANNEL = "paramiko.transport"
logging.getLogger(_POLL_LOG_CHANNEL).setLevel(logging.CRITICAL + 1)   # above every level: no record is made


class HostKeyMismatch(BuildError):
    """The server's host key is not the pinned one: never retried."""


@dataclass(frozen=True, kw_only=True)
class Bastion:
    """A jump host: the target is reached through a `direct-tcpip` channel of this connection.

    Its host key is checked against `host_keys` when given, else against ~/.ssh/known_hosts.
    """

    user: str
    host: str
    port: int = 22
    key: KeyPair | paramiko.PKey = field(repr=False)
    host_keys: tuple[str, ...] = ()
    accept_any_host_key: bool = False


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, HostKeyMismatch | paramiko.BadHostKeyException | socket.gaierror):
        return False
    if isinstance(exc, paramiko.AuthenticationException):
        return True  # cloud-init may not have installed the key yet
    if isinstance(exc, paramiko.ChannelException):
        return True  # the bastion could not reach the target (yet)
    if isinstance(exc, paramiko.SSHException):
        return any(m in str(exc) for m in _TRANSIENT_SSH_MESSAGES)
    # NoValidConnectionsError, TimeoutError, ConnectionError are all OSError
    return isinstance(exc, OSError | EOFError)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if type(exc).__name__ in text else f"{type(exc).__name__}: {text}"


def _innermost(exc: BaseException) -> BaseException:
    for _ in range(10):
        inner = exc.__cause__ or exc.__context__
        if inner is None:
            break
        exc = inner
    return exc


def _poll_reason(exc: BaseException) -> str:
    """A failed attempt to connect while polling, in a few words: `banner not ready (EOFError)`."""
    if isinstance(exc, paramiko.AuthenticationException):
        what = "key not accepted (yet)"
    elif isinstance(exc, paramiko.ChannelException):
        what = "the bastion cannot connect to it (yet)"
    elif isinstance(exc, paramiko.SSHException) and "banner" in str(exc):
        what = "banner not ready"
    elif isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError | OSError | EOFError):
        what = netcause.short(exc)
    else:
        what = str(exc) or "failed"
    return f"{what} ({type(_innermost(exc)).__name__})"


def _preferred_key_types(transport: paramiko.Transport, pins: Sequence[tuple[str, bytes]]) -> None:
    """Ask for the pinned key types first, so the server shows the key we can check."""
    options = transport.get_security_options()
    available = list(options.key_types)
    wanted: list[str] = []
    for key_type, _ in pins:
        for name in (_RSA_SIGNATURES if key_type == "ssh-rsa" else (key_type,)):
            if name in available and name not in wanted:
                wanted.append(name)
    options.key_types = tuple(wanted + [k for k in available if k not in wanted])


def _check_host_key(transport: paramiko.Transport, *, where: str, pins: Sequence[tuple[str, bytes]],
                    accept_any: bool) -> None:
    server_key = transport.get_remote_server_key()
    blob = server_key.asbytes()
    got = f"{server_key.get_name()} {fingerprint_of_blob(blob)}"
    if any(blob == pinned for _, pinned in pins):
        log.debug("%s: host key %s matches the pin", where, got)
        return
    if accept_any:
        log.warning("%s: ACCEPTING UNVERIFIED HOST KEY %s (accept_any_host_key is set; the connection is "
                    "not protected against a man in the middle)", where, got)
        return
    expected = ", ".join(f"{t} {fingerprint_of_blob(b)}" for t, b in pins) or "none"
    raise HostKeyMismatch(
        f"{where}: host key {got} does not match the pinned host key ({expected}): "
        "possible man-in-the-middle, refusing to connect",
        hint="if the machine was legitimately re-keyed, pin the new key; never disable the check to get past this")


def _known_hosts_pins(host: str, port: int) -> list[tuple[str, bytes]]:
    path = Path.home() / ".ssh" / "known_hosts"
    if not path.is_file():
        return []
    known = paramiko.HostKeys(str(path))
    entry = known.lookup(host if port == 22 else f"[{host}]:{port}")
    return [(key.get_name(), key.asbytes()) for key in entry.values()] if entry else []


def _open_transport(sock: socket.socket | paramiko.Channel, *, where: str, user: str, pkey: paramiko.PKey,
                    pins: Sequence[tuple[str, bytes]], accept_any: bool, timeout: float) -> paramiko.Transport:
    """Handshake, check the host key, authenticate: the three round trips a connection needs, no more.

    The transport logs to the quiet polling channel; `SSHGuest.connect` hands it back to paramiko's own."""
    transport = paramiko.Transport(sock)
    transport.set_log_channel(_POLL_LOG_CHANNEL)
    try:
        transport.banner_timeout = timeout
        transport.auth_timeout = timeout
        _preferred_key_types(transport, pins)
        transport.start_client(timeout=timeout)
        if not getattr(transport, "initial_kex_done", True):
            raise TimeoutError(f"SSH key exchange with {where} did not finish within {timeout:.0f} s")
        _check_host_key(transport, where=where, pins=pins, accept_any=accept_any)
        transport.auth_publickey(user, pkey)
        transport.set_keepalive(KEEPALIVE_SECONDS)
        return transport
    except BaseException:
        transport.close()
        raise


class SSHGuest:
    """The Guest protocol over one SSH connection. Use `SSHGuest.connect(...)`, then `close()` (or `with`)."""

    kind = "vm"
    host_root: Path | None = None      # a remote machine: nothing of it is on this host

    def __init__(self, *, transport: paramiko.Transport, user: str, name: str,
                 bastion_transport: paramiko.Transport | None = None, kill_after: float = 10.0) -> None:
        self._transport = transport
        self._bastion_transport = bastion_transport
        self.user = user
        self.name = name
        self.kill_after = kill_after  # grace between TERM and KILL of a timed-out remote command

    # --- connecting -------------------------------------------------------------------------------------

    @classmethod
    def connect(cls, *, host: str, port: int = 22, user: str, key: KeyPair, host_keys: Sequence[str],
                deadline: float, bastion: Bastion | None = None, accept_any_host_key: bool = False,
                console: Callable[[], str] | None = None, name: str | None = None,
                sleep: Callable[[float], None] = time.sleep) -> SSHGuest:
        """Connect as soon as the machine accepts our key, retrying what is transient until `deadline`.

        `deadline` is a `time.monotonic()` value. `host_keys` are OpenSSH public key lines; the server's
        key must match one of them. `console` returns the machine's console log, whose tail goes into the
        error when the deadline passes.
        """
        where = f"{host}:{port}"
        name = name or f"{user}@{where}"
        pins = [public_key_blob(k) for k in host_keys]
        if not pins and not accept_any_host_key:
            raise BuildError(f"no host key to pin for {where}",
                             hint="pass the host key handed to cloud-init, or the keys read from the console")
        if accept_any_host_key:
            log.warning("%s: host key checking is OFF for this connection (accept_any_host_key)", where)
        pkey = key.to_paramiko()
        bastion_pkey = None
        if bastion is not None:
            bastion_pkey = bastion.key.to_paramiko() if isinstance(bastion.key, KeyPair) else bastion.key
        state: dict[str, paramiko.Transport | None] = {"bastion": None}
        stage = [where]  # what the last attempt was doing, for the error message
        start = time.monotonic()
        attempts = [0]

        console_checked = [start]

        def attempt() -> paramiko.Transport:
            timeout = max(1.0, min(_ATTEMPT_TIMEOUT, deadline - time.monotonic()))
            # A machine whose kernel panicked never answers: say so now rather than at the deadline.
            if console is not None and time.monotonic() - console_checked[0] >= _CONSOLE_CHECK_INTERVAL:
                console_checked[0] = time.monotonic()
                if _KERNEL_PANIC in _console_tail(console):
                    raise BuildError(f"{where}: the machine's kernel panicked; SSH will never come up\n"
                                     + _console_tail(console))
            if bastion is None:
                stage[0] = where
                sock: socket.socket | paramiko.Channel = socket.create_connection((host, port), timeout=timeout)
            else:
                assert bastion_pkey is not None
                jump = state["bastion"]
                if jump is None or not jump.is_active():
                    stage[0] = f"bastion {bastion.host}:{bastion.port}"
                    jump = state["bastion"] = _connect_bastion(bastion, bastion_pkey, timeout)
                # a fresh channel per attempt: a failed handshake leaves the old one unusable
                stage[0] = f"{where} via bastion {bastion.host}:{bastion.port}"
                sock = jump.open_channel("direct-tcpip", (host, port), ("127.0.0.1", 0), timeout=timeout)
            try:
                return _open_transport(sock, where=where, user=user, pkey=pkey, pins=pins,
                                       accept_any=accept_any_host_key, timeout=timeout)
            except BaseException:
                sock.close()
                raise

        def logged_attempt() -> paramiko.Transport:
            attempts[0] += 1
            try:
                return attempt()
            except Exception as exc:
                # one line per attempt, never a traceback: these are expected while the machine boots
                log.debug("ssh %s attempt %d: %s", stage[0], attempts[0], _poll_reason(exc))
                raise

        retrying = Retrying(
            retry=retry_if_exception(_is_transient),
            stop=stop_before_delay(max(0.0, deadline - start)),
            wait=wait_exponential_jitter(initial=1, max=5, jitter=1),  # at least 1 s between polls
            sleep=sleep,
            reraise=True,
        )
        try:
            transport = retrying(logged_attempt)
        except HostKeyMismatch:
            _close_quietly(state["bastion"])
            raise
        except Exception as exc:
            _close_quietly(state["bastion"])
            last = _describe(exc) if stage[0] == where else f"{stage[0]}: {_describe(exc)}"
            if not _is_transient(exc):
                log.debug("ssh %s: giving up after attempt %d", stage[0], attempts[0], exc_info=exc)
                raise BuildError(f"SSH to {where} failed: {last}") from exc
            waited = time.monotonic() - start
            message = f"SSH to {where} not ready after {waited:.0f} s: {last}"
            hint = None
            if isinstance(exc, paramiko.AuthenticationException):
                hint = f"the server answers but refuses the builder key for {user!r}: did cloud-init run?"
            if console is not None:
                message += "\n" + _console_tail(console)
            raise BuildError(message, hint=hint) from exc
        except BaseException:
            _close_quietly(state["bastion"])
            raise
        # connected: from now on paramiko's messages are about a working connection, and worth keeping
        transport.set_log_channel(_PARAMIKO_LOG_CHANNEL)
        if state["bastion"] is not None:
            state["bastion"].set_log_channel(_PARAMIKO_LOG_CHANNEL)
        log.info("%s: connected in %.1f s (attempt %d)", name, time.monotonic() - start, attempts[0])
        return cls(transport=transport, user=user, name=name, bastion_transport=state["bastion"])

    # --- the Guest protocol -----------------------------------------------------------------------------

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float | None = None,
            env: Mapping[str, str] | None = None, stdin: bytes | None = None,
            on_output: OutputCallback | None = None) -> Completed:
        args = tuple(str(a) for a in argv)
        log.debug("%s: %s%s", self.name, shlex.join(args),
                  f" (env: {', '.join(sorted(env))})" if env else "")  # env names only: values may be secret
        result = self._exec(self._command_line(args, env=env, timeout=timeout), stdin=stdin, timeout=timeout,
                            on_output=on_output, lines=True)
        if result.timed_out or result.returncode is None:
            raise CommandFailed(args, None, result.tail, where=self.name, timed_out=True)
        done = Completed(argv=args, returncode=result.returncode, stdout=result.stdout.decode(errors="replace"),
                         stderr=result.stderr.decode(errors="replace"))
        if check and done.returncode != 0:
            raise CommandFailed(args, done.returncode, result.tail, where=self.name)
        return done

    def write_file(self, path: str, data: bytes, *, mode: int = 0o644, owner: str = "root:root") -> None:
        """Write to a temp file next to `path`, set owner and mode, then rename it into place."""
        if not path.startswith("/"):
            raise ValueError(f"guest paths must be absolute: {path!r}")
        parent = path.rsplit("/", 1)[0] or "/"
        tmp = f"{parent.rstrip('/')}/.{path.rsplit('/', 1)[-1]}.snapbuild-{secrets.token_hex(4)}"
        script = ('set -e; trap \'rm -f -- "$2"\' EXIT; mkdir -p -- "$1"; cat > "$2"; '
                  'chown -- "$4" "$2"; chmod -- "$3" "$2"; mv -f -- "$2" "$5"')
        log.debug("%s: write %s (%d bytes, %o, %s)", self.name, path, len(data), mode, owner)
        result = self._exec(self._command_line(("sh", "-c", script, "sh", parent, tmp, f"{mode:o}", owner, path)),
                            stdin=data, timeout=None, on_output=None, lines=False)
        if result.returncode != 0:
            raise CommandFailed(["write_file", path], result.returncode, result.tail, where=self.name)

    def read_file(self, path: str) -> bytes:
        """The file's bytes; FileNotFoundError when it does not exist."""
        script = 'if [ ! -e "$1" ]; then exit 66; fi; exec cat -- "$1"'
        result = self._exec(self._command_line(("sh", "-c", script, "sh", path)), stdin=None, timeout=None,
                            on_output=None, lines=False)
        if result.returncode == 66:
            raise FileNotFoundError(f"{self.name}: {path}")
        if result.returncode != 0:
            raise CommandFailed(["read_file", path], result.returncode, result.tail, where=self.name)
        return result.stdout

    def exists(self, path: str) -> bool:
        """True when `path` exists, a dangling symlink included (like os.path.lexists)."""
        script = 'test -e "$1" || test -L "$1"'
        return self.run(["sh", "-c", script, "sh", path], check=False).returncode == 0

    def service(self, name: str) -> contextlib.AbstractContextManager[None]:
        return systemd_service(self, name)

    # --- lifetime ---------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._transport.is_active()

    def close(self) -> None:
        _close_quietly(self._transport)
        _close_quietly(self._bastion_transport)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- internals --------------------------------------------------------------------------------------

    def _command_line(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                      timeout: float | None = None) -> str:
        return command_line(argv, as_root=self.user != "root", env=env, timeout=timeout, kill_after=self.kill_after)

    def _exec(self, command: str, *, stdin: bytes | None, timeout: float | None,
              on_output: OutputCallback | None, lines: bool) -> _Result:
        # paramiko is not safe against an exception raised at an arbitrary point in it: a Ctrl-C that lands
        # inside it can leave one of its locks held, and closing the channel then waits forever (seen in CI: a
        # build that ignored SIGINT during a step for 15 minutes). So a worker thread drives the channel and
        # this thread only waits, where an interrupt is safe; on one, the connection is closed, which ends
        # the worker, and the interrupt goes on to the build's undo.
        outcome: list[_Result | BaseException] = []

        def work() -> None:
            try:
                outcome.append(self._exec_on_channel(command, stdin=stdin, timeout=timeout, on_output=on_output,
                                                     lines=lines))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread, which raises it
                outcome.append(exc)

        worker = threading.Thread(target=work, name=f"ssh {self.name}", daemon=True)
        try:
            worker.start()
            while worker.is_alive():
                worker.join(0.5)
        except BaseException:
            self.close()
            raise
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        return outcome[0]

    def _exec_on_channel(self, command: str, *, stdin: bytes | None, timeout: float | None,
                         on_output: OutputCallback | None, lines: bool) -> _Result:
        if not self._transport.is_active():
            raise BuildError(f"{self.name}: the SSH connection was lost", hint="the machine may have rebooted")
        start = time.monotonic()
        # The remote `timeout` ends the command at `timeout` (+kill_after); the local deadline only guards
        # against a wedged connection, so it comes after both.
        deadline = start + timeout + self.kill_after + 5.0 if timeout is not None else None
        try:
            chan = self._transport.open_session(timeout=_ATTEMPT_TIMEOUT)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise BuildError(f"{self.name}: the SSH connection was lost ({_describe(exc)})") from exc
        sink = _Sink(self.name, on_output if lines else None, lines=lines)
        sender: threading.Thread | None = None
        try:
            chan.exec_command(command)
            if stdin:
                # a thread, so a command that writes a lot before reading its stdin cannot deadlock us
                sender = threading.Thread(target=_send_stdin, args=(chan, stdin), daemon=True)
                sender.start()
            else:
                chan.shutdown_write()
            timed_out = _pump(chan, sink, deadline)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            chan.close()
            raise BuildError(f"{self.name}: the SSH connection was lost ({_describe(exc)})") from exc
        finally:
            chan.close()
            if sender is not None:
                sender.join(timeout=5)
        sink.flush()
        if timed_out:
            return _Result(returncode=None, stdout=sink.stdout, stderr=sink.stderr, tail=sink.tail(),
                           timed_out=True)
        if not chan.status_event.is_set() or chan.exit_status < 0:
            raise BuildError(f"{self.name}: the SSH connection was lost while running a command"
                             + (f"\n{sink.tail()}" if sink.tail() else ""),
                             hint="the machine may have rebooted, run out of memory, or dropped off the network")
        rc = chan.exit_status
        # 124/137: the remote `timeout` ended the command (TERM, then KILL after kill_after)
        timed_out = timeout is not None and rc in (124, 137) and time.monotonic() - start >= timeout
        return _Result(returncode=rc, stdout=sink.stdout, stderr=sink.stderr, tail=sink.tail(), timed_out=timed_out)


def command_line(argv: Sequence[str], *, as_root: bool = False, env: Mapping[str, str] | None = None,
                 timeout: float | None = None, kill_after: float = 10.0) -> str:
    """The remote shell line for `argv`: `[sudo -n] [env K=V…] [timeout --kill-after=K T] argv…; exit $?`.

    `env` goes through env(1) because sshd normally refuses client-set variables (AcceptEnv). The trailing
    `exit $?` makes the shell report a status even when the command dies by a signal (paramiko ignores
    `exit-signal`), so a missing status really means a lost connection.
    """
    if not argv:
        raise ValueError("empty argv")
    prefix: list[str] = []
    if as_root:
        prefix += ["sudo", "-n", "--"]
    if env:
        bad = [k for k in env if not _ENV_NAME.match(k)]
        if bad:
            raise ValueError(f"invalid environment variable names: {bad}")
        prefix += ["env", *(f"{k}={v}" for k, v in env.items())]
    if timeout is not None:
        prefix += ["timeout", f"--kill-after={_seconds(kill_after)}", _seconds(timeout)]
    return shlex.join([*prefix, *argv]) + "; exit $?"


def _seconds(value: float) -> str:
    return f"{value:g}" if value >= 0.001 else "0.001"


@dataclass
class _Result:
    returncode: int | None
    stdout: bytes
    stderr: bytes
    tail: str
    timed_out: bool


class _Sink:
    """Collects both streams; with `lines`, splits them into lines for the callback, the log and the tail."""

    def __init__(self, name: str, on_output: OutputCallback | None, *, lines: bool) -> None:
        self._name = name
        self._on_output = on_output
        self._lines = lines
        self._chunks: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        self._partial: dict[str, bytes] = {"stdout": b"", "stderr": b""}
        self._tail: deque[str] = deque(maxlen=TAIL_LINES)

    def feed(self, stream: str, data: bytes) -> None:
        self._chunks[stream].append(data)
        if not self._lines:
            if stream == "stderr":
                self._tail.extend(data.decode(errors="replace").splitlines())
            return
        pending = self._partial[stream] + data
        *complete, self._partial[stream] = pending.split(b"\n")
        for raw in complete:
            self._line(stream, raw)

    def flush(self) -> None:
        for stream, rest in self._partial.items():
            if rest:
                self._line(stream, rest)
            self._partial[stream] = b""

    def _line(self, stream: str, raw: bytes) -> None:
        line = raw.decode(errors="replace").rstrip("\r")
        self._tail.append(line)
        log.debug("%s %s| %s", self._name, stream, line)
        if self._on_output is not None:
            self._on_output(stream, line)

    @property
    def stdout(self) -> bytes:
        return b"".join(self._chunks["stdout"])

    @property
    def stderr(self) -> bytes:
        return b"".join(self._chunks["stderr"])

    def tail(self) -> str:
        return "\n".join(self._tail)


def _pump(chan: paramiko.Channel, sink: _Sink, deadline: float | None) -> bool:
    """Move output to `sink` as it arrives until the remote side is done. True when the deadline passed."""
    while True:
        while chan.recv_ready():
            sink.feed("stdout", chan.recv(65536))
        while chan.recv_stderr_ready():
            sink.feed("stderr", chan.recv_stderr(65536))
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return True
        wait = 1.0 if remaining is None else min(1.0, remaining)
        if chan.eof_received or chan.closed:
            # all output is in; the exit status (or the close) follows. status_event is set by both.
            if chan.status_event.wait(wait):
                while chan.recv_ready():
                    sink.feed("stdout", chan.recv(65536))
                while chan.recv_stderr_ready():
                    sink.feed("stderr", chan.recv_stderr(65536))
                return False
            continue
        # the channel's pipe becomes readable on data, EOF or close
        select.select([chan], [], [], wait)


def _send_stdin(chan: paramiko.Channel, data: bytes) -> None:
    try:
        chan.sendall(data)
        chan.shutdown_write()
    except (OSError, EOFError, paramiko.SSHException):
        pass  # the command ended or the connection dropped: _pump reports it


def _connect_bastion(bastion: Bastion, pkey: paramiko.PKey, timeout: float) -> paramiko.Transport:
    where = f"bastion {bastion.host}:{bastion.port}"
    pins = [public_key_blob(k) for k in bastion.host_keys] or _known_hosts_pins(bastion.host, bastion.port)
    if not pins and not bastion.accept_any_host_key:
        raise HostKeyMismatch(f"{where}: no host key to check it against",
                              hint="pass Bastion(host_keys=...) or add the bastion to ~/.ssh/known_hosts")
    sock = socket.create_connection((bastion.host, bastion.port), timeout=timeout)
    try:
        return _open_transport(sock, where=where, user=bastion.user, pkey=pkey, pins=pins,
                               accept_any=bastion.accept_any_host_key, timeout=timeout)
    except BaseException:
        sock.close()
        raise


def _close_quietly(transport: paramiko.Transport | None) -> None:
    if transport is None:
        return
    try:
        transport.close()
    except Exception:  # closing is best effort
        log.debug("closing an SSH transport failed", exc_info=True)


_KERNEL_PANIC = "Kernel panic - not syncing"
_CONSOLE_CHECK_INTERVAL = 20.0   # seconds: on a cloud each look is an API call


def _console_tail(console: Callable[[], str]) -> str:
    try:
        text = console()
    except Exception as exc:  # noqa: BLE001 - the console is extra detail for an error already raised
        return f"(console log unavailable: {_describe(exc)})"
    lines = text.replace("\r", "").splitlines()[-CONSOLE_TAIL_LINES:]
    return "console (last lines):\n" + "\n".join(lines) if lines else "(console log empty)"

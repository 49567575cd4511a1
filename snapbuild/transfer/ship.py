"""`snapbuild ship`: carry a big file over slow, flaky links to the controller, resumed and verified.

Design (no keys on relays): every rsync and ssh runs on THIS host. Hop N is reached with
`ProxyJump hop0,…,hopN-1` from one generated ssh_config, so relays only forward an encrypted TCP stream
(sshd's direct-tcpip) and never hold a key, an agent socket or the ability to log in anywhere. By default the
file goes straight to the controller through that tunnel chain; `stage=True` also leaves a verified copy on
each relay (each copy is pushed from here through the previous relays, so the first link carries the file
once per staged hop — the price of keeping relays key-free).

Resume: rsync `--append-verify` (implies `--inplace`) keeps every byte the receiver wrote, and the next
attempt sends only what is missing, then checks the whole file. Attempts that move no bytes count against
`attempts`; attempts that make progress do not. At the end `sha256sum` runs on the hop and must match the
digest computed here once.
"""

from __future__ import annotations

import logging
import posixpath
import shlex
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from snapbuild.errors import BuildError, CommandFailed, UserError
from snapbuild.guest.base import Completed
from snapbuild.host import commands
from snapbuild.run.monitor import Monitor
from snapbuild.run.progress import Progress, progress
from snapbuild.transfer.backoff import ProgressBackoff
from snapbuild.transfer.checksums import file_digest
from snapbuild.transfer.rsync import Attempt, Failure, classify, rsync_argv, run_attempt
from snapbuild.transfer.sshchain import Hop, SSHChain, SSHOptions, ssh_chain

log = logging.getLogger(__name__)

MiB = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class ShipRequest:
    file: Path
    via: tuple[Hop, ...]
    to: Hop
    dest: str = ""                        # directory on the controller (and relays when staging); "" = home
    stage: bool = False                   # also keep a verified copy on every relay
    upload: tuple[str, ...] | None = None  # run `snapbuild upload FILE *upload` on the controller when not None
    ssh: SSHOptions = field(default_factory=SSHOptions)
    attempts: int = 10                    # consecutive attempts without progress before giving up
    backoff_initial: float = 1.0           # after an attempt that made progress: 0.5–1 s
    backoff_max: float = 60.0
    io_timeout: int = 120                 # rsync --timeout: no data for this long ends the attempt
    bwlimit: str | None = None            # rsync --bwlimit (e.g. "20m"), to leave the link usable


@dataclass(frozen=True, kw_only=True)
class HopResult:
    hop: str
    path: str
    attempts: int
    moved: int                            # payload bytes rsync transferred, summed over attempts
    sent: int                             # rsync `Total bytes sent` (failed attempts: their payload bytes)
    seconds: float


@dataclass(frozen=True, kw_only=True)
class ShipResult:
    sha256: str
    size: int
    remote_path: str
    hops: tuple[HopResult, ...]
    seconds: float


class _LinkFailure(Exception):
    def __init__(self, attempt: Attempt) -> None:
        lines = [line.strip() for line in attempt.stderr.splitlines() if line.strip()]
        super().__init__(f"rsync exited {attempt.returncode}: {' / '.join(lines[-3:]) or 'no message'}")
        self.attempt = attempt


class _ProbeFailure(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _WhichHop(Exception):
    """A first connection was refused (or a host name not found) somewhere on the way to hop `index`, and
    ssh's message does not say where (`channel 0: open failed` from a relay): probe the hops one by one."""

    def __init__(self, kind: Failure, index: int, stderr: str) -> None:
        super().__init__(f"{kind.value} on the way to hop {index + 1}")
        self.kind, self.index, self.stderr = kind, index, stderr


def _is_link_failure(exc: BaseException) -> bool:
    return isinstance(exc, _LinkFailure | _ProbeFailure)


def _human(n: int) -> str:
    return f"{n / MiB:.1f} MiB" if n < 10 * 1024 * MiB else f"{n / 1024 / MiB:.1f} GiB"


def _ssh(chain: SSHChain, index: int, request: ShipRequest, *, argv: list[str] | None = None,
         script: str | None = None, timeout: float | None = None) -> Completed:
    """Run on hop `index`; link failures become _ProbeFailure (retried), credentials become UserError."""
    if timeout is None:
        timeout = request.ssh.connect_timeout * (index + 1) + 60.0
    try:
        done = commands.run(chain.ssh_argv(index, argv, script=script), check=False, timeout=timeout)
    except CommandFailed as exc:  # our deadline
        raise _ProbeFailure(f"{chain.describe(index)}: no answer within {timeout:.0f} s") from exc
    if done.returncode == 0:
        chain.mark_reached(index)
        return done
    kind = classify(done.returncode, done.stderr)
    _raise_final(kind, chain, index, done.stderr)
    if done.returncode == 255:
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "ssh exited 255"
        raise _ProbeFailure(f"{chain.describe(index)}: {last}")
    raise CommandFailed(chain.ssh_argv(index, argv, script=script), done.returncode, done.tail(),
                        where=chain.describe(index))


def _raise_final(kind: Failure, chain: SSHChain, index: int, stderr: str) -> None:
    """Failures that no retry can fix."""
    if kind is Failure.AUTH:
        bad = _failing_hop(chain, index, stderr)
        raise UserError(f"permission denied at {chain.describe(bad)}",
                        hint="check --identity and that its public key is in that hop's authorized_keys")
    if kind is Failure.HOST_KEY:
        bad = _failing_hop(chain, index, stderr)
        raise UserError(f"host key of {chain.describe(bad)} is not known or has changed",
                        hint="verify its fingerprint and add it to known_hosts (ssh-keyscan), then retry")
    if kind in (Failure.REFUSED, Failure.UNKNOWN_HOST):
        named = chain.hop_in(stderr)
        if named is None and all(i in chain.reached for i in range(index)):
            named = index   # every hop before it answered: the last relay could not connect onward to it
        if named is None or named > index:
            raise _WhichHop(kind, index, stderr)
        if named not in chain.reached:
            raise _wrong_address(kind, chain, named, stderr)
        # it answered earlier in this run: an sshd restarting or a flaky resolver; retried by the caller


def _wrong_address(kind: Failure, chain: SSHChain, bad: int, stderr: str) -> UserError:
    """Hop `bad` refused its first connection, or its name does not exist: the address given is wrong."""
    said = [line.strip() for line in stderr.splitlines()
            if any(text in line for text in ("Connection refused", "resolve", "open failed"))]
    detail = f" ({said[0]})" if said else ""
    relay = f" (it is reached from {chain.hops[bad - 1]})" if bad else ""
    if kind is Failure.REFUSED:
        return UserError(f"{chain.describe(bad)} refuses SSH connections{detail}",
                         hint=f"check that hop's host and port (user@host:port, or --port) and that sshd runs "
                              f"there{relay}")
    return UserError(f"host name of {chain.describe(bad)} not found{detail}",
                     hint="check the host name"
                          + (f"; it is resolved on {chain.hops[bad - 1]}, the hop before it" if bad else ""))


def _failing_hop(chain: SSHChain, index: int, stderr: str) -> int:
    """ssh prefixes auth errors with `user@host:`; map that back to the hop (else blame `index`)."""
    named = chain.hop_in(stderr)
    return named if named is not None and named <= index else index


def _retry(request: ShipRequest, progress: Callable[[], int], what: str) -> ProgressBackoff:
    return ProgressBackoff(attempts=request.attempts, initial=request.backoff_initial,
                           maximum=request.backoff_max, progress=progress, transient=_is_link_failure)


def _probe(chain: SSHChain, index: int, request: ShipRequest) -> None:
    """Reach hop `index` (through the ones before it, already probed): names the first hop that fails."""
    backoff = _retry(request, lambda: 0, f"reach {chain.describe(index)}")
    try:
        for attempt in backoff.retrying(f"reach {chain.describe(index)}"):
            with attempt:
                _ssh(chain, index, request, argv=["true"])
    except _WhichHop as exc:   # cannot happen with every earlier hop reached; named here all the same
        raise _wrong_address(exc.kind, chain, index, exc.stderr) from None
    except _ProbeFailure as exc:
        raise UserError(f"cannot reach {exc.message}",
                        hint="check the address and port, that sshd runs there, and the link from the previous "
                             "hop") from None


def _remote_path(request: ShipRequest) -> str:
    name = request.file.name
    return posixpath.join(request.dest, name) if request.dest else name


def _space(chain: SSHChain, index: int, request: ShipRequest) -> tuple[int, int]:
    """(free bytes in the destination directory, bytes of a partial copy already there); creates the dir."""
    directory = request.dest or "."
    path = _remote_path(request)
    script = (f"mkdir -p -- {shlex.quote(directory)} && df -Pk -- {shlex.quote(directory)} | tail -n 1 && "
              f"{{ stat -c %s -- {shlex.quote(path)} 2>/dev/null || echo 0; }}")
    out = _ssh(chain, index, request, script=script).stdout.split("\n")
    try:
        free = int(out[0].split()[3]) * 1024
        have = int(out[1].strip())
    except (IndexError, ValueError):
        raise BuildError(f"{chain.describe(index)}: cannot read free space from df: {out!r}") from None
    return free, have


def _reach(chain: SSHChain, index: int, request: ShipRequest) -> tuple[int, int]:
    """`_space` with retries; when the hop cannot be reached, probe the chain hop by hop to name the culprit."""
    backoff = _retry(request, lambda: 0, f"reach {chain.describe(index)}")
    try:
        for attempt in backoff.retrying(f"reach {chain.describe(index)}"):
            with attempt:
                return _space(chain, index, request)
    except _WhichHop as exc:
        for earlier in range(index):
            _probe(chain, earlier, request)   # raises, naming the first hop that refuses
        raise _wrong_address(exc.kind, chain, index, exc.stderr) from None
    except _ProbeFailure as exc:
        for earlier in range(index):
            _probe(chain, earlier, request)
        raise UserError(f"cannot reach {exc.message}",
                        hint="check the address and port, that sshd runs there, and the link from the previous "
                             "hop") from None
    raise AssertionError("unreachable")  # pragma: no cover - reraise=True


def _no_space(chain: SSHChain, index: int, request: ShipRequest, size: int, free: int | None) -> BuildError:
    if free is None:
        try:
            free = _space(chain, index, request)[0]
        except Exception:  # noqa: BLE001 - the error we are building matters more than df's
            free = -1
    shown = _human(free) if free >= 0 else "unknown"
    return BuildError(f"no space left on device at {chain.describe(index)}: {request.dest or '~'} has {shown} free, "
                      f"the file needs {_human(size)}",
                      hint="free space there or pick another --dest")


def _transfer(chain: SSHChain, index: int, request: ShipRequest, local_digest: Future[str], size: int,
              monitor: Monitor | None, report: Callable[[str], None]) -> HopResult:
    started = time.monotonic()
    where = chain.describe(index)
    path = _remote_path(request)
    free, have = _reach(chain, index, request)
    if have > size:
        have = 0  # an unrelated, longer file: rsync --append would skip it; the digest check replaces it
    if free < size - have:
        raise _no_space(chain, index, request, size, free)
    if have:
        report(f"{where}: resuming, {_human(have)} of {_human(size)} already there")

    remote = have            # bytes of the file known to be at the hop: the measure of progress
    sent = attempts = 0
    bar: Progress | None = None

    def moved(position: int) -> None:
        # with --append-verify, progress2 counts from the start of the file: it is the position reached
        if bar is not None:
            bar.set(min(max(position, remote), size))

    argv = rsync_argv(request.file, f"{chain.alias(index)}:{path}", rsh=chain.rsh(), io_timeout=request.io_timeout,
                      bwlimit=request.bwlimit)

    def once() -> None:
        nonlocal remote, sent, attempts
        attempts += 1
        before = remote
        result = run_attempt(argv, on_progress=moved)
        log.debug("%s: attempt %d: rsync exit %d after %.1f s, position %d, stats sent %s", where, attempts,
                  result.returncode, result.seconds, result.moved, result.sent)
        if result.failure is Failure.NONE:
            sent += result.sent if result.sent is not None else size - before
            # what progress2 did not see before a break still crossed the link once: never count less than that
            sent = max(sent, size - have)
            remote = size
            return
        if result.failure is Failure.NO_SPACE:
            raise _no_space(chain, index, request, size, None)
        _raise_final(result.failure, chain, index, result.stderr)
        if result.failure not in (Failure.TRANSIENT, Failure.REFUSED, Failure.UNKNOWN_HOST):
            raise BuildError(f"{where}: rsync exited {result.returncode}\n{result.stderr[-2000:]}")
        # how far it got: progress2's position (it lags by up to a second); only when that shows nothing is the
        # hop asked (a round trip over a link that just failed). The next attempt resumes from what really
        # landed either way, and the sha256 at the end is the judge.
        if result.moved > remote:
            remote = min(result.moved, size)
        else:
            try:
                remote = _remote_size(chain, index, request, path)
            except (_ProbeFailure, CommandFailed, UserError):
                pass
        sent += max(remote - before, 0)
        raise _LinkFailure(result)

    def position() -> int:
        return remote

    for verify_round in range(2):
        backoff = _retry(request, position, where)
        try:
            with progress(monitor, f"to {where}", total=size, initial=remote) as bar:
                for attempt in backoff.retrying(where):
                    with attempt:
                        once()
        except _LinkFailure as exc:
            raise BuildError(f"giving up on {where} after {attempts} attempts ({request.attempts} without "
                             f"progress): {exc}", hint="the partial file stays there; rerun to resume") from None
        there = _remote_digest(chain, index, request, path)
        digest = local_digest.result()
        if there == digest:
            break
        if verify_round == 1:
            raise BuildError(f"sha256 mismatch at {where} after a full resend: {there} != {digest}",
                             hint="the disk or memory on that hop may be faulty")
        log.warning("%s: sha256 mismatch (%s != %s); removing the copy there and sending it again", where,
                    there, digest)
        _ssh(chain, index, request, argv=["rm", "-f", "--", path])
        remote = 0
    report(f"{where}: {path} verified (sha256 {digest[:16]}…)")
    return HopResult(hop=where, path=path, attempts=attempts, moved=size - have, sent=sent,
                     seconds=time.monotonic() - started)


def _remote_size(chain: SSHChain, index: int, request: ShipRequest, path: str) -> int:
    out = _ssh(chain, index, request, script=f"stat -c %s -- {shlex.quote(path)} 2>/dev/null || echo 0",
               timeout=request.ssh.connect_timeout * (index + 1) + 15.0).stdout.strip()
    return int(out) if out.isdigit() else 0


def _remote_digest(chain: SSHChain, index: int, request: ShipRequest, path: str) -> str:
    backoff = _retry(request, lambda: 0, f"sha256sum at {chain.describe(index)}")
    for attempt in backoff.retrying(f"sha256sum at {chain.describe(index)}"):
        with attempt:
            # hashing several GB takes a while on a small relay: a generous deadline
            out = _ssh(chain, index, request, argv=["sha256sum", "--", path], timeout=3600).stdout
            return out.split()[0] if out.split() else ""
    raise AssertionError("unreachable")  # pragma: no cover - reraise=True


def upload_argv(path: str, args: tuple[str, ...]) -> list[str]:
    """The remote command for the optional last step (only the `snapbuild upload` form is supported)."""
    return ["snapbuild", "upload", path, *args]


def ship(request: ShipRequest, *, monitor: Monitor | None = None) -> ShipResult:
    """Ship `request.file` along the chain, a progress bar per hop on the monitor's terminal; see the module
    docstring."""
    report = monitor.line if monitor is not None else (lambda text: log.info("%s", text))
    started = time.monotonic()
    commands.require_tools("rsync", "ssh", "sha256sum")
    if not request.file.is_file():
        raise UserError(f"not a file: {request.file}")
    if request.ssh.identity and not request.ssh.identity.is_file():
        raise UserError(f"identity file not found: {request.ssh.identity}")
    hops = (*request.via, request.to)
    with ssh_chain(hops, request.ssh) as chain:
        size = request.file.stat().st_size
        targets = range(len(hops)) if request.stage else [len(hops) - 1]
        # hashing here overlaps the first transfer; each hop's copy is compared with it at the end
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256") as pool:
            local_digest = pool.submit(file_digest, request.file, "sha256")
            results = tuple(_transfer(chain, i, request, local_digest, size, monitor, report) for i in targets)
            digest = local_digest.result()
        if request.upload is not None:
            last = len(hops) - 1
            argv = upload_argv(results[-1].path, request.upload)
            report(f"{chain.describe(last)}: {shlex.join(argv)}")
            done = commands.run(chain.ssh_argv(last, argv), check=False)
            if done.returncode != 0:
                raise CommandFailed(argv, done.returncode, done.tail(), where=chain.describe(last))
            for line in done.stdout.splitlines():
                report(f"{chain.describe(last)}: {line}")
    return ShipResult(sha256=digest, size=size, remote_path=results[-1].path, hops=results,
                      seconds=time.monotonic() - started)

"""ship over real sshd + rsync between network namespaces: root ns → relay(s) → controller, links broken by
killing sessions and by dropping packets, a full disk, an unreachable host and a wrong key."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from snapbuild.errors import BuildError, UserError
from snapbuild.host import commands
from snapbuild.sshkeys import KeyPair
from snapbuild.transfer.ship import ShipRequest, ShipResult, ship
from snapbuild.transfer.sshchain import Hop, SSHOptions
from tests.netns import HostChain, NetnsHost, host_chain, netns_available
from tests.sshd import descendants

pytestmark = pytest.mark.system

BIG = 300 * 1024 * 1024


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[HostChain, Path, KeyPair]]:
    """relay1, relay2, controller — with the client key authorized on all three."""
    if reason := netns_available():
        pytest.skip(reason)
    key = KeyPair.generate("ship-test")
    directory = Path(tempfile.mkdtemp(prefix="sb-ship-"))
    try:
        with key.write_private(directory) as key_path, \
                host_chain(directory, 3, authorized=[key.public_openssh]) as chain:
            yield chain, key_path, key
    finally:
        subprocess.run(["rm", "-rf", str(directory)], check=False)


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """300 MB of random data and its sha256, made once (and removed: pytest keeps old temp dirs)."""
    path = tmp_path_factory.mktemp("big") / "image.qcow2"
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for _ in range(BIG // (4 * 1024 * 1024)):
            block = os.urandom(4 * 1024 * 1024)
            digest.update(block)
            out.write(block)
    yield path, digest.hexdigest()
    path.unlink(missing_ok=True)


def small_file(directory: Path, size: int) -> Path:
    path = directory / "small.qcow2"
    path.write_bytes(os.urandom(size))
    return path


def request(chain: HostChain, key: Path, file: Path, dest: Path, *, via: tuple[int, ...], to: int,
            **kw: object) -> ShipRequest:
    def hop(host: NetnsHost) -> Hop:
        return Hop(host=host.address, user="root")

    ssh = SSHOptions(identity=key, known_hosts=chain.known_hosts, connect_timeout=5, alive_interval=1, alive_count=3)
    settings: dict[str, object] = {"backoff_initial": 0.2, "backoff_max": 1.0, "io_timeout": 10, "attempts": 4}
    settings.update(kw)
    return ShipRequest(file=file, via=tuple(hop(chain.hosts[i]) for i in via), to=hop(chain.hosts[to]),
                       dest=str(dest), ssh=ssh, **settings)  # type: ignore[arg-type]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)  # polling another thread's progress, bounded by the deadline


def my_rsyncs() -> set[int]:
    """PIDs of the rsync clients this test process runs."""
    found = set()
    for pid in descendants(os.getpid()):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "rsync":
                found.add(pid)
    return found


def size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


class Breaker(threading.Thread):
    """Watches the file grow at its destination and breaks links at given fractions."""

    def __init__(self, target: Path, size: int, breaks: list[tuple[float, Callable[[], None]]]) -> None:
        super().__init__(daemon=True)
        self.target, self.size, self.breaks = target, size, breaks
        self.done: list[float] = []
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            for fraction, action in self.breaks:
                while size_of(self.target) < fraction * self.size:
                    if self.stop.wait(0.02):
                        return
                action()
                self.done.append(fraction)
        except BaseException as exc:  # reported by the test
            self.error = exc


def kill_sessions(host: NetnsHost) -> Callable[[], None]:
    def action() -> None:
        assert host.kill_sessions() > 0
    return action


def drop_until_client_notices(host: NetnsHost) -> Callable[[], None]:
    """Drop every packet into `host` until the rsync attempt running now has failed, then heal the link."""
    def action() -> None:
        running = my_rsyncs()
        host.drop_input()
        try:
            wait_for(lambda: not (running & my_rsyncs()), 60, "the client to notice the dead link")
        finally:
            host.restore_input()
    return action


def run_with_breaks(req: ShipRequest, target: Path, size: int,
                    breaks: list[tuple[float, Callable[[], None]]]) -> tuple[ShipResult, Breaker]:
    breaker = Breaker(target, size, breaks)
    breaker.start()
    try:
        result = ship(req)
    finally:
        breaker.stop.set()
        breaker.join(timeout=70)
    assert breaker.error is None, breaker.error
    return result, breaker


def test_300mb_via_relay_survives_killed_and_dropped_links_and_resumes(
        lab: tuple[HostChain, Path, KeyPair], big_file: tuple[Path, str], tmp_path: Path) -> None:
    chain, key, _ = lab
    file, digest = big_file
    relay, controller = chain.hosts[0], chain.hosts[1]
    dest = tmp_path / "controller-dest"          # same filesystem, seen by the controller's sshd
    before = (relay.rx_bytes(), controller.rx_bytes())
    result, breaker = run_with_breaks(
        request(chain, key, file, dest, via=(0,), to=1), dest / file.name, BIG,
        [(0.2, kill_sessions(controller)),        # hop relay → controller broken by PID
         (0.4, kill_sessions(relay)),             # hop here → relay broken by PID
         (0.6, drop_until_client_notices(controller))])  # packets dropped: a silent dead link
    wire = (relay.rx_bytes() - before[0], controller.rx_bytes() - before[1])
    assert breaker.done == [0.2, 0.4, 0.6], "not every break happened during the transfer"
    assert result.sha256 == digest
    hop = result.hops[0]
    assert hop.attempts >= 4, hop
    assert 0.95 * BIG <= hop.sent <= 1.15 * BIG, \
        f"rsync sent {hop.sent / BIG:.2f}x the file: it restarted instead of resuming (or miscounted)"
    assert wire[0] <= 1.15 * BIG and wire[1] <= 1.15 * BIG, f"bytes on the links: {wire} for {BIG}"
    with (dest / file.name).open("rb") as f:
        assert hashlib.file_digest(f, "sha256").hexdigest() == digest


def test_stage_leaves_a_verified_copy_on_each_relay(lab: tuple[HostChain, Path, KeyPair], tmp_path: Path) -> None:
    chain, key, _ = lab
    file = small_file(tmp_path, 3 * 1024 * 1024 + 17)
    dest = tmp_path / "dest"
    result = ship(request(chain, key, file, dest, via=(0, 1), to=2, stage=True))
    assert [h.hop.split()[0] for h in result.hops] == [f"root@{h.address}" for h in chain.hosts]
    assert (dest / file.name).read_bytes() == file.read_bytes()
    again = ship(request(chain, key, file, dest, via=(0, 1), to=2))
    assert again.hops[0].moved == 0, "a second ship of the same file must send nothing"


def test_full_disk_at_the_controller_is_named_with_its_free_space(
        lab: tuple[HostChain, Path, KeyPair], tmp_path: Path) -> None:
    chain, key, _ = lab
    controller = chain.hosts[1]
    dest = tmp_path / "tiny"
    dest.mkdir()
    # mounted in the controller's own mount namespace (where its sshd and rsync live)
    subprocess.run(controller.in_mounts(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(dest)]), check=True)
    seen = controller.path(dest)
    try:
        # too big from the start: refused before a byte moves
        with pytest.raises(BuildError, match=r"no space left on device at root@\S+ \(hop 2 of 2.*has 24.0 MiB free"):
            ship(request(chain, key, small_file(tmp_path, 32 * 1024 * 1024), dest, via=(0,), to=1))
        # fits, but the disk fills up while the file arrives: rsync's ENOSPC, not a retry loop
        file = small_file(tmp_path, 16 * 1024 * 1024)

        def fill() -> None:
            with contextlib.suppress(OSError), (seen / "filler").open("wb") as f:
                f.write(b"\0" * (24 * 1024 * 1024))

        with pytest.raises(BuildError, match=r"no space left on device at root@.*free") as err:
            run_with_breaks(request(chain, key, file, dest, via=(0,), to=1, bwlimit="2m"), seen / file.name,
                            file.stat().st_size, [(0.1, fill)])
        assert err.value.exit_code == 3
    finally:
        subprocess.run(controller.in_mounts(["umount", str(dest)]), check=True)


def test_unreachable_controller_is_named(lab: tuple[HostChain, Path, KeyPair], tmp_path: Path) -> None:
    chain, key, _ = lab
    file = small_file(tmp_path, 1024)
    req = request(chain, key, file, tmp_path / "d", via=(0,), to=1, attempts=2)
    nowhere = chain.hosts[1].address.rsplit(".", 1)[0] + ".99"   # on the relay's link, nobody there
    req = ShipRequest(**{**req.__dict__, "to": Hop(host=nowhere, user="root")})
    with pytest.raises(UserError, match=rf"cannot reach root@{nowhere} \(hop 2 of 2, via root@") as err:
        ship(req)
    assert err.value.exit_code == 2


def test_a_controller_port_that_refuses_fails_at_once_naming_that_hop(
        lab: tuple[HostChain, Path, KeyPair], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The relay answers, but nothing listens on the controller's port: the relay's onward connection is
    # refused ("channel 0: open failed"), which ssh does not attribute to a hop; one probe of the relay does.
    chain, key, _ = lab
    relay, controller = chain.hosts[0], chain.hosts[1]
    req = request(chain, key, small_file(tmp_path, 1024), tmp_path / "d", via=(0,), to=1)
    req = ShipRequest(**{**req.__dict__, "to": Hop(host=controller.address, user="root", port=1)})
    runs: list[list[str]] = []
    real_run = commands.run

    def counting(argv: list[str], **kw: Any) -> Any:
        runs.append(list(argv))
        return real_run(argv, **kw)

    monkeypatch.setattr(commands, "run", counting)
    with pytest.raises(UserError, match=rf"root@{controller.address}:1 \(hop 2 of 2, via root@{relay.address}\) "
                                        "refuses SSH connections") as err:
        ship(req)
    assert err.value.exit_code == 2 and err.value.hint and "sshd" in err.value.hint
    assert len(runs) == 2, runs   # the attempt at the controller and one probe of the relay: no retries


def test_wrong_key_is_permission_denied_naming_the_relay(lab: tuple[HostChain, Path, KeyPair],
                                                          tmp_path: Path) -> None:
    chain, _, _ = lab
    stranger = KeyPair.generate("stranger")
    with stranger.write_private(tmp_path) as wrong:
        req = request(chain, wrong, small_file(tmp_path, 1024), tmp_path / "d", via=(0,), to=1)
        with pytest.raises(UserError, match=rf"permission denied at root@{chain.hosts[0].address} \(hop 1 of 2\)"):
            ship(req)
    assert not (tmp_path / "d").exists()

"""`snapbuild local` end to end on the tiers' real base image (debian-13) under TCG: build, verify, inspect, interrupt.

The build runs in a child process (this file is also its driver: `python test_local_build.py build …`), so
the interrupt tests can send real signals. One build serves the whole module; the interrupt tests each boot
only as far as they need.

The module's build runs with outbound networking (`nat`, the users' default), and so inside a network namespace
this test makes with nothing but its loopback: the whole driver, and so QEMU's NAT, runs there. The guest
downloads its recipe's signing key and package from an APT repository the test serves in that namespace,
reached at QEMU's NAT alias for the host (10.0.2.2) through a test-only mirror profile; nothing it sends can
leave the machine. Every other VM here runs `isolated` (restrict=on), and verify proves that isolation holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from snapbuild.distros import get_distro
from tests.imagecache import TIER_DISTRO
from tests.qemuprocs import qemu_pids_mentioning

if TYPE_CHECKING:
    from snapbuild.plan import Plan

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).resolve()
TIER_CODENAME = get_distro(TIER_DISTRO).codename

pytestmark = pytest.mark.vm


# ---------------------------------------------------------------- the driver (runs in the child)

def _driver(argv: list[str]) -> int:
    import argparse
    import logging

    # This tree's snapbuild, as in the parent: every child gets PYTHONPATH=ROOT from _env().
    from snapbuild.errors import SnapbuildError
    from snapbuild.ledger import Ledger, new_build_id
    from snapbuild.local.build import LocalSettings, build_local
    from snapbuild.run.context import BuildContext, Reporter, running_build

    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["build"])
    # No default: every build in these tests says whether its guest may go out (nat only inside a netns).
    parser.add_argument("--network", choices=["nat", "isolated"], required=True)
    parser.add_argument("--recipe", default="base")
    parser.add_argument("--profile", default="upstream")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--compression", default="zstd")
    parser.add_argument("--seed", default="nocloud")
    parser.add_argument("--memory", type=int, default=1024)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    plan = make_plan(args.recipe, args.profile, args.sets)
    build_id = new_build_id()
    ledger = Ledger.create(build_id=build_id, builder="local", recipe=plan.recipe_name)
    ctx = BuildContext(build_id=build_id, ledger=ledger, monitor=Reporter())
    settings = LocalSettings(base=args.base, output=args.output, compression=args.compression, seed=args.seed,
                             memory_mb=args.memory, cpus=2, network=args.network)
    print(f"build id {build_id}", file=sys.stderr, flush=True)
    try:
        with running_build(ctx):
            result = build_local(ctx, plan, settings)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return 130
    except SnapbuildError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    print(json.dumps({"output": str(result.output), "manifest": str(result.manifest), "sha256": result.sha256,
                      "size": result.size_bytes, "timings": result.timings, "accel": result.accel}), flush=True)
    return 0


def make_plan(recipe: str = "base", profile: str = "upstream", sets: list[str] | None = None) -> Plan:
    from snapbuild.plan import plan_from_names, shipped_recipes_dir
    from snapbuild.recipes import Library, parse_set

    return plan_from_names(library=Library([ROOT / "tests" / "recipes", shipped_recipes_dir()]), recipe_name=recipe,
                           distro_name=TIER_DISTRO, profile_name=profile, config_variables={},
                           set_values=parse_set(tuple(sets or ())))


# ---------------------------------------------------------------- helpers for the tests

@dataclass
class Env:
    root: Path
    tmproot: Path
    state: Path
    env: dict[str, str]

    def ledgers(self) -> list[Path]:
        return sorted((self.state / "builds").glob("*.json")) if (self.state / "builds").is_dir() else []


def _env(root: Path, cache: Path) -> Env:
    """Private temp root, state and cache; the cache (KVM/TCG decision) is shared by the module's builds."""
    tmproot, state = root / "tmp", root / "state"
    for d in (tmproot, state, cache):
        d.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TMPDIR=str(tmproot), SNAPBUILD_STATE_DIR=str(state), SNAPBUILD_CACHE_DIR=str(cache),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return Env(root=root, tmproot=tmproot, state=state, env=env)


def wait_until(predicate, deadline_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def start_build(env: Env, base: Path, output: Path, *extra: str) -> subprocess.Popen[str]:
    """A build of `base`, isolated (restrict=on): these run in this machine's own network namespace."""
    return subprocess.Popen([sys.executable, str(DRIVER), "build", "--network", "isolated", "--base", str(base),
                             "-o", str(output), *extra],
                            env=env.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_until(proc: subprocess.Popen[str], marker: str, deadline_s: float, seen: list[str]) -> str:
    """Read the child's stderr line by line until a line contains `marker`; that line."""
    assert proc.stderr is not None
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            raise AssertionError(f"build ended before {marker!r}:\n{''.join(seen[-40:])}")
        seen.append(line)
        if marker in line:
            return line
    raise AssertionError(f"no {marker!r} within {deadline_s} s:\n{''.join(seen[-40:])}")


def assert_nothing_left(env: Env, port: int | None = None) -> None:
    from snapbuild.local.qemu import port_is_free

    assert qemu_pids_mentioning(str(env.tmproot)) == [], "a QEMU process outlived the build"
    assert list(env.tmproot.iterdir()) == [], f"temp files left: {list(env.tmproot.iterdir())}"
    assert env.ledgers() == [], f"ledgers left: {[p.read_text() for p in env.ledgers()]}"
    if port is not None:
        assert port_is_free(port), f"forwarded port {port} still bound"


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- one real build for the module

NAT_RECIPE = "nat-demo"
NAT_UPSTREAM = "https://apt.snapbuild-nat-demo.invalid"     # what the recipe names; no such host exists
REPO_PORT = 18080            # inside the test's own namespace, where nothing else listens
ARCHIVE_PORT = 18081         # the Debian archive mirror, bridged into that namespace (tests/aptproxy.py)
REPO_REQUEST = re.compile(r'"GET (\S+) HTTP/1\.[01]" (\d{3})')


@dataclass
class Built:
    env: Env
    base: Path
    base_sha_before: str
    output: Path
    result: dict[str, object]
    wall_s: float
    log: str
    plan_args: tuple[str, str, list[str]]      # recipe, profile, --set: what verify needs to check the recipe
    repo_requests: list[tuple[str, str]]       # (path, status) the repository in the namespace served
    archive_served: list[str]                  # what the archive mirror (bridged into the namespace) served


def make_nat_repository(root: Path) -> str:
    """A signed APT repository with one stand-in package, plus its key at /key.asc; the key's fingerprint."""
    from tests.aptrepo import StandIn, build_deb, dists_repository, signing_key

    debs = root / "debs"
    debs.mkdir(parents=True)
    key = signing_key(root / "gnupg")
    deb = build_deb(StandIn(name="snapbuild-nat-demo", version="1.0",
                            files={"/usr/bin/snapbuild-nat-demo": "#!/bin/sh\necho installed through NAT\n"}), debs)
    served = root / "served"
    dists_repository(served / "debian", [deb], suite=TIER_CODENAME, component="main", key=key)
    (served / "key.asc").write_bytes(key.armored_public_key())
    return key.fingerprint



@pytest.fixture(scope="module")
def accel_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("snapbuild-cache")


@pytest.fixture(scope="module")
def built(base_image: Path, tmp_path_factory: pytest.TempPathFactory, accel_cache: Path) -> Iterator[Built]:
    """The module's one build: NAT mode, the whole driver inside a loopback-only namespace with the repository."""
    from tests.aptproxy import apt_proxy
    from tests.netns import bridge_in, loopback_netns

    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("the NAT build runs in a network namespace of its own: needs root and iproute2")
    env = _env(tmp_path_factory.mktemp("local-build"), accel_cache)
    out_dir = env.root / "out"
    out_dir.mkdir()
    output = out_dir / f"{NAT_RECIPE}.qcow2"
    fingerprint = make_nat_repository(env.root / "repo")
    profile = env.root / "nat-mirrors.yaml"
    # Test-only mirror profile: the recipe's repository is the test's, at QEMU's NAT alias for the host. No
    # forwards: only NAT can carry these requests.
    # The distro archive comes from a mirror in the namespace too (the test's apt proxy, bridged in): the build's
    # preflight asks every source the plan uses, as a connected user's would, and the guest's apt-get reads them.
    profile.write_text(json.dumps({"description": "the test's repository through the local VM's NAT",
                                   "apt": {"debian": {"archive": f"http://10.0.2.2:{ARCHIVE_PORT}/debian",
                                                      "security": f"http://10.0.2.2:{ARCHIVE_PORT}/debian-security"}},
                                   "apt_repositories": {NAT_UPSTREAM: f"http://10.0.2.2:{REPO_PORT}"}}))
    plan_args = (NAT_RECIPE, str(profile), [f"repo_key_fingerprint={fingerprint}"])
    before = _sha256(base_image)
    server_log = env.root / "repo-server.log"
    with loopback_netns("nat") as ns, server_log.open("w") as log_file, apt_proxy() as (proxy_port, archive), \
            bridge_in(ns, port=ARCHIVE_PORT, to_port=proxy_port, socket_dir=env.root):
        server = subprocess.Popen(ns.argv([sys.executable, "-u", "-m", "http.server", str(REPO_PORT), "--bind",
                                           "127.0.0.1", "--directory", str(env.root / "repo" / "served")]),
                                  stdout=log_file, stderr=log_file, stdin=subprocess.DEVNULL)
        try:
            wait_until(lambda: "Serving HTTP" in server_log.read_text() or server.poll() is not None, 30,
                       "the repository server in the namespace")
            assert server.poll() is None, server_log.read_text()
            start = time.monotonic()
            proc = subprocess.run(ns.argv([sys.executable, str(DRIVER), "build", "--network", "nat",
                                           "--recipe", NAT_RECIPE, "--profile", str(profile),
                                           "--set", plan_args[2][0], "--base", str(base_image), "-o", str(output)]),
                                  env=env.env, capture_output=True, text=True, timeout=3600, check=False)
            wall = time.monotonic() - start
        finally:
            server.terminate()
            server.wait(timeout=30)
    (env.root / "build.log").write_text(proc.stderr)
    assert proc.returncode == 0, f"build failed ({proc.returncode}):\n{proc.stderr[-6000:]}"
    yield Built(env=env, base=base_image, base_sha_before=before, output=output,
                result=json.loads(proc.stdout.strip().splitlines()[-1]), wall_s=wall, log=proc.stderr,
                plan_args=plan_args, repo_requests=REPO_REQUEST.findall(server_log.read_text()),
                archive_served=list(archive.served))


def test_local_build_writes_compressed_qcow2_and_manifest_and_leaves_nothing(built: Built) -> None:
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(built.output)],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["format"] == "qcow2"
    assert info["format-specific"]["data"].get("compression-type") == "zstd"
    assert "backing-filename" not in info
    assert info["virtual-size"] == 4 * 1024 ** 3      # recipe nat-demo (as base): disk_size_gb 4
    from tests.manifestcheck import check_manifest

    manifest = check_manifest(Path(str(built.result["manifest"])), builder="local")
    assert manifest["output"]["sha256"] == _sha256(built.output) == built.result["sha256"]
    assert manifest["recipe"]["name"] == NAT_RECIPE and manifest["recipe"]["distro"] == TIER_DISTRO
    assert manifest["details"]["guest_os"].startswith("Debian GNU/Linux 13")
    assert manifest["seal"]["in_guest"] == "clean"
    assert [s["name"] for s in manifest["steps"]][:4] == ["preflight", "prepare work image", "boot builder", "connect"]
    metrics = manifest["details"]["metrics"]
    for key in ("boot_to_ssh_s", "ssh_to_first_command_s", "compact_s", "total_s"):
        assert metrics[key] > 0
    assert _sha256(built.base) == built.base_sha_before, "the base image was modified"
    # The flags were read from Debian 13's cloud-init (25.x has --machine-id and --configs) without --help.
    assert "cloud-init clean --logs --seed --machine-id --configs all\n" in built.log
    assert_nothing_left(built.env)
    print(f"\nlocal build: {built.wall_s:.0f} s wall; {built.result['accel']}; "
          f"boot→SSH {metrics['boot_to_ssh_s']:.1f} s; "
          f"SSH→first command {metrics['ssh_to_first_command_s']:.2f} s; "
          f"zstd output {built.output.stat().st_size / 1e6:.1f} MB")


def test_the_nat_build_downloaded_its_key_and_package_through_the_namespaces_repository(built: Built) -> None:
    # The repository listens only inside the namespace, and the profile gives no forward: these came through NAT.
    served = {path for path, status in built.repo_requests if status == "200"}
    assert "/key.asc" in served, built.repo_requests
    assert any(path.endswith("/snapbuild-nat-demo_1.0_amd64.deb") for path in served), built.repo_requests
    assert any(path.endswith(f"/dists/{TIER_CODENAME}/InRelease") for path in served), built.repo_requests
    assert "network: nat (outbound through QEMU user-mode NAT" in built.log
    # The distro archive came through the namespace's mirror: asked by the preflight and by the guest's apt-get.
    assert any(path.endswith(f"/dists/{TIER_CODENAME}/InRelease") for path in built.archive_served), \
        built.archive_served
    # The NAT's SSH forward listened on the namespace's loopback: the build reached its guest there.
    assert "SSH after" in built.log


def test_zlib_and_zstd_outputs_of_the_same_image(built: Built, tmp_path: Path) -> None:
    from snapbuild.local.build import compact_argv

    raw = tmp_path / "plain.qcow2"
    subprocess.run(compact_argv(built.output, raw, "none"), check=True)
    sizes: dict[str, int] = {}
    seconds: dict[str, float] = {}
    for kind in ("zstd", "zlib"):
        target = tmp_path / f"{kind}.qcow2"
        start = time.monotonic()
        subprocess.run(compact_argv(raw, target, kind), check=True)   # type: ignore[arg-type]
        seconds[kind] = time.monotonic() - start
        sizes[kind] = target.stat().st_size
    assert sizes["zstd"] < raw.stat().st_size and sizes["zlib"] < raw.stat().st_size
    assert sizes["zstd"] < 1.15 * sizes["zlib"]
    print(f"\nuncompressed {raw.stat().st_size / 1e6:.1f} MB; zstd {sizes['zstd'] / 1e6:.1f} MB in "
          f"{seconds['zstd']:.1f} s; zlib {sizes['zlib'] / 1e6:.1f} MB in {seconds['zlib']:.1f} s")


def test_verify_passes_on_the_built_image_and_its_isolated_guests_cannot_reach_the_host(
        built: Built, monkeypatch: pytest.MonkeyPatch) -> None:
    """verify in `isolated` mode, in this machine's namespace: a server listens on 127.0.0.1 here, where NAT would
    take the guest's 10.0.2.2; restrict=on must keep the guest's request from it."""
    from snapbuild.local.verify import CheckResult, VerifySettings, verify_image

    for key in ("TMPDIR", "SNAPBUILD_STATE_DIR", "SNAPBUILD_CACHE_DIR"):
        monkeypatch.setenv(key, built.env.env[key])
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)     # re-read TMPDIR
    with _counting_server() as (port, requests):
        probe = ("sh", "-c", f"! curl -sS --max-time 10 -o /dev/null http://10.0.2.2:{port}/probe")
        plan = make_plan(*built.plan_args)
        plan = dataclasses.replace(plan, verify_checks=(*plan.verify_checks, probe))
        result = verify_image(built.output, plan=plan, settings=VerifySettings(network="isolated"))
    print("\n" + result.render() + f"\ntimings: {result.timings}")
    names = [c.name for c in result.checks]
    assert any("cloud-init" in n for n in names) and any("machine-id" in n for n in names)
    assert any("host keys" in n for n in names) and any("builder" in n for n in names)
    assert any("grown" in n for n in names) and "recipe check: snapbuild-nat-demo" in names
    assert CheckResult(name=f"recipe check: {shlex.join(probe)}", ok=True, detail="exit 0") in result.checks
    assert requests == [], "an isolated guest reached the host's loopback"
    assert result.ok, result.render()
    assert json.loads(result.render(json=True))["ok"] is True
    # Both boots' checks, boot 1's first, as when they ran one after the other.
    boots = [n.split(":")[0] for n in names if n.startswith("boot ")]
    assert boots == sorted(boots) and set(boots) == {"boot 1", "boot 2"}
    assert_nothing_left(built.env)


@contextlib.contextmanager
def _counting_server() -> Iterator[tuple[int, list[str]]]:
    """An HTTP server on 127.0.0.1 that records every request path (it should see none)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    requests: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_inspect_finds_no_violation_in_the_built_image(built: Built) -> None:
    from snapbuild.sealing.offline import inspect_image

    assert os.geteuid() == 0, "offline inspection mounts the image: the vm tier runs as root"
    assert inspect_image(built.output) == []


def test_inspect_reports_each_violation_planted_in_a_copy_of_the_built_image(built: Built, tmp_path: Path) -> None:
    """The mutation check at image level: the same attach and mount `inspect` uses, but writable, on a copy."""
    if os.geteuid() != 0:
        pytest.skip("planting into an image mounts it: needs root")
    from snapbuild.host import attach as attaching
    from snapbuild.host import commands, grow
    from snapbuild.run.scope import undo_scope
    from tests.sealplants import PLANTS, code_of, plant_all

    planted = tmp_path / "planted.qcow2"
    shutil.copyfile(built.output, planted)
    with undo_scope(None) as scope:
        attached = attaching.attach(scope, planted, tmp_path, backend=attaching.resolve_backend("auto"))
        root = grow.choose_root(grow.probe(attached), planted)
        mountpoint = tmp_path / "root"
        mountpoint.mkdir()
        commands.run(["mount", root.device, str(mountpoint)])
        scope.add_undo("unmount", commands.run, ["umount", str(mountpoint)])
        plant_all(mountpoint)
    done = subprocess.run([sys.executable, "-m", "snapbuild", "inspect", "--json", str(planted)], env=built.env.env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 3, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is False
    assert {v["code"] for v in report["violations"]} == {code_of(p) for p in PLANTS}
    # The good image itself is untouched by all this.
    assert _sha256(built.output) == built.result["sha256"]


# ---------------------------------------------------------------- interrupts

INTERRUPT_POINTS = {
    "copying the base": "▸ prepare work image",
    "QEMU booting": "ssh on 127.0.0.1:",
    "guest up, before provisioning": "SSH after",
}


@pytest.mark.parametrize("point", list(INTERRUPT_POINTS))
def test_sigint_leaves_no_qemu_temp_file_ledger_or_port(point: str, base_image: Path, tmp_path: Path,
                                                         accel_cache: Path) -> None:
    env = _env(tmp_path, accel_cache)
    output = tmp_path / "out.qcow2"
    proc = start_build(env, base_image, output)
    seen: list[str] = []
    port: int | None = None
    try:
        marker = INTERRUPT_POINTS[point]
        if marker != INTERRUPT_POINTS["copying the base"]:
            line = read_until(proc, "ssh on 127.0.0.1:", 600, seen)
            port = int(line.rsplit(":", 1)[1].split()[0])
        read_until(proc, marker, 900, seen)
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = "".join(seen) + rest
    assert proc.returncode == 130, log[-3000:]
    assert "▸ clean up" in log           # the failure path undoes everything as a step of its own
    assert not output.exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".out.qcow2")] == []
    assert_nothing_left(env, port)


def test_kill_9_takes_qemu_down_and_the_ledger_remembers_the_rest(base_image: Path, tmp_path: Path,
                                                                  accel_cache: Path) -> None:
    env = _env(tmp_path, accel_cache)
    proc = start_build(env, base_image, tmp_path / "out.qcow2")
    seen: list[str] = []
    try:
        read_until(proc, "ssh on 127.0.0.1:", 600, seen)
        assert qemu_pids_mentioning(str(env.tmproot)), "QEMU should be running now"
        proc.kill()
        proc.wait()
        wait_until(lambda: not qemu_pids_mentioning(str(env.tmproot)), 30, "QEMU to die with its parent")
        (ledger,) = env.ledgers()
        kinds = {r["kind"]: r for r in json.loads(ledger.read_text())["resources"]}
        assert set(kinds) == {"tempdir", "process"}
        assert Path(kinds["tempdir"]["ref"]).is_dir()
        assert kinds["process"]["info"]["pid"] > 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        import shutil
        for left in env.tmproot.iterdir():
            shutil.rmtree(left, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(_driver(sys.argv[1:]))

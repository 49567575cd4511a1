"""`snapbuild local` end to end on a real Debian 12 base image under TCG: build, verify, inspect, interrupt.

The build runs in a child process (this file is also its driver: `python test_local_build.py build …`), so
the interrupt tests can send real signals. One build serves the whole module; the interrupt tests each boot
only as far as they need.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from snapbuild.plan import Plan

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).resolve()

pytestmark = pytest.mark.vm


# ---------------------------------------------------------------- the driver (runs in the child)

def _driver(argv: list[str]) -> int:
    import argparse
    import logging

    sys.path.insert(0, str(ROOT))
    from snapbuild.errors import SnapbuildError
    from snapbuild.ledger import Ledger, new_build_id
    from snapbuild.local.build import LocalSettings, build_local
    from snapbuild.pipeline import BuildContext, Reporter, running_build

    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["build"])
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--compression", default="zstd")
    parser.add_argument("--seed", default="nocloud")
    parser.add_argument("--memory", type=int, default=1024)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    plan = make_plan()
    build_id = new_build_id()
    ledger = Ledger.create(build_id=build_id, builder="local", recipe=plan.recipe_name)
    ctx = BuildContext(build_id=build_id, ledger=ledger, reporter=Reporter())
    settings = LocalSettings(base=args.base, output=args.output, compression=args.compression, seed=args.seed,
                             memory_mb=args.memory, cpus=2)
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


def make_plan() -> Plan:
    from snapbuild.plan import plan_from_names, shipped_recipes_dir
    from snapbuild.recipes import Library

    return plan_from_names(library=Library([shipped_recipes_dir()]), recipe_name="base", distro_name="debian-12",
                           profile_name="upstream", config_variables={}, set_values={})


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


def qemu_pids_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "qemu-system" in cmdline and text in cmdline:
            pids.append(int(proc.name))
    return pids


def wait_until(predicate, deadline_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def start_build(env: Env, base: Path, output: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(DRIVER), "build", "--base", str(base), "-o", str(output), *extra],
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

@dataclass
class Built:
    env: Env
    base: Path
    base_sha_before: str
    output: Path
    result: dict[str, object]
    wall_s: float
    log: str


@pytest.fixture(scope="module")
def base_image(request: pytest.FixtureRequest) -> Path:
    """The shared Debian 12 base image, or SNAPBUILD_TEST_LOCAL_BASE (any sealed Debian 12 qcow2) when set."""
    override = os.environ.get("SNAPBUILD_TEST_LOCAL_BASE")
    if override:
        return Path(override)
    return Path(request.getfixturevalue("debian_base_image"))


@pytest.fixture(scope="module")
def accel_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("snapbuild-cache")


@pytest.fixture(scope="module")
def built(base_image: Path, tmp_path_factory: pytest.TempPathFactory, accel_cache: Path) -> Iterator[Built]:
    env = _env(tmp_path_factory.mktemp("local-build"), accel_cache)
    out_dir = env.root / "out"
    out_dir.mkdir()
    output = out_dir / "base.qcow2"
    before = _sha256(base_image)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(DRIVER), "build", "--base", str(base_image), "-o", str(output)],
                          env=env.env, capture_output=True, text=True, timeout=3600, check=False)
    wall = time.monotonic() - start
    (env.root / "build.log").write_text(proc.stderr)
    assert proc.returncode == 0, f"build failed ({proc.returncode}):\n{proc.stderr[-6000:]}"
    yield Built(env=env, base=base_image, base_sha_before=before, output=output,
                result=json.loads(proc.stdout.strip().splitlines()[-1]), wall_s=wall, log=proc.stderr)


def test_local_build_writes_compressed_qcow2_and_manifest_and_leaves_nothing(built: Built) -> None:
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(built.output)],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["format"] == "qcow2"
    assert info["format-specific"]["data"].get("compression-type") == "zstd"
    assert "backing-filename" not in info
    assert info["virtual-size"] == 4 * 1024 ** 3      # recipe base: disk_size_gb 4
    manifest = json.loads(Path(str(built.result["manifest"])).read_text())
    assert manifest["output"]["sha256"] == _sha256(built.output) == built.result["sha256"]
    assert manifest["recipe"] == "base" and manifest["distro"] == "debian-12"
    assert manifest["guest_os"].startswith("Debian GNU/Linux 12")
    for key in ("boot_to_ssh_s", "ssh_to_first_command_s", "compact_s", "total_s"):
        assert manifest["timings"][key] > 0
    assert _sha256(built.base) == built.base_sha_before, "the base image was modified"
    # The flags were read from Debian 12's cloud-init (22.4 has --machine-id, not --configs) without --help.
    assert "cloud-init clean --logs --seed --machine-id\n" in built.log
    assert_nothing_left(built.env)
    print(f"\nlocal build: {built.wall_s:.0f} s wall; {built.result['accel']}; "
          f"boot→SSH {manifest['timings']['boot_to_ssh_s']:.1f} s; "
          f"SSH→first command {manifest['timings']['ssh_to_first_command_s']:.2f} s; "
          f"zstd output {built.output.stat().st_size / 1e6:.1f} MB")


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


def test_verify_passes_on_the_built_image(built: Built, monkeypatch: pytest.MonkeyPatch) -> None:
    from snapbuild.local.verify import verify_image

    for key in ("TMPDIR", "SNAPBUILD_STATE_DIR", "SNAPBUILD_CACHE_DIR"):
        monkeypatch.setenv(key, built.env.env[key])
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)     # re-read TMPDIR
    result = verify_image(built.output, plan=make_plan())
    print("\n" + result.render())
    names = [c.name for c in result.checks]
    assert any("cloud-init" in n for n in names) and any("machine-id" in n for n in names)
    assert any("host keys" in n for n in names) and any("builder" in n for n in names)
    assert any("grown" in n for n in names) and any(n.startswith("recipe check") for n in names)
    assert result.ok, result.render()
    assert json.loads(result.render(json=True))["ok"] is True
    assert_nothing_left(built.env)


def test_inspect_finds_no_violation_in_the_built_image(built: Built) -> None:
    inspect = pytest.importorskip("snapbuild.inspect", reason="snapbuild.inspect (lead) not written yet")
    if os.geteuid() != 0:
        pytest.skip("offline inspection mounts the image: needs root")
    assert inspect.inspect_image(built.output) == []


def test_inspect_reports_each_violation_planted_in_a_copy_of_the_built_image(built: Built, tmp_path: Path) -> None:
    """The mutation check at image level: the same attach and mount `inspect` uses, but writable, on a copy."""
    if os.geteuid() != 0:
        pytest.skip("planting into an image mounts it: needs root")
    from sealplants import PLANTS, code_of, plant_all

    from snapbuild import hostrun
    from snapbuild.chroot import attach as attaching
    from snapbuild.chroot import grow
    from snapbuild.chroot.scope import undo_scope

    planted = tmp_path / "planted.qcow2"
    shutil.copyfile(built.output, planted)
    with undo_scope(None) as scope:
        attached = attaching.attach(scope, planted, tmp_path, backend=attaching.resolve_backend("auto"))
        root = grow.choose_root(grow.probe(attached), planted)
        mountpoint = tmp_path / "root"
        mountpoint.mkdir()
        hostrun.run(["mount", root.device, str(mountpoint)])
        scope.add_undo("unmount", hostrun.run, ["umount", str(mountpoint)])
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
    assert "cleanup" in log
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

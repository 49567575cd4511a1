"""`local` and `verify`: --network and --boot-timeout reach the VM settings, and verify's two boots run side by side
only when MemAvailable holds both VMs plus a margin."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from snapbuild import cli
from snapbuild.local import build as local_build
from snapbuild.local import verify


def _invoke(args: list[str]) -> Any:
    return CliRunner().invoke(cli.cli, args, catch_exceptions=False)


@pytest.mark.parametrize(("args", "network", "boot_timeout"), [
    ([], "nat", 900.0),
    (["--network", "isolated", "--boot-timeout", "120"], "isolated", 120.0),
])
def test_local_passes_network_and_boot_timeout_to_its_settings(
        args: list[str], network: str, boot_timeout: float, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[local_build.LocalSettings] = []

    def fake_run_local(plan: Any, settings: local_build.LocalSettings, **kw: Any) -> Any:
        seen.append(settings)
        raise SystemExit(0)

    monkeypatch.setattr(local_build, "run_local", fake_run_local)
    result = _invoke(["local", "base", "--distro", "debian-12", "--mirrors", "upstream", "--base",
                      str(tmp_path / "b.qcow2"), "-o", str(tmp_path / "o.qcow2"), *args])
    assert result.exit_code == 0, result.output
    (settings,) = seen
    assert (settings.network, settings.boot_timeout_s) == (network, boot_timeout)


def test_verify_passes_network_and_boot_timeout_to_its_settings(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[verify.VerifySettings] = []

    def fake_verify(image: Path, *, settings: verify.VerifySettings, **kw: Any) -> verify.VerifyResult:
        seen.append(settings)
        return verify.VerifyResult(image=image, checks=(verify.CheckResult(name="x", ok=True),))

    monkeypatch.setattr(verify, "verify_image", fake_verify)
    result = _invoke(["verify", str(tmp_path / "i.qcow2"), "--network", "isolated", "--boot-timeout", "60"])
    assert result.exit_code == 0, result.output
    assert (seen[0].network, seen[0].boot_timeout_s) == ("isolated", 60.0)


def test_network_refuses_anything_but_nat_or_isolated(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli.cli, ["verify", str(tmp_path / "i.qcow2"), "--network", "bridge"])
    assert result.exit_code == 2 and "'bridge' is not one of 'nat', 'isolated'" in result.output


def test_settings_default_to_nat_like_a_cloud_server() -> None:
    assert verify.VerifySettings().network == "nat"
    assert local_build.LocalSettings(base=Path("b"), output=Path("o")).network == "nat"


# ---------------------------------------------------------------- verify: side by side or one after the other

def test_two_boots_run_side_by_side_when_memory_and_cpus_hold_both() -> None:
    need = 2 * (1024 + verify.QEMU_OVERHEAD_MB) + verify.HOST_MARGIN_MB
    together, why = verify.boots_side_by_side(memory_mb=1024, available_mb=need, cpus=2, host_cpus=4)
    assert together and f"{need} MiB needed" in why and "4 CPUs for 4 vCPUs" in why


def test_two_boots_run_one_after_the_other_when_memory_is_short_or_unknown() -> None:
    need = 2 * (2048 + verify.QEMU_OVERHEAD_MB) + verify.HOST_MARGIN_MB
    together, why = verify.boots_side_by_side(memory_mb=2048, available_mb=need - 1, cpus=1, host_cpus=64)
    assert not together and why.startswith("boots one after the other") and f"{need - 1} MiB available" in why
    assert verify.boots_side_by_side(memory_mb=512, available_mb=None, cpus=1, host_cpus=64)[0] is False


def test_two_boots_run_one_after_the_other_when_their_vcpus_would_share_too_few_cores() -> None:
    # 2 guests x 2 vCPUs on 2 cores starved a guest into a 261 s soft lockup under TCG: never side by side there.
    together, why = verify.boots_side_by_side(memory_mb=1024, available_mb=100_000, cpus=2, host_cpus=2)
    assert not together and "2 host CPUs, 4 vCPUs" in why
    assert verify.boots_side_by_side(memory_mb=1024, available_mb=100_000, cpus=1, host_cpus=2)[0] is True
    assert verify.boots_side_by_side(memory_mb=1024, available_mb=100_000, cpus=1, host_cpus=None)[0] is False


def test_host_cpu_count_is_this_process_affinity() -> None:
    assert verify.host_cpu_count() == len(os.sched_getaffinity(0))


def test_mem_available_is_read_from_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24683520 kB\nMemFree:        23076864 kB\nMemAvailable:   24266752 kB\n")
    assert verify.mem_available_mb(meminfo) == 24266752 // 1024
    meminfo.write_text("MemTotal:       24683520 kB\n")       # kernels before 3.14 had no MemAvailable
    assert verify.mem_available_mb(meminfo) is None
    assert verify.mem_available_mb(tmp_path / "missing") is None


def _ctx(tmp_path: Path) -> Any:
    from snapbuild.ledger import Ledger
    from snapbuild.run.context import BuildContext, Reporter

    ledger = Ledger.create(build_id="t-verify", builder="verify", recipe="-", directory=tmp_path / "ledgers")
    return BuildContext(build_id="t-verify", ledger=ledger, monitor=Reporter())


def test_side_by_side_boots_report_boot_1_first_even_when_boot_2_finishes_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    boot_2_done = threading.Event()
    finished: list[int] = []

    def fake_boot(ctx: Any, image: Path, info: Any, number: int, *rest: Any) -> verify._Boot:
        if number == 1:
            assert boot_2_done.wait(timeout=60), "boot 2 did not run while boot 1 was going: not side by side"
        boot = verify._Boot(checks=[verify.CheckResult(name=f"boot {number}: check", ok=True)])
        finished.append(number)
        if number == 2:
            boot_2_done.set()
        return boot

    monkeypatch.setattr(verify, "_boot_once", fake_boot)
    boots = verify.run_boots(_ctx(tmp_path), tmp_path / "i", {}, tmp_path, None, verify.VerifySettings(),
                             side_by_side=True, why="test")
    assert finished == [2, 1]
    assert [c.name for b in boots for c in b.checks] == ["boot 1: check", "boot 2: check"]


def test_a_failed_side_by_side_boot_ends_the_wait_without_waiting_for_the_other(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from snapbuild.errors import BuildError

    release = threading.Event()

    def fake_boot(ctx: Any, image: Path, info: Any, number: int, *rest: Any) -> verify._Boot:
        if number == 2:
            raise BuildError("guest never booted: the firmware cannot boot the disk")
        release.wait(timeout=60)      # boot 1 would run on; the failure must not wait for it
        return verify._Boot()

    monkeypatch.setattr(verify, "_boot_once", fake_boot)
    try:
        with pytest.raises(BuildError, match="firmware cannot boot"):
            verify.run_boots(_ctx(tmp_path), tmp_path / "i", {}, tmp_path, None, verify.VerifySettings(),
                             side_by_side=True, why="test")
        assert not release.is_set()
    finally:
        release.set()

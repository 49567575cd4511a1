"""QEMU launcher: argv, free ports and their retry, the KVM→TCG decision, and process lifecycle.

The lifecycle tests start a real QEMU (TCG, an empty disk: the firmware finds nothing to boot) for a second.
The KVM trial runs against a fake QEMU (tests/fakeqemu.py) that plays each way KVM behaves, with the /dev/kvm
probe injected: its branches are decided the same on any host, with or without KVM or QEMU.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from snapbuild.errors import BuildError
from snapbuild.local import qemu
from snapbuild.local.qemu import (
    GuestForward,
    VMSpec,
    build_argv,
    decide_accel,
    netdev_arg,
)
from tests import fakeqemu

needs_qemu = pytest.mark.skipif(shutil.which(qemu.QEMU) is None or shutil.which("qemu-img") is None,
                                reason="qemu not installed")


def _spec(tmp_path: Path, **kw: object) -> VMSpec:
    kw.setdefault("network", "isolated")
    return VMSpec(disk=tmp_path / "disk.qcow2", serial_log=tmp_path / "serial.log", **kw)  # type: ignore[arg-type]


def _opt(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_tcg_argv_uses_small_translation_cache_and_no_kvm(tmp_path: Path) -> None:
    argv = build_argv(_spec(tmp_path), accel="tcg", ssh_port=2222, qmp_socket=tmp_path / "q.sock")
    assert _opt(argv, "-accel") == ["tcg,tb-size=256"]
    assert "kvm" not in " ".join(argv)


def test_isolated_argv_restricts_user_network_and_binds_ssh_forward_to_loopback(tmp_path: Path) -> None:
    argv = build_argv(_spec(tmp_path, network="isolated"), accel="kvm", ssh_port=40022, qmp_socket=tmp_path / "q")
    assert _opt(argv, "-netdev") == ["user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:40022-:22"]
    # No option ROM: a disk that does not boot is not followed by a network boot.
    assert "virtio-net-pci,netdev=n0,romfile=" in _opt(argv, "-device")
    assert _opt(argv, "-serial") == [f"file:{tmp_path / 'serial.log'}"]
    assert _opt(argv, "-qmp") == ["unix:q,server=on,wait=off"]    # relative: QEMU runs in its directory
    (disk,) = _opt(argv, "-drive")
    assert "if=none,id=disk0" in disk and "discard=unmap" in disk and "detect-zeroes=unmap" in disk
    # The disk is the firmware's first boot device, so the first "Boot failed" is the disk's.
    assert "virtio-blk-pci,drive=disk0,bootindex=0" in _opt(argv, "-device")


def test_nat_argv_drops_restrict_but_still_listens_on_loopback_only(tmp_path: Path) -> None:
    argv = build_argv(_spec(tmp_path, network="nat"), accel="tcg", ssh_port=40022, qmp_socket=tmp_path / "q")
    (netdev,) = _opt(argv, "-netdev")
    assert netdev == "user,id=n0,hostfwd=tcp:127.0.0.1:40022-:22"
    assert "restrict" not in netdev
    # Every listening socket QEMU opens is a hostfwd; each is bound to 127.0.0.1.
    assert [p for p in netdev.split(",") if p.startswith("hostfwd=")] == ["hostfwd=tcp:127.0.0.1:40022-:22"]


def test_a_spec_without_the_ssh_forward_opens_no_port_to_the_guest(tmp_path: Path) -> None:
    spec = dataclasses.replace(_spec(tmp_path, network="nat"), forward_ssh=False)
    (netdev,) = _opt(build_argv(spec, accel="tcg", ssh_port=40022, qmp_socket=tmp_path / "q"), "-netdev")
    assert netdev == "user,id=n0"


@pytest.mark.parametrize("network", ["nat", "isolated"])
def test_guestfwd_reaches_host_loopback_through_socat_in_both_modes(network: qemu.Network) -> None:
    arg = netdev_arg(2222, [GuestForward(guest_ip="10.0.2.100", guest_port=5000, host_ip="127.0.0.1",
                                         host_port=41234)], network=network)
    assert arg.endswith(",guestfwd=tcp:10.0.2.100:5000-cmd:socat - TCP:127.0.0.1:41234")
    assert ("restrict=on" in arg) == (network == "isolated")
    assert "hostfwd=tcp:127.0.0.1:2222-:22" in arg


def test_seed_drive_comes_after_the_disk_so_the_disk_stays_vda(tmp_path: Path) -> None:
    argv = build_argv(_spec(tmp_path, seed=tmp_path / "seed.iso"), accel="tcg", ssh_port=1, qmp_socket=tmp_path / "q")
    devices = [d for d in _opt(argv, "-device") if d.startswith("virtio-blk-pci")]
    assert devices == ["virtio-blk-pci,drive=disk0,bootindex=0", "virtio-blk-pci,drive=seed0"]


def test_seed_is_a_readonly_second_drive_and_uefi_adds_pflash(tmp_path: Path) -> None:
    spec = _spec(tmp_path, seed=tmp_path / "seed.iso", firmware="uefi")
    argv = build_argv(spec, accel="tcg", ssh_port=1, qmp_socket=tmp_path / "q", efivars=tmp_path / "vars.fd")
    drives = _opt(argv, "-drive")
    assert any(d.startswith(f"file={tmp_path / 'seed.iso'},format=raw") and "readonly=on" in d and "id=seed0" in d
               for d in drives)
    assert any("if=pflash" in d and "readonly=on" in d and str(qemu.OVMF_CODE) in d for d in drives)
    assert any("if=pflash" in d and str(tmp_path / "vars.fd") in d for d in drives)


def test_accel_decision() -> None:
    assert decide_accel(kvm_problem=None, cached_verdict=None, override=None).accel == "kvm"
    no_dev = decide_accel(kvm_problem="/dev/kvm: No such file or directory", cached_verdict=None, override=None)
    assert no_dev.accel == "tcg" and no_dev.describe() == "accel: tcg (kvm unusable: /dev/kvm: No such file or directory)"
    known_bad = decide_accel(kvm_problem=None, cached_verdict="no kernel output", override=None)
    assert known_bad.accel == "tcg" and "no kernel output" in known_bad.reason
    assert decide_accel(kvm_problem=None, cached_verdict="x", override="kvm").accel == "kvm"
    assert decide_accel(kvm_problem=None, cached_verdict=None, override="tcg").accel == "tcg"


def test_free_port_is_bindable_and_port_is_free_sees_a_listener() -> None:
    port = qemu.free_port()
    assert qemu.port_is_free(port)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        assert not qemu.port_is_free(port)


def test_serial_tail_drops_escape_noise_and_blank_lines(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    log.write_bytes(b"\x1bc\x1b[2Jfirst\r\n\r\n" + b"".join(b"line %d\r\n" % i for i in range(40)))
    tail = qemu.tail_text(log, lines=3)
    assert tail.splitlines() == ["line 37", "line 38", "line 39"]
    assert qemu.tail_text(tmp_path / "missing") == ""


@pytest.fixture
def tcg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SNAPBUILD_ACCEL", "tcg")
    monkeypatch.setattr(qemu, "_accel_cache", None)


@pytest.fixture
def empty_disk(tmp_path: Path) -> Path:
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    return disk


@needs_qemu
def test_launch_retries_when_the_port_was_taken_and_kill_leaves_no_process(
        tmp_path: Path, tcg: None, empty_disk: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy = taken.getsockname()[1]
    ports = iter([busy, qemu.free_port()])
    monkeypatch.setattr(qemu, "free_port", lambda host="127.0.0.1": next(ports))
    started: list[int] = []
    stopped: list[int] = []
    spec = VMSpec(disk=empty_disk, serial_log=tmp_path / "serial.log", memory_mb=128, cpus=1, network="isolated")
    try:
        vm = qemu.launch(spec, workdir=tmp_path, on_started=lambda v: started.append(v.pid),
                         on_stopped=lambda v: stopped.append(v.pid))
        try:
            assert len(started) == 2 and stopped == [started[0]]
            assert vm.ssh_port != busy and not qemu.port_is_free(vm.ssh_port)
            assert vm.qmp("query-status")["status"] == "running"
            assert f"hostfwd=tcp:127.0.0.1:{vm.ssh_port}-:22" in " ".join(vm.argv)
        finally:
            vm.kill()
    finally:
        taken.close()
    assert vm.proc.returncode is not None
    assert all(not os.path.exists(f"/proc/{pid}") for pid in started)
    assert qemu.port_is_free(vm.ssh_port)


@needs_qemu
def test_powerdown_and_wait_exit_within_deadline(tmp_path: Path, tcg: None, empty_disk: Path) -> None:
    # A work dir deeper than a unix socket path may be (107 bytes): QMP must still work.
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    spec = VMSpec(disk=empty_disk, serial_log=deep / "serial.log", memory_mb=128, cpus=1, network="isolated")
    vm = qemu.launch(spec, workdir=deep, on_started=lambda v: None, on_stopped=lambda v: None)
    try:
        # No OS is running to honour the ACPI button, so the deadline must end the wait.
        vm.powerdown()
        start = time.monotonic()
        assert vm.wait_exit(time.monotonic() + 1.0) is None
        assert time.monotonic() - start < 30    # the wait honoured its deadline, it did not hang
        vm.qmp("quit")
        assert vm.wait_exit(time.monotonic() + 10) == 0
    finally:
        vm.kill()


@needs_qemu
def test_fixed_port_in_use_fails_with_qemus_message(tmp_path: Path, tcg: None, empty_disk: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        spec = VMSpec(disk=empty_disk, serial_log=tmp_path / "serial.log", memory_mb=128, cpus=1,
                      network="isolated", ssh_port=taken.getsockname()[1])
        with pytest.raises(BuildError, match="host forwarding"):
            qemu.launch(spec, workdir=tmp_path, on_started=lambda v: None, on_stopped=lambda v: None)


# ---------------------------------------------------------------- the KVM trial, on a fake QEMU

@pytest.fixture
def fake_kvm_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """/dev/kvm opens (injected), no verdict cached, no override, and QEMU is the fake: the trial will run."""
    monkeypatch.setattr(qemu, "QEMU", str(fakeqemu.install(tmp_path)))
    monkeypatch.setattr(qemu, "kvm_available", lambda: None)
    monkeypatch.delenv("SNAPBUILD_ACCEL", raising=False)
    monkeypatch.setenv("SNAPBUILD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(qemu, "_accel_cache", None)
    return tmp_path / "cache"


def _launch_fake(tmp_path: Path, *, trial_s: float = 30) -> tuple[qemu.VM, list[int]]:
    pids: list[int] = []
    spec = VMSpec(disk=tmp_path / "disk.qcow2", serial_log=tmp_path / "serial.log", network="isolated")
    vm = qemu.launch(spec, workdir=tmp_path, on_started=lambda v: pids.append(v.pid), on_stopped=lambda v: None,
                     kvm_trial_s=trial_s)
    return vm, pids


def _launch_fake_falling_back(tmp_path: Path, *, trial_s: float = 30) -> qemu.VM:
    """Launch on the fake QEMU, whose KVM attempt fails: the first QEMU is gone, the VM returned is TCG's."""
    vm, pids = _launch_fake(tmp_path, trial_s=trial_s)
    try:
        assert vm.accel.accel == "tcg" and "tcg,tb-size=256" in vm.argv
        assert len(pids) == 2 and not os.path.exists(f"/proc/{pids[0]}")
    except AssertionError:
        vm.kill()
        raise
    return vm


def _cached_verdict(cache: Path) -> str | None:
    files = list(cache.glob("accel-*.json"))
    return json.loads(files[0].read_text())["kvm_unusable"] if files else None


@pytest.mark.parametrize("play", ["msr-at-start", "msr-in-trial"])
def test_kvm_exiting_with_the_msr_error_falls_back_to_tcg_and_remembers(
        play: str, tmp_path: Path, fake_kvm_host: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("FAKE_QEMU_KVM", play)
    vm = _launch_fake_falling_back(tmp_path)
    try:
        assert "accel: tcg (kvm unusable: qemu-system-x86_64: error: failed to set MSR 0x10a" in caplog.text
    finally:
        vm.kill()
    assert "failed to set MSR 0x10a" in (_cached_verdict(fake_kvm_host) or "")
    monkeypatch.setattr(qemu, "_accel_cache", None)      # a later process on this kernel skips the trial
    assert qemu.current_accel().accel == "tcg"


def test_kvm_guest_hung_before_userspace_falls_back_to_tcg_and_remembers(
        tmp_path: Path, fake_kvm_host: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("FAKE_QEMU_KVM", "hung-in-grub")     # GRUB on the console, then nothing
    vm = _launch_fake_falling_back(tmp_path, trial_s=1)
    try:
        assert "accel: tcg (kvm unusable: the guest did not reach userspace" in caplog.text
    finally:
        vm.kill()
    assert "did not reach userspace" in (_cached_verdict(fake_kvm_host) or "")


def test_kvm_guest_reaching_userspace_keeps_kvm_and_caches_nothing(
        tmp_path: Path, fake_kvm_host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_QEMU_KVM", "userspace")
    vm, pids = _launch_fake(tmp_path)
    try:
        assert vm.accel.accel == "kvm" and _opt(vm.argv, "-accel") == ["kvm"]
        assert len(pids) == 1 and vm.alive()
    finally:
        vm.kill()
    assert _cached_verdict(fake_kvm_host) is None


@pytest.mark.parametrize("play", ["no-boot-disk", "panic-after-init"])
def test_a_boot_failing_under_kvm_gets_a_second_opinion_from_tcg_and_caches_nothing(
        play: str, tmp_path: Path, fake_kvm_host: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # The image's fault or a flaky KVM's (one passed a trial and then failed the guest): the guest boots again
    # under TCG. The verdict is cached for every later build: a bad image must not switch this host to TCG for good.
    monkeypatch.setenv("FAKE_QEMU_KVM", play)
    vm = _launch_fake_falling_back(tmp_path)
    try:
        assert "the boot under kvm failed (" in caplog.text and "trying tcg for this guest" in caplog.text
        vm.wait_userspace(time.monotonic() + 120)        # TCG (the fake's default play) boots
    finally:
        vm.kill()
    assert _cached_verdict(fake_kvm_host) is None
    monkeypatch.setattr(qemu, "_accel_cache", None)      # the next process tries KVM again
    assert qemu.current_accel().accel == "kvm"


def test_an_unbootable_disk_fails_with_the_consoles_verdict_after_both_accels(
        tmp_path: Path, fake_kvm_host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_QEMU_KVM", "no-boot-disk")
    monkeypatch.setenv("FAKE_QEMU_TCG", "no-boot-disk")
    vm = _launch_fake_falling_back(tmp_path)
    try:
        with pytest.raises(BuildError, match="the firmware cannot boot the disk") as caught:
            vm.wait_userspace(time.monotonic() + 120)
        assert "Boot failed: not a bootable disk" in str(caught.value)     # the console's tail comes along
    finally:
        vm.kill()
    assert _cached_verdict(fake_kvm_host) is None


def test_no_userspace_within_the_bound_ends_the_boot_wait(tmp_path: Path, fake_kvm_host: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SNAPBUILD_ACCEL", "tcg")
    monkeypatch.setenv("FAKE_QEMU_TCG", "hung-in-grub")
    vm, _ = _launch_fake(tmp_path)
    try:
        with pytest.raises(BuildError, match="showed no userspace within 1 s") as caught:
            vm.wait_userspace(vm.started + 3.0)     # a third of a 3 s boot timeout
        assert "Loading Linux" in str(caught.value) and "--boot-timeout" in (caught.value.hint or "")
    finally:
        vm.kill()


def test_a_kernel_banner_alone_does_not_prove_kvm_works() -> None:
    # What this machine's KVM printed before hanging for good (a .ci/run lost a build to it).
    hung = ("[    0.000000] Linux version 6.1.0-50-cloud-amd64\n[    9.403905] Booting paravirtualized kernel on KVM\n"
            "[   29.642207] Memory: 219832K/1048032K available\n")
    assert not qemu.reached_userspace(hung)
    assert qemu.reached_userspace(hung + "[    3.1] Run /init as init process\n")
    assert qemu.reached_userspace("[    4.2] systemd[1]: Detected virtualization kvm.\n")


def test_grub_on_the_serial_console_does_not_prove_kvm_works() -> None:
    # What a GRUB boot prints on ttyS0 before the kernel; "Welcome to GRUB!" once passed the trial.
    grub = ("SeaBIOS (version 1.16.2-debian-1.16.2-1)\r\nBooting from Hard Disk...\r\nGRUB loading.\r\n"
            "\x1b[0;30;47mWelcome to GRUB!\r\n   Booting `Debian GNU/Linux'\r\nLoading Linux 6.1.0-50-cloud-amd64 ...\r\n")
    assert not qemu.reached_userspace(grub)
    assert qemu.reached_userspace(grub + "debian login: ")
    assert qemu.reached_userspace(grub + "[   12.5] cloud-init[301]: Cloud-init v. 22.4.2 running 'init-local'\n")

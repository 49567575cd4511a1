"""`snapbuild local --transport console`: the option reaches the settings, the seed carries the console runner (with
the cloud's limits checked), and the serial log followed as steps decides whether the build goes on to compaction.

The VM is a stand-in whose serial log the test writes with the runner's own Emitter: no QEMU, any host.
"""

from __future__ import annotations

import dataclasses
import io
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from snapbuild import actions, cli
from snapbuild.console import payload
from snapbuild.console.protocol import Emitter
from snapbuild.errors import BuildError, UserError
from snapbuild.ledger import Ledger
from snapbuild.local import build as local_build
from snapbuild.local import qemu
from snapbuild.paths import data_dir
from snapbuild.plan import Plan, plan_from_names
from snapbuild.recipes import Library
from snapbuild.run.context import BuildContext
from snapbuild.run.monitor import TerminalMonitor

NONCE = "0123456789ab"
KERNEL_NOISE = "[   12.345678] systemd[1]: Started snapbuild-runner.service."


def make_plan() -> Plan:
    return plan_from_names(library=Library([data_dir("recipes")]), recipe_name="base", distro_name="debian-12",
                           profile_name="upstream", config_variables={}, set_values={})


# ---------------------------------------------------------------- the option

@pytest.mark.parametrize(("args", "transport"), [([], "ssh"), (["--transport", "console"], "console")])
def test_local_passes_its_transport_to_the_settings(args: list[str], transport: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[local_build.LocalSettings] = []

    def fake_run_local(plan: Any, settings: local_build.LocalSettings, **kw: Any) -> Any:
        seen.append(settings)
        raise SystemExit(0)

    monkeypatch.setattr(local_build, "run_local", fake_run_local)
    result = CliRunner().invoke(cli.cli, ["local", "base", "--distro", "debian-12", "--mirrors", "upstream", "--base",
                                          str(tmp_path / "b.qcow2"), "-o", str(tmp_path / "o.qcow2"), *args],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert [s.transport for s in seen] == [transport]


def test_local_refuses_a_transport_it_does_not_know(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli.cli, ["local", "base", "--base", str(tmp_path / "b.qcow2"), "-o",
                                          str(tmp_path / "o.qcow2"), "--transport", "serial"])
    assert result.exit_code == 2 and "'serial' is not one of 'ssh', 'console'" in result.output


# ---------------------------------------------------------------- the user-data

def _context(tmp_path: Path) -> tuple[BuildContext, io.StringIO]:
    out = io.StringIO()
    ledger = Ledger.create(build_id="20260101000000-0badcafe", builder="local", recipe="base", directory=tmp_path)
    return BuildContext(build_id="20260101000000-0badcafe", ledger=ledger, monitor=TerminalMonitor(out)), out


def _state(tmp_path: Path, plan: Plan | None = None, **settings: Any) -> local_build._Run:
    s = local_build.LocalSettings(base=tmp_path / "base.qcow2", output=tmp_path / "out.qcow2", **settings)
    return local_build._Run(settings=s, plan=plan or make_plan())


def test_a_console_seed_carries_the_runner_and_its_orders_and_no_ssh_access(tmp_path: Path) -> None:
    ctx, _ = _context(tmp_path)
    state = _state(tmp_path, transport="console")
    local_build.prepare_user_data(ctx, state)
    assert state.access is None and len(state.console_nonce) == 12
    document = yaml.safe_load(state.user_data)
    assert {f["path"] for f in document["write_files"]} == {payload.RUNNER_PATH, payload.ORDERS_PATH}
    assert document["runcmd"][0][:2] == ["systemd-run", "--unit=snapbuild-runner"]
    assert "ssh_authorized_keys" not in state.user_data and "ssh_keys" not in state.user_data
    assert ctx.build_id in state.user_data


def test_an_ssh_seed_still_carries_the_builder_key_and_host_key(tmp_path: Path) -> None:
    ctx, _ = _context(tmp_path)
    state = _state(tmp_path)
    local_build.prepare_user_data(ctx, state)
    assert state.access is not None and state.console_nonce == ""
    assert state.access.client_key.public_openssh in state.user_data and "snapbuild-runner" not in state.user_data


def test_a_console_build_refuses_credentials_in_the_plan_as_the_cloud_does(tmp_path: Path) -> None:
    ctx, _ = _context(tmp_path)
    plan = make_plan()
    plan = dataclasses.replace(plan, variables={**plan.variables, "registry_password": "hunter2"})
    with pytest.raises(UserError, match="credentials") as caught:
        local_build.prepare_user_data(ctx, _state(tmp_path, plan, transport="console"))
    assert "hunter2" not in str(caught.value) and caught.value.exit_code == 2


def test_a_console_build_keeps_to_novas_user_data_limit_so_it_builds_in_the_cloud_too(tmp_path: Path) -> None:
    ctx, _ = _context(tmp_path)
    plan = make_plan()
    blob = actions.WriteFile(path="/opt/blob.bin", content=os.urandom(60_000))
    plan = dataclasses.replace(plan, actions=(*plan.actions, blob))
    with pytest.raises(UserError, match="over Nova's") as caught:
        local_build.prepare_user_data(ctx, _state(tmp_path, plan, transport="console"))
    assert "write /opt/blob.bin" in str(caught.value)
    # The same plan over SSH has no such limit.
    local_build.prepare_user_data(ctx, _state(tmp_path, plan))


# ---------------------------------------------------------------- following the serial log

@dataclasses.dataclass
class FakeVM:
    """What follow_runner uses of qemu.VM; `on_poll` runs each time the build asks whether QEMU is still up."""

    serial_log: Path
    exited: bool = False
    on_poll: Callable[[FakeVM], None] | None = None
    started: float = dataclasses.field(default_factory=time.monotonic)
    powerdowns: int = 0

    @property
    def spec(self) -> Any:
        return qemu.VMSpec(disk=Path("work.qcow2"), memory_mb=512, cpus=1, seed=None, serial_log=self.serial_log, network="isolated",
                           name="snapbuild-test")

    def alive(self) -> bool:
        if self.on_poll is not None:
            self.on_poll(self)
        return not self.exited

    def wait_userspace(self, deadline: float) -> None:
        assert deadline >= self.started

    def wait_exit(self, deadline: float) -> int | None:
        return 0 if self.exited else None

    def powerdown(self) -> None:
        self.powerdowns += 1

    def serial_tail(self, lines: int = 25) -> str:
        return qemu.tail_text(self.serial_log, lines)


def _serial(path: Path) -> Emitter:
    """The runner's emitter, writing to the serial log as the guest's ttyS0 would (CR LF, amid kernel noise)."""
    def write(line: str) -> None:
        with path.open("a", newline="") as handle:
            handle.write(line + "\r\n" + KERNEL_NOISE + "\r\n")
    return Emitter(NONCE, write)


def _runner_until_provision(emitter: Emitter) -> None:
    emitter.emit("hello", {"protocol": 1, "steps": 1, "python": "3.11.2"})
    emitter.emit("step", {"name": "provision", "level": "step"})
    emitter.emit("step", {"name": "[1/1] run sh -c 'echo boom; exit 3'", "level": "action"})


def _follow(tmp_path: Path, vm: FakeVM) -> tuple[BuildContext, io.StringIO, local_build._Run, Any]:
    ctx, out = _context(tmp_path)
    state = _state(tmp_path, transport="console", poweroff_timeout_s=2.0)
    state.console_nonce = NONCE
    state.vm = vm  # type: ignore[assignment]
    try:
        return ctx, out, state, local_build.follow_runner(ctx, state)
    except BuildError as exc:
        for report in ctx.on_failure:       # as running_build does before any undo
            report(exc)
        return ctx, out, state, exc


def test_a_sealed_and_checked_verdict_goes_on_with_what_the_runner_installed(tmp_path: Path) -> None:
    serial = tmp_path / "serial.log"
    emitter = _serial(serial)
    emitter.emit("hello", {"protocol": 1, "steps": 1, "python": "3.11.2"})
    emitter.emit("step", {"name": "provision", "level": "step"})
    emitter.emit("result", {"ok": True, "packages": {"less": "590-2"}, "pulled_images": {}, "seconds": 4.5})
    emitter.emit("done", {"name": "provision", "level": "step", "seconds": 4.5, "ok": True})

    def finish(vm: FakeVM) -> None:    # the verdict and the power off come while the build follows
        emitter.emit("final", {"ok": True, "sealed": True, "checked": True})
        vm.exited = True

    ctx, out, _, provisioned = _follow(tmp_path, FakeVM(serial, on_poll=finish))
    assert provisioned.packages == {"less": "590-2"} and provisioned.seconds == 4.5
    assert [(t.name, t.ok) for t in ctx.timings] == [("console runner", True), ("power off", True)]
    text = out.getvalue()
    assert "▸ provision" in text and "console runner started: 1 steps" in text and "QEMU exited 0" in text


def test_a_failing_step_fails_the_build_with_its_name_and_output_before_anything_is_compacted(tmp_path: Path) -> None:
    serial = tmp_path / "serial.log"
    emitter = _serial(serial)
    _runner_until_provision(emitter)
    emitter.emit("line", "boom")
    emitter.emit("final", {"ok": False, "step": "[1/1] run sh -c 'echo boom; exit 3'", "error": "exit status 3",
                           "tail": ["boom"]})
    ctx, out, _, error = _follow(tmp_path, FakeVM(serial, exited=True))
    assert isinstance(error, BuildError)
    assert "console build failed in step \"[1/1] run sh -c 'echo boom; exit 3'\": exit status 3" in error.message
    assert error.message.endswith("last output:\n  boom") and "nothing was captured" in (error.hint or "")
    assert [(t.name, t.ok) for t in ctx.timings] == [("console runner", False)]
    # The report adds what the guest said besides the runner; the protocol lines are not repeated.
    report = out.getvalue().split("serial console (last lines):", 1)[1]
    assert KERNEL_NOISE in report and "SNAPBUILD~" not in report


def test_qemu_exiting_without_the_final_line_fails_naming_the_last_step_started(tmp_path: Path) -> None:
    serial = tmp_path / "serial.log"
    _runner_until_provision(_serial(serial))
    with serial.open("a") as handle:
        handle.write("[   99.000000] Kernel panic - not syncing: Attempted to kill init!\r\n")
    ctx, out, _, error = _follow(tmp_path, FakeVM(serial, exited=True))
    assert isinstance(error, BuildError)
    assert error.message == ("the builder stopped before the runner's final line (last step started: provision › "
                             "[1/1] run sh -c 'echo boom; exit 3')")
    assert "Kernel panic" in out.getvalue().split("serial console (last lines):", 1)[1]
    assert [t.name for t in ctx.timings] == ["console runner"]


def test_a_runner_that_never_speaks_fails_after_the_boot_timeout(tmp_path: Path) -> None:
    serial = tmp_path / "serial.log"
    serial.write_text("Debian GNU/Linux 12 debian ttyS0\r\n")
    ctx, _ = _context(tmp_path)
    state = _state(tmp_path, transport="console", boot_timeout_s=0.0)
    state.console_nonce = NONCE
    vm = FakeVM(serial, started=time.monotonic() - 1)
    with pytest.raises(BuildError, match="the runner said nothing on the console within 0 s") as caught:
        local_build.follow_serial(ctx, vm, state)  # type: ignore[arg-type]
    assert "python3" in (caught.value.hint or "")


def test_a_console_builds_manifest_keeps_to_the_schema(tmp_path: Path) -> None:
    from snapbuild.console.report import Verdict
    from snapbuild.run.manifest import build_manifest
    from tests.manifestcheck import check_manifest

    ctx, _ = _context(tmp_path)
    with ctx.step("console runner"):
        verdict = Verdict(ok=True, sealed=True, checked=True, result={"packages": {"less": "590-2"}})
    manifest = build_manifest(ctx, builder="local", plan=make_plan(), base_checksum="sha256:" + "0" * 64,
                              base={"path": "base.qcow2", "format": "qcow2", "virtual_size": 2 << 30,
                                    "sha256": "0" * 64},
                              output={"path": "out.qcow2", "format": "qcow2", "compression": "zstd",
                                      "sha256": "1" * 64, "size": 212 << 20, "virtual_size": 3 << 30},
                              provisioned=verdict.provisioned(), seal={"in_guest": "clean", "offline": "clean"},
                              details={"transport": "console"})
    assert check_manifest(manifest, builder="local")["packages"] == {"less": "590-2"}

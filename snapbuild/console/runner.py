"""The console runner: applies the plan inside the builder, seals it, reports on the console, powers it off.

Started by cloud-init (see snapbuild.console.payload) as `python3 -I /run/snapbuild/runner.pyz`, a zip holding
this module and the stdlib-only snapbuild modules it imports. The work is the SSH path's, unchanged:

    wait for cloud-init ─► provision_actions (LocalGuest) ─► enforce (seal, remove runner, check)
        ─► finish (logs, machine-id; power_off_script without its last line) ─► final line ─► power off

Every step's start and end (with timing), a failing step's last output lines, and a final verdict travel as
console protocol lines (snapbuild.console.protocol); snapbuild reads them from the console log. The verdict is
sent before the power off, which no process survives. Nothing is written to the disk: the payload lives in /run
(tmpfs) and is removed before the seal check, which verifies it is gone.

With `--root DIR` other than / the runner rehearses: it applies the plan as given (its actions name their own
paths), never waits for cloud-init, removes the payload under DIR, refuses to seal (the policy's commands act on
this machine's /) and never powers off. That is what the tests run as a subprocess.

Standard library only: this runs on the guest's python3 (3.11 on Debian 12, 3.12 on Ubuntu 24.04).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from snapbuild.console import plandata
from snapbuild.console.plandata import RunnerOrders
from snapbuild.console.protocol import PROTOCOL_VERSION, Emitter
from snapbuild.console.relay import ConsoleRelay
from snapbuild.errors import BuildError, CommandFailed, SnapbuildError
from snapbuild.guest.base import Guest
from snapbuild.guest.cloudinit_wait import wait_for_cloud_init
from snapbuild.guest.local import LocalGuest
from snapbuild.provision import provision_actions
from snapbuild.sealing.policy import enforce, power_off_script

PAYLOAD_DIR = "/run/snapbuild"
ORDERS_FILE = PAYLOAD_DIR + "/plan.json"
CONSOLES = ("/dev/ttyS0", "/dev/console")      # Nova's console log is the first serial port's

Sink = Callable[[str], None]
Remove = Callable[[], None]


def _wait_cloud_init(guest: Guest, orders: RunnerOrders) -> None:
    # The runner runs beside cloud-init (a transient unit that runcmd started): apt and dpkg are free only once
    # cloud-init is done, and `cloud-init clean` must not race its last writes.
    wait_for_cloud_init(guest, timeout=orders.cloud_init_timeout)


def _seal(guest: Guest, relay: ConsoleRelay, orders: RunnerOrders, remove: Remove) -> None:
    enforce(guest, monitor=relay, resolv_symlink=orders.resolv_symlink, builder_user=orders.builder_user,
            before_check=remove, gone=orders.payload_paths)
    relay.line("logs, machine-id and builder user: the power-off script, without the power off")
    guest.run(["sh", "-s"], stdin=power_off_script(orders.builder_user, power_off=False).encode(), timeout=180)


def _power_off(guest: Guest, orders: RunnerOrders) -> None:
    guest.run(["systemctl", "poweroff", "--no-block"], check=False, timeout=60)


def _refuse_seal(guest: Guest, relay: ConsoleRelay, orders: RunnerOrders, remove: Remove) -> None:
    remove()
    raise BuildError("rehearsal (--root is not /): the plan was applied; sealing is refused because the policy's "
                     "commands act on this machine's /")


def _stay_on(guest: Guest, orders: RunnerOrders) -> None:
    return None


def _ready(guest: Guest, orders: RunnerOrders) -> None:
    return None


@dataclass(frozen=True, kw_only=True)
class Hooks:
    """What acts on the machine as a whole: waiting for cloud-init, sealing, powering off. Tests replace them."""

    wait_ready: Callable[[Guest, RunnerOrders], None] = _wait_cloud_init
    seal: Callable[[Guest, ConsoleRelay, RunnerOrders, Remove], None] = _seal
    power_off: Callable[[Guest, RunnerOrders], None] = _power_off

    @classmethod
    def rehearsal(cls) -> Hooks:
        return cls(wait_ready=_ready, seal=_refuse_seal, power_off=_stay_on)


def remove_paths(root: Path, paths: Sequence[str]) -> None:
    """Remove guest paths (absolute in the guest) under `root`: the runner, its plan, the payload directory."""
    for path in paths:
        target = root / path.lstrip("/")
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, SnapbuildError):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "the runner was stopped (SIGTERM or SIGINT) before it finished"
    frames = traceback.format_exception(exc)
    return f"{type(exc).__name__}: {exc}\n" + "".join(frames[-3:]).rstrip()


def _timed(relay: ConsoleRelay, name: str, work: Callable[[], Any]) -> Any:
    relay.step_started(name)
    start = relay.clock()
    ok = False
    try:
        result = work()
        ok = True
        return result
    finally:
        relay.step_finished(name, relay.clock() - start, ok)


def run_orders(orders: RunnerOrders, *, guest: Guest, sink: Sink, hooks: Hooks | None = None) -> dict[str, Any]:
    """Apply, seal, report; always ends with the final line and the power off. Returns the verdict sent."""
    hooks = hooks or Hooks()
    relay = ConsoleRelay(Emitter(orders.nonce, sink), tail_lines=orders.tail_lines)
    root = guest.host_root or Path("/")
    removed = False

    def remove() -> None:
        nonlocal removed
        remove_paths(root, orders.payload_paths)
        removed = True

    relay.hello({"protocol": PROTOCOL_VERSION, "build_id": orders.build_id, "recipe": orders.recipe,
                 "steps": len(orders.actions), "python": platform.python_version()})
    verdict: dict[str, Any]
    try:
        _timed(relay, "wait for cloud-init", lambda: hooks.wait_ready(guest, orders))
        result = _timed(relay, "provision", lambda: provision_actions(orders.actions, guest, relay,
                                                                      step_timeout=orders.step_timeout))
        relay.result(True, {"packages": result.packages, "pulled_images": result.pulled_images,
                            "seconds": round(result.seconds, 3)})
        _timed(relay, "seal", lambda: hooks.seal(guest, relay, orders, remove))
        verdict = {"ok": True, "sealed": True, "checked": True}
    except BaseException as exc:   # noqa: BLE001 - every way out must reach the final line and the power off
        tail = relay.failed_tail
        error = _error_text(exc)
        if isinstance(exc, CommandFailed):   # its output goes once, as the tail (quiet commands have no other)
            error = exc.message.split("\n", 1)[0]
            tail = tail or exc.output_tail.splitlines()[-orders.tail_lines:]
        verdict = {"ok": False, "step": relay.failed_step or "runner", "error": error, "tail": tail}
    if not removed:
        try:
            remove()
        except OSError as exc:
            verdict = {**verdict, "ok": False, "error": f"{verdict.get('error') or ''}\ncould not remove the runner: "
                       f"{exc}".strip()}
    relay.final(verdict)
    try:
        hooks.power_off(guest, orders)
    except Exception as exc:   # noqa: BLE001 - nothing is left to report it to but the console
        relay.warning(f"power off failed: {_error_text(exc)}")
    return verdict


def console_sink(paths: Sequence[str], *, echo: TextIO | None = None) -> Sink:
    """Write each line to the first console device that opens (CR LF: a serial console wants both), and echo it
    to `echo` (the runner's journal)."""
    handle: TextIO | None = None
    for path in paths:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError:
            continue
        handle = os.fdopen(fd, "w", encoding="ascii", errors="replace", newline="")
        break

    def write(line: str) -> None:
        for stream in (handle, echo):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.write(line + "\r\n")
                    stream.flush()
    return write


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # Once: the final line and the power off must not be cut by the next one (shutdown sends its own SIGTERM).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="snapbuild-runner", description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--orders", default=ORDERS_FILE, help="the plan (JSON, snapbuild.console.plandata)")
    parser.add_argument("--console", action="append", help=f"console device or file (default: {', '.join(CONSOLES)})")
    parser.add_argument("--root", default="/", help="anything but / rehearses: no cloud-init wait, seal or power off")
    args = parser.parse_args(argv)
    sink = console_sink(args.console or CONSOLES, echo=sys.stderr)
    try:
        orders = plandata.load(Path(args.orders).read_bytes())
    except (OSError, ValueError) as exc:
        # No nonce, no protocol: plain text on the console; snapbuild reports a builder that stopped without a verdict.
        sink(f"snapbuild runner: cannot read {args.orders}: {exc}")
        if args.root == "/":
            LocalGuest().run(["systemctl", "poweroff", "--no-block"], check=False, timeout=60)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)     # systemd stops the unit: still send the final line
    root = Path(args.root)
    verdict = run_orders(orders, guest=LocalGuest(root=root), sink=sink,
                         hooks=Hooks() if root == Path("/") else Hooks.rehearsal())
    return 0 if verdict["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

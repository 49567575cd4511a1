"""Every booted path applies the whole sealing policy through the one tail (the snapshot and local copies had
drifted apart: only local put resolv.conf back)."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from snapbuild.guest.base import Completed
from snapbuild.ledger import Ledger
from snapbuild.run.context import BuildContext, Reporter
from snapbuild.run.tail import BuilderAccess, apply_plan


class ScriptGuest:
    """Answers the seal's probe and checker like a sealed Ubuntu guest; keeps every script it is given."""

    kind = "vm"
    host_root = None
    name = "builder"

    def __init__(self) -> None:
        self.scripts: list[str] = []

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float | None = None,
            env: Mapping[str, str] | None = None, stdin: bytes | None = None, on_output: Any = None) -> Completed:
        out = ""
        if list(argv[:2]) == ["python3", "-"]:
            out = json.dumps([])                      # the policy checker: nothing left
        elif argv[0] == "sh" and stdin is not None:
            self.scripts.append(stdin.decode())
        elif argv[0] == "sh" and len(argv) > 2:
            self.scripts.append(argv[-1])
        return Completed(argv=tuple(argv), returncode=0, stdout=out, stderr="")

    def write_file(self, path: str, data: bytes, *, mode: int = 0o644, owner: str = "root:root") -> None:
        self.scripts.append(data.decode(errors="replace"))

    def read_file(self, path: str) -> bytes:
        raise FileNotFoundError(path)

    def exists(self, path: str) -> bool:
        return False

    def service(self, name: str) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


@pytest.mark.parametrize(("distro", "symlink"), [("ubuntu-24.04", "../run/systemd/resolve/stub-resolv.conf"),
                                                  ("debian-12", None),
                                                  ("debian-13", "../run/systemd/resolve/stub-resolv.conf")])
def test_the_shared_tail_puts_resolv_conf_back_to_the_distros_symlink(distro: str, symlink: str | None,
                                                                     tmp_path: Path) -> None:
    from snapbuild.distros import get_distro

    guest = ScriptGuest()
    plan = SimpleNamespace(distro=get_distro(distro), actions=())
    ledger = Ledger.create(build_id="b-seal", builder="test", recipe="base", directory=tmp_path)
    ctx = BuildContext(build_id="b-seal", ledger=ledger, monitor=Reporter(io.StringIO()))
    access = BuilderAccess.generate("b-seal", user="snapbuild")
    apply_plan(ctx, plan, guest, access=access)  # type: ignore[arg-type]
    assert [t.name for t in ctx.timings] == ["provision", "seal"]
    sent = "\n".join(guest.scripts)
    assert "/etc/machine-id" in sent          # the policy script did run
    if symlink:
        assert f"ln -sfn {symlink} /etc/resolv.conf" in sent
    else:
        assert "/etc/resolv.conf" not in sent

"""The snapshot path applies the whole sealing policy, as the local path does (they had drifted apart)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from snapbuild.guest.base import Completed
from snapbuild.openstack.settings import SnapshotSettings
from snapbuild.openstack.snapshot import seal_guest
from snapbuild.run.context import Reporter


class ScriptGuest:
    """Answers the seal's probe and checker like a sealed Ubuntu guest; keeps every script it is given."""

    kind = "vm"
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
                                                  ("debian-12", None)])
def test_the_snapshot_seal_puts_resolv_conf_back_to_the_distros_symlink(distro: str, symlink: str | None) -> None:
    from snapbuild.distros import get_distro

    guest = ScriptGuest()
    plan = SimpleNamespace(distro=get_distro(distro))
    inputs = SimpleNamespace(client_key=SimpleNamespace(public_openssh="ssh-ed25519 AAAA builder"))
    seal_guest(guest, plan, SnapshotSettings(flavor="m1.small"), inputs, Reporter())  # type: ignore[arg-type]
    sent = "\n".join(guest.scripts)
    assert "/etc/machine-id" in sent          # the policy script did run
    if symlink:
        assert f"ln -sfn {symlink} /etc/resolv.conf" in sent
    else:
        assert "/etc/resolv.conf" not in sent

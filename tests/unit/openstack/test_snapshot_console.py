"""`build --transport console` against openstacksdk's HTTP layer: Nova's console-output carries the runner's
protocol lines (as a real builder's serial log would), nothing reaches the builder over the network."""

from __future__ import annotations

import base64
import gzip
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from httpcloud import HTTPCloud

from snapbuild.console import protocol
from snapbuild.console.protocol import Emitter
from snapbuild.errors import BuildError
from snapbuild.openstack.cloud import Cloud
from snapbuild.openstack.settings import SnapshotSettings
from snapbuild.openstack.snapshot import PreflightFailed, build_snapshot
from snapbuild.run.context import Reporter

if TYPE_CHECKING:
    from snapbuild.plan import Plan

NONCE = "c0ffee00c0de"


@pytest.fixture(autouse=True)
def fixed_nonce(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "new_nonce", lambda: NONCE)


def _settings(**kw: Any) -> SnapshotSettings:
    return SnapshotSettings(**{"flavor": "m1.small", "networks": ("private",), "transport": "console", **kw})


def _console(*messages: tuple[str, Any]) -> str:
    lines: list[str] = ["[    0.000000] Linux version 6.1", "cloud-init[412]: Cloud-init v. 22.4.2 running"]
    emitter = Emitter(NONCE, lines.append)
    for kind, data in messages:
        emitter.emit(kind, data)
        lines.append("[  88.1] systemd[1]: noise between protocol lines")
    return "\r\n".join(lines) + "\r\n"


GOOD = (("hello", {"steps": 3}), ("step", {"name": "provision"}),
        ("done", {"name": "provision", "seconds": 41.0, "ok": True}),
        ("result", {"ok": True, "packages": {"docker-ce": "5:27.0"}, "pulled_images": {"a:1": "sha256:ab"},
                    "seconds": 41.0}),
        ("step", {"name": "seal"}), ("done", {"name": "seal", "seconds": 9.0, "ok": True}),
        ("final", {"ok": True, "sealed": True, "checked": True}))


def _user_data(api: HTTPCloud) -> dict[str, Any]:
    raw = base64.b64decode(api.last_json("POST", r"/v2.1/servers$")["server"]["user_data"])
    text = gzip.decompress(raw).decode() if raw[:2] == b"\x1f\x8b" else raw.decode()
    assert text.startswith("#cloud-config\n")
    data: dict[str, Any] = yaml.safe_load(text)
    return data


def test_a_console_build_follows_the_runner_and_captures_after_its_verdict(
        cloud: Cloud, api: HTTPCloud, plan: Plan, isolated_state: Path) -> None:
    api.console = _console(*GOOD)
    out = io.StringIO()
    result = build_snapshot(_settings(), plan, Reporter(out), cloud=cloud)
    assert api.images[result.image_id]["status"] == "active"
    shown = out.getvalue()
    for step in ("console runner", "provision", "seal", "power off", "capture"):
        assert step in shown, shown
    assert "noise between" not in shown
    # No way in was made: no temporary SSH group, no floating IP.
    assert not api.calls("POST", r"/security-groups") and not api.calls("POST", r"/floatingips")
    user_data = _user_data(api)
    assert [f["path"] for f in user_data["write_files"]] == ["/run/snapbuild/runner.pyz", "/run/snapbuild/plan.json"]
    assert "ssh_authorized_keys" not in json.dumps(user_data)
    assert result.manifest["details"]["transport"] == "console"
    assert result.manifest["packages"] == {"docker-ce": "5:27.0"}
    assert result.manifest["pulled_images"] == {"a:1": "sha256:ab"}


def test_a_failing_step_on_the_console_fails_the_build_with_its_output_and_captures_nothing(
        cloud: Cloud, api: HTTPCloud, plan: Plan, isolated_state: Path) -> None:
    api.console = _console(("step", {"name": "provision"}),
                           ("step", {"name": "install docker-ce", "level": "action"}),
                           ("done", {"name": "install docker-ce", "seconds": 3.0, "ok": False,
                                     "tail": ["E: Unable to locate package docker-ce"]}),
                           ("final", {"ok": False, "step": "install docker-ce", "error": "apt-get exited 100",
                                      "tail": ["E: Unable to locate package docker-ce"]}))
    out = io.StringIO()
    with pytest.raises(BuildError, match=r"step 'install docker-ce': apt-get exited 100[\s\S]*Unable to locate"):
        build_snapshot(_settings(), plan, Reporter(out), cloud=cloud)
    assert not api.calls("POST", r"createImage") and not [c for c in api.calls("POST") if "/images" in c]
    assert any("/servers/" in call for call in api.deletes())
    # The console tail printed at the failure is the guest's, not the protocol lines already shown as steps.
    assert protocol.MARK not in out.getvalue().split("console log (last lines):")[-1]


@pytest.mark.parametrize(("option", "value", "named"), [
    ("floating_network", "public", "--floating-network"), ("ssh_bastion", "jump.example", "--ssh-bastion"),
    ("ssh_port", 2222, "--ssh-port"), ("accept_any_host_key", True, "--insecure-accept-any-host-key"),
    ("no_provision", True, "--no-provision"),
])
def test_ssh_only_options_are_refused_by_name_before_anything_exists(
        cloud: Cloud, api: HTTPCloud, plan: Plan, option: str, value: Any, named: str) -> None:
    with pytest.raises(PreflightFailed, match=f"--transport console does not use SSH, so {named}"):
        build_snapshot(_settings(**{option: value}), plan, Reporter(io.StringIO()), cloud=cloud)
    assert api.calls("POST") == [c for c in api.calls("POST") if "/tokens" in c]     # only the login

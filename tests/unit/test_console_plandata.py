"""The console runner's plan travels as JSON: every action type and every shipped recipe's plan round-trip exactly,
and a document the runner cannot trust is refused."""

from __future__ import annotations

import dataclasses
import json

import pytest

from snapbuild import actions
from snapbuild.console import plandata
from snapbuild.console.plandata import PlanDataError, RunnerOrders
from snapbuild.paths import data_dir
from snapbuild.plan import plan_from_names
from snapbuild.recipes import Library

EVERY_KIND: tuple[actions.Action, ...] = (
    actions.WriteFile(path="/etc/x", content=b"\x00\xffbinary~", mode=0o600, owner="root:adm", origin="t.j2"),
    actions.RemoveFiles(paths=("/a", "/b")),
    actions.AptSource(name="docker", path="/etc/apt/sources.list.d/docker.sources", deb822="Types: deb\n",
                      key=actions.AptKey(path="/etc/apt/keyrings/d.asc", url="https://m/k", fingerprint="F" * 40)),
    actions.AptSource(name="inline", path="/p", deb822="x", key=actions.AptKey(path="/k", content=b"KEY")),
    actions.AptUpdate(),
    actions.InstallPackages(packages=("a", "b=1.0"), hold=("b",)),
    actions.RunCommand(argv=("echo", "hi"), timeout=12.5, only_kind="vm"),
    actions.RunScript(name="s", content=b"#!/bin/sh\necho ~\n", interpreter="/bin/sh", timeout=None),
    actions.Service(name="containerd", enabled=True, start=True),
    actions.ApplySysctl(path="/etc/sysctl.d/99-k8s.conf"),
    actions.LoadModules(modules=("overlay", "br_netfilter")),
    actions.SwapOff(),
    actions.PrePull(namespace="k8s.io", images=("docker.io/library/busybox:1",), list_command=("kubeadm", "list"),
                    expect=(actions.ExpectedImage(ref="registry.k8s.io/pause:3.9", variables=(("pause", "3.9"),)),),
                    routes=(actions.RegistryRoute(registry="registry.k8s.io", mirrors=("m.example",),
                                                  server="https://registry.k8s.io", blocked=True),),
                    parallel=2),
)


def orders(steps: tuple[actions.Action, ...] = EVERY_KIND) -> RunnerOrders:
    return RunnerOrders(nonce="0123456789ab", build_id="b-1", recipe="r", actions=steps,
                        resolv_symlink="../run/systemd/resolve/stub-resolv.conf", step_timeout=60.0,
                        payload_paths=("/run/snapbuild",))


def test_every_action_kind_round_trips_exactly() -> None:
    kinds = {type(a) for a in EVERY_KIND}
    assert kinds == set(actions.Action.__args__)     # type: ignore[attr-defined]  # a new kind needs a case here
    back = plandata.load(plandata.dump(orders()))
    assert back == orders()
    assert all(type(a) is type(b) for a, b in zip(back.actions, EVERY_KIND, strict=True))


@pytest.mark.parametrize("recipe", ["base", "docker-ce", "k8s"])
def test_shipped_recipe_plans_round_trip(recipe: str) -> None:
    plan = plan_from_names(library=Library([data_dir("recipes")]), recipe_name=recipe, distro_name="ubuntu-24.04",
                           profile_name="cloudinative", config_variables={}, set_values={})
    data = plandata.dump(orders(plan.actions))
    assert plandata.load(data).actions == plan.actions
    assert data.isascii()


def test_unknown_action_types_and_nested_values_as_steps_are_refused() -> None:
    document = json.loads(plandata.dump(orders((actions.AptUpdate(),))))
    document["actions"] = [{"type": "Popen", "args": ["sh"]}]
    with pytest.raises(PlanDataError, match="unknown action type 'Popen'"):
        plandata.load(json.dumps(document).encode())
    document["actions"] = [{"type": "AptKey", "path": "/k"}]
    with pytest.raises(PlanDataError, match="AptKey is not a plan step"):
        plandata.load(json.dumps(document).encode())
    document["actions"] = [{"type": "AptUpdate", "surprise": 1}]
    with pytest.raises(PlanDataError, match="AptUpdate"):
        plandata.load(json.dumps(document).encode())


def test_other_versions_fields_and_bad_nonces_are_refused() -> None:
    document = json.loads(plandata.dump(orders()))
    with pytest.raises(PlanDataError, match="version 1"):
        plandata.load(json.dumps({**document, "version": 2}).encode())
    with pytest.raises(PlanDataError, match="unknown plan fields: extra"):
        plandata.load(json.dumps({**document, "extra": 1}).encode())
    with pytest.raises(ValueError, match="nonce"):
        plandata.load(json.dumps({**document, "nonce": "nope"}).encode())
    with pytest.raises(PlanDataError, match="not JSON"):
        plandata.load(b"{")


def test_a_value_that_is_not_an_action_cannot_be_serialised() -> None:
    @dataclasses.dataclass(frozen=True)
    class Stranger:
        x: int = 1

    with pytest.raises(PlanDataError, match="Stranger"):
        plandata.dump_actions([Stranger()])     # type: ignore[list-item]

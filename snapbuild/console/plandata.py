"""The console runner's orders as JSON: the plan's actions plus what the runner needs to seal and report.

Host side writes it (`dump`), the runner inside the guest reads it (`load`); standard library only. Every action
is `{"type": <class name in snapbuild.actions>, <field>: <value>, …}`: bytes as `{"b64": …}`, tuples as lists,
nested dataclasses (a signing key, expected images, registry routes) in the same form. Only classes of
snapbuild.actions are accepted back, so a document cannot make the runner build anything else.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from snapbuild import actions
from snapbuild.console.protocol import check_nonce

FORMAT_VERSION = 1
# What `load` may build: the actions and the values they hold.
_TYPES: dict[str, type[Any]] = {cls.__name__: cls for cls in (
    actions.WriteFile, actions.RemoveFiles, actions.AptKey, actions.AptSource, actions.AptUpdate,
    actions.InstallPackages, actions.RunCommand, actions.RunScript, actions.Service, actions.ApplySysctl,
    actions.LoadModules, actions.SwapOff, actions.ExpectedImage, actions.RegistryRoute, actions.PrePull)}


class PlanDataError(ValueError):
    """The document is not one this runner can apply (wrong version, unknown action, bad field)."""


@dataclass(frozen=True, kw_only=True)
class RunnerOrders:
    """Everything the runner is told: what to apply, how to seal, how to report."""

    nonce: str                                 # the console protocol's per-build nonce
    build_id: str
    recipe: str
    actions: tuple[actions.Action, ...]
    resolv_symlink: str | None                 # the distro's resolv.conf symlink (sealing)
    builder_user: str = "snapbuild"            # none is created in console builds; the seal check still knows it
    step_timeout: float | None = None
    cloud_init_timeout: float = 900.0
    tail_lines: int = 30                       # a failing step's last output lines sent to the console
    payload_paths: tuple[str, ...] = ()        # what the runner removes before the verdict (itself, the plan)


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        name = type(value).__name__
        if _TYPES.get(name) is not type(value):
            raise PlanDataError(f"{name} is not an action the console runner knows")
        return {"type": name, **{f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode()}
    if isinstance(value, (tuple, list)):
        return [_encode(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise PlanDataError(f"cannot serialise {type(value).__name__} {value!r}")


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_decode(v) for v in value)
    if isinstance(value, dict):
        if set(value) == {"b64"}:
            return base64.b64decode(value["b64"], validate=True)
        fields = dict(value)
        name = fields.pop("type", None)
        cls = _TYPES.get(str(name))
        if cls is None:
            raise PlanDataError(f"unknown action type {name!r}: this runner is older or newer than the plan")
        try:
            return cls(**{k: _decode(v) for k, v in fields.items()})
        except TypeError as exc:
            raise PlanDataError(f"{name}: {exc}") from None
    return value


def dump_actions(steps: Sequence[actions.Action]) -> list[Any]:
    return [_encode(a) for a in steps]


def load_actions(items: Sequence[Any]) -> tuple[actions.Action, ...]:
    found = tuple(_decode(item) for item in items)
    for item in found:
        if not isinstance(item, actions.Action):   # a nested value (AptKey, …) where a step belongs
            raise PlanDataError(f"{type(item).__name__} is not a plan step")
    return found


def dump(orders: RunnerOrders) -> bytes:
    document = {"version": FORMAT_VERSION, **{f.name: getattr(orders, f.name) for f in dataclasses.fields(orders)}}
    document["actions"] = dump_actions(orders.actions)
    document["payload_paths"] = list(orders.payload_paths)
    return (json.dumps(document, sort_keys=True, separators=(",", ":")) + "\n").encode()


def load(data: bytes) -> RunnerOrders:
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise PlanDataError(f"the plan is not JSON: {exc}") from None
    if not isinstance(document, dict) or document.get("version") != FORMAT_VERSION:
        raise PlanDataError(f"plan format {document.get('version') if isinstance(document, dict) else '?'!r}; "
                            f"this runner reads version {FORMAT_VERSION}")
    known = {f.name for f in dataclasses.fields(RunnerOrders)}
    unknown = sorted(set(document) - known - {"version"})
    if unknown:
        raise PlanDataError(f"unknown plan fields: {', '.join(unknown)}")
    fields = {k: v for k, v in document.items() if k in known}
    fields["actions"] = load_actions(document.get("actions", []))
    fields["payload_paths"] = tuple(document.get("payload_paths", ()))
    check_nonce(str(fields.get("nonce")))
    try:
        return RunnerOrders(**fields)
    except TypeError as exc:
        raise PlanDataError(str(exc)) from None

"""Which old images of one entry × target go, and why the others stay: a pure function over what Glance reported.

The newest image with the wanted digest is the current one (or the one about to be built or copied). The newest
`keep` images stay, the current one first; older ones are hidden (`os_hidden`, with the time in a property), then
deleted once they have been hidden for the grace period, never while a server the user can see boots from them.
An image without snapbuild's marks (its build id and content digest, owned by this project) is never touched,
whatever its name or other properties say. The `snapbuild` tag is not one of them: a finished build has lost it
(it marks what is still being made, for `cleanup`), and such an image, still partial, is not touched either.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from snapbuild.catalogue.model import DIGEST_PROPERTY, HIDDEN_AT_PROPERTY
from snapbuild.openstack import marks
from snapbuild.openstack.cloud import ImageData


@dataclass(frozen=True, kw_only=True)
class Retirement:
    image_id: str
    image_name: str
    action: str          # keep | hide | delete | untouched
    reason: str


def not_ours(image: ImageData, project_id: str) -> str | None:
    """Why an image is not one snapbuild made for this project (None: it is)."""
    if image.owner and image.owner != project_id:
        return f"owned by project {image.owner}"
    for key in (DIGEST_PROPERTY, marks.PREFIX + "build_id"):
        if key not in image.properties:
            return f"no {key} property"
    if any(marks.PREFIX + key in image.properties for key in ("expires_at", "installation_id")):
        return "a build or copy still in progress (temporary marks)"
    return None


def decide(images: Sequence[ImageData], *, project_id: str, digest: str, pending: bool, keep: int,
           grace_s: float, now: datetime, in_use: Callable[[str], Sequence[str]]) -> list[Retirement]:
    """`pending`: an image with `digest` is about to be made and will be the current one. `in_use` is asked only
    about images that would otherwise be deleted (it costs a listing of servers)."""
    assert keep >= 1
    out: list[Retirement] = []
    ours: list[ImageData] = []
    for image in images:
        why = not_ours(image, project_id)
        if why:
            out.append(Retirement(image_id=image.id, image_name=image.name, action="untouched",
                                  reason=f"not ours: {why}"))
        elif image.status != "active":
            out.append(Retirement(image_id=image.id, image_name=image.name, action="untouched",
                                  reason=f"status {image.status}"))
        else:
            ours.append(image)
    ours.sort(key=lambda i: (i.created_at, i.id), reverse=True)
    current = next((i for i in ours if i.properties.get(DIGEST_PROPERTY) == digest), None)
    order = ([current] if current else []) + [i for i in ours if i is not current]
    slots = keep - 1 if pending or current is None else keep
    for rank, image in enumerate(order):
        if image is current:
            out.append(Retirement(image_id=image.id, image_name=image.name, action="keep", reason="current"))
        elif rank < slots:
            out.append(Retirement(image_id=image.id, image_name=image.name, action="keep",
                                  reason=f"within keep={keep}"))
        else:
            out.append(_retire(image, keep=keep, grace_s=grace_s, now=now, in_use=in_use))
    return out


def _retire(image: ImageData, *, keep: int, grace_s: float, now: datetime,
            in_use: Callable[[str], Sequence[str]]) -> Retirement:
    def result(action: str, reason: str) -> Retirement:
        return Retirement(image_id=image.id, image_name=image.name, action=action, reason=reason)

    hidden_at = _parse(image.properties.get(HIDDEN_AT_PROPERTY))
    if not image.hidden or hidden_at is None:
        return result("hide", f"older than the newest {keep}")
    left = grace_s - (now - hidden_at).total_seconds()
    if left > 0:
        return result("keep", f"too new: hidden {hidden_at:%Y-%m-%d %H:%M}, deleted after the grace period "
                              f"({left / 3600:.1f} h left)")
    if image.protected:
        return result("keep", "protected")
    servers = in_use(image.id)
    if servers:
        shown = ", ".join(list(servers)[:3]) + (" …" if len(servers) > 3 else "")
        return result("keep", f"in use by {len(servers)} server(s): {shown}")
    return result("delete", f"hidden since {hidden_at:%Y-%m-%d %H:%M}, grace period over, no server uses it")


def _parse(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None

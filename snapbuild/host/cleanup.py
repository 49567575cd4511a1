"""`snapbuild cleanup --host`: finish interrupted local builds from their ledgers."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from snapbuild.host.sweep import HOST_KINDS, sweep
from snapbuild.ledger import Ledger, all_ledgers


@dataclass(frozen=True, kw_only=True)
class SweptBuild:
    build_id: str
    builder: str
    recipe: str
    status: str
    actions: tuple[str, ...]


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_abandoned(ledger: Ledger) -> bool:
    """A ledger whose build is over (or whose process died) but still lists resources on this host."""
    data = ledger.data
    if data.get("host") != socket.gethostname():
        return False   # another machine's build (a shared home directory): not ours to touch
    if ledger.status == "running" and process_alive(ledger.pid):
        return False
    return any(e.kind in HOST_KINDS for e in ledger.entries())


def cleanup_host(*, dry_run: bool = False, build_id: str | None = None) -> list[SweptBuild]:
    swept = []
    for ledger in all_ledgers():
        if build_id and ledger.build_id != build_id:
            continue
        if not is_abandoned(ledger):
            continue
        data = ledger.data
        actions = sweep(ledger, dry_run=dry_run)
        swept.append(SweptBuild(build_id=ledger.build_id, builder=str(data.get("builder")),
                                recipe=str(data.get("recipe")), status=ledger.status, actions=tuple(actions)))
        if not dry_run and not ledger.entries():
            ledger.path.unlink(missing_ok=True)
    return swept

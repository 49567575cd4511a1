"""`snapbuild cleanup --host`: finish interrupted local builds from their ledgers."""

from __future__ import annotations

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


def _ours_to_sweep(ledger: Ledger) -> bool:
    """An abandoned build (Ledger.abandoned) that still lists resources on this host. Another machine's build
    (a shared home directory) is not ours to touch, even when it is over."""
    return ledger.here and ledger.abandoned and any(e.kind in HOST_KINDS for e in ledger.entries())


def cleanup_host(*, dry_run: bool = False, build_id: str | None = None) -> list[SweptBuild]:
    swept = []
    for ledger in all_ledgers():
        if build_id and ledger.build_id != build_id:
            continue
        if not _ours_to_sweep(ledger):
            continue
        data = ledger.data
        actions = sweep(ledger, dry_run=dry_run)
        swept.append(SweptBuild(build_id=ledger.build_id, builder=str(data.get("builder")),
                                recipe=str(data.get("recipe")), status=ledger.status, actions=tuple(actions)))
        if not dry_run and not ledger.entries():
            ledger.path.unlink(missing_ok=True)
    return swept

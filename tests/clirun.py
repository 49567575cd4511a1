"""Running the `snapbuild` command line in-process for tests, and capturing what a build would be handed."""

from __future__ import annotations

from typing import Any

import pytest

from snapbuild import cli
from snapbuild.openstack import snapshot
from snapbuild.openstack.settings import SnapshotResult, SnapshotSettings


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`snapbuild ARGS`: its exit code, stdout and stderr (what was printed before the call is dropped)."""
    capsys.readouterr()
    try:
        cli.main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def capture_snapshot_builds(monkeypatch: pytest.MonkeyPatch, *,
                            image_name: str = "n") -> list[SnapshotSettings]:
    """Replace `build_snapshot`: each call's settings are recorded, nothing contacts a cloud."""
    seen: list[SnapshotSettings] = []

    def fake_build_snapshot(settings: SnapshotSettings, plan: Any, monitor: Any, **kw: Any) -> Any:
        seen.append(settings)
        return SnapshotResult(image_id="image-1", image_name=image_name, build_id="b-1", properties={},
                              seconds=1.0, manifest={})

    monkeypatch.setattr(snapshot, "build_snapshot", fake_build_snapshot)
    return seen

"""`snapbuild cleanup` on the command line: which side is cleaned, and a clear refusal without a cloud."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapbuild.cli import main


def _run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as done:
        main(argv)
        raise SystemExit(0)
    return int(done.value.code or 0)


def test_host_only_never_needs_a_cloud(isolated_state: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("OS_CLOUD", raising=False)
    assert _run(["cleanup", "--host", "--dry-run"]) == 0
    assert "nothing left behind on this host" in capsys.readouterr().out


def test_cloud_side_is_the_default_and_says_how_to_name_a_cloud(isolated_state: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("OS_CLOUD", "OS_AUTH_URL", "OS_CLIENT_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)                      # no ./clouds.yaml
    monkeypatch.setenv("HOME", str(tmp_path))        # no ~/.config/openstack/clouds.yaml
    assert _run(["cleanup", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "no cloud selected to clean up" in err and "--os-cloud NAME or set OS_CLOUD" in err and "--host" in err


def test_bad_age_is_a_usage_error(isolated_state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["cleanup", "--older-than", "yesterday", "--dry-run"]) == 2
    assert "not a duration" in capsys.readouterr().err

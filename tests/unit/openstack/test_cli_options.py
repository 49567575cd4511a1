"""`snapbuild build`'s OpenStack options become one SnapshotSettings value (checked through a real click command)."""

from __future__ import annotations

from typing import Any

import click
from click.testing import CliRunner

from snapbuild.cli.cloud_options import settings_from_options, snapshot_options
from snapbuild.openstack.settings import SnapshotSettings

captured: list[SnapshotSettings] = []


@click.command()
@snapshot_options
def fake_build(**options: Any) -> None:
    captured.append(settings_from_options(cloud="c", region="r", **options))


def test_options_map_to_settings() -> None:
    captured.clear()
    result = CliRunner().invoke(fake_build, [
        "--flavor", "m1.large", "--network", "a", "--network", "b", "--property", "hw_disk_bus=scsi",
        "--property", "note=a=b", "--share-with", "p1", "--ssh-ip-version", "6", "--floating-network", "public",
        "--timeout-ssh", "30", "--no-provision", "--json"])
    assert result.exit_code == 0, result.output
    (s,) = captured
    assert (s.cloud, s.region, s.flavor, s.networks) == ("c", "r", "m1.large", ("a", "b"))
    assert dict(s.properties) == {"hw_disk_bus": "scsi", "note": "a=b"}
    assert (s.ssh_ip_version, s.floating_network, s.timeout_ssh) == (6, "public", 30.0)
    assert s.no_provision and s.json and s.share_with == ("p1",)


def test_defaults_and_floating_none() -> None:
    captured.clear()
    result = CliRunner().invoke(fake_build, ["--flavor", "f"])
    assert result.exit_code == 0, result.output
    (s,) = captured
    assert s.floating_network is None and s.ssh_ip_version is None and s.visibility == "private"
    assert not s.accept_any_host_key and s.security_groups == ()


def test_bad_property_is_a_usage_error() -> None:
    result = CliRunner().invoke(fake_build, ["--flavor", "f", "--property", "novalue"])
    assert result.exit_code == 2
    assert "KEY=VALUE" in result.output

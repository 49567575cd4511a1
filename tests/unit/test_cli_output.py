"""The openstack CLI's conventions: `-f json|yaml|value|table` and `-c COLUMN` on result and listing commands (stdout
holds only the result, so `IMAGE=$(snapbuild build … -f value -c id)` works), `--json` as before, and the image
options of `openstack image create` (`--name`, `--min-disk`, `--min-ram`, `--protected`, `--hidden`, `--public` …)
on every command that makes an image."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from snapbuild.cli.output import Output, Result
from snapbuild.host import cleanup as host_cleanup
from snapbuild.host.cleanup import SweptBuild
from snapbuild.openstack import snapshot, upload
from snapbuild.openstack.settings import SnapshotResult, SnapshotSettings
from snapbuild.openstack.upload import UploadResult, UploadSettings
from tests.clirun import run

ROW = {"id": "img-1", "name": "k8s-20261204", "properties": {"os_distro": "ubuntu"}, "protected": False,
       "manifest": None}
LISTING = [{"name": "base", "distros": ["debian-12"]}, {"name": "k8s", "distros": ["ubuntu-24.04", "debian-12"]}]


# -- the formatter ----------------------------------------------------------------------------------------------

def test_without_f_a_command_prints_its_own_text() -> None:
    assert Output().render(Result(rows=ROW, text="img-1")) == "img-1"


def test_value_prints_one_value_a_line_for_a_row_and_one_line_per_row_for_a_listing() -> None:
    assert Output(format="value", columns=("id", "name")).render(Result(rows=ROW)) == "img-1\nk8s-20261204"
    assert Output(format="value").render(Result(rows=ROW)).split("\n") == [
        "img-1", "k8s-20261204", '{"os_distro": "ubuntu"}', "false", ""]
    assert Output(format="value").render(Result(rows=LISTING)) == (
        'base ["debian-12"]\nk8s ["ubuntu-24.04", "debian-12"]')
    assert Output(format="value", columns=("name",)).render(Result(rows=LISTING)) == "base\nk8s"


def test_table_aligns_a_row_as_field_value_and_a_listing_under_its_column_names() -> None:
    assert Output(format="table", columns=("id", "name")).render(Result(rows=ROW, text="img-1")) == (
        "id    img-1\nname  k8s-20261204")
    assert Output(format="table").render(Result(rows=LISTING)) == textwrap.dedent("""\
        name  distros
        base  ["debian-12"]
        k8s   ["ubuntu-24.04", "debian-12"]""")


def test_c_alone_picks_columns_of_a_table() -> None:
    assert Output(columns=("name",)).render(Result(rows=LISTING, text="own text")) == "name\nbase\nk8s"


def test_json_and_yaml_print_the_command_s_document_or_with_c_the_columns() -> None:
    document = json.dumps({"image_id": "img-1", "seconds": 3.0}, indent=2, sort_keys=True)
    result = Result(rows=ROW, document=document)
    assert Output(format="json").render(result) == document
    assert yaml.safe_load(Output(format="yaml").render(result)) == {"image_id": "img-1", "seconds": 3.0}
    assert json.loads(Output(format="json", columns=("id", "protected")).render(result)) == {
        "id": "img-1", "protected": False}
    assert yaml.safe_load(Output(format="yaml", columns=("name",)).render(Result(rows=LISTING))) == [
        {"name": "base"}, {"name": "k8s"}]
    assert json.loads(Output(format="json").render(Result(rows=LISTING))) == LISTING   # no document: the rows


def test_an_empty_listing_is_a_header_in_a_table_and_nothing_as_values() -> None:
    assert Output(format="table", columns=("code", "path")).render(Result(rows=[])) == "code  path"
    assert Output(format="value").render(Result(rows=[])) == ""


# -- through the command line -----------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("SNAPBUILD_STATE_DIR", str(tmp_path / "state"))


BUILT = SnapshotResult(image_id="3f1c-image", image_name="base-20261204-1200", build_id="20261204-ab12",
                       properties={"os_distro": "debian"}, seconds=61.26, manifest={},
                       manifest_path=Path("/state/manifests/base.manifest.json"))


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[SnapshotSettings]:
    """A cloud build that answers BUILT; nothing contacts a cloud."""
    seen: list[SnapshotSettings] = []

    def fake_build_snapshot(settings: SnapshotSettings, plan: Any, monitor: Any, **kw: Any) -> SnapshotResult:
        monitor.line("▸ progress goes to stderr")
        seen.append(settings)
        return BUILT

    monkeypatch.setattr(snapshot, "build_snapshot", fake_build_snapshot)
    return seen


BUILD = ("build", "base", "--flavor", "m1.small")


def test_value_c_id_gives_exactly_the_image_id_line(built: list[SnapshotSettings],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, *BUILD, "-f", "value", "-c", "id")
    assert code == 0, err
    assert out == "3f1c-image\n"          # what $(…) captures: the id alone
    assert "progress goes to stderr" in err


@pytest.mark.parametrize("name", ["k8s", "docker-ce"])
def test_the_shortcuts_take_f_and_c_too(name: str, built: list[SnapshotSettings],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, name, "--flavor", "m1.small", "--allow-blocked", "-f", "value", "-c", "name",
                         "-c", "build_id")
    assert code == 0, err
    assert out == "base-20261204-1200\n20261204-ab12\n"


def test_build_prints_the_image_id_by_default_and_json_as_it_always_has(built: list[SnapshotSettings],
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, *BUILD)[1] == "3f1c-image\n"
    code, out, _ = run(capsys, *BUILD, "--json")
    assert code == 0 and out == BUILT.to_json() + "\n"
    assert run(capsys, *BUILD, "-f", "json")[1] == out
    assert json.loads(out) == {"image_id": "3f1c-image", "image_name": "base-20261204-1200",
                               "build_id": "20261204-ab12", "properties": {"os_distro": "debian"}, "seconds": 61.3,
                               "manifest": "/state/manifests/base.manifest.json"}


def test_build_s_row_in_table_and_yaml(built: list[SnapshotSettings], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, *BUILD, "-f", "table", "-c", "id", "-c", "seconds")
    assert code == 0 and out == "id       3f1c-image\nseconds  61.3\n"
    code, out, _ = run(capsys, *BUILD, "-f", "yaml", "-c", "id", "-c", "properties", "-c", "manifest")
    assert code == 0 and yaml.safe_load(out) == {"id": "3f1c-image", "properties": {"os_distro": "debian"},
                                                 "manifest": "/state/manifests/base.manifest.json"}


def test_an_unknown_column_is_a_usage_error_naming_the_columns_before_any_build(
        built: list[SnapshotSettings], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, *BUILD, "-f", "value", "-c", "image_id")
    assert code == 2 and out == ""
    assert "'image_id' is not one of" in err
    for column in ("'id'", "'name'", "'build_id'", "'manifest'", "'properties'", "'seconds'"):
        assert column in err
    assert built == []                    # refused while parsing: nothing was built


def test_json_and_another_format_are_refused(built: list[SnapshotSettings],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, *BUILD, "--json", "-f", "yaml")
    assert code == 2 and "--json and -f yaml ask for two formats" in err
    assert built == []


def test_with_events_on_stdout_the_result_is_not_printed(built: list[SnapshotSettings],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, *BUILD, "--events", "-", "-f", "value", "-c", "id")
    assert code == 0 and "3f1c-image" not in out


def test_recipes_is_a_listing(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "recipes", "-f", "value", "-c", "name")
    assert code == 0, err
    names = out.splitlines()
    assert {"base", "docker-ce", "k8s"} <= set(names) and names == sorted(names)
    code, out, _ = run(capsys, "recipes", "-f", "json", "-c", "name", "-c", "distros")
    rows = json.loads(out)
    assert isinstance(rows, list) and all(set(row) == {"name", "distros"} for row in rows)
    code, out, _ = run(capsys, "recipes", "-f", "table", "-c", "name", "-c", "distros")
    header, *lines = out.splitlines()
    assert header.split() == ["name", "distros"] and len(lines) == len(names)
    code, out, _ = run(capsys, "recipes", "--json")             # the document it has always printed
    assert set(json.loads(out)) == {"recipes", "profiles"}
    code, out, _ = run(capsys, "recipes")
    assert "mirror profiles:" in out                              # and its own text by default


def test_cleanup_prints_one_row_per_resource(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    swept = [SweptBuild(build_id="b-1", builder="local", recipe="k8s", status="interrupted",
                        actions=("process qemu-b-1", "file /tmp/seed.iso (failed: busy)"))]
    monkeypatch.setattr(host_cleanup, "cleanup_host", lambda **kw: swept)
    code, out, err = run(capsys, "cleanup", "--host", "-f", "value", "-c", "kind", "-c", "id", "-c", "action")
    assert code == 0, err
    assert out.splitlines() == ["process qemu-b-1 removed", "file /tmp/seed.iso failed: busy"]
    code, out, _ = run(capsys, "cleanup", "--host")
    assert out.splitlines() == ["build b-1 (local k8s, interrupted):", "  removed process qemu-b-1",
                                "  removed file /tmp/seed.iso (failed: busy)"]


# -- the image options ------------------------------------------------------------------------------------------

def test_image_options_reach_the_snapshot_settings(built: list[SnapshotSettings],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, *BUILD, "--name", "golden", "--min-disk", "20", "--min-ram", "4096", "--protected",
                       "--hidden", "--public")
    assert code == 0, err
    (s,) = built
    assert (s.image_name, s.min_disk_gb, s.min_ram_mb, s.protected, s.hidden, s.visibility) == (
        "golden", 20, 4096, True, True, "public")


def test_image_name_stays_an_alias_and_the_defaults_leave_the_recipe_s_minimums(
        built: list[SnapshotSettings], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, *BUILD, "--image-name", "old-spelling")
    assert code == 0, err
    (s,) = built
    assert (s.image_name, s.min_disk_gb, s.min_ram_mb, s.protected, s.hidden, s.visibility) == (
        "old-spelling", None, None, False, False, "private")


@pytest.mark.parametrize("flag", ["--public", "--private", "--community", "--shared"])
def test_each_visibility_flag_is_visibility_x(flag: str, built: list[SnapshotSettings],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, *BUILD, flag, "--visibility", flag[2:])   # the same thing twice is fine
    assert code == 0, err
    assert built[0].visibility == flag[2:]


@pytest.mark.parametrize(("args", "message"), [
    (["--public", "--private"], "--private and --public conflict"),
    (["--shared", "--visibility", "community"], "--shared and --visibility community conflict"),
])
def test_conflicting_visibilities_are_refused(args: list[str], message: str, built: list[SnapshotSettings],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, *BUILD, *args)
    assert code == 2 and out == ""
    assert f"snapbuild: error: {message}" in err and "snapbuild: hint:" in err
    assert built == []


def test_a_flag_wins_over_the_config_file_s_visibility(tmp_path: Path, built: list[SnapshotSettings],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "snapbuild.yaml"
    config.write_text("mirrors: upstream\nbuild:\n  visibility: private\n  protected: true\n")
    code, _, err = run(capsys, "--config", str(config), *BUILD, "--public")
    assert code == 0, err
    assert (built[0].visibility, built[0].protected) == ("public", True)
    code, _, err = run(capsys, "--config", str(config), *BUILD, "--unprotected")
    assert code == 0, err
    assert (built[1].visibility, built[1].protected) == ("private", False)


UPLOADED = UploadResult(image_id="up-1", name="docker-ce", already=False, disk_format="qcow2", size=3,
                        sha256="a" * 64, sha512="b" * 128, seconds=2.0, properties={})


@pytest.fixture
def uploads(monkeypatch: pytest.MonkeyPatch) -> list[UploadSettings]:
    seen: list[UploadSettings] = []

    def fake_upload(settings: UploadSettings, reporter: Any, **kw: Any) -> UploadResult:
        seen.append(settings)
        return UPLOADED

    monkeypatch.setattr(upload, "upload_image", fake_upload)
    return seen


def test_upload_takes_the_same_image_options(tmp_path: Path, uploads: list[UploadSettings],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(b"qcow")
    code, out, err = run(capsys, "upload", str(disk), "--recipe", "docker-ce", "--mirrors", "upstream",
                         "--min-ram", "4096", "--protected", "--hidden", "--community", "-f", "value", "-c", "id")
    assert code == 0, err
    assert out == "up-1\n"
    (s,) = uploads
    assert (s.min_disk_gb, s.min_ram_mb) == (8, 4096)                 # min_disk still the recipe's
    assert (s.protected, s.hidden, s.visibility) == (True, True, "community")
    code, out, _ = run(capsys, "upload", str(disk), "--name", "n", "--json")
    assert code == 0 and out == UPLOADED.to_json() + "\n"
    assert (uploads[1].min_disk_gb, uploads[1].visibility, uploads[1].protected) == (0, "private", False)


def test_upload_refuses_conflicting_visibilities(tmp_path: Path, uploads: list[UploadSettings],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(b"qcow")
    code, _, err = run(capsys, "upload", str(disk), "--name", "n", "--private", "--visibility", "public")
    assert code == 2 and "--private and --visibility public conflict" in err
    assert uploads == []

"""Targets whose images are built on this host (`builder: local` or `chroot`) and uploaded: the loader's checks, the
digest from the base file's sha256 (as `snapbuild local`/`chroot` record it), and apply through `build_on_host`,
whose build is replaced (no QEMU or chroot in the unit tier) and whose upload is the real `snapbuild upload` code
against the fake Glance."""

from __future__ import annotations

import hashlib
import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from catalogues import LIBRARY, connector, write

from snapbuild.catalogue import hostbuild
from snapbuild.catalogue.apply import Runtime, apply_catalogue
from snapbuild.catalogue.load import load_catalogue
from snapbuild.catalogue.planner import Clouds, make_plan
from snapbuild.errors import RecipeError

T0 = datetime(2026, 12, 5, tzinfo=UTC)

HOST_BUILT = """\
images:
  docker-ce:
    recipe: docker-ce
    distro: debian-12
    mirrors: upstream
targets:
  here:
    cloud: fake
    region: RegionOne
    builder: local
    base: bases/debian-12.qcow2
    build: {memory: 3072, cpus: 2, network: nat, timeout_boot: 20m}
  two:
    cloud: fake
    region: RegionTwo
    role: receive
policy:
  keep: 1
  claim_settle: 0
"""


@pytest.fixture
def base(tmp_path: Path) -> Path:
    path = tmp_path / "bases" / "debian-12.qcow2"
    path.parent.mkdir()
    path.write_bytes(b"QFI\xfb a debian base")
    return path


def load(tmp_path: Path, text: str = HOST_BUILT) -> Any:
    return load_catalogue(write(tmp_path, text), library=LIBRARY, known_clouds=["fake"])


def refused(tmp_path: Path, text: str) -> RecipeError:
    with pytest.raises(RecipeError) as caught:
        load(tmp_path, text)
    return caught.value


# ---- the loader ----------------------------------------------------------------------------------------------

def test_a_local_target_has_its_base_file_and_local_settings(tmp_path: Path, base: Path) -> None:
    catalogue = load(tmp_path)
    here = catalogue.target("here")
    assert here.on_host and here.builder == "local" and here.base_file == str(base)
    assert dict(here.build) == {"memory_mb": 3072, "cpus": 2, "network": "nat", "boot_timeout_s": 1200.0}
    assert here.key == "this host"                      # host builds share the host's concurrency limit
    assert not catalogue.target("two").on_host


@pytest.mark.parametrize(("old", "new", "message", "hint"), [
    ("builder: local", "builder: locl", "builder must be snapshot, local or chroot", "did you mean 'local'"),
    ("    base: bases/debian-12.qcow2\n", "", "builder: local needs base:", "fetch-base"),
    ("base: bases/debian-12.qcow2", "base: bases/nope.qcow2", "bases/nope.qcow2 is not a file", "fetch-base"),
    ("network: nat", "network: natt", "network must be one of nat, isolated", "did you mean 'nat'"),
    ("memory: 3072", "flavor: m1.large", "unknown key 'flavor'", None),
    ("    role: receive", "    role: receive\n    builder: chroot", "builder: chroot builds, but the target has "
                                                                   "role: receive", "remove builder"),
])
def test_bad_host_targets_are_refused_with_the_line(tmp_path: Path, base: Path, old: str, new: str, message: str,
                                                    hint: str | None) -> None:
    assert old in HOST_BUILT
    error = refused(tmp_path, HOST_BUILT.replace(old, new, 1))
    assert message in error.message, error.message
    if hint:
        assert hint in (error.hint or ""), error.hint
    assert error.exit_code == 2 and error.line is not None


def test_a_base_file_on_a_snapshot_target_is_refused(tmp_path: Path, base: Path) -> None:
    text = HOST_BUILT.replace("    builder: local\n", "").replace(
        "build: {memory: 3072, cpus: 2, network: nat, timeout_boot: 20m}", "build: {flavor: m1.small}")
    error = refused(tmp_path, text)
    assert "base is for builder: local or chroot" in error.message and "base_image" in (error.hint or "")


# ---- the plan ------------------------------------------------------------------------------------------------

def test_the_digest_takes_the_base_file_s_sha256_and_needs_no_glance_base(regions: Any, tmp_path: Path,
                                                                         base: Path) -> None:
    catalogue = load(tmp_path)            # no base image in either Glance: a host build does not need one
    plan = make_plan(catalogue, library=LIBRARY, clouds=Clouds(connector(regions)), now=T0)
    here = next(i for i in plan.items if i.target == "here")
    checksum = "sha256:" + hashlib.sha256(base.read_bytes()).hexdigest()
    assert here.action == "build" and here.base == {"id": "", "name": str(base), "checksum": checksum}
    assert here.digest == plan.plans["docker-ce"].content_digest(checksum).value
    assert "local build" in here.reason
    base.write_bytes(b"QFI\xfb a newer debian base")
    again = make_plan(catalogue, library=LIBRARY, clouds=Clouds(connector(regions)), now=T0)
    assert next(i for i in again.items if i.target == "here").digest != here.digest


# ---- apply ---------------------------------------------------------------------------------------------------

def fake_local_build(made: list[Path], made_bytes: list[bytes]) -> Any:
    """Stands in for `run_local`: writes an output and the manifest a local build writes beside it."""
    def run_local(plan: Any, settings: Any, *, monitor: Any = None, **_: Any) -> None:
        # a real qcow2 (the upload checks what qemu-img says), its content made from the base's bytes
        raw = settings.output.with_suffix(".raw")
        raw.write_bytes((b"built from " + settings.base.read_bytes()).ljust(1 << 20, b"\0"))
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(settings.output)],
                       check=True)
        raw.unlink()
        data = settings.output.read_bytes()
        checksum = "sha256:" + hashlib.sha256(settings.base.read_bytes()).hexdigest()
        manifest = {"build_id": "20261205000000-0000abcd", "builder": "local", "snapbuild_version": "test",
                    "recipe": {"name": plan.recipe_name, "variant": plan.variant, "distro": plan.distro.name},
                    "content_digest": {"value": plan.content_digest(checksum).value},
                    "output": {"sha256": hashlib.sha256(data).hexdigest()}}
        settings.output.with_name(settings.output.name + ".manifest.json").write_text(json.dumps(manifest))
        made.append(settings.output)
        made_bytes.append(data)
        assert (settings.memory_mb, settings.cpus) == (3072, 2)
    return run_local


def test_apply_builds_on_this_host_uploads_copies_and_then_has_nothing_to_do(
        regions: Any, tmp_path: Path, base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import snapbuild.local.build

    made: list[Path] = []
    made_bytes: list[bytes] = []
    monkeypatch.setattr(snapbuild.local.build, "run_local", fake_local_build(made, made_bytes))
    catalogue = load(tmp_path)
    runtime = Runtime(connect=connector(regions), host_builder=hostbuild.build_on_host, now=lambda: T0,
                      sleep=lambda s: None, apply_id="a1")
    plan = make_plan(catalogue, library=LIBRARY, clouds=Clouds(connector(regions)), now=T0)
    report = apply_catalogue(catalogue, plan, runtime)
    assert sorted((d.target, d.action) for d in report.done) == [("here", "built"), ("two", "copied")], [d.detail for d in report.done]
    (built,) = regions.active("RegionOne", snapbuild_catalogue_entry="docker-ce")
    planned = next(i for i in plan.items if i.target == "here").digest
    assert built["snapbuild_content_digest"] == planned and built["snapbuild_builder"] == "local"
    assert built["tags"] == [] and built["name"].endswith(" 2026-12-05 0000")     # finished: no in-progress tag
    assert regions.glances["RegionOne"].data[built["id"]] == made_bytes[0]
    (copied,) = regions.active("RegionTwo", snapbuild_catalogue_entry="docker-ce")
    assert copied["snapbuild_content_digest"] == planned
    assert [p for p in made if p.parent.exists()] == []          # the local files went with the build

    again = apply_catalogue(catalogue, make_plan(catalogue, library=LIBRARY, clouds=Clouds(connector(regions)),
                                                 now=T0), runtime)
    assert {d.action for d in again.done} == {"skipped"} and len(made) == 1


def test_without_a_host_builder_a_host_target_fails_and_says_why(regions: Any, tmp_path: Path, base: Path) -> None:
    catalogue = load(tmp_path)
    plan = make_plan(catalogue, library=LIBRARY, clouds=Clouds(connector(regions)), now=T0)
    report = apply_catalogue(catalogue, plan, Runtime(connect=connector(regions), now=lambda: T0,
                                                      sleep=lambda s: None))
    (failed,) = [d for d in report.done if d.action == "failed" and d.target == "here"]
    assert "builder local is not available" in failed.detail
    assert regions.active("RegionOne", snapbuild_catalogue_entry="docker-ce") == []

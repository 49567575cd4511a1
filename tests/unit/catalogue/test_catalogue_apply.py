"""`snapbuild apply` end to end against two fake regions at the HTTP edge: plan, build, copy, rotate, and again."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from catalogues import LIBRARY, TWO_REGIONS, FakeBuilder, connector, load, seed_bases, write

from snapbuild.catalogue.apply import Runtime, apply_catalogue
from snapbuild.catalogue.planner import Clouds, make_plan, parse_only
from snapbuild.errors import UserError

T0 = datetime(2026, 11, 2, tzinfo=UTC)


def run(regions, catalogue, *, builder=None, now=T0, only=None):
    plan = make_plan(catalogue, library=LIBRARY, clouds=Clouds(connector(regions)), only=only, now=now)
    builder = builder or FakeBuilder()
    report = apply_catalogue(catalogue, plan, Runtime(connect=connector(regions), builder=builder,
                                                      now=lambda: now, sleep=lambda s: None, apply_id="a1"))
    return plan, report, builder


def actions(report):
    return sorted((d.entry, d.target, d.action) for d in report.done)


def entry_images(regions, region, entry, **extra):
    return regions.active(region, snapbuild_catalogue_entry=entry, **extra)


def test_first_apply_builds_each_entry_once_and_copies_it_to_the_receiving_region(regions, tmp_path):
    seed_bases(regions)
    _plan, report, builder = run(regions, load(tmp_path))
    assert sorted(builder.built) == [("docker-ce", "RegionOne"), ("k8s-full", "RegionOne"), ("k8s-slim", "RegionOne")]
    assert actions(report) == [(e, t, "built" if t == "one" else "copied") for e in ("docker-ce", "k8s-full",
                                                                                      "k8s-slim") for t in ("one", "two")]
    for entry in ("docker-ce", "k8s-full", "k8s-slim"):
        (one,) = entry_images(regions, "RegionOne", entry)
        (two,) = entry_images(regions, "RegionTwo", entry)
        assert one["snapbuild_content_digest"] == two["snapbuild_content_digest"]
        assert regions.glances["RegionOne"].data[one["id"]] == regions.glances["RegionTwo"].data[two["id"]]
    # no claim is left behind
    assert not [i for g in regions.glances.values() for i in g.images.values() if "snapbuild-claim" in i["tags"]]


def test_second_apply_with_nothing_changed_builds_and_copies_nothing_and_counts_its_calls(regions, tmp_path):
    seed_bases(regions)
    catalogue = load(tmp_path)
    run(regions, catalogue)
    before = len(regions.m.request_history)
    _plan, report, builder = run(regions, catalogue)
    assert builder.built == []
    assert {d.action for d in report.done} == {"skipped"}
    calls = regions.requests()[before:]
    writes = [c for c in calls if not c.startswith("GET ") and "/auth/tokens" not in c]
    assert writes == []
    # Per target: discovery and token, the base image listing, two listings (shown + hidden) per entry for the plan
    # and again for the rotation, one claims listing. Measured: the figure the README quotes.
    assert len(calls) <= 40, calls
    print(f"API calls for a no-op apply of 3 entries x 2 targets: {len(calls)}")


def test_changing_one_variable_rebuilds_and_copies_only_that_entry_and_hides_its_old_image(regions, tmp_path):
    seed_bases(regions)
    run(regions, load(tmp_path))
    (old,) = entry_images(regions, "RegionOne", "docker-ce")
    changed = TWO_REGIONS.replace("    properties: {os_type: linux}\n",
                                  "    properties: {os_type: linux}\n    variables: {docker_version: 29.2.2}\n")
    plan, report, builder = run(regions, load(tmp_path, changed), now=T0 + timedelta(hours=1))
    assert builder.built == [("docker-ce", "RegionOne")]
    assert [(i.entry, i.target, i.action) for i in plan.items if i.action != "skip"] == [
        ("docker-ce", "one", "build"), ("docker-ce", "two", "copy")]
    done = {(d.entry, d.target, d.action) for d in report.done}
    assert {("docker-ce", "one", "built"), ("docker-ce", "two", "copied"), ("docker-ce", "one", "hidden"),
            ("docker-ce", "two", "hidden")} <= done
    hidden = regions.glances["RegionOne"].images[old["id"]]
    assert hidden["os_hidden"] is True and hidden["snapbuild_hidden_at"] == "2026-11-02T01:00:00+00:00"
    # k8s entries untouched
    assert all(d.action == "skipped" for d in report.done if d.entry != "docker-ce")


def test_rotation_deletes_after_the_grace_period_but_never_an_image_in_use_or_not_ours(regions, tmp_path):
    seed_bases(regions)
    run(regions, load(tmp_path))
    (old_one,) = entry_images(regions, "RegionOne", "docker-ce")
    (old_two,) = entry_images(regions, "RegionTwo", "docker-ce")
    regions.boot("RegionTwo", old_two["id"], name="web-1")
    foreign = regions.add_image("RegionOne", old_one["name"], snapbuild_catalogue_entry="docker-ce",
                                snapbuild_content_digest="f" * 64)          # same name and entry, not ours
    changed = TWO_REGIONS.replace("    properties: {os_type: linux}\n",
                                  "    properties: {os_type: linux}\n    variables: {docker_version: 29.2.2}\n")
    catalogue = load(tmp_path, changed)
    run(regions, catalogue, now=T0 + timedelta(hours=1))                      # hides the old ones
    _, report, _ = run(regions, catalogue, now=T0 + timedelta(hours=2))       # within the grace period
    assert ("docker-ce", "one", "kept") in actions(report)
    assert old_one["id"] in regions.glances["RegionOne"].images
    _, report, builder = run(regions, catalogue, now=T0 + timedelta(days=2))  # past it
    assert builder.built == []
    by_image = {d.image_id: (d.action, d.detail) for d in report.done}
    assert by_image[old_one["id"]][0] == "deleted"
    assert old_one["id"] not in regions.glances["RegionOne"].images
    assert by_image[old_two["id"]] == ("kept", "in use by 1 server(s): web-1")
    assert old_two["id"] in regions.glances["RegionTwo"].images
    assert by_image[foreign["id"]][0] == "untouched"
    assert regions.glances["RegionOne"].images[foreign["id"]]["os_hidden"] is False


def test_a_failed_build_is_reported_its_copy_not_attempted_and_the_rest_goes_on(regions, tmp_path):
    seed_bases(regions)
    _, report, builder = run(regions, load(tmp_path), builder=FakeBuilder(fail={"docker-ce"}))
    done = {(d.entry, d.target): (d.action, d.detail) for d in report.done}
    assert done[("docker-ce", "one")] == ("failed", "docker-ce: provisioning failed")
    assert done[("docker-ce", "two")][0] == "failed" and "has no image" in done[("docker-ce", "two")][1]
    assert done[("k8s-full", "two")][0] == "copied"
    assert entry_images(regions, "RegionTwo", "docker-ce") == []
    # and the next apply completes the catalogue
    _, report, builder = run(regions, load(tmp_path))
    assert builder.built == [("docker-ce", "RegionOne")]
    assert {("docker-ce", "one", "built"), ("docker-ce", "two", "copied")} <= set(actions(report))


def test_a_shared_multi_store_glance_copies_with_copy_image(shared, tmp_path):
    seed_bases(shared)
    text = TWO_REGIONS.replace("    role: receive\n", "    role: receive\n    store: ceph-two\n")
    plan, _report, _ = run(shared, load(tmp_path, text))
    copies = [i for i in plan.items if i.action == "copy"]
    assert copies and all(i.store == "ceph-two" and "copy-image" in i.reason for i in copies)
    assert shared.count("POST", "/import") == 3 and shared.count("PUT", "/file") == 3   # the builds' uploads only
    _, again, builder = run(shared, load(tmp_path, text))
    assert builder.built == [] and {d.action for d in again.done} == {"skipped"}


def test_only_runs_the_named_entry_at_the_named_target(regions, tmp_path):
    seed_bases(regions)
    catalogue = load(tmp_path)
    plan, _report, builder = run(regions, catalogue, only=parse_only(catalogue, ["k8s-slim@one"]))
    assert builder.built == [("k8s-slim", "RegionOne")]
    assert [(i.entry, i.target) for i in plan.items] == [("k8s-slim", "one")]
    plan, _, _ = run(regions, catalogue, only=parse_only(catalogue, ["docker-ce@two"]))
    assert [(i.action, i.reason) for i in plan.items] == [
        ("skip", "its source docker-ce@one is not built yet and not in --only")]
    with pytest.raises(UserError, match="no target 'tow'"):
        parse_only(catalogue, ["docker-ce@tow"])


def test_a_fixed_catalogue_gives_a_fixed_plan(tmp_path):
    import requests_mock
    from fakeregions import Regions

    def plan_once():
        with requests_mock.Mocker() as mocker:
            regions = Regions(mocker)
            seed_bases(regions)
            plan = make_plan(load(tmp_path), library=LIBRARY, clouds=Clouds(connector(regions)), now=T0)
        return [{k: v for k, v in item.items() if k != "base"} for item in plan.as_dict()["items"]]

    first = plan_once()
    assert first == plan_once()
    assert [(i["entry"], i["target"], i["action"]) for i in first] == [
        ("docker-ce", "one", "build"), ("docker-ce", "two", "copy"), ("k8s-full", "one", "build"),
        ("k8s-full", "two", "copy"), ("k8s-slim", "one", "build"), ("k8s-slim", "two", "copy")]
    assert len({i["digest"] for i in first}) == 3


def test_dry_run_prints_the_plan_as_json_and_touches_nothing(regions, tmp_path, monkeypatch, capsys):
    from snapbuild.cli import main

    seed_bases(regions)
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text("clouds:\n  fake:\n    auth: {auth_url: 'http://127.0.0.1:35357/v3', username: u, password: p,"
                      " project_name: demo, user_domain_name: Default, project_domain_name: Default}\n")
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
    main(["apply", str(write(tmp_path)), "--dry-run", "-f", "json"])
    document = json.loads(capsys.readouterr().out)
    assert document["dry_run"] is True
    assert [i["action"] for i in document["items"]] == ["build", "copy"] * 3
    # nothing but a token per target is asked for: no claim, no image, no patch
    assert {f"{r.method} {r.path}" for r in regions.m.request_history if r.method != "GET"} == {"POST /v3/auth/tokens"}
    main(["apply", str(write(tmp_path)), "--dry-run", "-c", "entry", "-c", "action"])
    main_table = capsys.readouterr().out.splitlines()
    assert main_table[0].split() == ["entry", "action"] and main_table[1].split() == ["docker-ce", "build"]

from __future__ import annotations

from catalogues import LIBRARY, FakeBuilder, connector, load, seed_bases

from snapbuild.catalogue.apply import Runtime, apply_catalogue
from snapbuild.catalogue.planner import Clouds, make_plan


def test_smoke(regions, tmp_path):
    seed_bases(regions)
    cat = load(tmp_path)
    clouds = Clouds(connector(regions))
    plan = make_plan(cat, library=LIBRARY, clouds=clouds)
    for row in plan.rows():
        print(row)
    builder = FakeBuilder()
    report = apply_catalogue(cat, plan, Runtime(connect=connector(regions), builder=builder))
    for row in report.rows():
        print(row)
    assert not report.failed

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import requests_mock
from httpcloud import FakeClock, HTTPCloud

from snapbuild.openstack.cloud import Cloud

if TYPE_CHECKING:
    from snapbuild.plan import Plan


@pytest.fixture
def api() -> Iterator[HTTPCloud]:
    with requests_mock.Mocker() as mocker:
        yield HTTPCloud(mocker)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cloud(api: HTTPCloud, clock: FakeClock) -> Cloud:
    return Cloud(api.connect(), name="test", clock=clock, sleep=clock.sleep)


@pytest.fixture(scope="session")
def plan() -> Plan:
    """The real docker-ce recipe's plan (upstream profile: nothing blocked)."""
    from snapbuild.distros import get_distro
    from snapbuild.plan import make_plan
    from snapbuild.profiles import load_profile
    from snapbuild.recipes import load_recipe, resolve_variables

    root = Path(__file__).resolve().parents[3]
    recipe = load_recipe(root / "recipes" / "docker-ce")
    return make_plan(recipe, distro=get_distro("ubuntu-24.04"),
                     profile=load_profile(root / "recipes" / "profiles" / "upstream.yaml"),
                     variables=resolve_variables(recipe, config_values={}, set_values={}))

"""The baked apt drop-in keeps first boot from rewriting the APT sources the build wrote, whatever the profile.

cloud-init's apt module (unless told to preserve the sources) regenerates the archive sources on first boot from
its own template: Debian 13's adds deb-src and -backports, which a partial mirror may not serve, and Debian 12's
(cloud-init 22.4) writes a one-line sources.list beside the DEB822 file. The drop-in gives a DEB822 cloud-init the
very text the build wrote (URLs as $PRIMARY/$SECURITY, which it fills from `primary`/`security`), and tells a
one-line cloud-init to leave the sources alone. The VM tier boots a built image and checks the result
(`snapbuild verify`: tests/unit/test_verify_first_boot.py for the check itself).
"""

from __future__ import annotations

import re

import pytest
import yaml

from snapbuild.distros import DISTROS
from snapbuild.paths import data_dir
from snapbuild.plan import Plan, plan_from_names
from snapbuild.recipes import Library

LIBRARY = Library([data_dir("recipes")])
DROPIN = "/etc/cloud/cloud.cfg.d/99-snapbuild-apt.cfg"


def make(distro: str, profile: str) -> Plan:
    return plan_from_names(library=LIBRARY, recipe_name="base", distro_name=distro, profile_name=profile,
                           config_variables={}, set_values={})


def file_of(plan: Plan, path: str) -> str:
    return next(f.content.decode() for f in reversed(plan.files) if f.path == path)


def fill(template: str, params: dict[str, str]) -> str:
    """cloud-init's plain (non-jinja) template rendering: `$NAME` or `${NAME}` from the params."""
    return re.sub(r"\$\{?(\w+)\}?", lambda m: params[m.group(1)], template)


@pytest.mark.parametrize("profile", ["upstream", "airgap-example"])
@pytest.mark.parametrize("distro", [d for d, spec in DISTROS.items() if spec.cloudinit_writes_deb822])
def test_a_deb822_cloud_init_writes_back_exactly_the_sources_the_build_wrote(distro: str, profile: str) -> None:
    plan = make(distro, profile)
    apt = yaml.safe_load(file_of(plan, DROPIN))["apt"]
    assert apt["preserve_sources_list"] is False
    primary, security = apt["primary"][0]["uri"], apt["security"][0]["uri"]
    assert set(re.findall(r"\$\{?(\w+)\}?", apt["sources_list"])) == {"PRIMARY", "SECURITY"}
    written = file_of(plan, plan.distro.sources_file)
    assert fill(apt["sources_list"], {"PRIMARY": primary, "SECURITY": security}) == written
    # cloud-init takes it as DEB822 (and so writes it to <distro>.sources and drops sources.list) only when no line
    # starts with `deb ` and some start with a DEB822 key (cc_apt_configure.is_deb822_sources_format)
    assert not re.search(r"^(deb |deb-src )", apt["sources_list"], re.M)
    assert re.search(r"^(Types: |Suites: |Components: |URIs: )", apt["sources_list"], re.M)
    assert plan.distro.sources_file == f"/etc/apt/sources.list.d/{plan.distro.id}.sources"


@pytest.mark.parametrize("profile", ["upstream", "airgap-example"])
def test_debian_12_s_cloud_init_is_told_to_leave_the_sources_alone(profile: str) -> None:
    plan = make("debian-12", profile)
    apt = yaml.safe_load(file_of(plan, DROPIN))["apt"]
    assert apt == {"preserve_sources_list": True}


def test_the_mirrors_in_the_dropin_are_the_profile_s() -> None:
    apt = yaml.safe_load(file_of(make("debian-13", "airgap-example"), DROPIN))["apt"]
    assert apt["primary"][0]["uri"] == "https://mirror.example.internal/debian"
    assert apt["security"][0]["uri"] == "https://mirror.example.internal/debian-security"

"""debian-13 (trixie) is a distro of the shipped recipes: its own suites, keys, groups, repositories and properties,
with every shipped mirror profile, while ubuntu-24.04 and debian-12 plan exactly as before."""

from __future__ import annotations

import click
import pytest

from snapbuild import actions
from snapbuild.cli import cli, main
from snapbuild.distros import DISTROS, get_distro
from snapbuild.local import baseimage
from snapbuild.paths import data_dir
from snapbuild.plan import Plan, plan_from_names
from snapbuild.recipes import Library
from snapbuild.transfer.fetch import BASE_IMAGES

LIBRARY = Library([data_dir("recipes")])
SHIPPED_PROFILES = ("airgap-example", "cloudinative", "upstream")
STUB = "../run/systemd/resolve/stub-resolv.conf"


def make(recipe: str, distro: str, profile: str = "upstream", **sets: str) -> Plan:
    return plan_from_names(library=LIBRARY, recipe_name=recipe, distro_name=distro, profile_name=profile,
                           config_variables={}, set_values=sets)


def file_of(plan: Plan, path: str) -> str:
    matches = [f for f in plan.files if f.path == path]
    assert matches, f"{path} not written; files: {[f.path for f in plan.files]}"
    return matches[-1].content.decode()


def deb822(text: str) -> list[dict[str, str]]:
    stanzas = [s for s in text.split("\n\n") if s.strip()]
    return [dict(line.split(": ", 1) for line in s.splitlines() if not line.startswith("#")) for s in stanzas]


def test_debian_13_is_trixie_with_its_own_suites_keyring_and_groups() -> None:
    d = get_distro("debian-13")
    assert (d.id, d.version, d.codename, d.pretty) == ("debian", "13", "trixie", "Debian 13")
    assert d.suites == ("trixie", "trixie-updates") and d.security_suite == "trixie-security"
    assert d.archive == "http://deb.debian.org/debian" and d.security == "http://deb.debian.org/debian-security"
    # trixie's debian-archive-keyring ships the .pgp file (.gpg is only a compatibility symlink).
    assert d.keyring == "/usr/share/keyrings/debian-archive-keyring.pgp"
    assert d.sources_file == "/etc/apt/sources.list.d/debian.sources"
    assert d.default_user == "debian"
    # trixie's cloud.cfg dropped netdev from the default user's groups; bookworm's has it.
    assert "netdev" not in d.default_groups and "netdev" in get_distro("debian-12").default_groups
    assert d.resolv_conf_symlink == STUB
    assert get_distro("debian-12").resolv_conf_symlink is None


def test_every_shipped_recipe_supports_debian_13_after_the_existing_distros() -> None:
    for name in ("base", "docker-ce", "k8s"):
        recipe = LIBRARY.load(name)
        # The first distro is the default: adding debian-13 must not change it.
        assert list(recipe.distros) == ["ubuntu-24.04", "debian-12", "debian-13"], name


@pytest.mark.parametrize("profile", SHIPPED_PROFILES)
@pytest.mark.parametrize("recipe", ["base", "docker-ce", "k8s"])
def test_debian_13_plans_with_every_shipped_profile(recipe: str, profile: str) -> None:
    plan = make(recipe, "debian-13", profile)
    stanzas = deb822(file_of(plan, "/etc/apt/sources.list.d/debian.sources"))
    assert [s["Suites"] for s in stanzas] == ["trixie trixie-updates", "trixie-security"]
    assert {s["Signed-By"] for s in stanzas} == {"/usr/share/keyrings/debian-archive-keyring.pgp"}
    if profile == "airgap-example":
        assert [s["URIs"] for s in stanzas] == ["https://mirror.example.internal/debian",
                                                "https://mirror.example.internal/debian-security"]
    else:   # no Debian mirror in these profiles: the upstream archive
        assert [s["URIs"] for s in stanzas] == ["http://deb.debian.org/debian", "http://deb.debian.org/debian-security"]
    assert "99-snapbuild-apt.cfg" in {f.path.rsplit("/", 1)[1] for f in plan.dropins}
    # The legacy one-line file goes, as on Ubuntu (the debian-13 base ships one).
    assert any(isinstance(a, actions.RemoveFiles) and "/etc/apt/sources.list" in a.paths for a in plan.actions)
    props = plan.image.properties
    assert (props["os_distro"], props["os_version"], props["os_admin_user"]) == ("debian", "13", "debian")
    assert plan.image.name.startswith("Debian 13")


def test_docker_ce_on_debian_13_uses_docker_s_trixie_suite_and_revision() -> None:
    plan = make("docker-ce", "debian-13", "airgap-example")
    source = next(a for a in plan.actions if isinstance(a, actions.AptSource) and a.name == "docker")
    fields = deb822(source.deb822)[0]
    assert fields["URIs"] == "https://mirror.example.internal/download.docker.com/linux/debian"
    assert fields["Suites"] == "trixie" and fields["Components"] == "stable"
    assert source.key is not None
    assert source.key.url == "https://mirror.example.internal/download.docker.com/linux/debian/gpg"
    assert source.key.fingerprint == "9DC858229FC7DD38854AE2D88D81803C0EBFCD88"
    install = next(a for a in plan.actions if isinstance(a, actions.InstallPackages))
    assert "docker-ce=5:29.2.1-1~debian.13~trixie" in install.packages
    assert "docker-ce-cli=5:29.2.1-1~debian.13~trixie" in install.packages
    groups = file_of(plan, "/etc/cloud/cloud.cfg.d/99-snapbuild-default-user.cfg")
    assert "docker" in groups and "netdev" not in groups and "plugdev" in groups
    assert plan.image.name == "Debian 13 - Docker CE"


def test_k8s_repository_is_the_same_flat_repository_on_every_distro() -> None:
    sources = {}
    for distro in ("ubuntu-24.04", "debian-12", "debian-13"):
        plan = make("k8s", distro, "airgap-example")
        source = next(a for a in plan.actions if isinstance(a, actions.AptSource) and a.name == "kubernetes")
        sources[distro] = source.deb822
        install = next(a for a in plan.actions if isinstance(a, actions.InstallPackages))
        assert "containerd" in install.packages     # trixie's is 1.7: config version 2 (the default) fits
    assert len(set(sources.values())) == 1
    fields = deb822(sources["debian-13"])[0]
    assert fields["URIs"] == "https://mirror.example.internal/pkgs.k8s.io/core:/stable:/v1.32/deb/"
    assert fields["Suites"] == "/"


@pytest.mark.parametrize(("distro", "codename", "keyring", "version"), [
    ("ubuntu-24.04", "noble", "/usr/share/keyrings/ubuntu-archive-keyring.gpg", "5:29.2.1-1~ubuntu.24.04~noble"),
    ("debian-12", "bookworm", "/usr/share/keyrings/debian-archive-keyring.gpg", "5:29.2.1-1~debian.12~bookworm"),
])
def test_existing_distros_plan_as_before(distro: str, codename: str, keyring: str, version: str) -> None:
    plan = make("docker-ce", distro)
    text = file_of(plan, get_distro(distro).sources_file)
    assert f"Suites: {codename} " in text and f"Signed-By: {keyring}" in text and "trixie" not in text
    install = next(a for a in plan.actions if isinstance(a, actions.InstallPackages))
    assert f"docker-ce={version}" in install.packages
    source = next(a for a in plan.actions if isinstance(a, actions.AptSource))
    assert deb822(source.deb822)[0]["Suites"] == codename


def test_render_and_plan_on_debian_13_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("render", "plan"):
        for recipe in ("docker-ce", "k8s"):
            with pytest.raises(SystemExit) as done:
                main([command, recipe, "--distro", "debian-13", "--mirrors", "airgap-example"])
                raise SystemExit(0)
            out = capsys.readouterr().out
            assert done.value.code in (0, None), out
            assert "Debian 13" in out
            if command == "render":   # the files themselves
                assert "Suites: trixie trixie-updates" in out


def _choices(command: str, param: str) -> list[str]:
    cmd = cli.commands[command]
    (found,) = [p for p in cmd.params if p.name == param]
    assert isinstance(found.type, click.Choice)
    return list(found.type.choices)


def test_cli_choices_follow_the_tables() -> None:
    assert _choices("base", "distro") == list(baseimage.DISTROS) == ["debian-12", "debian-13"]
    assert _choices("fetch-base", "image") == list(BASE_IMAGES)
    assert set(BASE_IMAGES) == set(DISTROS)
    trixie = BASE_IMAGES["debian-13"]
    assert trixie.path == "trixie/latest/debian-13-genericcloud-amd64.qcow2" and trixie.sums == "SHA512SUMS"


TRIXIE_OS_RELEASE = ('PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nNAME="Debian GNU/Linux"\nVERSION_ID="13"\n'
                     'VERSION_CODENAME=trixie\nID=debian\n')


def test_a_trixie_base_is_recognised_as_debian_13_and_named_in_the_fix() -> None:
    from snapbuild.host.baseprobe import distro_mismatch, distro_of, parse_os_release

    os_release = parse_os_release(TRIXIE_OS_RELEASE)
    found = distro_of(os_release)
    assert found is not None and found.name == "debian-13"
    assert distro_mismatch(os_release, get_distro("debian-13"), recipe="k8s",
                           supported=("ubuntu-24.04", "debian-12", "debian-13"), image="t.qcow2") is None
    error = distro_mismatch(os_release, get_distro("debian-12"), recipe="k8s",
                            supported=("ubuntu-24.04", "debian-12", "debian-13"), image="t.qcow2")
    assert error is not None and error.hint is not None and "--distro debian-13" in error.hint

"""The openstack CLI's authentication options reach the connection through openstacksdk's own argparse registration
(`connection_config`), on top of clouds.yaml and the OS_* variables; an unknown one is a usage error naming it and
the close ones. The only Keystone here is requests-mock's at 127.0.0.1."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
import requests_mock
from keystoneauth1 import fixture

from snapbuild import cli
from snapbuild.errors import UserError
from snapbuild.openstack.cloud import Cloud, connection_config

KEYSTONE = "http://127.0.0.1:5000/v3"
ON_THE_LINE = ("--os-auth-url", KEYSTONE, "--os-username", "alice", "--os-password=s3cret", "--os-project-name",
               "demo", "--os-user-domain-name", "Default", "--os-project-domain-name", "Default")


@pytest.fixture(autouse=True)
def _no_host_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """openstacksdk reads only the test's clouds.yaml (empty until a test writes it), no OS_* of the host's."""
    for name in [n for n in os.environ if n.startswith("OS_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr("openstack.config.loader.CONFIG_FILES", [str(tmp_path / "clouds.yaml")])
    monkeypatch.setattr("openstack.config.loader.SECURE_FILES", [str(tmp_path / "secure.yaml")])
    monkeypatch.setattr("openstack.config.loader.VENDOR_FILES", [])
    return tmp_path / "clouds.yaml"


def clouds_yaml(path: Path, text: str) -> None:
    path.write_text(textwrap.dedent(text))


def test_the_options_alone_describe_the_cloud() -> None:
    region = connection_config(None, None, (*ON_THE_LINE, "--os-interface", "internal", "--insecure"))
    assert region.config["auth"] == {"auth_url": KEYSTONE, "username": "alice", "password": "s3cret",
                                     "project_name": "demo", "user_domain_name": "Default",
                                     "project_domain_name": "Default"}
    assert region.config["interface"] == "internal"
    assert region.get_session().verify is False          # --insecure


def test_os_cacert_and_region_reach_the_session(_no_host_config: Path) -> None:
    ca = _no_host_config.parent / "ca.pem"
    ca.write_text("not read until a request is made\n")
    region = connection_config(None, "north", (*ON_THE_LINE, "--os-cacert", str(ca)))
    assert region.get_session().verify == str(ca) and region.region_name == "north"


def test_options_win_over_clouds_yaml_and_the_rest_of_the_cloud_stays(_no_host_config: Path) -> None:
    clouds_yaml(_no_host_config, f"""\
        clouds:
          site:
            auth: {{auth_url: "{KEYSTONE}", username: site-user, password: from-file, project_name: p}}
            interface: public
    """)
    region = connection_config("site", None, ("--os-username", "bob", "--os-interface", "admin"))
    assert region.name == "site"
    assert (region.config["auth"]["username"], region.config["auth"]["password"]) == ("bob", "from-file")
    assert region.config["interface"] == "admin"


def test_os_variables_do_not_mix_into_a_named_cloud(_no_host_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # keystoneauth's argparse defaults come from OS_*: they are dropped, so a clouds.yaml cloud stays what it says.
    clouds_yaml(_no_host_config, f"""\
        clouds:
          site:
            auth: {{auth_url: "{KEYSTONE}", username: u, password: from-file, project_name: p}}
    """)
    monkeypatch.setenv("OS_PASSWORD", "from-env")
    monkeypatch.setenv("OS_USERNAME", "env-user")
    region = connection_config("site", None, ("--os-project-name", "other"))
    assert (region.config["auth"]["username"], region.config["auth"]["password"]) == ("u", "from-file")
    assert region.config["auth"]["project_name"] == "other"


def test_os_variables_alone_still_work(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"OS_AUTH_URL": KEYSTONE, "OS_USERNAME": "env-user", "OS_PASSWORD": "pw",
                        "OS_PROJECT_NAME": "demo", "OS_REGION_NAME": "east"}.items():
        monkeypatch.setenv(name, value)
    region = connection_config(None, None, ())
    assert region.name == "envvars" and region.config["auth"]["username"] == "env-user"
    region = connection_config(None, None, ("--os-username", "line-user"))
    assert region.config["auth"]["username"] == "line-user" and region.config["auth"]["password"] == "pw"


def test_the_clouds_auth_type_decides_which_options_exist(_no_host_config: Path) -> None:
    clouds_yaml(_no_host_config, f"""\
        clouds:
          appcred:
            auth_type: v3applicationcredential
            auth: {{auth_url: "{KEYSTONE}", application_credential_id: id-1}}
    """)
    region = connection_config("appcred", None, ("--os-application-credential-secret", "sec"))
    assert region.config["auth"] == {"auth_url": KEYSTONE, "application_credential_id": "id-1",
                                     "application_credential_secret": "sec"}
    region = connection_config("appcred", None, ("--os-application_credential_secret", "spelled-as-registered"))
    assert region.config["auth"]["application_credential_secret"] == "spelled-as-registered"
    with pytest.raises(UserError, match="unknown option --os-password"):
        connection_config("appcred", None, ("--os-password", "pw"))
    region = connection_config(None, None, ("--os-auth-type", "v3applicationcredential", "--os-auth-url", KEYSTONE,
                                            "--os-application-credential-id", "i", "--os-application-credential-secret",
                                            "s"))
    assert region.config["auth_type"] == "v3applicationcredential"
    assert region.config["auth"] == {"auth_url": KEYSTONE, "application_credential_id": "i",
                                     "application_credential_secret": "s"}


def test_without_its_auth_type_the_plugins_options_are_unknown() -> None:
    with pytest.raises(UserError, match="unknown option --os-application-credential-secret"):
        connection_config(None, None, (*ON_THE_LINE, "--os-application-credential-secret", "sec"))


def test_an_unknown_option_is_named_with_the_close_ones() -> None:
    with pytest.raises(UserError) as caught:
        connection_config(None, None, ("--os-auth-ulr", KEYSTONE, "--os-username", "alice"))
    assert caught.value.message == "unknown option --os-auth-ulr"
    assert caught.value.hint is not None and "--os-auth-url" in caught.value.hint
    assert caught.value.exit_code == 2


def test_an_unknown_auth_type_is_a_usage_error() -> None:
    with pytest.raises(UserError, match="--os-auth-type: An invalid auth-type was specified: nope"):
        connection_config(None, None, ("--os-auth-type", "nope"))


def test_the_cli_refuses_an_unknown_option_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["cleanup", "--dry-run", "--os-auth-ulr", KEYSTONE])
    err = capsys.readouterr().err
    assert done.value.code == 2
    assert "unknown option --os-auth-ulr" in err and "did you mean --os-auth-url" in err


def keystone(m: requests_mock.Mocker) -> None:
    """Keystone v3 at 127.0.0.1: version discovery and a password token, shaped as the API reference says."""
    discovery = fixture.V3Discovery(KEYSTONE)
    m.get(KEYSTONE, json={"version": discovery})
    m.get(KEYSTONE.rsplit("/", 1)[0], json={"versions": {"values": [discovery]}})
    token = fixture.V3Token(user_name="alice", project_name="demo", project_domain_name="Default",
                            user_domain_name="Default")
    token.add_service("image").add_standard_endpoints(public="http://127.0.0.1:9292", region="RegionOne")
    m.post(f"{KEYSTONE}/auth/tokens", json=token, headers={"X-Subject-Token": "tok-1"}, status_code=201)


def test_the_connection_authenticates_with_the_options_typed() -> None:
    with requests_mock.Mocker() as m:
        keystone(m)
        cloud = Cloud.connect(None, None, auth_args=(*ON_THE_LINE, "--insecure"))
        tokens = [r for r in m.request_history if r.method == "POST"]
        assert len(tokens) == 1
        identity = json.loads(tokens[0].text)["auth"]["identity"]
        assert identity["methods"] == ["password"]
        assert identity["password"]["user"] == {"name": "alice", "password": "s3cret", "domain": {"name": "Default"}}
        assert json.loads(tokens[0].text)["auth"]["scope"]["project"] == {"name": "demo",
                                                                          "domain": {"name": "Default"}}
        assert all(r.verify is False for r in m.request_history)     # --insecure reached every request
        assert cloud.auth_url_option
        cloud.close()


def test_a_missing_password_names_the_option() -> None:
    with requests_mock.Mocker() as m:
        keystone(m)
        with pytest.raises(UserError, match="password is a required attribute"):
            Cloud.connect(None, None, auth_args=("--os-auth-url", KEYSTONE, "--os-username", "alice"))

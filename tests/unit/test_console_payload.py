"""The console builder's user-data: runner and plan in one schema-valid cloud-config, only standard-library code
shipped, Nova's 64 KiB checked before anything exists, and no credentials in it."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import io
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import yaml

from snapbuild import actions
from snapbuild.console import payload, plandata
from snapbuild.errors import UserError
from snapbuild.paths import data_dir
from snapbuild.plan import Plan, plan_from_names
from snapbuild.recipes import Library
from snapbuild.userdata import NOVA_USER_DATA_LIMIT

LIBRARY = Library([data_dir("recipes")])
NONCE = "abcdef012345"


def make_plan(recipe: str = "k8s", distro: str = "ubuntu-24.04", profile: str = "cloudinative") -> Plan:
    return plan_from_names(library=LIBRARY, recipe_name=recipe, distro_name=distro, profile_name=profile,
                           config_variables={}, set_values={})


def test_the_runner_ships_only_standard_library_code() -> None:
    modules = payload.runner_modules()
    assert {"snapbuild.console.runner", "snapbuild.provision", "snapbuild.guest.local", "snapbuild.sealing.policy",
            "snapbuild.sealing.checker", "snapbuild.console.protocol", "snapbuild.actions"} <= set(modules)
    assert "snapbuild.plan" not in modules and "snapbuild.userdata" not in modules   # jinja2, host side only
    outside = payload.third_party_imports()
    assert set().union(*outside.values()) <= payload.LAZY_THIRD_PARTY, outside


def test_the_runner_zip_is_reproducible_and_holds_compilable_stripped_sources() -> None:
    data = payload.runner_zip()
    assert data == payload.runner_zip()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = set(archive.namelist())
        assert "__main__.py" in names and "snapbuild/console/runner.py" in names
        source = archive.read("snapbuild/provision.py").decode()
    compile(source, "provision.py", "exec")
    assert '"""Apply a Plan' not in source and "def provision_actions" in source


@pytest.mark.parametrize("recipe,distro", [("base", "debian-12"), ("k8s", "ubuntu-24.04"), ("docker-ce", "debian-12")])
def test_user_data_carries_the_runner_and_the_plan_and_fits_nova(recipe: str, distro: str, tmp_path: Path) -> None:
    plan = make_plan(recipe, distro)
    orders = payload.orders_for(plan, build_id="b-9", nonce=NONCE)
    text = payload.render_console_userdata(plan, orders)
    encoded = payload.encode_console_userdata(text, orders)
    assert len(encoded) <= NOVA_USER_DATA_LIMIT
    document = yaml.safe_load(text)
    files = {f["path"]: f for f in document["write_files"]}
    assert set(files) == {payload.RUNNER_PATH, payload.ORDERS_PATH}
    assert all(f["encoding"] == "gz+b64" and f["permissions"] == "0600" for f in files.values())
    runner = gzip.decompress(base64.b64decode(files[payload.RUNNER_PATH]["content"]))
    assert runner == payload.runner_zip()
    back = plandata.load(gzip.decompress(base64.b64decode(files[payload.ORDERS_PATH]["content"])))
    assert back == orders and back.actions == plan.actions and back.payload_paths == payload.PAYLOAD_PATHS
    assert document["users"] == [{"name": "snapbuild", "gecos": "snapbuild builder (no login; removed before capture)",
                                  "shell": "/usr/sbin/nologin", "lock_passwd": True}]
    assert "ssh_authorized_keys" not in text and "sudo" not in text
    assert document["runcmd"][0][:2] == ["systemd-run", "--unit=snapbuild-runner"]
    if shutil.which("cloud-init"):
        (tmp_path / "user-data").write_text(text)
        done = subprocess.run(["cloud-init", "schema", "-c", str(tmp_path / "user-data")], capture_output=True,
                              text=True, check=False)
        assert done.returncode == 0, done.stdout + done.stderr


def test_user_data_over_novas_limit_fails_in_preflight_with_the_size_and_what_to_shrink() -> None:
    plan = make_plan("base", "debian-12")
    blob = actions.WriteFile(path="/opt/blob.bin", content=os.urandom(60_000))
    plan = dataclasses.replace(plan, actions=(*plan.actions, blob))
    orders = payload.orders_for(plan, build_id="b", nonce=NONCE)
    with pytest.raises(UserError) as caught:
        payload.encode_console_userdata(payload.render_console_userdata(plan, orders), orders)
    message = str(caught.value)
    assert "over Nova's 65535" in message and "write /opt/blob.bin" in message and "--transport ssh" in message
    assert caught.value.exit_code == 2


@pytest.mark.parametrize("change,where", [
    ({"variables": {"registry_password": "hunter2"}}, "recipe variable 'registry_password'"),
    ({"variables": {"mirror": {"api_token": "abc"}}}, "recipe variable 'mirror.api_token'"),
    ({"extra": actions.WriteFile(path="/root/.ssh/id_ed25519",
                                 content=b"-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n")}, "a private key"),
    ({"extra": actions.RunCommand(argv=("curl", "https://bob:s3cret@mirror.example/x"))}, "a user and password"),
    ({"extra": actions.WriteFile(path="/etc/apt/auth.conf.d/mirror.conf", content=b"machine m login a")},
     "a credentials file"),
    ({"extra": actions.RunScript(name="s", content=b'echo \'{"auths":{"r":{"auth":"Ym9iOnNlY3JldA=="}}}\'')},
     "registry credentials"),
    ({"extra": actions.WriteFile(path="/etc/app.conf", content=b"[db]\nDB_PASSWORD = hunter2\n")},
     "a password, secret, token or API key assigned a value"),
])
def test_credentials_in_the_plan_are_refused_without_being_shown(change: dict[str, object], where: str) -> None:
    plan = make_plan("base", "debian-12")
    if "variables" in change:
        plan = dataclasses.replace(plan, variables={**plan.variables, **change["variables"]})   # type: ignore[dict-item]
    else:
        plan = dataclasses.replace(plan, actions=(*plan.actions, change["extra"]))    # type: ignore[arg-type]
    with pytest.raises(UserError, match="credentials") as caught:
        payload.orders_for(plan, build_id="b", nonce=NONCE)
    text = str(caught.value)
    assert where in text and "--transport ssh" in text
    assert not any(secret in text for secret in ("hunter2", "s3cret", "Ym9iOnNlY3JldA", "AAAA"))


@pytest.mark.parametrize("text", [b"lock_passwd: true\n", b"PasswordAuthentication no\n", b"password: ''\n",
                                  b"token_file: /run/secrets/token\n", b"  secret: ~\n"])
def test_settings_that_only_name_a_secret_are_not_refused(text: bytes) -> None:
    plan = make_plan("base", "debian-12")
    plan = dataclasses.replace(plan, actions=(*plan.actions, actions.WriteFile(path="/etc/x.conf", content=text)))
    payload.orders_for(plan, build_id="b", nonce=NONCE)


@pytest.mark.parametrize("recipe", ["base", "docker-ce", "k8s"])
def test_the_shipped_recipes_carry_no_credentials(recipe: str) -> None:
    for distro in ("ubuntu-24.04", "debian-12"):
        for profile in ("cloudinative", "upstream"):
            payload.orders_for(make_plan(recipe, distro, profile), build_id="b", nonce=NONCE)

"""Every rendered cloud-config passes real cloud-init's schema validator and fits Nova's limit."""

from __future__ import annotations

import base64
import gzip
import shutil
import subprocess
from pathlib import Path

import pytest

from snapbuild.paths import data_dir
from snapbuild.plan import plan_from_names
from snapbuild.recipes import Library
from snapbuild.render import builder_userdata
from snapbuild.sshkeys import KeyPair
from snapbuild.userdata import NOVA_USER_DATA_LIMIT, encode_for_nova, render_builder_userdata

LIBRARY = Library([data_dir("recipes")])
CASES = [(r, d, p) for r in ("base", "docker-ce", "k8s") for d in ("ubuntu-24.04", "debian-12", "debian-13")
         for p in ("cloudinative", "upstream")]

needs_cloud_init = pytest.mark.skipif(shutil.which("cloud-init") is None,
                                      reason="cloud-init not installed (apt-get install cloud-init; .ci/run does)")


def validate(path: Path) -> None:
    done = subprocess.run(["cloud-init", "schema", "-c", str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{path.name}: {done.stdout}{done.stderr}"
    assert "Valid" in done.stdout + done.stderr


@needs_cloud_init
@pytest.mark.parametrize("recipe,distro,profile", CASES)
def test_builder_userdata_and_dropins_are_schema_valid(recipe: str, distro: str, profile: str,
                                                       tmp_path: Path) -> None:
    plan = plan_from_names(library=LIBRARY, recipe_name=recipe, distro_name=distro, profile_name=profile,
                           config_variables={}, set_values={})
    keys = KeyPair.generate()
    host = KeyPair.generate()
    text = render_builder_userdata(plan, builder_public_key=keys.public_openssh, host_key=host)
    (tmp_path / "user-data").write_text(text)
    validate(tmp_path / "user-data")
    (tmp_path / "render-user-data").write_text(builder_userdata(plan))
    validate(tmp_path / "render-user-data")
    for index, dropin in enumerate(plan.dropins):
        target = tmp_path / f"dropin-{index}.cfg"
        target.write_bytes(dropin.content)
        validate(target)


@needs_cloud_init
def test_schema_validator_catches_a_broken_cloud_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_text("#cloud-config\nssh_pwauth: [not, a, bool]\nusers: 7\n")
    done = subprocess.run(["cloud-init", "schema", "-c", str(bad)], capture_output=True, text=True, check=False)
    assert done.returncode != 0


def test_user_data_has_keys_and_stays_far_below_nova_limit() -> None:
    plan = plan_from_names(library=LIBRARY, recipe_name="k8s", distro_name=None, profile_name="cloudinative",
                           config_variables={}, set_values={})
    keys, host = KeyPair.generate(), KeyPair.generate()
    text = render_builder_userdata(plan, builder_public_key=keys.public_openssh, host_key=host, build_id="b1")
    assert keys.public_openssh.strip() in text
    assert host.public_openssh.split()[1] in text and "locale: C.UTF-8" in text
    encoded = encode_for_nova(text)
    assert base64.b64decode(encoded).decode() == text
    assert len(encoded) < NOVA_USER_DATA_LIMIT // 10


def test_large_user_data_is_gzipped_and_too_large_is_refused() -> None:
    big = "#cloud-config\n" + "# padding\n" * 6000   # ~60 KB: over the limit once base64-encoded
    encoded = encode_for_nova(big)
    assert gzip.decompress(base64.b64decode(encoded)).decode() == big
    import os

    from snapbuild.errors import UserError

    with pytest.raises(UserError, match="even gzipped"):
        encode_for_nova("#cloud-config\n# " + base64.b64encode(os.urandom(80000)).decode())


@needs_cloud_init
def test_the_verify_guests_user_data_is_schema_valid_and_names_the_guest_in_etc_hosts(tmp_path: Path) -> None:
    import yaml

    from snapbuild.local.verify import verify_userdata

    key = KeyPair.generate()
    text = verify_userdata(key.public_openssh)
    (tmp_path / "user-data").write_text(text)
    validate(tmp_path / "user-data")
    config = yaml.safe_load(text)
    assert config == {"manage_etc_hosts": "localhost", "ssh_authorized_keys": [key.public_openssh.strip()]}

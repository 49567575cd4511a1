"""A mirror profile names the key its re-signing mirror signs a third-party repository with (aptly, Pulp,
Artifactory): `apt_repositories: {UPSTREAM: {url, key_url + key_fingerprint | key_file}}`. Repositories mapped through
such an entry trust that key instead of the recipe's; the string form keeps meaning what it meant."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

import snapbuild
from snapbuild import actions, yamlfile
from snapbuild.digest import ContentInputs, content_digest, profile_content
from snapbuild.errors import BuildError, RecipeError
from snapbuild.guest.base import Completed, OutputCallback
from snapbuild.paths import data_dir
from snapbuild.plan import Plan, plan_from_names
from snapbuild.profiles import MirrorKey, Profile, load_profile
from snapbuild.provision import provision_actions
from snapbuild.recipes import Library
from snapbuild.render import steps_text
from tests.aptrepo import SigningKey
from tests.standins import StandIns

LIBRARY = Library([data_dir("recipes")])
FPR = "0123456789ABCDEF0123456789ABCDEF01234567"
DOCKER_FPR = "9DC858229FC7DD38854AE2D88D81803C0EBFCD88"
K8S_FPR = "DE15B14486CD377B9E876E1A234654DA9A296436"
ARMORED = b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEZ...\n-----END PGP PUBLIC KEY BLOCK-----\n"


def profile_file(folder: Path, text: str, name: str = "mirrors") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def make(recipe: str, profile: Path, distro: str = "debian-13") -> Plan:
    return plan_from_names(library=LIBRARY, recipe_name=recipe, distro_name=distro, profile_name=str(profile),
                           config_variables={}, set_values={})


def source(plan: Plan, name: str) -> actions.AptSource:
    (found,) = [a for a in plan.actions if isinstance(a, actions.AptSource) and a.name == name]
    return found


KEYED = f"""\
description: a mirror that re-signs
apt_repositories:
  https://download.docker.com:
    url: http://mirror.example.invalid/docker
    key_url: http://mirror.example.invalid/keys/mirror.asc
    key_fingerprint: "{' '.join(FPR[i:i + 4] for i in range(0, 40, 4))}"
  https://pkgs.k8s.io:
    url: http://mirror.example.invalid/k8s
    key_file: keys/mirror.asc
blocked: [download.docker.com, pkgs.k8s.io]
"""


@pytest.fixture
def keyed(tmp_path: Path) -> Path:
    (tmp_path / "p" / "keys").mkdir(parents=True)
    (tmp_path / "p" / "keys" / "mirror.asc").write_bytes(ARMORED)
    return profile_file(tmp_path / "p", KEYED)


# -- the profile ----------------------------------------------------------------------------------------------

def test_an_entry_may_name_the_mirror_s_key_by_url_or_file(keyed: Path) -> None:
    profile = load_profile(keyed)
    assert profile.apt_repositories == {"https://download.docker.com": "http://mirror.example.invalid/docker",
                                        "https://pkgs.k8s.io": "http://mirror.example.invalid/k8s"}
    by_url, by_file = (profile.apt_repository_keys[p] for p in ("https://download.docker.com", "https://pkgs.k8s.io"))
    assert by_url.origin == "key_url"
    assert (by_url.url, by_url.content, by_url.fingerprint) == ("http://mirror.example.invalid/keys/mirror.asc",
                                                                None, FPR)       # spaces gone
    # key_file: relative to the profile's folder, its bytes read when the profile is.
    assert (by_file.url, by_file.content, by_file.fingerprint) == (None, ARMORED, None)
    assert by_file.origin == f"key_file {keyed.parent / 'keys' / 'mirror.asc'}"


def test_the_string_form_and_a_mapping_without_a_key_trust_the_recipe_s_key(tmp_path: Path) -> None:
    profile = load_profile(profile_file(tmp_path, """\
        apt_repositories:
          https://download.docker.com: http://m.example.invalid/docker
          https://pkgs.k8s.io: {url: http://m.example.invalid/k8s}
        """))
    assert profile.apt_repositories == {"https://download.docker.com": "http://m.example.invalid/docker",
                                        "https://pkgs.k8s.io": "http://m.example.invalid/k8s"}
    assert profile.apt_repository_keys == {}
    assert profile.mirror_key("https://pkgs.k8s.io/core:/stable:/v1.32/deb/") is None


def test_the_key_follows_the_longest_prefix_like_the_url(tmp_path: Path) -> None:
    profile = Profile(name="p", path="p.yaml",
                      apt_repositories={"https://download.docker.com": "http://m/all",
                                        "https://download.docker.com/linux/debian": "http://m/debian"},
                      apt_repository_keys={"https://download.docker.com": MirrorKey(url="http://m/k", fingerprint=FPR,
                                                                                    origin="key_url http://m/k")})
    assert profile.rewrite_url("https://download.docker.com/linux/debian") == "http://m/debian"
    assert profile.mirror_key("https://download.docker.com/linux/debian") is None    # the longer entry has none
    assert profile.rewrite_url("https://download.docker.com/linux/ubuntu") == "http://m/all/linux/ubuntu"
    assert profile.mirror_key("https://download.docker.com/linux/ubuntu") is not None
    assert profile.mirror_key("https://example.invalid/x") is None


BAD_ENTRIES = [
    ("key_url without key_fingerprint", "{url: http://m/d, key_url: http://m/k}", "needs key_fingerprint"),
    ("key_url and key_file", f"{{url: http://m/d, key_url: http://m/k, key_fingerprint: {FPR}, key_file: k.asc}}",
     "both key_url and key_file"),
    ("a fingerprint without a key", f"{{url: http://m/d, key_fingerprint: {FPR}}}", "needs key_url or key_file"),
    ("a short fingerprint", "{url: http://m/d, key_url: http://m/k, key_fingerprint: ABCD}", "40 hex digits"),
    ("a file:// key_url", f"{{url: http://m/d, key_url: 'file:///etc/k.asc', key_fingerprint: {FPR}}}",
     "key_url must be an http(s) URL"),
    ("no url", f"{{key_url: http://m/k, key_fingerprint: {FPR}}}", "missing required key 'url'"),
    ("url not http", "{url: m/d}", "is not an http(s) URL"),
    ("an unknown key", "{url: http://m/d, signed_by: k.asc}", "unknown key 'signed_by'"),
    ("a missing key_file", "{url: http://m/d, key_file: nowhere.asc}", "cannot read"),
    ("a binary key_file", "{url: http://m/d, key_file: binary.gpg}", "not an ASCII-armored OpenPGP public key"),
    ("a list", "[http://m/d]", "must be a mirror URL prefix or a mapping"),
]


@pytest.mark.parametrize(("value", "needle"), [(v, n) for _, v, n in BAD_ENTRIES], ids=[c[0] for c in BAD_ENTRIES])
def test_a_bad_entry_is_refused_with_file_and_line(value: str, needle: str, tmp_path: Path) -> None:
    (tmp_path / "binary.gpg").write_bytes(b"\x99\x01\x0d\x04")
    path = profile_file(tmp_path, f"description: x\napt_repositories:\n  https://download.docker.com: {value}\n")
    with pytest.raises(RecipeError) as exc:
        load_profile(path)
    assert needle in str(exc.value)
    assert exc.value.path == str(path) and exc.value.line == 3
    if "file://" in value:
        assert "key_file" in (exc.value.hint or "")


# -- the plan -------------------------------------------------------------------------------------------------

def test_a_repository_through_a_keyed_entry_trusts_the_mirror_s_key(keyed: Path) -> None:
    plan = make("docker-ce", keyed)
    docker = source(plan, "docker")
    assert "URIs: http://mirror.example.invalid/docker/linux/debian\n" in docker.deb822
    assert "Suites: trixie\n" in docker.deb822 and "Signed-By: /etc/apt/keyrings/docker.asc" in docker.deb822
    assert docker.key == actions.AptKey(path="/etc/apt/keyrings/docker.asc", url="http://mirror.example.invalid/keys/"
                                        "mirror.asc", fingerprint=FPR,        # not Docker's key, nor its URL
                                        origin="mirror profile mirrors's key (key_url)")
    assert plan.blocked_without_mirror == ()
    k8s = source(make("k8s", keyed), "kubernetes")
    assert "URIs: http://mirror.example.invalid/k8s/core:/stable:/v1.32/deb/\n" in k8s.deb822
    assert k8s.key == actions.AptKey(path="/etc/apt/keyrings/kubernetes.asc", content=ARMORED,
                                     origin=f"mirror profile mirrors's key (key_file {keyed.parent}/keys/mirror.asc)")


def test_plan_shows_whose_key_each_repository_trusts(keyed: Path, tmp_path: Path) -> None:
    shown = steps_text(make("docker-ce", keyed))
    assert ("        key: fetch signing key http://mirror.example.invalid/keys/mirror.asc -> /etc/apt/keyrings/docker.asc, "
            f"require fingerprint {FPR} — mirror profile mirrors's key (key_url)") in shown
    upstream = steps_text(make("docker-ce", data_dir("recipes") / "profiles" / "upstream.yaml"))
    assert f"require fingerprint {DOCKER_FPR} — the recipe's key" in upstream


def test_without_a_key_in_the_profile_the_recipe_s_key_comes_through_the_mirror(tmp_path: Path) -> None:
    path = profile_file(tmp_path, """\
        apt_repositories:
          https://download.docker.com: http://m.example.invalid/docker
          https://pkgs.k8s.io: {url: http://m.example.invalid/k8s}
        """)
    assert source(make("docker-ce", path), "docker").key == actions.AptKey(
        path="/etc/apt/keyrings/docker.asc", url="http://m.example.invalid/docker/linux/debian/gpg",
        fingerprint=DOCKER_FPR)
    assert source(make("k8s", path), "kubernetes").key == actions.AptKey(
        path="/etc/apt/keyrings/kubernetes.asc", url="http://m.example.invalid/k8s/core:/stable:/v1.32/deb/Release.key",
        fingerprint=K8S_FPR)


def test_a_blocked_mirror_key_url_is_reported(tmp_path: Path) -> None:
    path = profile_file(tmp_path, f"""\
        apt_repositories:
          https://download.docker.com:
            url: http://m.example.invalid/docker
            key_url: https://keys.example.invalid/mirror.asc
            key_fingerprint: {FPR}
        blocked: [keys.example.invalid, download.docker.com]
        """)
    blocked = make("docker-ce", path).blocked_without_mirror
    assert len(blocked) == 1 and "https://keys.example.invalid/mirror.asc" in blocked[0]


# -- the content digest -----------------------------------------------------------------------------------------

def _digest(profile: Profile) -> str:
    return content_digest(ContentInputs(recipe_files="r", variables={}, distro={},
                                        profile=profile_content(profile))).value


def test_the_digest_moves_with_the_mirror_s_key(keyed: Path, tmp_path: Path) -> None:
    before = _digest(load_profile(keyed))
    # Another key behind the same key_file path: the bytes count, not only the path.
    (keyed.parent / "keys" / "mirror.asc").write_bytes(ARMORED.replace(b"mDMEZ", b"mDMEY"))
    replaced = _digest(load_profile(keyed))
    assert replaced != before
    # Another key_url key: its fingerprint is in the profile.
    keyed.write_text(KEYED.replace(FPR[:4], "FFFF"))
    assert _digest(load_profile(keyed)) not in (before, replaced)


def test_a_profile_without_key_files_keeps_its_digest(tmp_path: Path) -> None:
    path = profile_file(tmp_path, "apt_repositories: {https://download.docker.com: http://m.example.invalid/d}\n")
    assert set(profile_content(load_profile(path))) == {"name", "settings"}    # as before key files existed


def test_the_plan_s_content_digest_follows_a_replaced_key_file(keyed: Path) -> None:
    before = make("k8s", keyed).content_digest().value
    (keyed.parent / "keys" / "mirror.asc").write_bytes(ARMORED.replace(b"mDMEZ", b"mDMEX"))
    assert make("k8s", keyed).content_digest().value != before


# -- provisioning ---------------------------------------------------------------------------------------------

class KeyGuest:
    """Just enough of a guest for install_key: files in a dict, gpg answering with a fixed fingerprint."""

    kind = "vm"
    name = "fake"
    host_root = None

    def __init__(self, fingerprint: str) -> None:
        self.fingerprint = fingerprint
        self.files: dict[str, bytes] = {}
        self.ran: list[list[str]] = []

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float | None = None,
            env: Mapping[str, str] | None = None, stdin: bytes | None = None,
            on_output: OutputCallback | None = None) -> Completed:
        self.ran.append(list(argv))
        out = ""
        if argv[0] == "gpg":
            out = f"pub:-:255:22:ABCDEF:1:::::::scESC:\nfpr:::::::::{self.fingerprint}:\n"
        elif argv[:2] == ["rm", "-f"]:
            for path in argv[2:]:
                self.files.pop(path, None)
        return Completed(argv=tuple(argv), returncode=0, stdout=out, stderr="")

    def write_file(self, path: str, data: bytes, *, mode: int = 0o644, owner: str = "root:root") -> None:
        self.files[path] = data

    def read_file(self, path: str) -> bytes:
        return self.files[path]

    def exists(self, path: str) -> bool:
        return path in self.files


class Quiet:
    def __getattr__(self, name: str) -> object:
        return lambda *args, **kwargs: None


def _source(key: actions.AptKey) -> actions.AptSource:
    return actions.AptSource(name="docker", path="/etc/apt/sources.list.d/docker.sources", deb822="Types: deb\n",
                             key=key)


def test_a_key_file_with_a_fingerprint_is_checked_in_the_guest() -> None:
    key = actions.AptKey(path="/etc/apt/keyrings/docker.asc", content=ARMORED, fingerprint=FPR)
    assert "require fingerprint " + FPR in key.describe()
    good = KeyGuest(FPR)
    provision_actions([_source(key)], good, Quiet())  # type: ignore[arg-type]
    assert good.files["/etc/apt/keyrings/docker.asc"] == ARMORED and any(a[0] == "gpg" for a in good.ran)
    bad = KeyGuest("F" * 40)
    with pytest.raises(BuildError, match=f"has fingerprint\\(s\\) {'F' * 40}, expected {FPR}"):
        provision_actions([_source(key)], bad, Quiet())  # type: ignore[arg-type]
    assert "/etc/apt/keyrings/docker.asc" not in bad.files          # an untrusted key does not stay behind


def test_a_key_file_without_a_fingerprint_is_written_as_given() -> None:
    guest = KeyGuest("F" * 40)
    provision_actions([_source(actions.AptKey(path="/etc/apt/keyrings/docker.asc", content=ARMORED))], guest,
                      Quiet())  # type: ignore[arg-type]
    assert guest.files["/etc/apt/keyrings/docker.asc"] == ARMORED and not any(a[0] == "gpg" for a in guest.ran)


# -- the stand-ins' profile (tests/standins.py) uses it ---------------------------------------------------------

@pytest.mark.parametrize("mode", ["url", "file"])
def test_the_standins_profile_passes_their_key_through_the_profile(mode: str, tmp_path: Path) -> None:
    from snapbuild.distros import get_distro

    (tmp_path / "key.asc").write_bytes(ARMORED)
    site = StandIns(distro=get_distro("debian-13"), key=SigningKey(tmp_path, FPR), apt_host="127.0.0.1",
                    apt_port=8080, registry_address="127.0.0.1:5000", image_digest="sha256:" + "0" * 64,
                    key_file=tmp_path / "key.asc")
    path = site.profile(tmp_path / "standins.yaml", key=mode)
    schema = json.loads((Path(snapbuild.__file__).parent / "schemas" / "profile.schema.json").read_text())
    assert [e.message for e in Draft202012Validator(schema).iter_errors(yamlfile.load(path))] == []
    plan = make("docker-ce", path)
    key = source(plan, "docker").key
    assert key is not None and key.fingerprint == FPR
    if mode == "url":
        assert key.url == "http://127.0.0.1:8080/docker/mirror-key.asc"
    else:
        assert key.content == ARMORED
    assert "URIs: http://127.0.0.1:8080/docker/linux/debian\n" in source(plan, "docker").deb822
    assert plan.blocked_without_mirror == ()

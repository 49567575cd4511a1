"""The rendered k8s and docker-ce files are right: read them back and check what matters."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from snapbuild import actions
from snapbuild.cli import main
from snapbuild.paths import data_dir
from snapbuild.plan import Plan, plan_from_names
from snapbuild.recipes import Library

LIBRARY = Library([data_dir("recipes")])
REGISTRIES = ("registry.k8s.io", "docker.io", "quay.io", "ghcr.io", "gcr.io")


def make(recipe: str, distro: str = "ubuntu-24.04", profile: str = "cloudinative", **sets: str) -> Plan:
    return plan_from_names(library=LIBRARY, recipe_name=recipe, distro_name=distro, profile_name=profile,
                           config_variables={}, set_values=sets)


def file_of(plan: Plan, path: str) -> str:
    matches = [f for f in plan.files if f.path == path]
    assert matches, f"{path} not written; files: {[f.path for f in plan.files]}"
    return matches[-1].content.decode()


@pytest.mark.parametrize("distro", ["ubuntu-24.04", "debian-12"])
def test_containerd_config_uses_systemd_cgroup_and_certs_d(distro: str) -> None:
    plan = make("k8s", distro)
    config = tomllib.loads(file_of(plan, "/etc/containerd/config.toml"))
    assert config["version"] == 2
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is True
    assert cri["registry"]["config_path"] == "/etc/containerd/certs.d"
    assert cri["sandbox_image"] == "registry.k8s.io/pause:3.10"


def test_containerd_2_config_format_is_version_3() -> None:
    plan = make("k8s", containerd_config_version="3", sandbox_image="registry.k8s.io/pause:3.11")
    config = tomllib.loads(file_of(plan, "/etc/containerd/config.toml"))
    assert config["version"] == 3
    images = config["plugins"]["io.containerd.cri.v1.images"]
    assert images["registry"]["config_path"] == "/etc/containerd/certs.d"
    assert images["pinned_images"]["sandbox"] == "registry.k8s.io/pause:3.11"
    runc = config["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["runc"]
    assert runc["options"]["SystemdCgroup"] is True


@pytest.mark.parametrize("profile", ["cloudinative", "upstream"])
def test_hosts_toml_per_registry_with_profile_mirrors(profile: str) -> None:
    plan = make("k8s", profile=profile)
    for registry in REGISTRIES:
        hosts = tomllib.loads(file_of(plan, f"/etc/containerd/certs.d/{registry}/hosts.toml"))
        expected_server = "https://registry-1.docker.io" if registry == "docker.io" else f"https://{registry}"
        assert hosts["server"] == expected_server
        mirrors = list(hosts.get("host", {}))
        if profile == "cloudinative" and registry == "docker.io":
            assert mirrors == ["https://docker.cloudinative.com"]
            assert hosts["host"]["https://docker.cloudinative.com"]["capabilities"] == ["pull", "resolve"]
        else:
            assert mirrors == []


def test_sysctl_modules_and_swap() -> None:
    plan = make("k8s")
    sysctl = dict(line.split(" = ") for line in file_of(plan, "/etc/sysctl.d/99-snapbuild-k8s.conf").splitlines()
                  if " = " in line)
    assert sysctl == {"net.bridge.bridge-nf-call-iptables": "1", "net.bridge.bridge-nf-call-ip6tables": "1",
                      "net.ipv4.ip_forward": "1"}
    assert file_of(plan, "/etc/modules-load.d/snapbuild-k8s.conf").split() == ["overlay", "br_netfilter"]
    assert any(isinstance(a, actions.SwapOff) for a in plan.actions)
    assert any(isinstance(a, actions.Service) and a.name == "kubelet" and a.enabled for a in plan.actions)


def test_apt_sources_are_deb822_with_signed_by_and_mirrors() -> None:
    plan = make("k8s")
    ubuntu = file_of(plan, "/etc/apt/sources.list.d/ubuntu.sources")
    assert "URIs: https://archive.cloudinative.com/ubuntu" in ubuntu
    assert "URIs: https://security.cloudinative.com/ubuntu" in ubuntu
    assert "Suites: noble noble-updates noble-backports" in ubuntu
    assert ubuntu.count("Signed-By: /usr/share/keyrings/ubuntu-archive-keyring.gpg") == 2
    assert any(isinstance(a, actions.RemoveFiles) and "/etc/apt/sources.list" in a.paths for a in plan.actions)
    source = next(a for a in plan.actions if isinstance(a, actions.AptSource))
    fields = dict(line.split(": ", 1) for line in source.deb822.splitlines())
    assert fields["URIs"] == "https://pkgs.k8s.io/core:/stable:/v1.32/deb/"
    assert fields["Suites"] == "/"
    assert "Components" not in fields  # flat repository
    assert fields["Signed-By"] == "/etc/apt/keyrings/kubernetes.asc"
    assert source.key is not None and source.key.fingerprint == "DE15B14486CD377B9E876E1A234654DA9A296436"


def test_versions_are_pinned_and_held_and_update_comes_first() -> None:
    plan = make("k8s", kubernetes_version="1.31.4")
    install = next(a for a in plan.actions if isinstance(a, actions.InstallPackages))
    assert {"kubeadm=1.31.4-1.1", "kubelet=1.31.4-1.1", "kubectl=1.31.4-1.1"} <= set(install.packages)
    assert install.hold == ("kubeadm", "kubelet", "kubectl")
    index = plan.actions.index(install)
    assert isinstance(plan.actions[index - 1], actions.AptUpdate)
    source = next(a for a in plan.actions if isinstance(a, actions.AptSource))
    assert "v1.31/deb/" in source.deb822
    assert plan.components["kubernetes"] == "1.31.4"


def kubeadm_images(version: str = "1.32.12", coredns: str = "v1.11.3", pause: str = "3.10",
                   etcd: str = "3.5.24-0") -> list[str]:
    """What `kubeadm config images list --kubernetes-version vVERSION` prints, in its order."""
    return [f"registry.k8s.io/{name}" for name in (
        f"kube-apiserver:v{version}", f"kube-controller-manager:v{version}", f"kube-scheduler:v{version}",
        f"kube-proxy:v{version}", f"coredns/coredns:{coredns}", f"pause:{pause}", f"etcd:{etcd}")]


def test_prepull_expects_kubeadm_images_of_the_pinned_version_into_k8s_io() -> None:
    plan = make("k8s", extra_images="nginx:1.27,quay.io/x/y:1")
    (pull,) = plan.prepulls
    assert pull.namespace == "k8s.io"
    assert pull.list_command == ("kubeadm", "config", "images", "list", "--kubernetes-version", "v1.32.12")
    assert [e.ref for e in pull.expect] == kubeadm_images()
    assert pull.images == ("docker.io/library/nginx:1.27", "quay.io/x/y:1")
    assert pull.known_images == (*kubeadm_images(), "docker.io/library/nginx:1.27", "quay.io/x/y:1")
    assert pull.hosts_dir == "/etc/containerd/certs.d"
    made_of = {e.ref: dict(e.variables) for e in pull.expect}
    assert made_of["registry.k8s.io/etcd:3.5.24-0"] == {"etcd_version": "3.5.24-0"}
    assert made_of["registry.k8s.io/pause:3.10"] == {"sandbox_image": "registry.k8s.io/pause:3.10"}
    assert made_of["registry.k8s.io/kube-proxy:v1.32.12"] == {"kubernetes_version": "1.32.12"}


OVERRIDE = {"kubernetes_version": "1.31.4", "etcd_version": "3.5.15-0", "coredns_version": "v1.11.1",
            "sandbox_image": "registry.k8s.io/pause:3.9"}
CASES = [({}, kubeadm_images()), (OVERRIDE, kubeadm_images("1.31.4", "v1.11.1", "3.9", "3.5.15-0"))]


def cli_out(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    main(list(args))
    return capsys.readouterr().out


@pytest.mark.parametrize("sets,images", CASES, ids=["default", "set"])
def test_plan_render_and_json_list_exactly_the_images_with_their_mirror(
        capsys: pytest.CaptureFixture[str], sets: dict[str, str], images: list[str]) -> None:
    args = ["k8s", "--mirrors", "airgap-example", *(f"--set={k}={v}" for k, v in sets.items())]
    mirror = "https://registry-k8s-io.mirror.example.internal"
    text = cli_out(capsys, "plan", *args)
    shown = [line.split()[1:] for line in text.splitlines() if line.startswith("        - ")]
    assert shown == [[ref, "through", mirror] for ref in images]
    rendered = cli_out(capsys, "render", *args)
    section = rendered.split("(fill your mirrors with these first) =====\n", 1)[1].split("\n\n", 1)[0]
    assert section.splitlines() == [f"# {ref}  through {mirror}" for ref in images]
    (pull,) = json.loads(cli_out(capsys, "plan", *args, "--json"))["prepull"]
    assert pull["checked"] is True and pull["namespace"] == "k8s.io"
    assert [i["image"] for i in pull["images"]] == images
    assert all(i["mirrors"] == [mirror] and not i["blocked"] and i["expected"] for i in pull["images"])


def test_each_image_shows_its_own_registry_mirror_or_that_it_is_blocked(capsys: pytest.CaptureFixture[str]) -> None:
    (pull,) = json.loads(cli_out(capsys, "plan", "k8s", "--json", "--set", "extra_images=nginx:1.27,ghcr.io/a/b:2"))[
        "prepull"]
    by_image = {i["image"]: i for i in pull["images"]}
    etcd = by_image["registry.k8s.io/etcd:3.5.24-0"]
    assert etcd["mirrors"] == [] and etcd["blocked"] is True and etcd["upstream"] == "https://registry.k8s.io"
    assert etcd["variables"] == ["etcd_version"]
    nginx = by_image["docker.io/library/nginx:1.27"]
    assert nginx["mirrors"] == ["https://docker.cloudinative.com"] and nginx["extra"] and not nginx["expected"]
    assert by_image["ghcr.io/a/b:2"]["blocked"] is True
    text = cli_out(capsys, "plan", "k8s", "--set", "extra_images=nginx:1.27")
    assert "        - docker.io/library/nginx:1.27 (extra)  through https://docker.cloudinative.com" in text
    assert "        - registry.k8s.io/etcd:3.5.24-0  from https://registry.k8s.io (BLOCKED, no mirror)" in text


def test_a_mirror_without_a_hosts_toml_does_not_count(tmp_path: Path) -> None:
    # ctr pulls through hosts_dir: a profile mirror the recipe wrote no hosts.toml for is never used.
    folder = tmp_path / "pull"
    folder.mkdir()
    (folder / "recipe.yaml").write_text("description: x\ndistros: [debian-12]\nimage: {name: x, category: x}\n"
                                        "steps:\n  - prepull: {images: [registry.k8s.io/x:1]}\n"
                                        "  - containerd_mirrors: {registries: [registry.k8s.io]}\n"
                                        "  - prepull: {images: [registry.k8s.io/y:1]}\n")
    plan = plan_from_names(library=Library([tmp_path, data_dir("recipes")]), recipe_name="pull",
                           distro_name="debian-12", profile_name="airgap-example", config_variables={},
                           set_values={})
    before, after = plan.prepulls
    assert before.routes[0].mirrors == () and before.routes[0].blocked
    assert after.routes[0].mirrors == ("https://registry-k8s-io.mirror.example.internal",)
    assert plan.blocked_without_mirror == ("image pre-pull: registry registry.k8s.io is blocked and profile "
                                           "'airgap-example' has mirrors but the recipe writes no hosts.toml for it "
                                           "under /etc/containerd/certs.d",)


def test_k8s_from_blocked_registry_is_reported_for_default_profile_only() -> None:
    assert any("registry.k8s.io" in line for line in make("k8s").blocked_without_mirror)
    assert make("k8s", profile="upstream").blocked_without_mirror == ()
    assert make("docker-ce").blocked_without_mirror == ()


@pytest.mark.parametrize("distro,version", [("ubuntu-24.04", "5:29.2.1-1~ubuntu.24.04~noble"),
                                            ("debian-12", "5:29.2.1-1~debian.12~bookworm")])
def test_docker_ce_pins_version_mirrors_and_group(distro: str, version: str) -> None:
    plan = make("docker-ce", distro)
    install = next(a for a in plan.actions if isinstance(a, actions.InstallPackages))
    assert f"docker-ce={version}" in install.packages and f"docker-ce-cli={version}" in install.packages
    assert {"containerd.io", "docker-compose-plugin", "docker-buildx-plugin"} <= set(install.packages)
    daemon = json.loads(file_of(plan, "/etc/docker/daemon.json"))
    assert daemon["registry-mirrors"] == ["https://docker.cloudinative.com"]
    groups = file_of(plan, "/etc/cloud/cloud.cfg.d/99-snapbuild-default-user.cfg")
    assert "docker" in groups and "sudo" in groups
    assert plan.image.name == ("Ubuntu 24.04 - Docker CE" if distro == "ubuntu-24.04" else "Debian 12 - Docker CE")
    assert plan.image.category == "docker"


def test_image_properties_for_every_recipe() -> None:
    for recipe, category in (("k8s", "kubernetes"), ("docker-ce", "docker"), ("base", "base")):
        plan = make(recipe)
        props = plan.image.properties
        assert props["hw_disk_bus"] == "virtio" and props["hw_vif_model"] == "virtio"
        assert props["os_type"] == "linux" and props["os_distro"] == "ubuntu" and props["os_version"] == "24.04"
        assert props["marketplace_category"] == category
        assert plan.image.min_disk_gb >= 4 and plan.image.min_ram_mb >= 512
        assert plan.image.disk_size_gb >= plan.image.min_disk_gb
    assert make("k8s").image.name == "Ubuntu 24.04 - Kubernetes"


def test_apt_mirror_dropin_survives_first_boot_and_growpart_is_baked() -> None:
    plan = make("base")
    dropins = {d.path: d.content.decode() for d in plan.dropins}
    assert "uri: https://archive.cloudinative.com/ubuntu" in dropins["/etc/cloud/cloud.cfg.d/99-snapbuild-apt.cfg"]
    assert "mode: auto" in dropins["/etc/cloud/cloud.cfg.d/99-snapbuild-growpart.cfg"]
    # Without a mirror too: first boot must not rewrite the sources the build wrote (tests/unit/test_apt_dropin.py).
    upstream = {d.path: d.content.decode() for d in make("base", profile="upstream").dropins}
    assert "uri: http://archive.ubuntu.com/ubuntu" in upstream["/etc/cloud/cloud.cfg.d/99-snapbuild-apt.cfg"]


def test_user_recipes_win_over_shipped(tmp_path: Path) -> None:
    mine = tmp_path / "base"
    mine.mkdir()
    (mine / "recipe.yaml").write_text("description: my base\ndistros: [debian-12]\n"
                                      "image: {name: mine, category: base}\nsteps: []\n")
    library = Library([tmp_path, data_dir("recipes")])
    assert library.load("base").description == "my base"
    assert "k8s" in library.recipe_names()

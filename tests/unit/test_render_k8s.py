"""The rendered k8s and docker-ce files are right: read them back and check what matters."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from snapbuild import actions
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


def test_prepull_lists_kubeadm_images_into_k8s_io() -> None:
    plan = make("k8s", extra_images="nginx:1.27,quay.io/x/y:1")
    (pull,) = plan.prepulls
    assert pull.namespace == "k8s.io"
    assert pull.list_command == ("kubeadm", "config", "images", "list", "--kubernetes-version", "v1.32.12")
    assert pull.images == ("docker.io/library/nginx:1.27", "quay.io/x/y:1")
    assert pull.hosts_dir == "/etc/containerd/certs.d"


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
    upstream = make("base", profile="upstream")
    assert "/etc/cloud/cloud.cfg.d/99-snapbuild-apt.cfg" not in {d.path for d in upstream.dropins}


def test_user_recipes_win_over_shipped(tmp_path: Path) -> None:
    mine = tmp_path / "base"
    mine.mkdir()
    (mine / "recipe.yaml").write_text("description: my base\ndistros: [debian-12]\n"
                                      "image: {name: mine, category: base}\nsteps: []\n")
    library = Library([tmp_path, data_dir("recipes")])
    assert library.load("base").description == "my base"
    assert "k8s" in library.recipe_names()

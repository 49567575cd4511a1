"""The k8s pre-pull inside a build: kubeadm's list must be exactly the images render/plan showed, or the build
fails naming the images and the variable to --set.

The real provisioner runs against a Guest whose commands really run, on this host, in a temp dir: stand-in
`kubeadm` (prints the list the test gives it) and `ctr` (records pulls, lists them like `ctr images ls`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from snapbuild.errors import BuildError, CommandFailed
from snapbuild.guest.base import Completed, OutputCallback
from snapbuild.paths import data_dir
from snapbuild.plan import Plan, plan_from_names
from snapbuild.provision import provision
from snapbuild.recipes import Library
from snapbuild.run.context import Reporter

KUBEADM = """#!/bin/sh
[ "$*" = "config images list --kubernetes-version v1.32.12" ] || { echo "unexpected: $*" >&2; exit 3; }
cat "$STATE/kubeadm-list"
"""
CTR = """#!/bin/sh
# ctr -n NAMESPACE images pull --hosts-dir DIR REF | ctr -n NAMESPACE images ls
case "$3 $4" in
  "images pull") echo "$2 $6 $7" >> "$STATE/pulls" ;;
  "images ls")
    echo "REF TYPE DIGEST SIZE PLATFORMS LABELS"
    [ -f "$STATE/pulls" ] || exit 0
    while read -r ns dir ref; do
      echo "$ref application/vnd.oci.image.index.v1+json sha256:$(printf %s "$ref" | sha256sum | cut -c1-64) 1 MiB linux/amd64 -"
    done < "$STATE/pulls" ;;
  *) echo "stand-in ctr: $*" >&2; exit 1 ;;
esac
"""


class TempDirGuest:
    """The Guest protocol over a temp dir: commands run for real from its bin/, files live under root/."""

    kind = "chroot"
    name = "tempdir"

    def __init__(self, top: Path) -> None:
        self.bin, self.root, self.state = top / "bin", top / "root", top / "state"
        for folder in (self.bin, self.root, self.state):
            folder.mkdir()
        for name, script in (("kubeadm", KUBEADM), ("ctr", CTR)):
            (self.bin / name).write_text(script)
            (self.bin / name).chmod(0o755)
        self.services: list[str] = []

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float | None = None,
            env: Mapping[str, str] | None = None, stdin: bytes | None = None,
            on_output: OutputCallback | None = None) -> Completed:
        done = subprocess.run([str(self.bin / argv[0]), *argv[1:]], capture_output=True, text=True,
                              timeout=timeout or 60, env={"PATH": "/usr/bin:/bin", "STATE": str(self.state)})
        for line in done.stdout.splitlines():
            if on_output:
                on_output("stdout", line)
        if check and done.returncode != 0:
            raise CommandFailed(list(argv), done.returncode, done.stderr, where=self.name)
        return Completed(argv=tuple(argv), returncode=done.returncode, stdout=done.stdout, stderr=done.stderr)

    def write_file(self, path: str, data: bytes, *, mode: int = 0o644, owner: str = "root:root") -> None:
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    def read_file(self, path: str) -> bytes:
        return (self.root / path.lstrip("/")).read_bytes()

    def exists(self, path: str) -> bool:
        return (self.root / path.lstrip("/")).exists()

    def service(self, name: str) -> contextlib.AbstractContextManager[None]:
        self.services.append(name)      # a chroot's daemon; nothing to start here
        return contextlib.nullcontext()

    def pulls(self) -> list[str]:
        path = self.state / "pulls"
        return path.read_text().splitlines() if path.exists() else []


def kubeadm_images(etcd: str = "3.5.24-0", pause: str = "3.10") -> list[str]:
    return [f"registry.k8s.io/{name}" for name in (
        "kube-apiserver:v1.32.12", "kube-controller-manager:v1.32.12", "kube-scheduler:v1.32.12",
        "kube-proxy:v1.32.12", "coredns/coredns:v1.11.3", f"pause:{pause}", f"etcd:{etcd}")]


def prepull_only(**sets: str) -> Plan:
    plan = plan_from_names(library=Library([data_dir("recipes")]), recipe_name="k8s", distro_name="debian-12",
                           profile_name="airgap-example", config_variables={}, set_values=sets)
    return dataclasses.replace(plan, actions=plan.prepulls)


def run_prepull(tmp_path: Path, listed: list[str], **sets: str) -> tuple[TempDirGuest, dict[str, str]]:
    guest = TempDirGuest(tmp_path)
    (guest.state / "kubeadm-list").write_text("".join(f"{ref}\n" for ref in listed))
    result = provision(prepull_only(**sets), guest, Reporter(io.StringIO()))
    return guest, result.pulled_images


def test_the_expected_list_and_the_extra_images_are_pulled_into_k8s_io(tmp_path: Path) -> None:
    guest, pulled = run_prepull(tmp_path, kubeadm_images(), extra_images="nginx:1.27")
    wanted = [*kubeadm_images(), "docker.io/library/nginx:1.27"]
    assert sorted(guest.pulls()) == sorted(f"k8s.io /etc/containerd/certs.d {ref}" for ref in wanted)
    assert sorted(pulled) == sorted(wanted) and all(d.startswith("sha256:") for d in pulled.values())
    assert guest.services == ["containerd"]


def fails(tmp_path: Path, listed: list[str], **sets: str) -> tuple[BuildError, TempDirGuest]:
    guest = TempDirGuest(tmp_path)
    (guest.state / "kubeadm-list").write_text("".join(f"{ref}\n" for ref in listed))
    with pytest.raises(BuildError) as caught:
        provision(prepull_only(**sets), guest, Reporter(io.StringIO()))
    assert guest.pulls() == [] and guest.services == [], "nothing may be pulled before the list is checked"
    return caught.value, guest


def test_a_missing_image_fails_the_build_naming_it_and_its_variable(tmp_path: Path) -> None:
    error, _ = fails(tmp_path, kubeadm_images()[:-1])
    assert "registry.k8s.io/etcd:3.5.24-0 is expected but not listed" in error.message
    assert "kubeadm config images list --kubernetes-version v1.32.12" in error.message
    assert error.hint is not None and "--set etcd_version=VALUE" in error.hint


def test_an_extra_image_fails_the_build_naming_it(tmp_path: Path) -> None:
    error, _ = fails(tmp_path, [*kubeadm_images(), "registry.k8s.io/kube-newthing:v1.32.12"])
    assert "registry.k8s.io/kube-newthing:v1.32.12 is listed but not expected" in error.message
    assert "is expected but not listed" not in error.message
    assert error.hint is not None and "prepull.expect" in error.hint


@pytest.mark.parametrize("listed,hint", [
    (kubeadm_images(etcd="3.5.16-0"), "--set etcd_version=3.5.16-0"),
    (kubeadm_images(pause="3.9"), "--set sandbox_image=registry.k8s.io/pause:3.9"),
], ids=["etcd", "pause"])
def test_another_tag_of_an_expected_image_names_the_exact_set(tmp_path: Path, listed: list[str], hint: str) -> None:
    error, _ = fails(tmp_path, listed)
    changed = next(ref for ref in listed if ref not in kubeadm_images())
    assert f"{changed} is listed where the recipe expects" in error.message
    assert error.hint == f"pass {hint}"


def test_the_suggested_set_makes_the_build_pass(tmp_path: Path) -> None:
    guest, pulled = run_prepull(tmp_path, kubeadm_images(etcd="3.5.16-0"), etcd_version="3.5.16-0")
    assert "registry.k8s.io/etcd:3.5.16-0" in pulled and len(guest.pulls()) == 7

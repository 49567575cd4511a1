#!/usr/bin/env bash
# Quickstart on a fresh Debian or Ubuntu machine (as root): installs the host packages and snapbuild, builds
# a Debian 12 base image from the Debian archive, builds a first image from it in a throw-away local VM, and
# verifies that image by booting it. No cloud needed. Re-running it reuses what is already there.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=${SNAPBUILD_QUICKSTART_DIR:-/var/lib/snapbuild-quickstart}
venv=${SNAPBUILD_VENV:-/opt/snapbuild}
# The local VMs' network: nat (default: the VM reaches out as a cloud server does) or isolated (restrict=on, for
# a host that must not let a VM send anything out; the `base` recipe downloads nothing either way).
network=${SNAPBUILD_QUICKSTART_NETWORK:-nat}
started=$(date +%s)
phase() { echo "== [$(( $(date +%s) - started )) s] $*"; }

if [ "$(id -u)" != 0 ]; then
    echo "quickstart: run as root (sudo ./quickstart.sh): it installs packages and uses loop devices" >&2
    exit 2
fi
phase "host packages"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2046
apt-get install -y -qq --no-install-recommends $(grep -v '^#' "$here/.ci/host-packages.txt") >/dev/null

phase "snapbuild into $venv"
python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q "$here"
ln -sf "$venv/bin/snapbuild" /usr/local/bin/snapbuild

mkdir -p "$work"
phase "Debian 12 base image (debootstrap; cached for the next run)"
[ -f "$work/debian-12.qcow2" ] || snapbuild base debian-12 -o "$work/debian-12.qcow2"

phase "first image: recipe 'base', built in a local VM (network: $network)"
snapbuild local base --distro debian-12 --mirrors upstream --base "$work/debian-12.qcow2" \
    -o "$work/first-image.qcow2" --force --network "$network"

phase "verify: boot it twice, check cloud-init, machine-id, host keys, users, growth"
snapbuild verify "$work/first-image.qcow2" --recipe base --distro debian-12 --mirrors upstream \
    --network "$network"

phase "done: $work/first-image.qcow2 (see $work/first-image.qcow2.manifest.json)"

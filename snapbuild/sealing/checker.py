"""The sealing checker: lists every violation of the generalisation policy in a root filesystem.

Standard library only, and no snapbuild imports: the same source runs offline against a mounted image
(`snapbuild inspect`) and inside a running guest (`python3 -` over SSH or in a chroot), so there is one
implementation of the policy's checks.
"""

from __future__ import annotations

import glob
import json
import os
import stat
import sys

HOST_KEY_GLOB = "etc/ssh/ssh_host_*key*"
HISTORY_NAMES = (".bash_history", ".python_history", ".lesshst", ".viminfo", ".sh_history", ".zsh_history")
RANDOM_SEEDS = ("var/lib/systemd/random-seed", "var/lib/urandom/random-seed")
RESOLV_SYMLINKS = {"ubuntu": ("../run/systemd/resolve/stub-resolv.conf", "/run/systemd/resolve/stub-resolv.conf")}
# systemd-resolved enabled (its unit is WantedBy=sysinit.target): then it owns /etc/resolv.conf on any distro.
RESOLVED_ENABLED = "etc/systemd/system/sysinit.target.wants/systemd-resolved.service"


def _p(root: str, rel: str) -> str:
    return os.path.join(root, rel)


def _lexists(path: str) -> bool:
    return os.path.lexists(path)


def _os_release_id(root: str) -> str:
    for rel in ("etc/os-release", "usr/lib/os-release"):
        try:
            with open(_p(root, rel)) as handle:
                for line in handle:
                    if line.startswith("ID="):
                        return line.split("=", 1)[1].strip().strip('"')
        except OSError:
            continue
    return ""


def _homes(root: str) -> list[str]:
    homes = [_p(root, "root")]
    homes += sorted(glob.glob(_p(root, "home/*")))
    return homes


def check_root(root: str, *, builder_user: str = "snapbuild", builder_keys: tuple[str, ...] = (),
               live: bool = False, gone: tuple[str, ...] = ()) -> list[dict[str, str]]:
    """Violations as dicts {code, path, detail}. `live`: checked inside the running builder, before the
    final step that removes the builder user and truncates what the running system keeps writing. `gone`: paths
    (absolute in the guest) that must not exist, e.g. the console runner and its plan."""
    found: list[dict[str, str]] = []

    def bad(code: str, path: str, detail: str) -> None:
        found.append({"code": code, "path": "/" + os.path.relpath(path, root).lstrip("./") if path.startswith(root)
                      else path, "detail": detail})

    # machine-id: empty or "uninitialized" gives each clone its own id on first boot.
    mid = _p(root, "etc/machine-id")
    if not _lexists(mid):
        bad("machine-id", mid, "missing (must exist, empty or 'uninitialized')")
    else:
        try:
            content = open(mid).read().strip()
        except OSError as exc:
            content = f"<unreadable: {exc}>"
        if content not in ("", "uninitialized"):
            bad("machine-id", mid, "holds a real id; clones would share it")
    dbus = _p(root, "var/lib/dbus/machine-id")
    if _lexists(dbus) and not os.path.islink(dbus):
        bad("machine-id", dbus, "a file of its own (must be absent or a symlink to /etc/machine-id)")

    for key in sorted(glob.glob(_p(root, HOST_KEY_GLOB))):
        bad("ssh-host-key", key, "SSH host key left in the image")

    for home in _homes(root):
        for name in ("authorized_keys", "authorized_keys2"):
            path = os.path.join(home, ".ssh", name)
            if os.path.isfile(path) and os.path.getsize(path) > 0:
                text = open(path, errors="replace").read()
                if any(k.split()[1] in text for k in builder_keys if len(k.split()) > 1):
                    bad("builder-key", path, "the builder's key is authorized")
                elif not live:
                    bad("authorized-keys", path, "authorized_keys left in the image")
        for name in HISTORY_NAMES:
            path = os.path.join(home, name)
            if os.path.isfile(path) and os.path.getsize(path) > 0:
                bad("history", path, "shell history left behind")

    if not live:
        for line in _read_lines(_p(root, "etc/passwd")):
            if line.split(":", 1)[0] == builder_user:
                bad("builder-user", _p(root, "etc/passwd"), f"builder user {builder_user!r} still exists")
        if os.path.isdir(_p(root, f"home/{builder_user}")):
            bad("builder-user", _p(root, f"home/{builder_user}"), "builder home directory left behind")
        for path in sorted(glob.glob(_p(root, "etc/sudoers.d/*"))):
            if builder_user in open(path, errors="replace").read():
                bad("builder-user", path, f"sudoers entry for {builder_user!r}")
    for line in _read_lines(_p(root, "etc/shadow")):
        fields = line.split(":")
        if len(fields) > 1 and fields[1] and fields[1][0] not in "!*":
            bad("password", _p(root, "etc/shadow"), f"user {fields[0]!r} has a password")

    # cloud-init must run again, from scratch, on the first boot of every clone.
    for rel in ("var/lib/cloud/instance", "var/lib/cloud/data/instance-id", "var/lib/cloud/seed"):
        if _lexists(_p(root, rel)):
            bad("cloud-init", _p(root, rel), "cloud-init state left (run cloud-init clean)")
    instances = _p(root, "var/lib/cloud/instances")
    if os.path.isdir(instances) and os.listdir(instances):
        bad("cloud-init", instances, "cloud-init instance data left (run cloud-init clean)")
    for path in glob.glob(_p(root, "var/log/cloud-init*.log")):
        if not live and os.path.getsize(path) > 0:
            bad("cloud-init", path, "cloud-init log left")

    distro = _os_release_id(root)
    resolv = _p(root, "etc/resolv.conf")
    wanted = RESOLV_SYMLINKS.get(distro)
    if wanted is None and _lexists(_p(root, RESOLVED_ENABLED)):
        wanted = RESOLV_SYMLINKS["ubuntu"]     # debian-13 as snapbuild builds it: resolved, as on Ubuntu
    if wanted:
        if not os.path.islink(resolv) or os.readlink(resolv) not in wanted:
            bad("resolv.conf", resolv, f"must be the distro's symlink to {wanted[0]}")
    elif os.path.isfile(resolv) and not os.path.islink(resolv):
        if "snapbuild" in open(resolv, errors="replace").read():
            bad("resolv.conf", resolv, "the build's temporary resolv.conf was left in place")

    if _lexists(_p(root, "usr/sbin/policy-rc.d")):
        bad("policy-rc.d", _p(root, "usr/sbin/policy-rc.d"), "policy-rc.d left: services would never start")
    for path in sorted(glob.glob(_p(root, "etc/apt/apt.conf.d/*"))):
        name = os.path.basename(path)
        text = open(path, errors="replace").read() if os.path.isfile(path) else ""
        if "snapbuild" in name or "Acquire::http::Proxy" in text or "Acquire::https::Proxy" in text:
            bad("apt-config", path, "temporary apt configuration or proxy left")

    for rel in ("tmp", "var/tmp"):
        folder = _p(root, rel)
        if os.path.isdir(folder):
            leftovers = [n for n in os.listdir(folder)
                         if not (live and (n.startswith("systemd-private-") or n.startswith("snapbuild-")))]
            if leftovers:
                bad("tmp", folder, f"not empty: {', '.join(sorted(leftovers)[:5])}")

    if not live:
        for dirpath, _dirs, files in os.walk(_p(root, "var/log")):
            for name in files:
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                if not stat.S_ISREG(st.st_mode):
                    continue
                if "/journal/" in path + "/" and name.endswith((".journal", ".journal~")):
                    bad("logs", path, "journal file left")
                elif name.endswith((".gz", ".xz", ".old")) or name.rsplit(".", 1)[-1].isdigit():
                    bad("logs", path, "rotated log left")
                elif st.st_size > 0:
                    bad("logs", path, f"log not truncated ({st.st_size} bytes)")
        for rel in RANDOM_SEEDS:
            if _lexists(_p(root, rel)):
                bad("random-seed", _p(root, rel), "random seed left: clones would start with the same entropy")

    for path in gone:
        if _lexists(_p(root, path.lstrip("/"))):
            bad("builder-files", _p(root, path.lstrip("/")), "left by the build (the console runner or its plan)")

    lists = _p(root, "var/lib/apt/lists")
    if os.path.isdir(lists):
        stale = [n for n in os.listdir(lists) if n not in ("lock", "partial", "auxfiles")]
        if stale:
            bad("apt-lists", lists, f"{len(stale)} apt list files left (apt-get clean; rm lists)")
    debs = glob.glob(_p(root, "var/cache/apt/archives/*.deb")) + glob.glob(_p(root, "var/cache/apt/*.bin"))
    if debs:
        bad("apt-cache", _p(root, "var/cache/apt"), f"{len(debs)} cached packages or indexes left")
    return found


def _read_lines(path: str) -> list[str]:
    try:
        with open(path, errors="replace") as handle:
            return handle.read().splitlines()
    except OSError:
        return []


if __name__ == "__main__":
    args = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    print(json.dumps(check_root(args.get("root", "/"), builder_user=args.get("builder_user", "snapbuild"),
                                builder_keys=tuple(args.get("builder_keys", ())), live=args.get("live", False),
                                gone=tuple(args.get("gone", ())))))

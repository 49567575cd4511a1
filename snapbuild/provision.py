"""Apply a Plan to any Guest: the one provisioner for the cloud, local VM and chroot builders.

Standard library and stdlib-only snapbuild modules only (actions, errors, the Guest protocol, the monitor): the
console transport ships this module into the guest and runs it there with the guest's python3.
"""

from __future__ import annotations

import concurrent.futures
import logging
import re
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from snapbuild import actions
from snapbuild.actions import normalize_image
from snapbuild.errors import BuildError
from snapbuild.guest.base import Guest, OutputCallback
from snapbuild.run.monitor import Monitor
from snapbuild.run.progress import progress

if TYPE_CHECKING:
    from snapbuild.plan import Plan

log = logging.getLogger(__name__)

APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "NEEDRESTART_MODE": "a", "APT_LISTCHANGES_FRONTEND": "none"}
APT_OPTIONS = ("-o", "Acquire::Retries=3", "-o", "DPkg::Lock::Timeout=300")
IMAGE_REF = re.compile(r"[\w.-]+(:\d+)?/[\w./-]+(:[\w.-]+)?(@sha256:[0-9a-f]{64})?")
INSTALL_OPTIONS = ("-y", "--no-install-recommends", "-o", "Dpkg::Options::=--force-confdef",
                   "-o", "Dpkg::Options::=--force-confold")


@dataclass
class ProvisionResult:
    pulled_images: dict[str, str] = field(default_factory=dict)   # reference -> digest
    packages: dict[str, str] = field(default_factory=dict)        # installed package -> version
    seconds: float = 0.0


class _Provisioner:
    def __init__(self, guest: Guest, monitor: Monitor, *, step_timeout: float | None) -> None:
        self.guest = guest
        self.monitor = monitor
        self.step_timeout = step_timeout
        self.result = ProvisionResult()

    def stream(self, prefix: str = "│") -> OutputCallback:
        def echo(stream: str, line: str) -> None:
            log.info("%s %s", self.guest.name, line)
            self.monitor.line(f"{prefix} {line}")
        return echo

    def run(self, argv: list[str] | tuple[str, ...], *, timeout: float | None = None,
            env: dict[str, str] | None = None, quiet: bool = False) -> str:
        done = self.guest.run(list(argv), timeout=timeout or self.step_timeout, env=env,
                              on_output=None if quiet else self.stream())
        return done.stdout

    def apply(self, action: actions.Action) -> None:
        handler: Callable[[actions.Action], None] = getattr(self, "do_" + type(action).__name__)
        handler(action)

    # -- one method per action --------------------------------------------------------------------------------

    def do_WriteFile(self, a: actions.WriteFile) -> None:
        self.guest.write_file(a.path, a.content, mode=a.mode, owner=a.owner)

    def do_RemoveFiles(self, a: actions.RemoveFiles) -> None:
        self.run(["rm", "-f", *a.paths], quiet=True)

    def do_AptSource(self, a: actions.AptSource) -> None:
        if a.key is not None:
            self.install_key(a.key)
        self.guest.write_file(a.path, a.deb822.encode())

    def install_key(self, key: actions.AptKey) -> None:
        self.run(["mkdir", "-p", "-m", "0755", key.path.rsplit("/", 1)[0]], quiet=True)
        if key.content is not None:
            self.guest.write_file(key.path, key.content)
            if key.fingerprint:
                self.check_fingerprint(key, "the signing key given in the plan")
            return
        assert key.url and key.fingerprint
        self.run(["curl", "-fsSL", "--retry", "5", "--retry-connrefused", "--max-time", "120", "-o", key.path,
                  key.url], quiet=True)
        data = self.guest.read_file(key.path)
        if not data.lstrip().startswith(b"-----BEGIN PGP PUBLIC KEY BLOCK-----"):
            self.guest.run(["rm", "-f", key.path])
            raise BuildError(f"signing key from {key.url} is not an ASCII-armored OpenPGP key",
                             hint="check the mirror serves the key file unchanged")
        self.check_fingerprint(key, f"signing key from {key.url}")

    def check_fingerprint(self, key: actions.AptKey, what: str) -> None:
        listing = self.run(["gpg", "--batch", "--show-keys", "--with-colons", key.path], quiet=True)
        fingerprints = re.findall(r"^fpr:+([0-9A-F]{40}):", listing, flags=re.MULTILINE)
        if key.fingerprint not in fingerprints:
            self.guest.run(["rm", "-f", key.path])
            raise BuildError(f"{what} has fingerprint(s) {', '.join(fingerprints) or 'none'}, "
                             f"expected {key.fingerprint}",
                             hint="the key or the mirror is not the one the recipe (or the mirror profile) trusts")

    def do_AptUpdate(self, a: actions.AptUpdate) -> None:
        self.run(["apt-get", *APT_OPTIONS, "update"], env=APT_ENV, timeout=900)

    def do_InstallPackages(self, a: actions.InstallPackages) -> None:
        self.run(["apt-get", *APT_OPTIONS, "install", *INSTALL_OPTIONS, *a.packages], env=APT_ENV, timeout=3600)
        if a.hold:
            self.run(["apt-mark", "hold", *a.hold], quiet=True)
        names = [p.split("=")[0] for p in a.packages]
        listing = self.run(["dpkg-query", "-W", "-f", "${Package}\t${Version}\n", *names], quiet=True)
        for line in listing.splitlines():
            if "\t" in line:
                name, version = line.split("\t", 1)
                self.result.packages[name] = version

    def do_RunCommand(self, a: actions.RunCommand) -> None:
        if a.only_kind and a.only_kind != self.guest.kind:
            self.monitor.line(f"skipped: only on {a.only_kind} guests")
            return
        self.run(a.argv, timeout=a.timeout)

    def do_RunScript(self, a: actions.RunScript) -> None:
        path = f"/var/tmp/snapbuild-script-{a.name}"
        self.guest.write_file(path, a.content, mode=0o700)
        try:
            self.run([a.interpreter, path], timeout=a.timeout, env=APT_ENV)
        finally:
            self.guest.run(["rm", "-f", path], check=False)

    def do_Service(self, a: actions.Service) -> None:
        self.run(["systemctl", "enable" if a.enabled else "disable", a.name], quiet=True)
        if a.start and self.guest.kind == "vm":
            self.run(["systemctl", "restart", a.name])

    def do_ApplySysctl(self, a: actions.ApplySysctl) -> None:
        if self.guest.kind == "vm":
            self.run(["sysctl", "-p", a.path])

    def do_LoadModules(self, a: actions.LoadModules) -> None:
        if self.guest.kind == "vm":
            self.run(["modprobe", "-a", *a.modules])

    def do_SwapOff(self, a: actions.SwapOff) -> None:
        if self.guest.kind == "vm":
            self.run(["swapoff", "-a"], quiet=True)
        fstab = self.guest.read_file("/etc/fstab").decode() if self.guest.exists("/etc/fstab") else ""
        kept = []
        for line in fstab.splitlines():
            fields = line.split()
            if len(fields) >= 3 and not line.lstrip().startswith("#") and fields[2] == "swap":
                kept.append("# swap disabled by snapbuild: " + line)
            else:
                kept.append(line)
        if fstab and kept != fstab.splitlines():
            self.guest.write_file("/etc/fstab", ("\n".join(kept) + "\n").encode())
        self.run(["systemctl", "mask", "swap.target"], quiet=True)

    def do_PrePull(self, a: actions.PrePull) -> None:
        images = list(a.images)
        if a.list_command:
            listed = self.listed_images(a)
            if a.expect:
                check_listed(a, listed)     # before containerd starts or anything is pulled
            images = [*listed, *images]
        images = [i for i in dict.fromkeys(i.strip() for i in images) if i and " " not in i]
        with self.guest.service("containerd"):
            self.monitor.line(f"pulling {len(images)} images into {a.namespace}, {a.parallel} at once")

            def pull(ref: str) -> None:
                start = time.monotonic()
                self.guest.run(["ctr", "-n", a.namespace, "images", "pull", "--hosts-dir", a.hosts_dir, ref],
                               timeout=self.step_timeout or 1800)
                self.monitor.line(f"pulled {ref} in {time.monotonic() - start:.1f} s")

            with (progress(self.monitor, "pre-pull", total=len(images), unit="images") as bar,
                  concurrent.futures.ThreadPoolExecutor(max_workers=a.parallel) as pool):
                futures = {pool.submit(pull, ref): ref for ref in images}
                errors = []
                for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
                    if future.exception() is not None:
                        errors.append(f"{futures[future]}: {future.exception()}")
                    bar.set(done)
            if errors:
                raise BuildError(f"pre-pull failed for {len(errors)} of {len(images)} images:\n" + "\n".join(errors),
                                 hint="check the registry mirrors in the profile and hosts.toml")
            listing = self.run(["ctr", "-n", a.namespace, "images", "ls"], quiet=True)
            present = parse_ctr_images(listing)
            missing = [ref for ref in images if ref not in present]
            if missing:
                raise BuildError(f"pre-pull: not in namespace {a.namespace} after pulling: {', '.join(missing)}")
            self.result.pulled_images.update({ref: present[ref] for ref in images})

    def listed_images(self, a: actions.PrePull) -> list[str]:
        output = self.run(list(a.list_command), quiet=True, timeout=300)
        listed = list(dict.fromkeys(normalize_image(line.strip()) for line in output.splitlines()
                                    if IMAGE_REF.fullmatch(line.strip())))
        if not listed:
            raise BuildError("pre-pull: the list command printed no images", hint=shlex.join(a.list_command))
        return listed


def check_listed(a: actions.PrePull, listed: list[str]) -> None:
    """The list command must print exactly the images the plan showed before the build; say what differs and
    which recipe variable(s) to --set."""
    expected = {e.ref: e for e in a.expect}
    missing = [ref for ref in expected if ref not in listed]
    extra = [ref for ref in listed if ref not in expected]
    if not missing and not extra:
        return
    command = shlex.join(a.list_command)
    problems: list[str] = []
    sets: list[str] = []
    unexplained: list[str] = []     # no recipe variable makes these right: the expected list itself must change
    for ref in missing:
        instead = next((x for x in extra if _repository(x) == _repository(ref)), None)
        if instead is not None:
            extra.remove(instead)
            problems.append(f"{instead} is listed where the recipe expects {ref}")
        else:
            problems.append(f"{ref} is expected but not listed")
        found = _set_values(expected[ref], instead) if instead else [f"{n}=VALUE" for n, _ in expected[ref].variables]
        sets += found
        if not found:
            unexplained.append(ref)
    problems += [f"{ref} is listed but not expected" for ref in extra]
    unexplained += extra
    hints = []
    if sets:
        hints.append("pass " + " ".join(f"--set {s}" for s in dict.fromkeys(sets)))
    if unexplained:
        hints.append(f"edit prepull.expect in your own copy of the recipe (--recipes-dir DIR) for "
                     f"{', '.join(unexplained)}")
    raise BuildError(f"pre-pull: {command} differs from the images the recipe expects (shown by render/plan): "
                     + "; ".join(problems), hint="; ".join(hints))


def _repository(ref: str) -> str:
    """registry/name without tag or digest."""
    name = ref.split("@", 1)[0]
    head, _, last = name.rpartition("/")
    return f"{head}/{last.split(':', 1)[0]}" if head else last.split(":", 1)[0]


def _set_values(expected: actions.ExpectedImage, listed: str) -> list[str]:
    """`name=value` for each variable whose value, put in the expected reference, gives the listed one."""
    found = []
    for name, value in expected.variables:
        if value and expected.ref.count(value) == 1:
            prefix, suffix = expected.ref.split(value)
            middle = listed[len(prefix):len(listed) - len(suffix)]
            if middle and listed.startswith(prefix) and listed.endswith(suffix):
                found.append(f"{name}={middle}")
    return found or [f"{name}=VALUE" for name, _ in expected.variables]


def parse_ctr_images(listing: str) -> dict[str, str]:
    """`ctr images ls` output -> {reference: digest}."""
    found = {}
    for line in listing.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3 and fields[2].startswith("sha256:"):
            found[fields[0]] = fields[2]
    return found


def provision(plan: Plan, guest: Guest, monitor: Monitor, *, step_timeout: float | None = None) -> ProvisionResult:
    """Apply every action of the plan, in order, each timed and with its output streamed."""
    return provision_actions(plan.actions, guest, monitor, step_timeout=step_timeout)


def provision_actions(steps: Sequence[actions.Action], guest: Guest, monitor: Monitor, *,
                      step_timeout: float | None = None) -> ProvisionResult:
    """`provision` on the actions alone: what the console runner calls inside the guest (it has no Plan)."""
    worker = _Provisioner(guest, monitor, step_timeout=step_timeout)
    total = len(steps)
    begin = time.monotonic()
    for number, action in enumerate(steps, 1):
        text = f"[{number}/{total}] {action.describe()}"
        monitor.step_started(text, level="action")
        start = time.monotonic()
        ok = False
        try:
            worker.apply(action)
            ok = True
        finally:
            monitor.step_finished(text, time.monotonic() - start, ok, level="action")
    worker.result.seconds = time.monotonic() - begin
    return worker.result

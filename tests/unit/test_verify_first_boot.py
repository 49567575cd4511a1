"""`snapbuild verify`'s first-boot checks of what Ubuntu-shaped images get wrong: APT sources rewritten by
cloud-init's apt module, a legacy sources.list back, resolv.conf not systemd-resolved's stub symlink. The guest
is a stand-in holding files and answering the few commands the checks run (the vm tier runs them on real boots)."""

from __future__ import annotations

from collections.abc import Sequence

from snapbuild.guest.base import Completed
from snapbuild.local.verify import check_apt_sources_survived, check_resolver
from snapbuild.paths import data_dir
from snapbuild.plan import Plan, plan_from_names
from snapbuild.recipes import Library

LIBRARY = Library([data_dir("recipes")])
SOURCES = "/etc/apt/sources.list.d/debian.sources"
STUB = "../run/systemd/resolve/stub-resolv.conf"


class FilesGuest:
    def __init__(self, files: dict[str, bytes], *, symlinks: dict[str, str] | None = None,
                 resolved: bool = True) -> None:
        self.files, self.symlinks, self.resolved = files, symlinks or {}, resolved

    def read_file(self, path: str) -> bytes:
        if path not in self.files:
            raise FileNotFoundError(path)
        return self.files[path]

    def exists(self, path: str) -> bool:
        return path in self.files or path in self.symlinks

    def run(self, argv: Sequence[str], *, check: bool = True) -> Completed:
        argv = tuple(argv)
        if argv[:2] == ("systemctl", "cat"):
            return Completed(argv=argv, returncode=0 if self.resolved else 1, stdout="", stderr="")
        if argv[0] == "readlink":
            return Completed(argv=argv, returncode=0, stdout=self.symlinks.get(argv[1], ""), stderr="")
        if argv[0] == "cat":
            data = self.files.get(argv[1])
            return Completed(argv=argv, returncode=0 if data is not None else 1,
                             stdout=(data or b"").decode(), stderr="")
        raise AssertionError(f"unexpected command {argv}")


def make(distro: str = "debian-13") -> Plan:
    return plan_from_names(library=LIBRARY, recipe_name="base", distro_name=distro, profile_name="upstream",
                           config_variables={}, set_values={})


def written(plan: Plan) -> bytes:
    return next(f.content for f in reversed(plan.files) if f.path == plan.distro.sources_file)


# What cloud-init 25.1 writes on Debian 13 from its own template when it is not given the sources (abridged).
REWRITTEN = (b"Types: deb deb-src\nURIs: http://deb.debian.org/debian\n"
             b"Suites: trixie trixie-updates trixie-backports\nComponents: main\n")


def test_sources_as_written_and_no_legacy_file_pass() -> None:
    plan = make()
    result = check_apt_sources_survived(FilesGuest({SOURCES: written(plan)}), plan)  # type: ignore[arg-type]
    assert result.ok, result.detail


def test_sources_rewritten_at_first_boot_fail_with_the_first_changed_line() -> None:
    plan = make()
    result = check_apt_sources_survived(FilesGuest({SOURCES: REWRITTEN}), plan)  # type: ignore[arg-type]
    assert not result.ok
    assert "was rewritten" in result.detail and "deb-src" in result.detail


def test_snapbuild_s_sources_from_another_profile_pass_and_say_so() -> None:
    """verify run without the build's --mirrors plans other URLs: the file is still the build's, not cloud-init's."""
    plan = make()
    other = plan_from_names(library=LIBRARY, recipe_name="base", distro_name="debian-13",
                            profile_name="airgap-example", config_variables={}, set_values={})
    result = check_apt_sources_survived(FilesGuest({SOURCES: written(other)}), plan)  # type: ignore[arg-type]
    assert result.ok and "airgap-example" in result.detail and "--mirrors" in result.detail


def test_a_legacy_sources_list_back_beside_them_fails() -> None:
    plan = make()
    guest = FilesGuest({SOURCES: written(plan), "/etc/apt/sources.list": b"deb http://deb.debian.org/debian trixie main\n"})
    result = check_apt_sources_survived(guest, plan)  # type: ignore[arg-type]
    assert not result.ok and "/etc/apt/sources.list is back" in result.detail


def test_sources_gone_fail() -> None:
    plan = make()
    result = check_apt_sources_survived(FilesGuest({}), plan)  # type: ignore[arg-type]
    assert not result.ok and "is gone" in result.detail


def test_resolv_conf_must_be_the_stub_symlink_where_resolved_runs() -> None:
    plan = make()
    stub = b"nameserver 127.0.0.53\noptions edns0 trust-ad\n"
    good = FilesGuest({"/etc/resolv.conf": stub}, symlinks={"/etc/resolv.conf": STUB})
    assert (result := check_resolver(good, plan)) is not None and result.ok  # type: ignore[arg-type]
    plain = FilesGuest({"/etc/resolv.conf": b"nameserver 10.0.2.3\n"})
    assert (result := check_resolver(plain, plan)) is not None and not result.ok  # type: ignore[arg-type]
    assert "not a symlink" in result.detail
    dangling = FilesGuest({}, symlinks={"/etc/resolv.conf": STUB})
    assert (result := check_resolver(dangling, plan)) is not None and not result.ok  # type: ignore[arg-type]


def test_no_resolver_check_without_resolved_or_on_a_plain_resolv_conf_distro() -> None:
    assert check_resolver(FilesGuest({}, resolved=False), make()) is None  # type: ignore[arg-type]
    assert check_resolver(FilesGuest({}), make("debian-12")) is None  # type: ignore[arg-type]

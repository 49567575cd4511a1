"""`ansible-test sanity` on the snapbuild.cloud collection, the same way on every machine: `tox -e ansible-sanity`.

ansible-test wants the collection at a path ending in ansible_collections/NAMESPACE/NAME and, inside a git
repository, sees only committed files; so a copy of ansible_collections/snapbuild/cloud goes to a scratch
directory of its own, and ansible-test runs there with the tests' Python (--local: no containers).

Each sanity test gets a virtualenv of ansible-test's making, bootstrapped with a get-pip script that ansible-test
downloads from ci-files.testing.ansible.com, a host this project's machines do not reach. The stand-in written to
ansible-test's cache below does the same from the package index pip already uses: ensurepip, then the pinned pip
(ensurepip runs in a child process, as it points PIP_CONFIG_FILE at /dev/null in its own process and would hide
the host's pip configuration from the install that follows).

HOME is a directory of the run's own (ansible-test keeps its virtualenvs and that cache under ~/.ansible/test).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COLLECTION = REPO / "ansible_collections" / "snapbuild" / "cloud"

GET_PIP_STAND_IN = '''\
"""Stand-in for ansible-test's get-pip script (written by snapbuild's tests/ansible/sanity.py)."""
import subprocess
import sys

args = [arg for arg in sys.argv[1:] if arg not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade"])
subprocess.check_call([sys.executable, "-m", "pip", "install", *args])
'''


def pinned_pip() -> str:
    """The pip version ansible-test bootstraps its virtualenvs with (its cache file is named after it)."""
    from ansible_test._internal.python_requirements import get_venv_packages

    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return get_venv_packages(types.SimpleNamespace(version=version))["pip"]  # type: ignore[arg-type]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="ansible-test's HOME (kept, so its virtualenvs are reused); "
                                                  "default: a temporary directory")
    # Everything else goes to ansible-test sanity as it is (`tox -e ansible-sanity -- --test pylint -v`).
    args, ansible_test_args = parser.parse_known_args(argv)
    ansible_test = shutil.which("ansible-test", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    if ansible_test is None:
        print("ansible-test not found: install ansible-core (tox -e ansible-sanity does)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="snapbuild-ansible-sanity-") as scratch:
        home = (args.home or Path(scratch) / "home").resolve()
        cache = home / ".ansible" / "test" / "cache"
        cache.mkdir(parents=True, exist_ok=True)
        (cache / f"get_pip_{pinned_pip().replace('.', '_')}.py").write_text(GET_PIP_STAND_IN)
        copy = Path(scratch) / "ansible_collections" / "snapbuild" / "cloud"
        shutil.copytree(COLLECTION, copy, ignore=shutil.ignore_patterns("__pycache__", "output", "*.tar.gz"))
        env = {**os.environ, "HOME": str(home)}
        python = f"{sys.version_info.major}.{sys.version_info.minor}"
        argv_test = [ansible_test, "sanity", "--local", "--python", python, "--color", "no", *ansible_test_args]
        print("+", " ".join(argv_test), f"(in {copy})", file=sys.stderr)
        return subprocess.run(argv_test, cwd=copy, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

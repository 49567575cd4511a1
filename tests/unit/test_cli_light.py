"""`snapbuild --help` stays light: no openstacksdk, no paramiko, no jinja2 at start-up."""

from __future__ import annotations

import subprocess
import sys


def test_help_imports_no_cloud_or_ssh_library() -> None:
    code = ("import sys\nfrom snapbuild.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('openstack', 'paramiko', 'keystoneauth1', 'jinja2') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_version_and_exit_code() -> None:
    done = subprocess.run([sys.executable, "-m", "snapbuild", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and "snapbuild, version" in done.stdout

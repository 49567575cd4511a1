"""`snapbuild --help` stays light (no openstacksdk, paramiko, jinja2 or tqdm at start-up); the terminal stays
readable."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path


def test_help_imports_no_cloud_or_ssh_library() -> None:
    code = ("import sys\nfrom snapbuild.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('openstack', 'paramiko', 'keystoneauth1', 'jinja2', 'tqdm') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_version_and_exit_code() -> None:
    done = subprocess.run([sys.executable, "-m", "snapbuild", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and "snapbuild, version" in done.stdout


def test_paramiko_banner_errors_stay_off_the_terminal_but_reach_the_build_log(tmp_path: Path) -> None:
    # While a guest's sshd starts, paramiko logs every refused banner at ERROR with a traceback.
    code = textwrap.dedent(f"""
        import logging
        from snapbuild.cli import _setup_logging
        _setup_logging(False)
        log_file = logging.FileHandler({str(tmp_path / "build.log")!r})
        logging.getLogger().addHandler(log_file)
        logging.getLogger("paramiko.transport").error("Error reading SSH protocol banner")
        logging.getLogger("snapbuild.local.qemu").warning("accel: tcg")
        log_file.flush()
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "banner" not in done.stderr and "accel: tcg" in done.stderr
    assert "Error reading SSH protocol banner" in (tmp_path / "build.log").read_text()

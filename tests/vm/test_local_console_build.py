"""`snapbuild local --transport console` end to end on the tiers' cached base (debian-13) under TCG: real QEMU, real
cloud-init starting the runner from the seed, the runner reporting on ttyS0 (QEMU's serial log), no SSH at all.

Each build is the real command line in a child process with a private temp root, state and config, `isolated`
(restrict=on: nothing the guest sends leaves QEMU). One build succeeds and its image passes the offline seal
check; one fails in a command step, and nothing of it is left.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.imagecache import TIER_DISTRO
from tests.qemuprocs import qemu_pids_mentioning

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.vm

MARKER = "/etc/snapbuild-console-demo.conf"
RECIPES = {
    "console-demo": f"""\
description: test recipe - a file and a command, applied inside the guest by the console runner
distros: [debian-13]
image:
  name: "{{{{ distro.pretty }}}} - console demo"
  category: test
  min_disk_gb: 3
  disk_size_gb: 3
steps:
  - file: {{path: {MARKER}, content: "written by the console runner\\n"}}
  - command: [sh, -c, 'echo applied-by-a-command >> {MARKER}']
""",
    "console-fail": """\
description: test recipe - a command step that fails with output
distros: [debian-13]
image:
  name: "{{ distro.pretty }} - console failure"
  category: test
  min_disk_gb: 3
  disk_size_gb: 3
steps:
  - file: {path: /etc/snapbuild-console-fail.conf, content: "before the failure\\n"}
  - command: [sh, -c, 'echo boom; exit 3']
""",
}


@dataclass
class Run:
    root: Path
    tmproot: Path
    state: Path
    out_dir: Path
    proc: subprocess.CompletedProcess[str]
    wall_s: float



def local_console(root: Path, base: Path, recipe: str) -> Run:
    """`snapbuild local RECIPE --transport console` as a user runs it, with everything private to `root`."""
    recipes, tmproot, state, home, out_dir = (root / d for d in ("recipes", "tmp", "state", "home", "out"))
    for d in (tmproot, state, home, out_dir):
        d.mkdir(parents=True)
    (recipes / recipe).mkdir(parents=True)
    (recipes / recipe / "recipe.yaml").write_text(RECIPES[recipe])
    env = dict(os.environ, TMPDIR=str(tmproot), SNAPBUILD_STATE_DIR=str(state),
               SNAPBUILD_CACHE_DIR=str(root / "cache"), HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    argv = [sys.executable, "-m", "snapbuild", "--recipes-dir", str(recipes), "local", recipe, "--distro",
            TIER_DISTRO, "--mirrors", "upstream", "--network", "isolated", "--transport", "console",
            "--memory", "1024", "--base", str(base), "-o", str(out_dir / f"{recipe}.qcow2"), "--json"]
    start = time.monotonic()
    proc = subprocess.run(argv, env=env, cwd=home, capture_output=True, text=True, timeout=3600, check=False)
    wall = time.monotonic() - start
    (root / "build.log").write_text(proc.stderr)
    return Run(root=root, tmproot=tmproot, state=state, out_dir=out_dir, proc=proc, wall_s=wall)


def assert_nothing_left(run: Run) -> None:
    assert qemu_pids_mentioning(str(run.tmproot)) == [], "a QEMU process outlived the build"
    assert list(run.tmproot.iterdir()) == [], f"temp files left: {list(run.tmproot.iterdir())}"
    builds = run.state / "builds"
    ledgers = sorted(builds.glob("*.json")) if builds.is_dir() else []
    assert ledgers == [], f"ledgers left: {[p.read_text() for p in ledgers]}"


def test_a_console_build_writes_a_sealed_image_and_a_manifest_that_says_console(
        base_image: Path, tmp_path: Path) -> None:
    from snapbuild.sealing.offline import inspect_image, mounted_root
    from tests.manifestcheck import check_manifest

    assert os.geteuid() == 0, "the offline seal check mounts the image: the vm tier runs as root"
    run = local_console(tmp_path, base_image, "console-demo")
    log = run.proc.stderr
    assert run.proc.returncode == 0, f"build failed ({run.proc.returncode}):\n{log[-6000:]}"
    result = json.loads(run.proc.stdout)
    output = Path(result["output"])
    assert output == run.out_dir / "console-demo.qcow2" and output.is_file()
    manifest = check_manifest(Path(result["manifest"]), builder="local")
    assert manifest["details"]["transport"] == "console"
    assert manifest["seal"] == {"in_guest": "clean", "offline": "clean"}     # in the guest: the runner's verdict
    assert manifest["details"]["guest_os"].startswith("Debian GNU/Linux 13")
    assert "builder_keys" not in manifest["details"]
    steps = [s["name"] for s in manifest["steps"]]
    assert steps[:4] == ["preflight", "prepare work image", "boot builder", "console runner"]
    assert "connect" not in steps and {"power off", "compact", "check image"} <= set(steps)
    # The runner's own steps came over the serial console as steps of this build; SSH was never used.
    # The runner's hello counts the plan's actions: the recipe's two, the sources of the mirror profile (write,
    # remove the legacy file) and the growpart and apt drop-ins: six, each shown as [i/6].
    assert "console runner started: 6 steps" in log and "[6/6] write /etc/cloud/cloud.cfg.d/" in log
    assert "▸ wait for cloud-init" in log and "▸ seal" in log
    assert "SSH after" not in log and "ssh on 127.0.0.1" not in log
    # The offline checker (it ran in the build, "check image") agrees when asked again, and the plan was applied.
    assert inspect_image(output) == []
    with mounted_root(output) as root:
        assert (root / MARKER.lstrip("/")).read_text() == "written by the console runner\napplied-by-a-command\n"
        assert not (root / "run" / "snapbuild").exists()
    assert_nothing_left(run)
    print(f"\nlocal console build: {run.wall_s:.0f} s wall; steps "
          + ", ".join(f"{s['name']} {s['seconds']:.0f} s" for s in manifest["steps"]))


def test_a_failing_command_step_fails_the_build_with_its_name_and_output_and_leaves_nothing(
        base_image: Path, tmp_path: Path) -> None:
    from snapbuild.errors import EXIT_BUILD

    run = local_console(tmp_path, base_image, "console-fail")
    log = run.proc.stderr
    assert run.proc.returncode == EXIT_BUILD, f"exit {run.proc.returncode}:\n{log[-6000:]}"
    error = next(line for line in log.splitlines() if line.startswith("snapbuild: error:"))
    assert "console build failed in step" in error and "echo boom; exit 3" in error, error
    assert "last output:\n  boom" in log, log[-4000:]
    assert "▸ clean up" in log
    assert list(run.out_dir.iterdir()) == [], "an output (or a partial one) was left"
    assert run.proc.stdout == ""
    assert_nothing_left(run)
    print(f"\nlocal console build failing in a step: {run.wall_s:.0f} s wall")

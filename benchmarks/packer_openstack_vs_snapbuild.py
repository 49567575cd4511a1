"""`snapbuild build` against Packer's `openstack` builder on the same cloud: wall time, image size, leaks, hygiene.

Usage (root: `snapbuild inspect` mounts the images; the test cloud with real guests must be running):

    SNAPBUILD_TESTCLOUD_REAL_IMAGE=/var/cache/snapbuild-test/debian-12-base.qcow2 tests/cloud/start
    source /var/lib/snapbuild-testcloud/env
    python3 benchmarks/packer_openstack_vs_snapbuild.py [--runs N] [--no-interrupts]

Both tools build from the same Glance image (debian-12-real), on the same flavor (r1.small: a real TCG guest per
server in the test cloud), on the same network, with no floating IP, as the cloud's member user:

- snapbuild: `python3 -m snapbuild build base --distro debian-12 --mirrors upstream …` (the `base` recipe has no
  provisioning of its own, so this is snapbuild's boot, sealing, snapshot and properties).
- snapbuild-console: the same with `--transport console` (no SSH: the runner in the user-data seals, checks and
  powers off; snapbuild reads the console), on the same network.
- Packer (Debian's 1.6.6, JSON template below): its temporary key pair, the same cloud-init locale fix
  snapbuild's user-data carries, and a shell provisioner with the sealing a Packer user typically writes
  (SEAL_SCRIPT, shared with packer_vs_local.py).

Runs alternate (packer, snapbuild, snapbuild-console, packer, …; `--tools` picks). Printed per run: wall time
and the image's size in Glance; then medians and the ratios against the goals (snapbuild ≤ 0.9× Packer's wall
time; the console transport ≤ 0.85× Packer's and faster than SSH); the median seconds per phase of each tool
(snapbuild's steps from its --events, the console runner's own steps indented; Packer's from its -timestamp-ui
log); the violation codes `snapbuild
inspect` finds in each image (downloaded from Glance); and, unless --no-interrupts, what each tool leaves in the
project when it is interrupted at the same point — the first line of provisioning — by SIGINT (Ctrl-C), and by
SIGKILL followed by the tool's own cleanup (snapbuild: `snapbuild cleanup`; Packer has none). Everything a run
left is deleted afterwards as admin, so the cloud ends as it started.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import openstack
import yaml
from openstack.connection import Connection

sys.path.insert(0, str(Path(__file__).resolve().parent))
from packer_vs_local import SEAL_SCRIPT, bytes_on_disk, inspect_codes, kill_leftovers

REPO = Path(__file__).resolve().parent.parent
PACKER = "/usr/bin/packer"
IMAGE = "debian-12-real"
FLAVOR = "r1.small"
NETWORK = "private"
COMMAND_TIMEOUT = 45 * 60
GOAL_TIME = 0.9
# What each tool prints when it starts provisioning: the point both are interrupted at.
PROVISIONING = {"packer": re.compile(r"Provisioning with shell script"), "snapbuild": re.compile(r"^▸ provision"),
                "snapbuild-console": re.compile(r"^\s*▸ provision")}
TOOLS = ("packer", "snapbuild", "snapbuild-console")
GOAL_CONSOLE = 0.85       # issue #13: the console transport ≤ 0.85× Packer's median, and faster than SSH
# Packer's phases, by the first line of each in its -timestamp-ui log (the openstack builder's own wording).
PACKER_PHASES = (("boot", "Launching server"), ("wait for SSH", "Waiting for server to become ready"),
                 ("connect", "Waiting for SSH to become available"), ("provision", "Provisioning with shell script"),
                 ("power off", "Stopping server"), ("capture", "Creating the image"),
                 ("delete builder", "Terminating the source server"), ("done", "Builds finished"))
# snapbuild's user-data carries the same line (Debian 12's cloud-init fails its locale module otherwise).
PACKER_USER_DATA = "#cloud-config\nlocale: C.UTF-8\n"


def packer_template(auth: dict[str, str], region: str, network_id: str) -> dict[str, object]:
    return {
        "variables": {"image_name": "", "seal_script": "", "user_data_file": ""},
        "builders": [{
            "type": "openstack",
            "identity_endpoint": auth["auth_url"],
            "username": auth["username"],
            "password": auth["password"],
            "tenant_name": auth["project_name"],
            "domain_name": auth["user_domain_name"],
            "region": region,
            "source_image_name": IMAGE,
            "flavor": FLAVOR,
            "networks": [network_id],
            "config_drive": True,
            "user_data_file": "{{user `user_data_file`}}",
            "ssh_username": "debian",
            "ssh_ip_version": "4",
            "ssh_timeout": "30m",
            "image_name": "{{user `image_name`}}",
            "image_tags": ["packer-bench"],
        }],
        "provisioners": [{
            "type": "shell",
            "script": "{{user `seal_script`}}",
            "execute_command": "chmod +x {{ .Path }}; sudo env {{ .Vars }} {{ .Path }}",
        }],
    }


@dataclass(frozen=True, kw_only=True)
class Run:
    tool: str
    run: int
    seconds: float
    image_id: str
    size: int                   # bytes in Glance
    violations: tuple[str, ...] = ()
    phases: dict[str, float] = field(default_factory=dict)     # where the time went


@dataclass(frozen=True, kw_only=True)
class Interruption:
    tool: str
    how: str                    # "SIGINT" or "SIGKILL + cleanup"
    left: tuple[str, ...]


@dataclass(kw_only=True)
class Bench:
    conn: Connection
    admin: Connection
    work: Path
    env: dict[str, str]
    runs: list[Run] = field(default_factory=list)
    interruptions: list[Interruption] = field(default_factory=list)
    commands: dict[str, str] = field(default_factory=dict)


class CommandFailed(RuntimeError):
    pass


# ---------------------------------------------------------------- what the project holds

def holdings(conn: Connection) -> dict[str, tuple[str, str]]:
    """Everything of the member project a build could leave, as description -> (kind, id): servers, key pairs,
    security groups, images, ports, floating IPs."""
    project = conn.current_project_id
    held = {f"server {s.id} {s.name}": ("server", s.id) for s in conn.compute.servers()}
    held |= {f"keypair {k.name}": ("keypair", k.name) for k in conn.compute.keypairs()}
    held |= {f"security group {g.id} {g.name}": ("security_group", g.id)
             for g in conn.network.security_groups(project_id=project) if g.name != "default"}
    held |= {f"image {i.id} {i.name}": ("image", i.id) for i in conn.image.images(owner=project)}
    held |= {f"port {p.id} {p.device_owner}": ("port", p.id) for p in conn.network.ports(project_id=project)
             if p.device_owner.startswith("compute:") or not p.device_owner}
    held |= {f"floating ip {ip.floating_ip_address}": ("ip", ip.id) for ip in conn.network.ips(project_id=project)}
    return held


def settled_leftovers(conn: Connection, before: Mapping[str, object], timeout: float = 180) -> tuple[str, ...]:
    """What is there now and was not before, once deletes the tool issued have finished (or the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        left = set(holdings(conn)) - set(before)
        if not left or time.monotonic() > deadline:
            return tuple(sorted(left))
        time.sleep(3)   # Nova finishes a delete asynchronously


def delete_everything(admin: Connection, conn: Connection, before: Mapping[str, object]) -> None:
    """As admin: remove what a run added, so the next run starts from the same cloud. Servers first: their
    ports and groups can only go after them."""
    added = {desc: ref for desc, ref in holdings(conn).items() if desc not in before}
    servers = [ident for kind, ident in added.values() if kind == "server"]
    for ident in servers:
        admin.compute.delete_server(ident, ignore_missing=True)
    for ident in servers:
        server = admin.compute.find_server(ident, ignore_missing=True, all_projects=True)
        if server is not None:
            admin.compute.wait_for_delete(server, wait=300)
    for kind, ident in added.values():
        if kind == "keypair":
            conn.compute.delete_keypair(ident, ignore_missing=True)   # key pairs belong to the user
        elif kind == "image":
            admin.image.delete_image(ident, ignore_missing=True)
        elif kind == "port":
            admin.network.delete_port(ident, ignore_missing=True)
        elif kind == "ip":
            admin.network.delete_ip(ident, ignore_missing=True)
    for kind, ident in added.values():
        if kind == "security_group":
            admin.network.delete_security_group(ident, ignore_missing=True)


# ---------------------------------------------------------------- running the tools

def argv_for(bench: Bench, tool: str, image_name: str, state: Path) -> tuple[list[str], dict[str, str]]:
    if tool == "packer":
        argv = [PACKER, "build", "-color=false", "-timestamp-ui", "-var", f"image_name={image_name}",
                "-var", f"seal_script={bench.work / 'seal.sh'}",
                "-var", f"user_data_file={bench.work / 'user-data'}", str(bench.work / "packer.json")]
        env = {**bench.env, "CHECKPOINT_DISABLE": "1", "PACKER_CONFIG_DIR": str(bench.work / "packer-config"),
               "PACKER_CACHE_DIR": str(bench.work / "packer-cache")}
    else:
        argv = [sys.executable, "-m", "snapbuild", "build", "base", "--distro", "debian-12", "--mirrors", "upstream",
                "--flavor", FLAVOR, "--network", NETWORK, "--base-image", IMAGE, "--timeout-ssh", "900",
                "--image-name", image_name, "--json", "--events", str(state / "events.jsonl")]
        if tool == "snapbuild-console":
            argv += ["--transport", "console"]
        env = {**bench.env, "PYTHONPATH": str(REPO), "SNAPBUILD_STATE_DIR": str(state)}
        state.mkdir(parents=True, exist_ok=True)
    bench.commands.setdefault(tool, shlex.join(argv))
    return argv, env


@contextmanager
def started(argv: Sequence[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_leftovers(proc.pid)


def wait_exit(proc: subprocess.Popen[bytes], timeout: float = COMMAND_TIMEOUT) -> None:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise CommandFailed(f"still running after {timeout:.0f} s") from exc


def wait_for_line(proc: subprocess.Popen[bytes], log: Path, pattern: re.Pattern[str]) -> None:
    deadline = time.monotonic() + COMMAND_TIMEOUT
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if any(pattern.search(line) for line in text.splitlines()):
            return
        if proc.poll() is not None:
            raise CommandFailed(f"exited {proc.returncode} before {pattern.pattern!r}:\n{text[-3000:]}")
        time.sleep(0.5)   # tailing a log file; bounded by the deadline
    raise CommandFailed(f"no {pattern.pattern!r} within {COMMAND_TIMEOUT} s")


def build(bench: Bench, tool: str, n: int) -> Run:
    image_name = f"bench-{tool}-{n}-{int(time.time())}"
    log = bench.work / f"{tool}-{n}.log"
    argv, env = argv_for(bench, tool, image_name, bench.work / f"state-{tool}-{n}")
    start = time.monotonic()
    with started(argv, env, log) as proc:
        wait_exit(proc)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        raise CommandFailed(f"{tool} exited {proc.returncode}:\n{log.read_text(errors='replace')[-4000:]}")
    image = bench.conn.image.find_image(image_name, ignore_missing=False)
    phases = packer_phases(log) if tool == "packer" else snapbuild_phases(bench.work / f"state-{tool}-{n}")
    return Run(tool=tool, run=n, seconds=seconds, image_id=image.id, size=int(image.size or 0), phases=phases)


def snapbuild_phases(state: Path) -> dict[str, float]:
    """Seconds per top-level step, and per runner step inside `console runner`, from the build's --events."""
    phases: dict[str, float] = {}
    for line in (state / "events.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event["event"] == "step_finished" and event["level"] == "step" and len(event["path"]) <= 2:
            name = event["step"] if len(event["path"]) == 1 else f"  {event['step']}"
            phases[name] = phases.get(name, 0.0) + float(event["seconds"])
    return phases


def packer_phases(log: Path) -> dict[str, float]:
    """Seconds between the first lines of Packer's phases (-timestamp-ui prefixes each line with its time)."""
    seen: list[tuple[str, datetime]] = []
    for line in log.read_text(errors="replace").splitlines():
        stamp, _, text = line.partition(": ")
        for phase, marker in PACKER_PHASES:
            if marker in text and phase not in dict(seen):
                try:
                    seen.append((phase, datetime.fromisoformat(stamp.strip().replace("Z", "+00:00"))))
                except ValueError:
                    pass
    return {phase: (seen[i + 1][1] - when).total_seconds() for i, (phase, when) in enumerate(seen[:-1])}


def hygiene(bench: Bench, run: Run) -> tuple[str, ...]:
    path = bench.work / f"{run.tool}-{run.run}.img"
    with path.open("wb") as out:
        for chunk in bench.conn.image.download_image(run.image_id, stream=True).iter_content(1 << 20):
            out.write(chunk)
    print(f"  downloaded {bytes_on_disk(path)} bytes; inspecting …", file=sys.stderr, flush=True)
    try:
        return inspect_codes(path)
    finally:
        path.unlink()


def interrupt(bench: Bench, tool: str, sig: signal.Signals) -> Interruption:
    before = holdings(bench.conn)
    log = bench.work / f"{tool}-{sig.name}.log"
    state = bench.work / f"state-{tool}-{sig.name}"
    argv, env = argv_for(bench, tool, f"bench-{tool}-{sig.name.lower()}-{int(time.time())}", state)
    with started(argv, env, log) as proc:
        wait_for_line(proc, log, PROVISIONING[tool])
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)    # Ctrl-C at a terminal reaches the whole foreground group
        else:
            proc.send_signal(sig)       # a crash: the tool alone dies; its children are killed below
        wait_exit(proc, timeout=900)
    how = "SIGINT"
    if sig == signal.SIGKILL:
        how = "SIGKILL + cleanup" if tool != "packer" else "SIGKILL (Packer has no cleanup command)"
        if tool != "packer":
            subprocess.run([sys.executable, "-m", "snapbuild", "cleanup"], env=env, cwd=REPO, check=False,
                           capture_output=True, timeout=900)
    left = settled_leftovers(bench.conn, before)
    delete_everything(bench.admin, bench.conn, before)
    return Interruption(tool=tool, how=how, left=left)


# ---------------------------------------------------------------- report

def report(bench: Bench) -> None:
    print("\ncommands:")
    for tool, command in bench.commands.items():
        print(f"  {tool}: {command}")
    shown = packer_template(REDACTED, "RegionOne", "<network private>")
    print(f"\nPacker template (credentials elided):\n{json.dumps(shown, indent=2)}")
    print(f"\nPacker provisioner:\n{SEAL_SCRIPT}")
    print(f"per run (image {IMAGE}, flavor {FLAVOR}, network {NETWORK}, no floating IP):")
    for r in bench.runs:
        print(f"  {r.tool:17} run {r.run}: {r.seconds:8.1f} s  {r.size / 2**20:8.1f} MiB in Glance")
    medians = {tool: statistics.median(r.seconds for r in bench.runs if r.tool == tool)
               for tool in TOOLS if any(r.tool == tool for r in bench.runs)}
    sizes = {tool: statistics.median(r.size for r in bench.runs if r.tool == tool) for tool in medians}
    print("\nmedians:")
    for tool, seconds in medians.items():
        print(f"  {tool:9} {seconds:8.1f} s  {sizes[tool] / 2**20:8.1f} MiB")
    if "packer" in medians and "snapbuild" in medians:
        ratio = medians["snapbuild"] / medians["packer"]
        print(f"\nwall time snapbuild / packer: {ratio:.2f}x (goal ≤ {GOAL_TIME}x: "
              f"{'met' if ratio <= GOAL_TIME else 'MISSED'}); size {sizes['snapbuild'] / sizes['packer']:.2f}x")
    if "packer" in medians and "snapbuild-console" in medians:
        ratio = medians["snapbuild-console"] / medians["packer"]
        print(f"wall time snapbuild --transport console / packer: {ratio:.2f}x (goal ≤ {GOAL_CONSOLE}x: "
              f"{'met' if ratio <= GOAL_CONSOLE else 'MISSED'})")
    if "snapbuild" in medians and "snapbuild-console" in medians:
        ratio = medians["snapbuild-console"] / medians["snapbuild"]
        print(f"wall time console / ssh transport: {ratio:.2f}x ({'faster' if ratio < 1 else 'NOT faster'})")
    print("\nwhere the time goes (median seconds per phase; indented: the console runner's own steps):")
    for tool in medians:
        runs = [r for r in bench.runs if r.tool == tool]
        names = list(dict.fromkeys(name for r in runs for name in r.phases))
        print(f"  {tool}:")
        for name in names:
            print(f"    {name:28} {statistics.median(r.phases.get(name, 0.0) for r in runs):8.1f}")
    print("\nhygiene (`snapbuild inspect --json` on the image downloaded from Glance):")
    for r in bench.runs:
        print(f"  {r.tool:17} run {r.run}: {len(r.violations)} violation(s): "
              f"{', '.join(sorted(set(r.violations))) or 'none'}")
    if bench.interruptions:
        print("\nleft in the project after an interruption at the first line of provisioning:")
        for i in bench.interruptions:
            print(f"  {i.tool:17} {i.how}: {len(i.left)} resource(s)" + "".join(f"\n      {x}" for x in i.left))


REDACTED = {"auth_url": "<auth_url>", "username": "<user>", "password": "<password>", "project_name": "<project>",
            "user_domain_name": "Default"}


# ---------------------------------------------------------------- main

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="complete builds per tool, alternating (default 2)")
    parser.add_argument("--no-interrupts", action="store_true", help="skip the interruption comparison")
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS),
                        help="which builds to run, alternating in this order (default: all three)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("run as root: `snapbuild inspect` mounts the images")
    if shutil.which(PACKER) is None:
        sys.exit(f"{PACKER} not found (apt-get install packer)")
    cloud = os.environ.get("OS_CLOUD")
    config = os.environ.get("OS_CLIENT_CONFIG_FILE")
    if not cloud or not config or os.environ.get("SNAPBUILD_TESTCLOUD_REAL_GUESTS") != "1":
        sys.exit("start the test cloud with real guests first: SNAPBUILD_TESTCLOUD_REAL_IMAGE=<qcow2> "
                 "tests/cloud/start; source /var/lib/snapbuild-testcloud/env")
    entry = yaml.safe_load(Path(config).read_text())["clouds"][cloud]
    # connect_retries: an API server may close an idle keep-alive connection just as a poll reuses it.
    conn = openstack.connect(cloud=cloud, connect_retries=3)
    admin = openstack.connect(cloud=os.environ.get("SNAPBUILD_ADMIN_CLOUD") or f"{cloud}-admin", connect_retries=3)
    network = conn.network.find_network(NETWORK, ignore_missing=False)
    work = Path(tempfile.mkdtemp(prefix="packer-openstack-"))
    bench = Bench(conn=conn, admin=admin, work=work, env=dict(os.environ))
    (work / "packer.json").write_text(json.dumps(packer_template(entry["auth"], entry["region_name"], network.id)))
    (work / "seal.sh").write_text(SEAL_SCRIPT)
    (work / "user-data").write_text(PACKER_USER_DATA)
    failed = False
    start_state = holdings(conn)
    try:
        for n in range(1, args.runs + 1):
            for tool in args.tools:
                print(f"{tool} run {n} …", file=sys.stderr, flush=True)
                before = holdings(conn)
                run = build(bench, tool, n)
                print(f"  {run.seconds:.1f} s, {run.size} bytes", file=sys.stderr, flush=True)
                bench.runs.append(replace(run, violations=hygiene(bench, run)))
                extra = [d for d, (kind, ident) in holdings(conn).items()
                         if d not in before and ident != run.image_id]
                if extra:
                    print(f"  {tool} left after a successful build: {sorted(extra)}", file=sys.stderr)
        if not args.no_interrupts:
            for sig in (signal.SIGINT, signal.SIGKILL):
                for tool in args.tools:
                    print(f"{tool}: {sig.name} at provisioning …", file=sys.stderr, flush=True)
                    bench.interruptions.append(interrupt(bench, tool, sig))
    except CommandFailed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        failed = True
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        failed = True
    finally:
        report(bench)
        delete_everything(admin, conn, start_state)   # the built images too: the cloud ends as it started
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

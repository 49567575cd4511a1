"""`python -m testcloud.main start|stop|status`: the test cloud's lifecycle (called by ../start and ../stop)."""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from testcloud import configs, procs
from testcloud.layout import HOST, PORT_OFFSETS, Layout, from_env

log = logging.getLogger("testcloud")

API_SERVICES = ("keystone", "glance", "glance2", "placement", "neutron", "nova-api")
NOVA_DAEMONS = ("nova-conductor", "nova-scheduler", "nova-compute")
INFRA = ("mariadb", "rabbitmq", "epmd")
DATABASES = ("keystone", "glance", "glance2", "placement", "nova_api", "nova", "nova_cell0", "neutron")


# --- plumbing -------------------------------------------------------------------------------------------------

def _run(lay: Layout, name: str, argv: Sequence[str], *, ok: Sequence[int] = (0,)) -> None:
    """Run a setup command, output to its own log; fail with the log's tail."""
    with open(lay.logs / f"{name}.log", "ab") as out:
        rc = subprocess.run(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                            env=_service_env(lay)).returncode
    if rc not in ok:
        tail = (lay.logs / f"{name}.log").read_text(errors="replace").splitlines()[-30:]
        raise RuntimeError(f"{' '.join(argv)} exited {rc}\n" + "\n".join(tail))


def _bin(lay: Layout, name: str) -> str:
    return str(lay.venv / "bin" / name)


def _stamp(lay: Layout, name: str) -> Path:
    return lay.data / "stamps" / name


def _once(lay: Layout, name: str, func: object, *args: object) -> None:
    """Run a one-time setup step (database schema, bootstrap) unless it already succeeded."""
    stamp = _stamp(lay, name)
    if stamp.exists():
        return
    t0 = time.monotonic()
    func(*args)  # type: ignore[operator]
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(time.strftime("%F %T\n"))
    log.info("%s done in %.1f s", name, time.monotonic() - t0)


def _service_env(lay: Layout) -> dict[str, str]:
    return {
        "OS_KEYSTONE_CONFIG_DIR": str(lay.etc / "keystone"),
        "OS_GLANCE_CONFIG_DIR": str(lay.etc / "glance"),
        "OS_PLACEMENT_CONFIG_DIR": str(lay.etc / "placement"),
        "OS_NOVA_CONFIG_DIR": str(lay.etc / "nova"),
        "OS_NEUTRON_CONFIG_DIR": str(lay.etc / "neutron"),
        "PATH": f"{lay.venv / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "PYTHONUNBUFFERED": "1",
    }


def _spawn(lay: Layout, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
    procs.spawn(name, argv, run_dir=lay.run, log_dir=lay.logs, env={**_service_env(lay), **(env or {})})


def _wait(lay: Layout, what: str, check: object, *, timeout: float, daemon: str) -> None:
    procs.wait_for(what, check, timeout=timeout, pid_name=daemon, run_dir=lay.run, log_dir=lay.logs)  # type: ignore[arg-type]


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return bool(resp.status < 500)
    except urllib.error.HTTPError as exc:
        return exc.code < 500


# --- plugins into the venv ----------------------------------------------------------------------------------

def install_plugins(lay: Layout) -> None:
    """Make tests/cloud's code importable by the services: a .pth, a nova/virt shim, an ML2 entry point."""
    site = Path(sysconfig.get_path("purelib", vars={"base": str(lay.venv), "platbase": str(lay.venv)}))
    # tests/cloud for the plugins, the checkout's top for snapbuild itself (the qemu backend reuses its VM code).
    _write_if_changed(site / "snapbuild_testcloud.pth", f"{lay.repo_cloud_dir}\n{lay.repo_cloud_dir.parent.parent}\n")
    # Nova loads compute drivers only from nova.virt.*: the shim re-exports ours.
    _write_if_changed(site / "nova" / "virt" / "snapbuild_testcloud.py",
                      '"""Shim: the real driver lives in snapbuild\'s tests/cloud/testcloud/virt.py."""\n'
                      "from testcloud.virt import TestCloudDriver  # noqa: F401\n")
    dist = site / "snapbuild_testcloud-0.0.dist-info"
    dist.mkdir(exist_ok=True)
    _write_if_changed(dist / "METADATA", "Metadata-Version: 2.1\nName: snapbuild-testcloud\nVersion: 0.0\n")
    _write_if_changed(dist / "entry_points.txt",
                      "[neutron.ml2.mechanism_drivers]\ntestcloud = testcloud.ml2:AcceptAllMechanismDriver\n")


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


# --- infrastructure: MariaDB, epmd, RabbitMQ ----------------------------------------------------------------

def _sql(lay: Layout, statements: str) -> None:
    _run(lay, "mariadb-setup", ["mariadb", "--no-defaults", f"--socket={lay.run / 'mysqld.sock'}", "-uroot",
                                "-e", statements])


def start_mariadb(lay: Layout) -> None:
    datadir = lay.data / "mariadb"
    user = getpass.getuser()
    if not (datadir / "mysql").exists():
        datadir.mkdir(parents=True, exist_ok=True)
        _run(lay, "mariadb-install", ["mariadb-install-db", "--no-defaults", f"--datadir={datadir}", f"--user={user}",
                                      "--skip-test-db", "--auth-root-authentication-method=socket"])
    _spawn(lay, "mariadb", [
        "mariadbd", "--no-defaults", f"--datadir={datadir}", f"--socket={lay.run / 'mysqld.sock'}",
        f"--port={lay.port('mariadb')}", f"--bind-address={HOST}", f"--user={user}",
        f"--pid-file={lay.run / 'mariadbd.own.pid'}", "--skip-name-resolve", "--skip-log-bin",
        "--innodb-buffer-pool-size=64M", "--innodb-log-file-size=32M", "--innodb-flush-log-at-trx-commit=0",
        "--innodb-doublewrite=0", "--performance-schema=OFF", "--max-connections=500",
        "--character-set-server=utf8mb4", "--collation-server=utf8mb4_general_ci",
    ])


def setup_databases(lay: Layout) -> None:
    sql = [f"CREATE USER IF NOT EXISTS 'testcloud'@'{HOST}' IDENTIFIED BY '{lay.password}'",
           f"GRANT ALL PRIVILEGES ON *.* TO 'testcloud'@'{HOST}'"]
    sql += [f"CREATE DATABASE IF NOT EXISTS {db} CHARACTER SET utf8mb4" for db in DATABASES]
    _sql(lay, ";\n".join(sql) + ";")


def rabbit_env(lay: Layout) -> dict[str, str]:
    base = lay.data / "rabbitmq"
    base.mkdir(parents=True, exist_ok=True)
    etc = lay.etc / "rabbitmq"
    return {
        "HOME": str(base),  # the erlang cookie lives here, not in root's home
        "RABBITMQ_NODENAME": "testcloud@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": HOST,
        "RABBITMQ_NODE_PORT": str(lay.port("rabbitmq")),
        "RABBITMQ_DIST_PORT": str(lay.port("rabbitmq-dist")),
        "ERL_EPMD_ADDRESS": HOST,
        "ERL_EPMD_PORT": str(lay.port("epmd")),
        "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(lay.logs / "rabbitmq"),
        "RABBITMQ_LOGS": "-",
        "RABBITMQ_CONFIG_FILE": str(etc / "rabbitmq.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(etc / "enabled_plugins"),
        "RABBITMQ_CONF_ENV_FILE": str(etc / "rabbitmq-env.conf"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(etc / "advanced.config"),
        # One scheduler, no busy-waiting: the CPU is shared.
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "+S 1:1 +sbwt none +sbwtdcpu none +sbwtdio none",
    }


def start_rabbitmq(lay: Layout) -> None:
    # Our own epmd on our own port, in the foreground, so it is tracked and stopped like the rest.
    _spawn(lay, "epmd", ["epmd", "-address", HOST, "-port", str(lay.port("epmd"))])
    _wait(lay, "epmd", lambda: procs.port_open(lay.port("epmd")), timeout=20, daemon="epmd")
    _spawn(lay, "rabbitmq", ["/usr/lib/rabbitmq/bin/rabbitmq-server"], env=rabbit_env(lay))


# --- OpenStack services -------------------------------------------------------------------------------------

def gunicorn(lay: Layout, name: str, app: str) -> None:
    port = lay.port("nova" if name == "nova-api" else name)
    # Each service finds its config through OS_<SERVICE>_CONFIG_DIR: RegionTwo's Glance has its own.
    env = {"OS_GLANCE_CONFIG_DIR": str(lay.etc / name)} if app == "glance" else None
    _spawn(lay, name, [
        _bin(lay, "gunicorn"), "--no-control-socket", "--workers", "1", "--worker-class", "gthread",
        "--threads", "4", "--bind", f"{HOST}:{port}", "--timeout", "600", "--graceful-timeout", "3",
        "--name", f"testcloud-{name}", f"testcloud.wsgi:{app}",
    ], env=env)


def keystone_db(lay: Layout) -> None:
    conf = str(lay.etc / "keystone" / "keystone.conf")
    manage = [_bin(lay, "keystone-manage"), "--config-file", conf]
    user = getpass.getuser()
    # The key repositories do not need the database: make them while the schema is created.
    with ThreadPoolExecutor(max_workers=3) as pool:
        jobs = [pool.submit(_run, lay, f"keystone-manage-{step}", [*manage, *argv]) for step, argv in (
            ("db_sync", ["db_sync"]),
            ("fernet_setup", ["fernet_setup", "--keystone-user", user, "--keystone-group", user]),
            ("credential_setup", ["credential_setup", "--keystone-user", user, "--keystone-group", user]))]
        for job in jobs:
            job.result()
    url = lay.auth_url
    _run(lay, "keystone-manage", [*manage, "bootstrap", "--bootstrap-password", lay.password,
                                  "--bootstrap-region-id", "RegionOne", "--bootstrap-admin-url", url,
                                  "--bootstrap-internal-url", url, "--bootstrap-public-url", url])


def glance_db(lay: Layout, name: str = "glance") -> None:
    _run(lay, f"{name}-manage", [_bin(lay, "glance-manage"), "--config-dir", str(lay.etc / name), "db_sync"])


def glance2_db(lay: Layout) -> None:
    glance_db(lay, "glance2")


def placement_db(lay: Layout) -> None:
    _run(lay, "placement-manage", [_bin(lay, "placement-manage"), "--config-dir", str(lay.etc / "placement"),
                                   "db", "sync"])


def nova_db(lay: Layout) -> None:
    manage = [_bin(lay, "nova-manage"), "--config-file", str(lay.etc / "nova" / "nova.conf")]
    _run(lay, "nova-manage", [*manage, "api_db", "sync"])
    _run(lay, "nova-manage", [*manage, "cell_v2", "map_cell0", "--database_connection", lay.db_url("nova_cell0")])
    _run(lay, "nova-manage", [*manage, "cell_v2", "create_cell", "--name", "cell1"], ok=(0, 2))  # 2: exists
    _run(lay, "nova-manage", [*manage, "db", "sync"])


def neutron_db(lay: Layout) -> None:
    etc = lay.etc / "neutron"
    _run(lay, "neutron-db-manage", [_bin(lay, "neutron-db-manage"), "--config-file", str(etc / "neutron.conf"),
                                    "--config-file", str(etc / "plugins" / "ml2" / "ml2_conf.ini"),
                                    "upgrade", "heads"])


def nova_daemon(lay: Layout, name: str) -> None:
    _spawn(lay, name, [_bin(lay, name), "--config-file", str(lay.etc / "nova" / "nova.conf")])


def wait_compute(lay: Layout, since: datetime, timeout: float) -> None:
    """Ready to boot: compute reported after `since`, its host is mapped, hypervisor and resource provider exist."""
    from testcloud.bootstrap import connect

    conn = connect(lay)

    def heartbeat() -> bool:
        return any(s.state == "up" and s.updated_at and _parse_time(s.updated_at) > since
                   for s in conn.compute.services(binary="nova-compute"))

    def hypervisor() -> bool:
        # The API hides compute nodes whose host is not mapped to a cell yet.
        return (any(h.state == "up" for h in conn.compute.hypervisors())
                and any(True for _ in conn.placement.resource_providers()))

    _wait(lay, "fresh nova-compute heartbeat", heartbeat, timeout=timeout, daemon="nova-compute")
    _once(lay, "discover-hosts", _run, lay, "nova-manage",
          [_bin(lay, "nova-manage"), "--config-file", str(lay.etc / "nova" / "nova.conf"),
           "cell_v2", "discover_hosts"])
    _wait(lay, "hypervisor and resource provider", hypervisor, timeout=timeout, daemon="nova-compute")


def _parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _restart_compute_on_change(lay: Layout) -> None:
    """A running nova-compute keeps the backend and guest forwards it started with: restart it on a change."""
    marker = lay.run / "backend"
    wanted = f"{lay.backend} {lay.guestfwd}".strip()
    running = marker.read_text().strip() if marker.exists() else "fake"
    if running != wanted and procs.running_pid(lay.run / "nova-compute.pid"):
        log.info("compute settings %r -> %r: restarting nova-compute", running, wanted)
        procs.stop("nova-compute", run_dir=lay.run)
    marker.write_text(f"{wanted}\n")
    log.info("backend: %s; guest forwards: %s", lay.backend, lay.guestfwd or "none")


def machines(lay: Layout) -> list[str]:
    """The qemu backend's machines (pid files qemu-<uuid>.pid)."""
    return sorted(p.name.removesuffix(".pid") for p in lay.run.glob("qemu-*.pid")) if lay.run.exists() else []


# --- commands -----------------------------------------------------------------------------------------------

def start(lay: Layout) -> None:
    t0 = time.monotonic()
    for d in (lay.etc, lay.logs, lay.run, lay.data):
        d.mkdir(parents=True, exist_ok=True)
    install_plugins(lay)
    configs.all_services(lay)
    _restart_compute_on_change(lay)
    from testcloud import bootstrap  # needs the venv's openstacksdk

    start_mariadb(lay)
    start_rabbitmq(lay)
    _wait(lay, "mariadb", lambda: (lay.run / "mysqld.sock").exists() and procs.port_open(lay.port("mariadb")),
          timeout=60, daemon="mariadb")
    setup_databases(lay)
    # Everything that can overlap does: the CPU spends a start-up mostly importing Python. Schemas are made
    # once (stamped); a warm start spawns every service right away.
    with ThreadPoolExecutor(max_workers=4) as pool:
        schemas = {name: pool.submit(_once, lay, f"{name}-db", func, lay)
                   for name, func in (("nova", nova_db), ("neutron", neutron_db), ("glance", glance_db),
                                      ("glance2", glance2_db), ("placement", placement_db))}
        _once(lay, "keystone-db", keystone_db, lay)
        gunicorn(lay, "keystone", "keystone")
        for name, app in (("glance", "glance"), ("glance2", "glance"), ("placement", "placement"),
                          ("neutron", "neutron"), ("nova-api", "nova")):
            schemas[name if name == "glance2" else app].result()
            gunicorn(lay, name, app)
        # nova-compute may come up before Placement answers: it retries every update_resources_interval.
        compute_started = datetime.now(UTC)
        nova_daemon(lay, "nova-compute")
        _wait(lay, "keystone", lambda: _http_ok(lay.auth_url), timeout=120, daemon="keystone")
        _once(lay, "identity", bootstrap.identity, lay)
        _once(lay, "identity-region-two", bootstrap.region_two, lay)
        # Conductor and scheduler die at start-up if their Placement credentials do not work yet.
        nova_daemon(lay, "nova-conductor")
        nova_daemon(lay, "nova-scheduler")
    _wait(lay, "rabbitmq", lambda: procs.port_open(lay.port("rabbitmq")), timeout=120, daemon="rabbitmq")
    for name, url in (("glance", lay.url("glance")), ("glance2", lay.url("glance2")),
                      ("placement", lay.url("placement")),
                      ("neutron", lay.url("neutron")), ("nova-api", lay.url("nova"))):
        _wait(lay, name, lambda url=url: _http_ok(url), timeout=180, daemon=name)  # type: ignore[misc]
    log.info("APIs answer after %.1f s", time.monotonic() - t0)
    wait_compute(lay, compute_started, timeout=180)
    log.info("compute ready after %.1f s", time.monotonic() - t0)
    first_time = not _stamp(lay, "resources").exists()
    bootstrap.resources(lay, first_time=first_time)
    if first_time:
        _stamp(lay, "resources").write_text(time.strftime("%F %T\n"))
    bootstrap.clouds_yaml(lay)
    log.info("test cloud ready in %.1f s, %d MiB RSS", time.monotonic() - t0, rss_mib(lay))
    print(f"clouds.yaml: {lay.clouds_yaml}  (clouds: snapbuild, snapbuild-admin; regions RegionOne, RegionTwo)")
    print(f"use it with: source {lay.env_file}")


def stop(lay: Layout) -> None:
    # API services and Nova daemons in parallel, then what they depend on.
    with ThreadPoolExecutor(max_workers=len(API_SERVICES) + len(NOVA_DAEMONS)) as pool:
        list(pool.map(lambda n: procs.stop(n, run_dir=lay.run), [*NOVA_DAEMONS, *API_SERVICES]))
    # Real guests (qemu backend) after nova-compute, so it does not record them as powered off; SIGTERM to
    # QEMU's process group (guestfwd helpers included) is immediate.
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda n: procs.stop(n, run_dir=lay.run, timeout=10), machines(lay)))
    for name in INFRA:
        procs.stop(name, run_dir=lay.run, timeout=30)
    for own in ("mysqld.sock", "mariadbd.own.pid"):  # mariadbd's own files, left only if it was killed
        (lay.run / own).unlink(missing_ok=True)
    leftovers = [p.name for p in lay.run.glob("*.pid")] if lay.run.exists() else []
    busy = [p for p in range(lay.port_base, lay.port_base + len(PORT_OFFSETS)) if procs.port_open(p)]
    if leftovers or busy:
        raise RuntimeError(f"after stop: pid files {leftovers}, ports still open {busy}")
    print("test cloud stopped")


def daemons() -> tuple[str, ...]:
    return (*INFRA, *API_SERVICES, *NOVA_DAEMONS)


def rss_mib(lay: Layout) -> int:
    """Sum of RSS over every process in our daemons' process groups."""
    groups = {pid for name in daemons() if (pid := procs.running_pid(lay.run / f"{name}.pid"))}
    return _rss_kib(groups) // 1024


def _rss_kib(groups: set[int]) -> int:
    total_kib = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) in groups:  # field 5: pgrp
                for line in (stat.parent / "status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total_kib += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total_kib


def status(lay: Layout) -> int:
    missing = 0
    for name in daemons():
        pid = procs.running_pid(lay.run / f"{name}.pid")
        print(f"{name:16} {pid if pid else 'not running'}")
        missing += pid is None
    print(f"RSS total: {rss_mib(lay)} MiB")
    for name in machines(lay):
        pid = procs.running_pid(lay.run / f"{name}.pid")
        rss = _rss_kib({pid}) // 1024 if pid else 0
        print(f"{name} {pid if pid else 'not running'} {rss} MiB")
    return 1 if missing else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="testcloud")
    parser.add_argument("command", choices=("start", "stop", "status"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="testcloud %(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    for noisy in ("openstack", "keystoneauth", "urllib3", "stevedore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    lay = from_env()
    if args.command == "start":
        start(lay)
    elif args.command == "stop":
        stop(lay)
    else:
        return status(lay)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where the test cloud lives and which ports it uses, read once from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REGION = "RegionOne"
# A second region in the same Keystone: its own Glance (own database and store), as a catalogue's copies and
# rotation need; Nova and Neutron are RegionOne's, registered for it too (one set of servers, seen from both).
REGION_TWO = "RegionTwo"
HOST = "127.0.0.1"


@dataclass(frozen=True, kw_only=True)
class Layout:
    state: Path  # everything mutable: venv, databases, logs, pid files, clouds.yaml
    repo_cloud_dir: Path  # tests/cloud in the checkout (the plugins' real code)
    port_base: int
    password: str  # one password for DB, service users and test users: it is a throwaway local cloud
    backend: str = "mixed"  # what runs a server: "fake" (directories), "qemu" (real TCG VMs) or "mixed" (by flavor)
    guestfwd: str = ""  # qemu: GUEST_IP:PORT=HOST_IP:PORT,... host services guests reach (mirrors)

    @property
    def venv(self) -> Path:
        return self.state / "venv"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def etc(self) -> Path:
        return self.state / "etc"

    @property
    def logs(self) -> Path:
        return self.state / "log"

    @property
    def run(self) -> Path:
        return self.state / "run"

    @property
    def data(self) -> Path:
        return self.state / "data"

    @property
    def clouds_yaml(self) -> Path:
        return self.state / "clouds.yaml"

    @property
    def env_file(self) -> Path:
        return self.state / "env"

    def port(self, name: str) -> int:
        return self.port_base + PORT_OFFSETS[name]

    def url(self, name: str) -> str:
        return f"http://{HOST}:{self.port(name)}"

    @property
    def auth_url(self) -> str:
        return self.url("keystone") + "/v3"

    @property
    def db_url_prefix(self) -> str:
        return f"mysql+pymysql://testcloud:{self.password}@{HOST}:{self.port('mariadb')}"

    def db_url(self, database: str) -> str:
        return f"{self.db_url_prefix}/{database}?charset=utf8mb4"

    @property
    def transport_url(self) -> str:
        return f"rabbit://testcloud:{self.password}@{HOST}:{self.port('rabbitmq')}/"


PORT_OFFSETS = {
    "keystone": 0,
    "glance": 1,
    "placement": 2,
    "nova": 3,
    "neutron": 4,
    "mariadb": 5,
    "rabbitmq": 6,
    "epmd": 7,
    "rabbitmq-dist": 8,
    "glance2": 9,
}


def from_env() -> Layout:
    here = Path(__file__).resolve().parent.parent
    return Layout(
        state=Path(os.environ.get("SNAPBUILD_TESTCLOUD_DIR", "/var/lib/snapbuild-testcloud")),
        repo_cloud_dir=here,
        port_base=int(os.environ.get("SNAPBUILD_TESTCLOUD_PORT_BASE", "28700")),
        password=os.environ.get("SNAPBUILD_TESTCLOUD_PASSWORD", "snapbuild-testcloud"),
        backend=os.environ.get("SNAPBUILD_TESTCLOUD_BACKEND") or "mixed",
        guestfwd=os.environ.get("SNAPBUILD_TESTCLOUD_GUESTFWD", ""),
    )

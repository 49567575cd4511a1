"""What a test cloud machine is made from: the driver collects it from the Nova instance, a Backend runs it."""

from __future__ import annotations

from dataclasses import dataclass

RUNNING = "running"
SHUTDOWN = "shutdown"


@dataclass(frozen=True, kw_only=True)
class Boot:
    """What a machine is made from (the driver collects it from the instance)."""

    name: str  # Nova's instance name (instance-0000000N)
    display_name: str  # the server's name as its owner gave it
    hostname: str
    memory_mb: int
    vcpus: int
    root_gb: int
    user_data: bytes | None  # decoded; may be gzip (cloud-init handles it)
    public_keys: tuple[str, ...]
    addresses: tuple[str, ...]  # fixed and floating IPv4 addresses to forward port 22 from
    backend: str = "fake"  # the flavor's extra spec testcloud:backend (mixed mode): "fake" or "qemu"

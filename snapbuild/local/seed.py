"""cloud-init seeds for a local VM: NoCloud (`cidata`) or ConfigDrive (`config-2`), same user-data either way.

The ConfigDrive layout is the one a real OpenStack config drive has, so a local build exercises the same
datasource as the cloud path when asked to.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from snapbuild.host.commands import require_tools, run

log = logging.getLogger(__name__)

SeedKind = Literal["nocloud", "configdrive"]
LABELS: dict[str, str] = {"nocloud": "cidata", "configdrive": "config-2"}


@dataclass(frozen=True, kw_only=True)
class SeedSpec:
    user_data: str
    hostname: str
    kind: SeedKind = "nocloud"
    # A new instance-id per boot makes cloud-init treat every boot of a fresh seed as a first boot.
    instance_id: str = field(default_factory=lambda: f"iid-snapbuild-{uuid.uuid4()}")
    public_keys: tuple[str, ...] = ()     # ConfigDrive's meta_data public_keys (cloud-init adds them)


def seed_files(spec: SeedSpec) -> dict[str, bytes]:
    """Relative path → content of the seed volume."""
    if spec.kind == "nocloud":
        meta = f"instance-id: {spec.instance_id}\nlocal-hostname: {spec.hostname}\n"
        return {"user-data": spec.user_data.encode(), "meta-data": meta.encode()}
    if spec.kind == "configdrive":
        meta_data = {
            "uuid": spec.instance_id,
            "hostname": spec.hostname,
            "name": spec.hostname,
            "availability_zone": "nova",
            "public_keys": {f"key-{i}": key for i, key in enumerate(spec.public_keys)},
        }
        return {"openstack/latest/meta_data.json": json.dumps(meta_data, indent=1).encode(),
                "openstack/latest/user_data": spec.user_data.encode()}
    raise ValueError(f"unknown seed kind {spec.kind!r}")


def write_seed(spec: SeedSpec, iso: Path) -> Path:
    """Write the seed as an ISO 9660 image (Joliet + Rock Ridge) labelled for its datasource."""
    require_tools("xorriso", hint="apt-get install xorriso")
    staging = Path(tempfile.mkdtemp(prefix="seed-", dir=iso.parent))  # beside the ISO, inside the build's 0700 dir
    try:
        for rel, data in seed_files(spec).items():
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        run(["xorriso", "-as", "mkisofs", "-quiet", "-o", str(iso), "-V", LABELS[spec.kind],
             "-J", "-r", str(staging)], timeout=60)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    iso.chmod(0o600)   # the user-data may carry a private host key
    log.info("seed %s (%s, instance-id %s)", iso, spec.kind, spec.instance_id)
    return iso

"""A catalogue target with `builder: local` or `builder: chroot`: the image is built on this host from the target's
base file, by the same builder as `snapbuild local` / `snapbuild chroot` (same recipe, provisioner and sealing
policy), then uploaded to the target's Glance as `snapbuild upload` does (streamed, verified, the manifest's
provenance and content digest recorded). For clouds whose servers nothing can reach, or where builds must not run
in the cloud at all.

The only part of the catalogue that reaches the host builders: apply.py is handed `build_on_host` by the CLI.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from snapbuild.catalogue.model import HostBuilt, HostImage, Target
from snapbuild.run.monitor import Monitor, TerminalMonitor

if TYPE_CHECKING:
    from snapbuild.openstack.cloud import Cloud
    from snapbuild.plan import Plan

log = logging.getLogger(__name__)


def build_on_host(target: Target, plan: Plan, image: HostImage, monitor: Monitor, cloud: Cloud,
                  work_root: Path | None = None) -> HostBuilt:
    """Build into a temporary directory on this host, upload, and remove the local files whatever happens."""
    assert target.on_host and target.base_file
    workdir = Path(tempfile.mkdtemp(prefix=f"snapbuild-{plan.recipe_name}-", dir=work_root))
    try:
        output = workdir / "image.qcow2"
        _build(target, plan, Path(target.base_file), output, monitor)
        return _upload(target, plan, image, output, monitor, cloud)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _build(target: Target, plan: Plan, base: Path, output: Path, monitor: Monitor) -> None:
    options = dict(target.build)
    if target.builder == "local":
        from snapbuild.local.build import LocalSettings, run_local

        run_local(plan, LocalSettings(base=base, output=output, **options), monitor=monitor)
    else:
        from snapbuild.chroot.build import ChrootSettings, build_chroot

        build_chroot(plan, ChrootSettings(base=base, output=output, **options), monitor)


def _upload(target: Target, plan: Plan, image: HostImage, output: Path, monitor: Monitor, cloud: Cloud) -> HostBuilt:
    from snapbuild.openstack.upload import UploadSettings, upload_image

    settings = UploadSettings(file=output, name=image.name, cloud=target.cloud, region=target.region,
                              recipe=plan.recipe_name, recipe_properties=dict(plan.image.properties),
                              min_disk_gb=plan.image.min_disk_gb, min_ram_mb=plan.image.min_ram_mb,
                              properties=dict(image.properties), visibility=image.visibility)
    reporter = monitor if isinstance(monitor, TerminalMonitor) else TerminalMonitor()
    result = upload_image(settings, reporter, cloud=cloud)
    return HostBuilt(image_id=result.image_id, properties=dict(result.properties))

"""`snapbuild upload` against real (multi-store) Glance: properties, digests, idempotence, interruption."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from openstack.connection import Connection

from snapbuild.openstack.cloud import Cloud
from snapbuild.openstack.upload import UploadSettings, upload_image
from snapbuild.run.context import Reporter

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def qcow2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A qcow2 holding 6 MiB of random data, so the digest is of something real."""
    folder = tmp_path_factory.mktemp("upload")
    raw = folder / "disk.raw"
    raw.write_bytes(os.urandom(6 << 20))
    out = folder / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(out)], check=True)
    raw.unlink()
    return out


@pytest.fixture(scope="module")
def cloud(conn: Connection, cloud_names: Any) -> Iterator[Cloud]:
    adapter = Cloud.connect(cloud_names.member, os.environ.get("OS_REGION_NAME"), poll_interval=1.0)
    yield adapter
    adapter.close()


@pytest.fixture
def images_named(admin_conn: Connection) -> Callable[[str], list[Any]]:
    def find(name: str) -> list[Any]:
        return [i for i in admin_conn.image.images(name=name)]
    return find


@pytest.fixture
def remove_images(conn: Connection) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        for image in conn.image.images(name=name):
            conn.image.delete_image(image.id, ignore_missing=True)


def _settings(path: Path, name: str, **kw: Any) -> UploadSettings:
    values: dict[str, Any] = {"file": path, "name": name, "recipe": "docker-ce",
                              "recipe_properties": {"os_distro": "debian", "hw_disk_bus": "virtio"},
                              "properties": {"sbtest": "1"}, "min_disk_gb": 2, "min_ram_mb": 512,
                              "progress_tty": False, "timeout_active": 120}
    values.update(kw)
    return UploadSettings(**values)


def test_upload_to_multistore_glance_with_properties_and_digests(cloud: Cloud, admin_conn: Connection, qcow2: Path,
                                                                  unique_name: str, remove_images: list[str],
                                                                  isolated_state: Path) -> None:
    remove_images.append(unique_name)
    out = io.StringIO()
    result = upload_image(_settings(qcow2, unique_name), Reporter(out), cloud=cloud)

    data = qcow2.read_bytes()
    image = admin_conn.image.get_image(result.image_id)
    assert image.status == "active" and image.disk_format == "qcow2" and image.size == len(data)
    assert image.hash_algo == "sha512" and image.hash_value == hashlib.sha512(data).hexdigest()
    assert image.checksum in (None, hashlib.md5(data).hexdigest())
    assert image.min_disk == 2 and image.min_ram == 512
    props = admin_conn.image.get(f"/images/{image.id}").json()      # the record as Glance holds it
    assert props["os_distro"] == "debian" and props["hw_disk_bus"] == "virtio" and props["sbtest"] == "1"
    assert props["snapbuild_source_sha256"] == hashlib.sha256(data).hexdigest()
    assert "snapbuild" not in (image.tags or [])                        # finished: the sweep's tag is gone
    assert "snapbuild_installation_id" not in props and "snapbuild_expires_at" not in props
    # Not a terminal: plain progress lines, the first with the size, the last with what moved.
    mib = f"{len(data) / 2**20:.1f} MiB"
    assert f"upload: started ({mib})" in out.getvalue() and f"upload: done, {mib} in " in out.getvalue()


def test_same_file_same_name_uploads_nothing_the_second_time(cloud: Cloud, qcow2: Path, unique_name: str,
                                                             images_named: Callable[[str], list[Any]],
                                                             remove_images: list[str], isolated_state: Path) -> None:
    remove_images.append(unique_name)
    first = upload_image(_settings(qcow2, unique_name), Reporter(io.StringIO()), cloud=cloud)
    out = io.StringIO()
    second = upload_image(_settings(qcow2, unique_name), Reporter(out), cloud=cloud)
    assert second.already and second.image_id == first.image_id
    assert [i.id for i in images_named(unique_name)] == [first.image_id]
    assert f"already uploaded: {first.image_id}" in out.getvalue()


def test_ctrl_c_mid_stream_leaves_no_image(cloud: Cloud, qcow2: Path, unique_name: str, monkeypatch: pytest.MonkeyPatch,
                                           images_named: Callable[[str], list[Any]], remove_images: list[str],
                                           isolated_state: Path) -> None:
    import snapbuild.openstack.upload as upload_module

    remove_images.append(unique_name)
    seen: list[int] = []

    class Interrupting(upload_module.HashingReader):
        def read(self, n: int = -1) -> bytes:
            chunk = super().read(n)
            seen.append(self.sent)
            if self.sent >= 2 << 20:
                raise KeyboardInterrupt
            return chunk

    monkeypatch.setattr(upload_module, "HashingReader", Interrupting)
    with pytest.raises(KeyboardInterrupt):
        upload_image(_settings(qcow2, unique_name), Reporter(io.StringIO()), cloud=cloud)
    assert seen[-1] < qcow2.stat().st_size              # really mid-stream
    assert images_named(unique_name) == []               # the partial image was deleted at once


def test_sigint_to_an_uploading_process_leaves_no_image(qcow2: Path, unique_name: str, tmp_path: Path,
                                                        images_named: Callable[[str], list[Any]],
                                                        remove_images: list[str]) -> None:
    remove_images.append(unique_name)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SNAPBUILD_STATE_DIR": str(tmp_path / "state")}
    proc = subprocess.Popen([sys.executable, "-m", "tests.slowupload", str(qcow2), unique_name], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert b"STREAMING" in line, proc.stderr.read() if proc.stderr else b""
        assert images_named(unique_name), "the partial image exists while streaming"
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    deadline = time.monotonic() + 60
    while images_named(unique_name) and time.monotonic() < deadline:
        time.sleep(1)
    assert images_named(unique_name) == []
    ledgers = list((tmp_path / "state" / "builds").glob("*.json")) if (tmp_path / "state" / "builds").is_dir() else []
    assert ledgers == []


def test_interoperable_import_stages_then_imports(cloud: Cloud, admin_conn: Connection, qcow2: Path,
                                                  unique_name: str, remove_images: list[str],
                                                  isolated_state: Path) -> None:
    remove_images.append(unique_name)
    result = upload_image(_settings(qcow2, unique_name, use_import=True), Reporter(io.StringIO()), cloud=cloud)
    image = admin_conn.image.get_image(result.image_id)
    assert image.status == "active" and image.hash_value == hashlib.sha512(qcow2.read_bytes()).hexdigest()
    assert "snapbuild" not in (image.tags or [])

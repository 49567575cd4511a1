"""A real container registry on 127.0.0.1 (Debian's docker-registry) holding an OCI image the test builds itself.

The image is made here byte by byte (one gzip layer with its files, a config, a manifest, an OCI layout) and
pushed with skopeo, so nothing comes from a public registry. An image that must run (a pod sandbox's pause
image) gets an executable and an entrypoint: a static binary from a Debian package on this host.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import socket
import subprocess
import tarfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Registry:
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@contextmanager
def registry(workdir: Path, host: str = "127.0.0.1", port: int = 0) -> Iterator[Registry]:
    """docker-registry serving from `workdir` on `port` (0: a free one) of `host`; stopped (by its PID) on exit."""
    port = port or _free_port(host)
    config = workdir / "registry.yml"
    (workdir / "storage").mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps({
        "version": 0.1, "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(workdir / "storage")}, "delete": {"enabled": True}},
        "http": {"addr": f"{host}:{port}"},
    }))
    log = (workdir / "registry.log").open("wb")
    proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://{host}:{port}/v2/", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"docker-registry did not answer: {(workdir / 'registry.log').read_text()}")
                time.sleep(0.2)
        yield Registry(host=host, port=port)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _blob(layout: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def oci_layout(layout: Path, files: Mapping[str, bytes], tag: str, *, executables: Mapping[str, bytes] | None = None,
               entrypoint: Sequence[str] | None = None) -> str:
    """Write an OCI image layout holding one image (a layer with `files`, and `executables` with mode 0755)
    tagged `tag`, whose config runs `entrypoint` (else only names a Cmd); its manifest digest."""
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    entries = {name: (content, 0o644) for name, content in files.items()}
    entries.update({name: (content, 0o755) for name, content in (executables or {}).items()})
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        folders: set[str] = set()
        for name, (content, mode) in sorted(entries.items()):
            parts = name.strip("/").split("/")
            for depth in range(1, len(parts)):   # parent folders first, as a runtime unpacking the layer expects
                folder = "/".join(parts[:depth])
                if folder not in folders:
                    folders.add(folder)
                    directory = tarfile.TarInfo(folder)
                    directory.type, directory.mode, directory.mtime = tarfile.DIRTYPE, 0o755, 0
                    tar.addfile(directory)
            info = tarfile.TarInfo(name.strip("/"))
            info.size, info.mode, info.mtime = len(content), mode, 0
            tar.addfile(info, io.BytesIO(content))
    layer = raw.getvalue()
    run: dict[str, object] = {"Entrypoint": list(entrypoint)} if entrypoint else {"Cmd": ["/hello.txt"]}
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": run,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(layer).hexdigest()}"]},
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **_blob(layout, config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    **_blob(layout, gzip.compress(layer, mtime=0))}],
    }).encode()
    described = {"mediaType": "application/vnd.oci.image.manifest.v1+json", **_blob(layout, manifest),
                 "annotations": {"org.opencontainers.image.ref.name": tag}}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [described]}))
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    return str(described["digest"])


def push(layout: Path, tag: str, destination: str) -> None:
    """skopeo copy oci:LAYOUT:TAG docker://DESTINATION (plain HTTP: the registry is on loopback)."""
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:{tag}",
                    f"docker://{destination}"], check=True, capture_output=True, timeout=120)

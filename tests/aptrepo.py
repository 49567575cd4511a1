"""Signed APT repositories on 127.0.0.1 holding stand-in packages the test builds, for repositories this machine
cannot reach (download.docker.com, pkgs.k8s.io).

A stand-in is a real .deb (dpkg-deb) with the upstream package's name and version, shipping small scripts in
place of the upstream binaries; its dependencies are real Debian packages (containerd). The repository is
signed with a key made for the run, so apt checks signatures exactly as it does against upstream. The mirror
profile maps the upstream URL onto it and names the run's key as the mirror's own (tests/standins.py), the way an
operator whose mirror re-signs does: the recipes stay as they are.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import re
import subprocess
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass(frozen=True)
class StandIn:
    name: str
    version: str
    files: Mapping[str, str] = field(default_factory=dict)      # absolute path -> content (scripts get 0755)
    depends: str = ""
    postinst: str = ""


def build_deb(standin: StandIn, workdir: Path) -> Path:
    tree = workdir / f"{standin.name}-tree"
    (tree / "DEBIAN").mkdir(parents=True)
    control = [f"Package: {standin.name}", f"Version: {standin.version}", "Architecture: amd64",
               "Maintainer: snapbuild tests <tests@snapbuild.invalid>", "Section: misc", "Priority: optional"]
    if standin.depends:
        control.append(f"Depends: {standin.depends}")
    control.append(f"Description: stand-in for {standin.name} (snapbuild test repository)")
    (tree / "DEBIAN" / "control").write_text("\n".join(control) + "\n")
    if standin.postinst:
        (tree / "DEBIAN" / "postinst").write_text("#!/bin/sh\nset -e\n" + standin.postinst + "\n")
        (tree / "DEBIAN" / "postinst").chmod(0o755)
    for path, content in standin.files.items():
        target = tree / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
        target.chmod(0o755 if content.startswith("#!") else 0o644)
    deb = workdir / f"{standin.name}_{re.sub(r'^[0-9]+:', '', standin.version)}_amd64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(deb)], check=True,
                   capture_output=True)
    return deb


@dataclass(frozen=True)
class SigningKey:
    gnupghome: Path
    fingerprint: str

    def gpg(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["gpg", "--batch", "--homedir", str(self.gnupghome), *args], check=True,
                              capture_output=True)

    def armored_public_key(self) -> bytes:
        return self.gpg("--armor", "--export", self.fingerprint).stdout


def signing_key(gnupghome: Path) -> SigningKey:
    gnupghome.mkdir(mode=0o700, parents=True)
    subprocess.run(["gpg", "--batch", "--homedir", str(gnupghome), "--passphrase", "", "--quick-gen-key",
                    "snapbuild test repository <tests@snapbuild.invalid>", "ed25519", "sign", "1d"],
                   check=True, capture_output=True)
    listing = subprocess.run(["gpg", "--batch", "--homedir", str(gnupghome), "--with-colons", "--list-keys"],
                             check=True, capture_output=True, text=True).stdout
    stop_agent(gnupghome)
    return SigningKey(gnupghome, re.findall(r"^fpr:+([0-9A-F]{40}):", listing, flags=re.MULTILINE)[0])


def stop_agent(gnupghome: Path) -> None:
    """gpg starts a gpg-agent daemon for secret-key work that outlives the test: stop it (the next signing
    starts it again), so a run leaves no process behind."""
    subprocess.run(["gpgconf", "--homedir", str(gnupghome), "--kill", "gpg-agent"], check=False,
                   capture_output=True)


def _stanza(deb: Path, filename: str) -> str:
    control = subprocess.run(["dpkg-deb", "-f", str(deb)], check=True, capture_output=True, text=True).stdout
    data = deb.read_bytes()
    return (control.rstrip("\n") + f"\nFilename: {filename}\nSize: {len(data)}\n"
            f"SHA256: {hashlib.sha256(data).hexdigest()}\n")


def _release(folder: Path, indexes: list[str], key: SigningKey, **fields: str) -> None:
    lines = ["Origin: snapbuild-test", "Label: snapbuild-test", *(f"{k}: {v}" for k, v in fields.items()),
             f"Date: {formatdate(usegmt=True)}", "Architectures: amd64", "SHA256:"]
    for rel in indexes:
        data = (folder / rel).read_bytes()
        lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data)} {rel}")
    (folder / "Release").write_text("\n".join(lines) + "\n")
    key.gpg("--yes", "--local-user", key.fingerprint, "--clearsign", "-o", str(folder / "InRelease"),
            str(folder / "Release"))
    stop_agent(key.gnupghome)


def _write_packages(folder: Path, stanzas: list[str]) -> list[str]:
    text = "\n".join(stanzas).encode()
    (folder / "Packages").write_bytes(text)
    (folder / "Packages.gz").write_bytes(gzip.compress(text, mtime=0))
    return ["Packages", "Packages.gz"]


def dists_repository(root: Path, debs: list[Path], *, suite: str, component: str, key: SigningKey) -> None:
    """A repository laid out like download.docker.com/linux/<distro>: dists/<suite>/<component>/binary-amd64."""
    (root / "pool").mkdir(parents=True, exist_ok=True)
    stanzas = []
    for deb in debs:
        os.link(deb, root / "pool" / deb.name)
        stanzas.append(_stanza(deb, f"pool/{deb.name}"))
    dist = root / "dists" / suite
    binary = dist / component / "binary-amd64"
    binary.mkdir(parents=True)
    indexes = [f"{component}/binary-amd64/{name}" for name in _write_packages(binary, stanzas)]
    _release(dist, indexes, key, Suite=suite, Codename=suite, Components=component)


def flat_repository(root: Path, debs: list[Path], *, key: SigningKey) -> None:
    """A flat repository like pkgs.k8s.io/core:/stable:/vX.Y/deb/ (`Suites: /`)."""
    root.mkdir(parents=True, exist_ok=True)
    stanzas = []
    for deb in debs:
        os.link(deb, root / deb.name)
        stanzas.append(_stanza(deb, f"./{deb.name}"))
    _release(root, _write_packages(root, stanzas), key)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serve(root: Path, host: str = "127.0.0.1", port: int = 0) -> Iterator[int]:
    """Serve `root` over HTTP on `port` (0: a free one) of `host`; yields the port."""
    server = ThreadingHTTPServer((host, port), functools.partial(_QuietHandler, directory=str(root)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="apt-repo", daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)

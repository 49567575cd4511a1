"""Ephemeral SSH keys: the builder's client key, the host key handed to cloud-init, and host-key pins.

snapbuild generates the builder VM's host key itself, hands it to cloud-init (`ssh_keys:`) and pins it
(DESIGN rule 6); the key block cloud-init prints on the console is the fallback pin. Private keys never
reach a log (DESIGN rule 5): `KeyPair.__repr__` hides them.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import io
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# Key types OpenSSH and cloud-init print; anything else on a console line is noise.
_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
              "ssh-rsa", "ssh-dss", "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")
_KEY_RE = re.compile(r"(?<![\w@.-])(" + "|".join(re.escape(t) for t in _KEY_TYPES) + r")\s+([A-Za-z0-9+/]+={0,2})")
_BEGIN = "-----BEGIN SSH HOST KEY KEYS-----"
_END = "-----END SSH HOST KEY KEYS-----"


@dataclass(frozen=True, kw_only=True)
class KeyPair:
    """An OpenSSH key pair as text: `private_openssh` is the `-----BEGIN OPENSSH PRIVATE KEY-----` block."""

    private_openssh: str = field(repr=False)
    public_openssh: str

    @classmethod
    def generate(cls, comment: str = "snapbuild") -> KeyPair:
        """A fresh Ed25519 pair (cryptography, since paramiko cannot generate Ed25519)."""
        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption()).decode()
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH).decode()
        return cls(private_openssh=private, public_openssh=f"{public} {comment}" if comment else public)

    def to_paramiko(self) -> paramiko.PKey:
        """The private key as a paramiko key, for authentication."""
        return paramiko.Ed25519Key(file_obj=io.StringIO(self.private_openssh))

    @property
    def fingerprint_sha256(self) -> str:
        """`SHA256:…` exactly as `ssh-keygen -l` prints it."""
        return fingerprint(self.public_openssh)

    @property
    def key_type(self) -> str:
        return self.public_openssh.split()[0]

    def cloud_init_host_keys(self) -> dict[str, str]:
        """The `ssh_keys:` entries of cloud-config that make this pair the VM's host key."""
        name = {"ssh-ed25519": "ed25519", "ecdsa-sha2-nistp256": "ecdsa", "ssh-rsa": "rsa"}[self.key_type]
        return {f"{name}_private": self.private_openssh, f"{name}_public": self.public_openssh}

    @contextlib.contextmanager
    def write_private(self, directory: str | Path | None = None) -> Iterator[Path]:
        """The private key as a 0600 file inside a fresh 0700 directory, both removed on exit.

        For tools that need a file (ssh, rsync -e ssh). `directory` is where the 0700 directory is made.
        """
        tmp = Path(tempfile.mkdtemp(prefix="snapbuild-key-", dir=directory))  # mkdtemp makes it 0700
        try:
            path = tmp / "id_ed25519"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.private_openssh)
            yield path
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _blob(public_openssh: str) -> tuple[str, bytes]:
    parts = public_openssh.split()
    if len(parts) < 2:
        raise ValueError("not an OpenSSH public key (expected 'TYPE BASE64 [comment]')")
    try:
        return parts[0], base64.b64decode(parts[1], validate=True)
    except binascii.Error:
        raise ValueError("not an OpenSSH public key (bad base64)") from None


def fingerprint(public_openssh: str) -> str:
    """SHA256 fingerprint of an OpenSSH public key line, as `ssh-keygen -l` shows it."""
    _, blob = _blob(public_openssh)
    return fingerprint_of_blob(blob)


def fingerprint_of_blob(blob: bytes) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def public_key_blob(public_openssh: str) -> tuple[str, bytes]:
    """(key type, wire-format blob) of an OpenSSH public key line; the blob is what a pin compares."""
    return _blob(public_openssh)


def _is_valid_public_key(public_openssh: str) -> bool:
    try:
        key_type, blob = _blob(public_openssh)
        paramiko.PKey.from_type_string(key_type, blob)
    except Exception:  # noqa: BLE001 - any parse failure means "not a key"
        return False
    return True


def parse_console_host_keys(console: str) -> tuple[str, ...]:
    """Public host keys from the last complete `SSH HOST KEY KEYS` block cloud-init printed on a console.

    Console lines may carry prefixes (`[  12.3] cloud-init[611]: `, `ci-info: `), carriage returns and
    interleaved kernel messages; only `TYPE BASE64` pairs inside the block count. The last block wins
    (a later boot prints a new one). Returns `TYPE BASE64` strings, no comment; empty when none is found.
    """
    text = console.replace("\r", "")
    end = text.rfind(_END)
    if end < 0:
        return ()
    begin = text.rfind(_BEGIN, 0, end)
    if begin < 0:
        return ()
    keys: list[str] = []
    for line in text[begin + len(_BEGIN):end].splitlines():
        match = _KEY_RE.search(line)
        if match is None:
            continue
        key = f"{match.group(1)} {match.group(2)}"
        if not _is_valid_public_key(key):
            continue  # a line mangled by interleaved console output: not a usable pin
        if key not in keys:
            keys.append(key)
    return tuple(keys)

"""Ephemeral keys: generation, fingerprints, the 0600 key file, and the console host-key block."""

from __future__ import annotations

import shutil
import stat
import subprocess

import paramiko
import pytest

from snapbuild.sshkeys import KeyPair, fingerprint, parse_console_host_keys

HOST_ED25519 = KeyPair.generate("root@builder")
HOST_ECDSA = "ecdsa-sha2-nistp256 " + paramiko.ECDSAKey.generate().get_base64()


def test_generated_private_key_loads_in_paramiko_and_matches_the_public_key() -> None:
    pair = KeyPair.generate()
    key = pair.to_paramiko()
    assert isinstance(key, paramiko.Ed25519Key)
    assert pair.public_openssh.split()[:2] == [key.get_name(), key.get_base64()]
    assert pair.private_openssh.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")


def test_each_generated_pair_is_new() -> None:
    assert KeyPair.generate().public_openssh != KeyPair.generate().public_openssh


def test_repr_never_shows_the_private_key() -> None:
    pair = KeyPair.generate()
    body = pair.private_openssh.splitlines()[1]
    assert body not in repr(pair)
    assert "PRIVATE" not in repr(pair)


def test_fingerprint_has_ssh_keygen_format_and_matches_paramiko() -> None:
    pair = KeyPair.generate()
    fp = pair.fingerprint_sha256
    assert fp.startswith("SHA256:")
    assert not fp.endswith("=")
    assert len(fp) == len("SHA256:") + 43  # 32 bytes of SHA-256, unpadded base64
    assert fp == pair.to_paramiko().fingerprint


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen (openssh-client) not installed")
def test_fingerprint_matches_ssh_keygen() -> None:
    pair = KeyPair.generate()
    with pair.write_private() as path:
        shown = subprocess.run(["ssh-keygen", "-l", "-f", str(path)], capture_output=True, text=True,
                               check=True).stdout
    assert shown.split()[1] == pair.fingerprint_sha256


def test_fingerprint_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        fingerprint("ssh-ed25519")
    with pytest.raises(ValueError):
        fingerprint("ssh-ed25519 !!!notbase64!!!")


def test_write_private_makes_a_0600_file_in_a_0700_dir_and_removes_both() -> None:
    pair = KeyPair.generate()
    with pair.write_private() as path:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert path.read_text() == pair.private_openssh
        loaded = paramiko.Ed25519Key(filename=str(path))
        assert loaded.get_base64() == pair.public_openssh.split()[1]
    assert not path.exists()
    assert not path.parent.exists()


def test_write_private_removes_the_file_when_the_block_fails() -> None:
    pair = KeyPair.generate()
    with pytest.raises(RuntimeError), pair.write_private() as path:
        raise RuntimeError("boom")
    assert not path.parent.exists()


def test_cloud_init_host_keys_names_the_ed25519_entries() -> None:
    entries = HOST_ED25519.cloud_init_host_keys()
    assert entries == {"ed25519_private": HOST_ED25519.private_openssh,
                       "ed25519_public": HOST_ED25519.public_openssh}


def _console(ed25519: str, ecdsa: str) -> str:
    # Shaped like a real Ubuntu/Debian serial console: kernel lines interleaved, CRLF, the fingerprint block
    # logged through `logger -s -t cloud-init`, the key block echoed raw, and a systemd-prefixed variant.
    return (
        "[   21.402117] cloud-init[613]: Cloud-init v. 24.1.3 running 'modules:final' at Sun, 22 Nov 2026\r\n"
        "<14>Nov 22 01:02:03 cloud-init: #############################################################\r\n"
        "<14>Nov 22 01:02:03 cloud-init: -----BEGIN SSH HOST KEY FINGERPRINTS-----\r\n"
        f"<14>Nov 22 01:02:03 cloud-init: 256 {HOST_ED25519.fingerprint_sha256} root@builder (ED25519)\r\n"
        "<14>Nov 22 01:02:03 cloud-init: -----END SSH HOST KEY FINGERPRINTS-----\r\n"
        "-----BEGIN SSH HOST KEY KEYS-----\r\n"
        f"{ecdsa} root@builder\r\n"
        "[   21.913370] random: crng init done\r\n"
        f"[   21.913371] cloud-init[613]: {ed25519} root@builder\r\n"
        "-----END SSH HOST KEY KEYS-----\r\n"
        "[   22.001000] cloud-init[613]: Cloud-init v. 24.1.3 finished at Sun, 22 Nov 2026 01:02:04 +0000.\r\n"
    )


def test_console_block_gives_every_host_key_without_prefixes_or_comments() -> None:
    keys = parse_console_host_keys(_console(HOST_ED25519.public_openssh.rsplit(" ", 1)[0], HOST_ECDSA))
    assert keys == (HOST_ECDSA, HOST_ED25519.public_openssh.rsplit(" ", 1)[0])
    assert fingerprint(keys[1]) == HOST_ED25519.fingerprint_sha256


def test_console_block_of_the_last_boot_wins() -> None:
    old = KeyPair.generate().public_openssh.rsplit(" ", 1)[0]
    new = HOST_ED25519.public_openssh.rsplit(" ", 1)[0]
    console = _console(old, HOST_ECDSA) + "reboot: Restarting system\r\n" + _console(new, HOST_ECDSA)
    assert parse_console_host_keys(console) == (HOST_ECDSA, new)


def test_console_without_a_complete_block_gives_nothing() -> None:
    assert parse_console_host_keys("") == ()
    whole = _console(HOST_ED25519.public_openssh, HOST_ECDSA)
    assert parse_console_host_keys(whole.split("-----END SSH HOST KEY KEYS-----")[0]) == ()


def test_console_line_mangled_by_interleaved_output_is_not_a_pin() -> None:
    good = HOST_ED25519.public_openssh.rsplit(" ", 1)[0]
    cut = HOST_ECDSA[:60]  # the kernel wrote over the rest of the line
    console = f"-----BEGIN SSH HOST KEY KEYS-----\n{cut}[  3.1] usb 1-1: new device\n{good}\n" \
              "-----END SSH HOST KEY KEYS-----\n"
    assert parse_console_host_keys(console) == (good,)

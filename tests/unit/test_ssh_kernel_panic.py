"""A machine whose kernel panicked never answers SSH: the wait says so at once instead of at its deadline."""

from __future__ import annotations

import socket
import time

import pytest

from snapbuild.errors import BuildError
from snapbuild.guest import ssh
from snapbuild.sshkeys import KeyPair


def test_kernel_panic_on_the_console_ends_the_ssh_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ssh, "_CONSOLE_CHECK_INTERVAL", 0.0)
    with socket.socket() as probe:          # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    panic = "[    0.04] ---[ end Kernel panic - not syncing: IO-APIC + timer doesn't work! ]---\n"
    start = time.monotonic()
    with pytest.raises(BuildError, match="kernel panicked") as err:
        ssh.SSHGuest.connect(host="127.0.0.1", port=port, user="root", key=KeyPair.generate(),
                             host_keys=(KeyPair.generate().public_openssh,), deadline=time.monotonic() + 120,
                             console=lambda: panic)
    assert time.monotonic() - start < 60    # well before its 120 s deadline
    assert "IO-APIC" in str(err.value)

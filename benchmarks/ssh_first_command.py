"""From an sshd that already accepts to the first command's result, median of 10 (goal < 1 s).

Runs against a real OpenSSH sshd started on 127.0.0.1 by the tests' helper (root needed).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run by path: the repository root, for `tests`

from snapbuild.guest.ssh import SSHGuest
from snapbuild.sshkeys import KeyPair
from tests import sshd as sshd_helper


def main() -> None:
    import tempfile

    client = KeyPair.generate()
    with tempfile.TemporaryDirectory() as directory, \
            sshd_helper.running_sshd(Path(directory), authorized={"root": [client.public_openssh]}) as server:
        times = []
        for _ in range(10):
            start = time.monotonic()
            guest = SSHGuest.connect(host="127.0.0.1", port=server.port, user="root", key=client,
                                     host_keys=[server.host_key.public_openssh], deadline=time.monotonic() + 30)
            guest.run(["true"])
            times.append(time.monotonic() - start)
            guest.close()
    print(f"connect + first command: median {statistics.median(times) * 1000:.0f} ms "
          f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}; goal < 1000 ms)")


if __name__ == "__main__":
    main()

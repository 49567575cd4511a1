"""`python -m tests.slowupload FILE NAME`: `upload_image` of FILE as NAME, slowed down once a MiB has gone (it
prints STREAMING then), so that a test's signal lands in the middle of the stream."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import snapbuild.openstack.upload as upload
from snapbuild.run.context import Reporter


class SlowReader(upload.HashingReader):
    def read(self, n: int = -1) -> bytes:
        chunk = super().read(n)
        if self.sent > 1 << 20:
            print("STREAMING", flush=True)
            time.sleep(0.05)
        return chunk


def main(file: str, name: str) -> None:
    upload.HashingReader = SlowReader    # type: ignore[misc]
    upload.upload_image(upload.UploadSettings(file=Path(file), name=name), Reporter())


if __name__ == "__main__":
    main(*sys.argv[1:3])

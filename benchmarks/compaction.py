"""zstd vs zlib vs no compression when compacting an image: size and time, side by side.

Usage: python3 benchmarks/compaction.py IMAGE [IMAGE …]   (e.g. the output of `snapbuild local`)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from snapbuild.host.compact import compact


def main(images: list[str]) -> None:
    for image in map(Path, images):
        with tempfile.TemporaryDirectory(dir=image.parent) as work:
            results = {c: compact(image, Path(work) / f"{c}.qcow2", c) for c in ("none", "zlib", "zstd")}
        base = results["none"]
        print(f"{image} ({base.before_bytes / 2**20:.0f} MiB allocated):")
        for name, result in results.items():
            print(f"  {name:5} {result.after_bytes / 2**20:8.1f} MiB ({result.after_bytes / base.after_bytes:5.2f}x)"
                  f"  {result.seconds:6.2f} s")


if __name__ == "__main__":
    main(sys.argv[1:] or sys.exit(__doc__))

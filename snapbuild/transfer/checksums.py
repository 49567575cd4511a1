"""Published checksum files (SHA256SUMS, SHA512SUMS) and hashing local files in large blocks."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from snapbuild.errors import BuildError

_BLOCK = 4 * 1024 * 1024


def algorithm_of(sums_name: str) -> str:
    """`SHA256SUMS` → `sha256`, `SHA512SUMS` → `sha512` (the only kinds the cloud-image mirrors publish)."""
    name = sums_name.upper()
    for algo in ("sha256", "sha512"):
        if algo.upper() in name:
            return algo
    raise BuildError(f"unknown checksum file kind: {sums_name!r} (expected SHA256SUMS or SHA512SUMS)")


def lookup(sums_text: str, filename: str, *, algorithm: str, source: str) -> str:
    """The hex digest listed for `filename` in a `sha256sum`-style file (`HEX  name` or `HEX *name`)."""
    want_len = hashlib.new(algorithm).digest_size * 2
    for line in sums_text.splitlines():
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2:
            continue
        digest, name = parts[0].lower(), parts[1].lstrip("*").strip()
        if name.removeprefix("./") == filename and len(digest) == want_len:
            return digest
    raise BuildError(f"{source} lists no {algorithm} checksum for {filename!r}",
                     hint="the mirror may be mid-sync; retry later or pass --url of an image it lists")


def file_digest(path: Path, algorithm: str, on_bytes: Callable[[int], None] | None = None) -> str:
    """Hex digest of a file, read in large blocks (a 600 MB image hashes in a few seconds); `on_bytes` hears
    each block's length (a progress bar)."""
    h = hashlib.new(algorithm)
    with path.open("rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
            if on_bytes is not None:
                on_bytes(len(block))
    return h.hexdigest()

"""Disk sizes as people write them on the command line."""

from __future__ import annotations

import re

from snapbuild.errors import UserError

# Binary units, as qemu-img reads them: "10G" is 10 GiB.
UNITS = {"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:([KMGT])I?B?|(B))?\s*")


def parse_size(text: str, *, default_unit: str = "B") -> int:
    """A size in bytes: a number, optionally a fraction, and a unit K, M, G or T (powers of 1024; "4GiB" and
    "4GB" mean "4G" too). A bare number is in `default_unit`: bytes, as qemu-img reads it, unless the caller
    says otherwise. Anything else, or a size of zero, is a UserError naming the text and how to write it."""
    if default_unit not in UNITS:
        raise ValueError(f"unknown default unit {default_unit!r}")
    match = _SIZE.fullmatch(text.upper())
    size = 0
    if match:
        unit = match.group(2) or match.group(3) or default_unit
        size = int(float(match.group(1)) * UNITS[unit])
    if size <= 0:
        bare = "bytes" if default_unit == "B" else f"{default_unit}iB"
        raise UserError(f"cannot read size {text!r}",
                        hint=f"write it like 10G, 20480M or 2T (powers of 1024; a bare number is {bare})")
    return size

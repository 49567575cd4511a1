"""The content digest: one sha256 per image that changes exactly when the image would.

What counts (each part is hashed on its own, then the sorted parts are hashed together, so a manifest can show
which part moved):

- ``recipe``: every file of the recipe folder, templates and sources included: sorted relative POSIX paths plus
  each file's bytes. Editor and tool junk (``*~``, swap files, ``__pycache__``, VCS folders) does not count;
  neither do mtimes, permissions or where the folder lives.
- ``variables``: the resolved variables (defaults, variant overrides, config file, ``--set``) as canonical JSON.
- ``distro``: the distro's whole definition (name, archive, suites, keyring, …): it decides what is installed.
- ``profile``: the mirror profile's name (it is written into the image's apt sources) and its parsed YAML as
  canonical JSON: comments, key order and whitespace do not count, every value does. A mirror key given as
  ``key_file`` counts by the sha256 of its bytes (its path alone would not move when the key is replaced); a
  ``key_url`` counts through its ``key_fingerprint``.
- ``variant``: the variant's name (``null`` for a recipe without variants).
- ``base``: the base image's checksum as ``ALGO:HEX`` (a file's ``sha256:…``; for Glance, the checksum the
  snapshot path knows). ``null`` when it is not known: that is the *plan-time* digest that ``render`` and
  ``plan`` show, the identity of "this recipe, these inputs, on whatever base". It is well-defined and never
  equal to a digest with a base; every image snapbuild makes records the digest *with* its base.
- ``snapbuild``: snapbuild's own share of what is built, and only that: the ``BUILD_FORMAT`` number below plus
  the cloud-init templates snapbuild ships (``cloudinit/``: the drop-ins baked into every image and the builder's
  user-data). ``__version__`` does not count: a release that fixes a log line or a retry must not make every
  catalogue rebuild every image.

Bump ``BUILD_FORMAT`` when provisioning, sealing or capture semantics change what lands in the image (a new
sealing step, another apt option during installs, a different compaction): code changes are invisible to the
inputs above, so this number is how they reach the digest.

Everything here is a pure function over explicit inputs: the same inputs give the same digest on every machine
and in every run (no absolute paths, no mtimes, no dict ordering).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from snapbuild.errors import UserError

if TYPE_CHECKING:
    from snapbuild.distros import Distro
    from snapbuild.profiles import Profile

BUILD_FORMAT = 1

# Never part of a recipe: editor backups and swap files, byte-code caches, version-control folders.
_JUNK_DIRS = frozenset({"__pycache__", ".git", ".hg", ".svn", ".mypy_cache", ".pytest_cache", ".ruff_cache"})
_JUNK_FILE = re.compile(r"(.*~|\.#.*|#.*#|\..*\.sw[a-p]|.*\.py[co]|\.DS_Store)")
_HEX_ALGORITHMS = {32: "md5", 40: "sha1", 64: "sha256", 128: "sha512"}


@dataclass(frozen=True, kw_only=True)
class ContentInputs:
    """Everything the digest is made of, already in explicit form (no paths to read)."""

    recipe_files: str                   # tree_digest() of the recipe folder
    variables: Mapping[str, Any]
    distro: Mapping[str, Any]           # distro_content()
    profile: Mapping[str, Any]          # profile_content()
    variant: str | None = None
    base_checksum: str | None = None    # "ALGO:HEX", or None for the plan-time digest
    snapbuild_files: str = ""           # snapbuild_files_digest(): the shipped cloud-init templates
    build_format: int = BUILD_FORMAT


@dataclass(frozen=True, kw_only=True)
class ContentDigest:
    value: str                          # 64 hex digits
    parts: Mapping[str, str]            # part -> sha256 of its canonical form
    base_checksum: str | None           # None: the plan-time digest

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "base_checksum": self.base_checksum, "parts": dict(self.parts)}


def canonical(value: Any) -> bytes:
    """Canonical JSON: sorted keys, no spaces, UTF-8; tuples are lists; anything else (YAML dates) its str()."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def content_digest(inputs: ContentInputs) -> ContentDigest:
    parts = {
        "recipe": inputs.recipe_files,
        "variables": _sha256(canonical(dict(inputs.variables))),
        "distro": _sha256(canonical(dict(inputs.distro))),
        "profile": _sha256(canonical(dict(inputs.profile))),
        "variant": _sha256(canonical(inputs.variant)),
        "base": _sha256(canonical(inputs.base_checksum)),
        "snapbuild": _sha256(canonical({"build_format": inputs.build_format, "files": inputs.snapbuild_files})),
    }
    value = _sha256(b"snapbuild content digest\0" + canonical(parts))
    return ContentDigest(value=value, parts=parts, base_checksum=inputs.base_checksum)


def tree_digest(folder: Path) -> str:
    """sha256 over every file below `folder`: sorted relative POSIX paths, sizes and bytes (junk skipped)."""
    digest = hashlib.sha256()
    for relative, path in _tree_files(folder):
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UserError(f"cannot read {path}: {exc.strerror or exc}",
                            hint="every file of a recipe folder counts for its digest: fix or remove it") from None
        name = relative.encode("utf-8", "surrogateescape")
        digest.update(b"%d:%s\0%d:" % (len(name), name, len(data)))
        digest.update(data)
    return digest.hexdigest()


def _tree_files(folder: Path) -> list[tuple[str, Path]]:
    # Symlinked folders are followed (a shared templates/ folder is part of the recipe), each real folder once.
    found = []
    seen: set[str] = set()
    for top, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if d not in _JUNK_DIRS]
        for name in files:
            if _JUNK_FILE.fullmatch(name):
                continue
            path = Path(top) / name
            if path.is_file():           # a dangling symlink is nothing the plan could read
                found.append((path.relative_to(folder).as_posix(), path))
    return sorted(found)


def distro_content(distro: Distro) -> dict[str, Any]:
    return dataclasses.asdict(distro)


def profile_content(profile: Profile) -> dict[str, Any]:
    """The profile as its file says it (parsed: comments and layout do not count) plus its name."""
    from snapbuild import yamlfile

    data = yamlfile.load(Path(profile.path))
    content: dict[str, Any] = {"name": profile.name, "settings": data if data is not None else {}}
    key_files = {prefix: _sha256(key.content) for prefix, key in profile.apt_repository_keys.items()
                 if key.content is not None}
    if key_files:   # only then: every other profile keeps the digest it had
        content["key_files"] = key_files
    return content


@functools.cache
def snapbuild_files_digest() -> str:
    """The cloud-init templates snapbuild ships: the drop-ins baked into every image, the builder's user-data."""
    from snapbuild.paths import data_dir

    return tree_digest(data_dir("cloudinit"))


def label_checksum(value: str | None) -> str | None:
    """`ALGO:HEX` for a bare hex checksum (the algorithm told by its length); other values are kept as they are."""
    if not value:
        return None
    value = value.strip().lower()
    if ":" in value:
        return value
    algorithm = _HEX_ALGORITHMS.get(len(value)) if re.fullmatch(r"[0-9a-f]+", value) else None
    return f"{algorithm}:{value}" if algorithm else value


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def file_checksum(path: Path) -> str:
    """`sha256:HEX` of a base image file: what every builder from a file (local, chroot, a catalogue's host
    targets) gives the content digest for its base."""
    return f"sha256:{file_sha256(path)}"

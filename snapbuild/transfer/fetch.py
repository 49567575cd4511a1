"""`snapbuild fetch-base`: download a distribution's cloud image, verify it against the published checksum
file, and keep it in the cache keyed by URL + checksum so an unchanged mirror costs one small request."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import requests

from snapbuild import paths
from snapbuild.errors import BuildError, UserError
from snapbuild.outputs import check_output_file
from snapbuild.run.monitor import Monitor
from snapbuild.run.progress import progress
from snapbuild.transfer.checksums import algorithm_of, file_digest, lookup
from snapbuild.transfer.ranged import Downloader, DownloadSettings, Unreachable, fetch_text

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class BaseImage:
    """Where a distribution publishes its cloud image, in the cloud-images layout."""

    mirror: str          # default mirror
    path: str            # image path under the mirror
    sums: str            # checksum file name beside the image


BASE_IMAGES: dict[str, BaseImage] = {
    "ubuntu-24.04": BaseImage(mirror="https://cloud-images.ubuntu.com",
                              path="noble/current/noble-server-cloudimg-amd64.img", sums="SHA256SUMS"),
    "debian-12": BaseImage(mirror="https://cloud.debian.org/images/cloud",
                           path="bookworm/latest/debian-12-genericcloud-amd64.qcow2", sums="SHA512SUMS"),
    "debian-13": BaseImage(mirror="https://cloud.debian.org/images/cloud",
                           path="trixie/latest/debian-13-genericcloud-amd64.qcow2", sums="SHA512SUMS"),
}


@dataclass(frozen=True, kw_only=True)
class FetchRequest:
    image: str                          # a key of BASE_IMAGES
    url: str | None = None              # explicit image URL; its checksum file is looked up beside it
    mirror: str | None = None           # replaces the default mirror
    output: Path | None = None          # also place the verified image here (hard link or copy)


@dataclass(frozen=True, kw_only=True)
class FetchResult:
    path: Path                          # the verified image (output if given, else the cache entry)
    url: str
    algorithm: str
    digest: str
    size: int
    cached: bool                        # True: no image byte was downloaded
    received: int                       # image bytes received in this call


def resolve(request: FetchRequest) -> tuple[str, str]:
    """(image URL, checksum-file URL) for a request."""
    base = BASE_IMAGES.get(request.image)
    if base is None:
        raise UserError(f"unknown base image {request.image!r}", hint=f"known: {', '.join(sorted(BASE_IMAGES))}")
    if request.url and request.mirror:
        raise UserError("--url and --mirror exclude each other",
                        hint="--url names the image itself; --mirror a base in the cloud-images layout")
    option = "--url" if request.url else "--mirror"
    if request.url:
        url = request.url
    else:
        url = f"{(request.mirror or base.mirror).rstrip('/')}/{base.path}"
    _check_url(url, option=option, given=request.url or request.mirror or url)
    return url, f"{url.rsplit('/', 1)[0]}/{base.sums}"


def _check_url(url: str, *, option: str, given: str) -> None:
    """A URL requests can use, checked before anything is fetched (else it fails deep inside urllib3)."""
    example = ("https://mirror.example/images/debian-12-genericcloud-amd64.qcow2" if option == "--url"
               else "https://mirror.example/cloud-images")
    if not url.startswith(("http://", "https://")):
        raise UserError(f"{option} {given!r} is not an http(s) URL", hint=f"for example {example}")
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port  # raises ValueError when out of range or not a number
        if not parts.hostname:
            raise ValueError("no host name")
        requests.Request("GET", url).prepare()
    except (ValueError, requests.exceptions.RequestException) as exc:
        raise UserError(f"{option} {given!r} is not a valid URL: {exc}", hint=f"for example {example}") from None


def cache_entry(url: str, digest: str) -> Path:
    """`<cache>/base-images/<url-hash>-<digest prefix>/<file name>`: a new checksum is a new entry."""
    url_key = hashlib.sha256(url.encode()).hexdigest()[:16]
    return paths.cache_dir() / "base-images" / f"{url_key}-{digest[:16]}" / url.rsplit("/", 1)[-1]


def _marker(entry: Path) -> Path:
    return entry.with_name(entry.name + ".verified")


def _is_cached(entry: Path, digest: str) -> bool:
    # The image was hashed when it entered the cache; size + marker is trusted rather than re-hashing 600 MB.
    try:
        data = json.loads(_marker(entry).read_text())
        return bool(data["digest"] == digest and entry.stat().st_size == data["size"])
    except (OSError, ValueError, KeyError):
        return False


def _drop_stale(entry: Path) -> None:
    """Older entries of the same URL (previous checksums) are outdated images: free their space."""
    url_key = entry.parent.name.split("-", 1)[0]
    for sibling in entry.parent.parent.glob(f"{url_key}-*"):
        if sibling != entry.parent:
            log.info("removing outdated cached image %s", sibling)
            shutil.rmtree(sibling, ignore_errors=True)


def _place(source: Path, output: Path) -> Path:
    """Hard-link (or copy) the cached image to `output`, atomically."""
    tmp = output.with_name(f".{output.name}.snapbuild-tmp")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, output)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write -o {output}: {exc.strerror or exc}",
                        hint=f"the verified image is in the cache: {source}; pick another -o") from None
    return output


def _unreachable_hint(request: FetchRequest) -> str:
    if request.url:
        return "check --url: the host name, the port, and that a web server runs there"
    if request.mirror:
        return "check --mirror: the host name, the port, and that a web server runs there"
    return "this host cannot reach the distribution's server: pass --mirror BASE (cloud-images layout) or --url"


def fetch_base(request: FetchRequest, *, settings: DownloadSettings | None = None,
               monitor: Monitor | None = None) -> FetchResult:
    """Fetch, verify and cache a base image; see the module docstring."""
    settings = settings or DownloadSettings()
    url, sums_url = resolve(request)
    if request.output is not None:
        check_output_file(request.output, option="-o")   # before a byte is downloaded
    try:
        return _fetch(request, url, sums_url, settings, monitor)
    except Unreachable as exc:
        raise Unreachable(exc.url, exc.cause, hint=_unreachable_hint(request)) from exc.__cause__


def _fetch(request: FetchRequest, url: str, sums_url: str, settings: DownloadSettings,
           monitor: Monitor | None) -> FetchResult:
    algorithm = algorithm_of(sums_url.rsplit("/", 1)[-1])
    digest = lookup(fetch_text(sums_url, settings), url.rsplit("/", 1)[-1], algorithm=algorithm, source=sums_url)
    entry = cache_entry(url, digest)

    if _is_cached(entry, digest):
        log.info("cache hit: %s (%s %s…)", entry, algorithm, digest[:16])
        path = _place(entry, request.output) if request.output else entry
        return FetchResult(path=path, url=url, algorithm=algorithm, digest=digest, size=entry.stat().st_size,
                           cached=True, received=0)

    part = entry.with_name(entry.name + ".part")
    downloader = Downloader(url, part, key=f"{algorithm}:{digest}", settings=settings, monitor=monitor)
    stats = downloader.run()
    log.info("downloaded %d bytes in %.1f s (%s)", stats.received, stats.seconds,
             "parallel ranges" if stats.parallel else "one stream")

    with progress(monitor, f"verify ({algorithm})", total=part.stat().st_size) as bar:
        got = file_digest(part, algorithm, bar.update)
    if got != digest:
        part.unlink(missing_ok=True)
        part.with_name(part.name + ".json").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            entry.parent.rmdir()
        raise BuildError(f"checksum mismatch for {url}: {algorithm} is {got}, {sums_url} says {digest}; "
                         "the download was removed",
                         hint="the mirror may be corrupt or mid-sync; retry later or use another --mirror")
    os.replace(part, entry)
    part.with_name(part.name + ".json").unlink(missing_ok=True)
    _marker(entry).write_text(json.dumps({"url": url, "algorithm": algorithm, "digest": digest,
                                          "size": entry.stat().st_size}))
    _drop_stale(entry)
    path = _place(entry, request.output) if request.output else entry
    return FetchResult(path=path, url=url, algorithm=algorithm, digest=digest, size=entry.stat().st_size,
                       cached=False, received=stats.received)

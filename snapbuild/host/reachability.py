"""Can the build reach the plan's download sources? Asked from this host before anything is created.

A repository, signing key or registry mirror the build cannot reach otherwise shows up only inside the guest,
minutes after its boot. This lists every URL the plan will use, as the mirror profile rewrote it (distro archive
and security suites, apt repositories and their keys, the registry mirrors of every registry the plan pulls from,
the build's apt proxy), and asks each one once, all in parallel, with short timeouts, from where the build's
network is:

- `Route.HOST`: this host's own network (chroot builds);
- `Route.NAT`: a local VM on QEMU's NAT: the profile's forwards, 10.0.2.2 (this host's loopback as the VM sees
  it), and otherwise this host's network; the VM's own 127.0.0.1 is not this host;
- `Route.FORWARDS`: a local VM on an isolated network (restrict=on) reaches the profile's forwards and nothing else;
- `Route.SKIP`: cloud builds: the builder reaches the sources over the cloud's network, not this host's.

HTTP(S) sources get a real request (a TCP connect alone does not prove a mirror serves): a 1-byte ranged GET of
each suite's InRelease (or Release) and of each key, GET /v2/ of each registry mirror (200 or 401 is a registry).
Any other HTTP status counts as a server that answers, except 404/410 on a Release file or key, any non-registry
answer on /v2/, and, through the apt proxy, 403/407 (the proxy refuses) or 502/503/504 (it cannot fetch it).
apt sends http:// and https:// sources through Acquire::http::Proxy (apt 2.6 uses CONNECT for https), so when
the profile sets build_apt_proxy those are asked through it; keys (curl) and registries (containerd) go direct.
"""

from __future__ import annotations

import enum
import functools
import http.client
import ipaddress
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from snapbuild import __version__, actions
from snapbuild.errors import UserError
from snapbuild.plan import Plan
from snapbuild.profiles import Forward, Profile, mirrors_hint

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 3.0          # seconds for each connect and each answer
NAT_HOST_LOOPBACK = "10.0.2.2"  # QEMU user networking: this host's 127.0.0.1 as a NAT guest sees it
NOT_FOUND = frozenset({404, 410})
REGISTRY_OK = frozenset({200, 401})
PROXY_REFUSED = frozenset({403, 407})
PROXY_FAILED = frozenset({502, 503, 504})
SKIP_NOTE = ("download sources not checked from this host: a cloud build's builder reaches them over the cloud's "
             "network, not this host's")


class Route(enum.Enum):
    """Where the build's downloads come from, as seen from this host."""

    HOST = "host"            # chroot builds: this host's network
    NAT = "nat"              # local VM, --network nat: forwards, 10.0.2.2 -> this host's loopback, else this host
    FORWARDS = "forwards"    # local VM, --network isolated: the profile's forwards only
    SKIP = "skip"            # cloud builds: not this host's network at all


def route_for(builder: Literal["cloud", "chroot", "local"], network: str = "nat") -> Route:
    """The route for a builder (and, for local builds, its --network)."""
    if builder == "cloud":
        return Route.SKIP
    if builder == "chroot":
        return Route.HOST
    return Route.FORWARDS if network == "isolated" else Route.NAT


SourceKind = Literal["apt-repository", "apt-key", "registry", "apt-proxy"]


@dataclass(frozen=True, kw_only=True)
class Source:
    """One URL the build will use, as the profile rewrote it, and what in the plan needs it."""

    kind: SourceKind
    url: str
    need: str                        # e.g. "apt repository docker (plan step 3)"
    key: str                         # the profile key that sets it, e.g. 'apt_repositories["https://pkgs.k8s.io"]'
    suites: tuple[str, ...] = ()     # apt repositories: "S" reads dists/S/InRelease, "S/" (flat) reads S/InRelease
    via_proxy: bool = False          # apt fetches it through build_apt_proxy
    blocked: bool = False            # the profile says its host is blocked
    mirrored: bool = True            # False: the upstream URL, the profile has no mirror for it
    group: str = ""                  # registries: one answering endpoint of the group is enough (containerd falls back)


@dataclass(frozen=True, kw_only=True)
class Problem:
    """A source the build will not reach: what, who needs it, what happened, and which profile key to change."""

    url: str
    need: str
    what: str                        # "connection refused", "DNS failure: ...", "timed out", "HTTP 404 for ..."
    hint: str
    key: str = ""                    # the profile key the hint names (for machines: --json, ledgers)

    def line(self) -> str:
        return f"{self.need}: {self.url}: {self.what}"


# ---------------------------------------------------------------------------------------------- the plan's URLs

def plan_sources(plan: Plan) -> tuple[Source, ...]:
    """Every repository, key, registry endpoint and proxy URL the plan will use, in plan order, without duplicates."""
    profile, distro = plan.profile, plan.distro
    # apt reads its sources only when the plan runs apt-get (the builder's user-data never does): a recipe that
    # installs nothing downloads nothing, whatever sources the image is given for later.
    uses_apt = any(isinstance(a, (actions.AptUpdate, actions.InstallPackages)) for a in plan.actions)
    proxied = bool(plan.build_apt_proxy)
    found: list[Source] = []
    step = _step_of(plan, lambda a: isinstance(a, actions.WriteFile) and a.path == distro.sources_file)
    apt = profile.apt.get(distro.id)
    for part, upstream, suites, mirror in (
            ("archive", distro.archive, distro.suites, apt.archive if apt else None),
            ("security", distro.security, (distro.security_suite,), apt.security if apt else None)):
        if not uses_apt:
            break
        url = profile.archive_for(distro.id, upstream) if part == "archive" else profile.security_for(distro.id,
                                                                                                     upstream)
        what = "distro archive" if part == "archive" else "distro security archive"
        found.append(Source(kind="apt-repository", url=url, need=f"{what}, {' '.join(suites)} ({step})",
                            key=f"apt.{distro.id}.{part}", suites=suites, via_proxy=proxied,
                            blocked=profile.url_blocked(url), mirrored=bool(mirror)))
    for number, action in enumerate(plan.actions, 1):
        if isinstance(action, actions.AptSource):
            found += [source for source in _apt_source(profile, action, number, proxied)
                      if uses_apt or source.kind == "apt-key"]   # the key is fetched by the step itself
        elif isinstance(action, actions.PrePull):
            found += _registries(profile, action, number)
    if plan.build_apt_proxy and uses_apt:
        found.append(Source(kind="apt-proxy", url=plan.build_apt_proxy, need="apt during the build (build_apt_proxy)",
                            key="build_apt_proxy"))
    unique: dict[tuple[str, str, tuple[str, ...]], Source] = {}
    for source in found:
        unique.setdefault((source.kind, source.url, source.suites), source)
    return tuple(unique.values())


def _step_of(plan: Plan, wanted: Callable[[actions.Action], bool]) -> str:
    number = next((n for n, a in enumerate(plan.actions, 1) if wanted(a)), None)
    return f"plan step {number}" if number else "cloud-init"


def _apt_source(profile: Profile, action: actions.AptSource, number: int, proxied: bool) -> list[Source]:
    fields = dict(line.split(": ", 1) for line in action.deb822.splitlines() if ": " in line)
    url = fields.get("URIs", "").split()[0] if fields.get("URIs") else ""
    if not url:
        return []
    key, mirrored = _repository_key(profile, url)
    out = [Source(kind="apt-repository", url=url, need=f"apt repository {action.name} (plan step {number})",
                  key=key, suites=tuple(fields.get("Suites", "").split()), via_proxy=proxied,
                  blocked=profile.url_blocked(url), mirrored=mirrored)]
    if action.key is not None and action.key.url:
        key_url = action.key.url
        key_key, key_mirrored = _repository_key(profile, key_url)
        if action.key.origin:
            # The mirror profile's own key for the repository: its entry's key_url is what to fix, wherever it is.
            key_key, key_mirrored = f"{key}.key_url", True
        elif not key_mirrored and key_url.startswith(url.rstrip("/")):
            key_key = key   # the fix is the repository's mapping (it covers the key below it)
        out.append(Source(kind="apt-key", url=key_url, key=key_key, blocked=profile.url_blocked(key_url),
                          need=f"signing key of apt repository {action.name} (plan step {number})",
                          mirrored=key_mirrored))
    return out


def _repository_key(profile: Profile, url: str) -> tuple[str, bool]:
    """The apt_repositories entry that produced `url` (longest mirror prefix), or the one to add."""
    best = max((prefix for prefix, mirror in profile.apt_repositories.items() if url.startswith(mirror.rstrip("/"))),
               key=lambda p: len(profile.apt_repositories[p].rstrip("/")), default=None)
    if best is not None:
        return f'apt_repositories["{best}"]', True
    parts = urlsplit(url)
    return f'apt_repositories["{parts.scheme}://{parts.netloc}"]', False


def _registries(profile: Profile, action: actions.PrePull, number: int) -> list[Source]:
    out = []
    for route in action.routes:
        need = f"image pre-pull from {route.registry} (plan step {number})"
        key = f"registries.{route.registry}"
        for mirror in route.mirrors:
            out.append(Source(kind="registry", url=mirror, need=need, key=key, group=route.registry))
        if not route.mirrors or not profile.registry_upstream_blocked(route.registry):
            # No mirror, or the upstream is not blocked: containerd tries the registry itself (last).
            out.append(Source(kind="registry", url=route.server, need=need, key=key, group=route.registry,
                              blocked=profile.registry_upstream_blocked(route.registry), mirrored=False))
    return out


# ---------------------------------------------------------------------------------------------- routes

@dataclass(frozen=True, kw_only=True)
class _Dial:
    address: tuple[str, int]         # where the socket really goes, from this host
    forward: Forward | None = None   # reached through this forward


def dial_address(url: str, route: Route, forwards: Sequence[Forward]) -> _Dial | Literal["no-forward", "loopback"]:
    """Where a connection the build makes to `url` goes, seen from this host; or why it cannot go anywhere."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if route in (Route.NAT, Route.FORWARDS):
        for fwd in forwards:
            if fwd.guest_ip == host and fwd.guest_port == port:
                return _Dial(address=(fwd.host_ip, fwd.host_port), forward=fwd)
    if route is Route.FORWARDS:
        return "no-forward"
    if route is Route.NAT:
        if host == NAT_HOST_LOOPBACK:
            return _Dial(address=("127.0.0.1", port))
        if _is_loopback(host):
            return "loopback"
    return _Dial(address=(host, port))


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------- checking

@dataclass(frozen=True, kw_only=True)
class _Failure:
    what: str
    reason: str                      # picks the hint: blocked, no-forward, loopback, unreachable, not-found, ...
    answered: bool = False           # an HTTP status came back (the server, or the proxy, answered)


@dataclass(frozen=True, kw_only=True)
class _Attempt:
    source: Source
    dial: _Dial | None = None        # None: decided without the network (`failure`)
    proxy: _Dial | None = None       # through the apt proxy at this address
    failure: _Failure | None = None


def check_sources(plan: Plan, route: Route, *, timeout: float = DEFAULT_TIMEOUT, allow_blocked: bool = False,
                  tls_context: ssl.SSLContext | None = None) -> list[Problem]:
    """Every source of the plan the build will not reach from `route`; empty when all answer (or for Route.SKIP).

    Runs every request at once; the whole check ends within about 2 x `timeout`. A host the profile marks
    blocked is not asked (it is a problem as such) unless `allow_blocked`.
    """
    if route is Route.SKIP:
        log.info(SKIP_NOTE)
        return []
    start = time.monotonic()
    sources = plan_sources(plan)
    attempts = [_attempt(plan, source, route, allow_blocked) for source in sources]
    tls = tls_context or ssl.create_default_context()
    jobs = [functools.partial(_probe, a, timeout, tls) if a.failure is None else functools.partial(_decided, a)
            for a in attempts]
    outcomes = _run_parallel(jobs, budget=2 * timeout)
    problems = _judge(plan, route, attempts, outcomes)
    log.info("checked %d download sources from %s in %.1f s: %d problem(s)", len(sources), route.value,
             time.monotonic() - start, len(problems))
    return problems


def _attempt(plan: Plan, source: Source, route: Route, allow_blocked: bool) -> _Attempt:
    if source.blocked and not allow_blocked:
        return _Attempt(source=source, failure=_Failure(what="blocked by the profile, not asked", reason="blocked"))
    forwards = plan.mirror_forwards
    if source.via_proxy and plan.build_apt_proxy:
        # The guest talks to the proxy; the proxy (on this host's side) fetches the URL as written.
        proxy = dial_address(plan.build_apt_proxy, route, forwards)
        if isinstance(proxy, str):
            return _Attempt(source=source, failure=_Failure(what="through build_apt_proxy, which the build cannot "
                                                                 "reach", reason="proxy-unreachable"))
        return _Attempt(source=source, proxy=proxy)
    dial = dial_address(source.url, route, forwards)
    if dial == "no-forward":
        return _Attempt(source=source, failure=_Failure(what="not reachable from an isolated VM (no forward for it)",
                                                        reason="no-forward"))
    if dial == "loopback":
        return _Attempt(source=source, failure=_Failure(what="loopback address: the VM's own, not this host's",
                                                        reason="loopback"))
    return _Attempt(source=source, dial=dial)


def _decided(attempt: _Attempt) -> _Failure | None:
    return attempt.failure


def _run_parallel(jobs: Sequence[Callable[[], _Failure | None]], *, budget: float) -> list[_Failure | None]:
    """Run every job in its own thread; a job not done within `budget` seconds counts as timed out.

    Daemon threads, not a pool: a name lookup cannot be interrupted, and must not hold up the build's exit.
    """
    results: list[_Failure | None] = [None] * len(jobs)
    done = [False] * len(jobs)

    def run(index: int) -> None:
        try:
            results[index] = jobs[index]()
        except Exception as exc:  # noqa: BLE001 - one odd source must not hide the others' answers
            results[index] = _Failure(what=f"check failed: {exc!r}", reason="unreachable")
        done[index] = True

    threads = [threading.Thread(target=run, args=(i,), name=f"reachability-{i}", daemon=True)
               for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + budget
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [results[i] if done[i] else _Failure(what=f"timed out (no answer within {budget:.0f} s)",
                                                reason="unreachable") for i in range(len(jobs))]


def _probe(attempt: _Attempt, timeout: float, tls: ssl.SSLContext) -> _Failure | None:
    source = attempt.source
    client = _Client(attempt, timeout, tls)
    try:
        if source.kind == "apt-proxy":
            # Connect only: what it serves is proven by the apt sources asked through it, and a request of its
            # own ("GET /") is one a proxy that forwards only the archive would log as refused.
            conn, _ = client._connection(source.url)
            conn.connect()
            return None
        if source.kind == "registry":
            status = client.status(source.url.rstrip("/") + "/v2/", ranged=False)
            if status in REGISTRY_OK:
                return None
            return _Failure(what=f"HTTP {status} on /v2/: not a registry API", reason="not-registry", answered=True)
        if source.kind == "apt-key":
            status = client.status(source.url, ranged=True)
            return _status_failure(attempt, status, source.url, "not-found")
        return _release_files(attempt, client)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        refused = _tunnel_status(exc) is not None       # the proxy answered the CONNECT with an error
        return _Failure(what=_describe(exc, urlsplit(source.url).hostname or ""),
                        reason="proxy-refused" if refused else "unreachable", answered=refused)
    finally:
        client.close()


def _release_files(attempt: _Attempt, client: _Client) -> _Failure | None:
    """Each suite's InRelease, or its Release when there is no InRelease (as apt does)."""
    missing = []
    for suite in attempt.source.suites or ("",):
        if suite.endswith("/"):        # flat repository: the suite is a path below the URL
            folder = attempt.source.url.rstrip("/") + "/" + suite.strip("/")
        else:
            folder = f"{attempt.source.url.rstrip('/')}/dists/{suite}"
        for name in ("InRelease", "Release"):
            url = folder.rstrip("/") + "/" + name
            status = client.status(url, ranged=True)
            if status not in NOT_FOUND:
                break
        failure = _status_failure(attempt, status, url, "not-found")
        if failure is not None and failure.reason != "not-found":
            return failure
        if failure is not None:
            missing.append(folder.rstrip("/") + "/InRelease")
    if missing:
        return _Failure(what="HTTP 404 (neither InRelease nor Release) for " + ", ".join(missing), reason="not-found",
                        answered=True)
    return None


def _status_failure(attempt: _Attempt, status: int, url: str, not_found: str) -> _Failure | None:
    if attempt.proxy is not None and status in PROXY_REFUSED:
        return _Failure(what=f"build_apt_proxy refused it (HTTP {status})", reason="proxy-refused", answered=True)
    if attempt.proxy is not None and status in PROXY_FAILED:
        return _Failure(what=f"build_apt_proxy could not fetch it (HTTP {status})", reason="proxy-failed",
                        answered=True)
    if status in NOT_FOUND:
        return _Failure(what=f"HTTP {status} for {url}", reason=not_found, answered=True)
    return None


class _Client:
    """GETs for one source over one connection (kept open while answers are small), to where the build's
    connection really goes: straight, through a forward, or through the apt proxy (CONNECT for https)."""

    def __init__(self, attempt: _Attempt, timeout: float, tls: ssl.SSLContext) -> None:
        self.attempt = attempt
        self.timeout = timeout
        self.tls = tls
        self.conn: http.client.HTTPConnection | None = None
        self.origin = ""

    def status(self, target: str, *, ranged: bool) -> int:
        """HTTP status of GET `target` (a URL, or a path on the apt proxy itself)."""
        headers = {"User-Agent": f"snapbuild/{__version__} reachability check"}
        if ranged:
            headers["Range"] = "bytes=0-0"
        conn, path = self._connection(target)
        conn.request("GET", path, headers=headers)
        reply = conn.getresponse()
        if reply.length is not None and reply.length <= 65536:
            reply.read()               # small: read it, and the connection can be reused
        else:
            self.close()
        return reply.status

    def _connection(self, target: str) -> tuple[http.client.HTTPConnection, str]:
        attempt = self.attempt
        if attempt.source.kind == "apt-proxy":
            assert attempt.dial is not None
            at = attempt.dial.address
            return self._reuse("proxy", lambda: _DialedHTTP(*at, dial=at, timeout=self.timeout)), target
        parts = urlsplit(target)
        host, https = parts.hostname or "", parts.scheme == "https"
        port = parts.port or (443 if https else 80)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if attempt.proxy is not None:
            proxy = attempt.proxy.address
            if https:
                def tunnel() -> http.client.HTTPConnection:
                    conn = http.client.HTTPSConnection(*proxy, timeout=self.timeout, context=self.tls)
                    conn.set_tunnel(host, port)
                    return conn
                return self._reuse(f"{host}:{port}", tunnel), path
            # Plain http through a proxy: the absolute URL as the request target; the Host header is the origin's.
            return self._reuse(f"{host}:{port}", lambda: _DialedHTTP(host, port, dial=proxy,
                                                                     timeout=self.timeout)), target
        assert attempt.dial is not None
        dial = attempt.dial.address
        if https:
            return self._reuse(f"{host}:{port}", lambda: _DialedHTTPS(host, port, dial=dial, timeout=self.timeout,
                                                                      tls=self.tls)), path
        return self._reuse(f"{host}:{port}", lambda: _DialedHTTP(host, port, dial=dial, timeout=self.timeout)), path

    def _reuse(self, origin: str, make: Callable[[], http.client.HTTPConnection]) -> http.client.HTTPConnection:
        if self.conn is None or origin != self.origin:
            self.close()
            self.conn, self.origin = make(), origin
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class _DialedHTTP(http.client.HTTPConnection):
    """HTTP to `host:port` (Host header, request) over a socket to `dial` (a forward's host side, or a proxy)."""

    def __init__(self, host: str, port: int, *, dial: tuple[str, int], timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.dial = dial

    def connect(self) -> None:
        self.sock = socket.create_connection(self.dial, self.timeout)


class _DialedHTTPS(http.client.HTTPSConnection):
    """HTTPS to `host:port` (SNI and certificate name) over a socket to `dial`."""

    def __init__(self, host: str, port: int, *, dial: tuple[str, int], timeout: float, tls: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=timeout, context=tls)
        self.dial = dial
        self.tls = tls

    def connect(self) -> None:
        raw = socket.create_connection(self.dial, self.timeout)
        self.sock = self.tls.wrap_socket(raw, server_hostname=self.host)


def _tunnel_status(exc: BaseException) -> int | None:
    match = re.search(r"Tunnel connection failed: (\d{3})", str(exc))
    return int(match.group(1)) if match else None


def _describe(exc: BaseException, host: str) -> str:
    """What happened, in a few words."""
    tunnel = _tunnel_status(exc)
    if tunnel is not None:
        return f"build_apt_proxy refused the CONNECT (HTTP {tunnel})"
    if isinstance(exc, socket.gaierror):
        return f"DNS failure: {host} does not resolve ({exc.strerror})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not accepted: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or exc}"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, http.client.HTTPException):
        return f"no valid HTTP answer ({type(exc).__name__})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__


# ---------------------------------------------------------------------------------------------- verdicts

def _judge(plan: Plan, route: Route, attempts: Sequence[_Attempt],
           outcomes: Sequence[_Failure | None]) -> list[Problem]:
    proxy_down = any(a.source.kind == "apt-proxy" and o is not None for a, o in zip(attempts, outcomes))
    group_ok = {a.source.group for a, o in zip(attempts, outcomes) if a.source.group and o is None}
    problems = []
    for attempt, failure in zip(attempts, outcomes):
        source = attempt.source
        if failure is None:
            continue
        if proxy_down and source.via_proxy and not failure.answered:
            continue                   # the proxy's own problem says it once
        if source.group in group_ok:
            log.warning("%s: %s: %s (another endpoint answers: containerd falls back to it)", source.need,
                        source.url, failure.what)
            continue
        what = failure.what
        if attempt.proxy is not None and failure.reason == "unreachable":
            what += f" (through build_apt_proxy {plan.build_apt_proxy})"
        problems.append(Problem(url=source.url, need=source.need, what=what, key=source.key,
                                hint=_hint(plan, route, attempt, failure)))
    return problems


def _hint(plan: Plan, route: Route, attempt: _Attempt, failure: _Failure) -> str:
    source = attempt.source
    where = f"in profile {plan.profile.name} ({plan.profile.path})"
    key = f"{source.key} {where}"
    parts = urlsplit(source.url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    reason = failure.reason
    if reason == "blocked":
        if source.kind == "registry":
            return f"add a mirror under {key}, or pass --allow-blocked if the build can reach {host}"
        return f"point {key} at a mirror, or pass --allow-blocked if the build can reach {host}"
    if reason == "no-forward":
        return (f"an isolated VM reaches only the profile's forwards: add one to forwards {where} "
                f"(guest side {host}:{port} if {host} is an IP address; else point {source.key} at the forward's "
                "guest side), or build with --network nat")
    if reason == "loopback":
        return (f"the VM's 127.0.0.1 is the VM itself: write {NAT_HOST_LOOPBACK}:{port} (this host's loopback as a "
                f"NAT VM sees it) in {key}, or add a forward to forwards for it")
    if reason == "proxy-unreachable":
        return f"apt in the build goes through build_apt_proxy: fix or remove it {where}"
    if reason in ("proxy-refused", "proxy-failed"):
        return (f"apt in the build fetches it through build_apt_proxy {plan.build_apt_proxy}: let the proxy reach "
                f"{host}, or change {key}")
    if reason == "not-registry":
        return f"{key} must be a registry's base URL (GET /v2/ answers 200 or 401)"
    if reason == "not-found":
        if source.kind == "apt-key":
            return f"the mirror set by {key} must serve the key at the same path below it as upstream does"
        return (f"the mirror set by {key} must serve the repository as upstream does (the suite's InRelease or "
                "Release below the URL)")
    through = ""
    if attempt.dial is not None and attempt.dial.forward is not None:
        fwd = attempt.dial.forward
        through = (f" (reached through the forward {fwd.guest_ip}:{fwd.guest_port} -> {fwd.host_ip}:{fwd.host_port}: "
                   f"is it listening on {fwd.host_ip}:{fwd.host_port}?)")
    guest_side = next((f for f in plan.mirror_forwards if (f.guest_ip, f.guest_port) == (host, port)), None)
    if route is Route.HOST and guest_side is not None:
        through = (f" ({host}:{port} is the guest side of a forward, which only local VMs have: this build uses "
                   f"this host's network, where the service is at {guest_side.host_ip}:{guest_side.host_port})")
    if source.kind == "apt-proxy":
        return f"start the proxy, or fix or remove build_apt_proxy {where}" + through
    if not source.mirrored:
        return f"the profile has no mirror for it: set {key} to a mirror the build reaches" + through
    return f"start the mirror, or point {key} at one the build reaches" + through


# ---------------------------------------------------------------------------------------------- the error

_PLACES = {Route.HOST: "this host", Route.NAT: "a local VM on NAT (this host's network and the profile's forwards)",
           Route.FORWARDS: "an isolated local VM (the profile's forwards only)", Route.SKIP: "the cloud"}


def sources_error(plan: Plan, route: Route, problems: Sequence[Problem]) -> UserError:
    """One UserError (exit 2) listing every problem with its fix."""
    count = len(problems)
    lines = [f"  - {p.line()}\n    fix: {p.hint}" for p in problems]
    message = (f"{count} download source{'' if count == 1 else 's'} of recipe {plan.recipe_name!r} cannot be "
               f"reached from {_PLACES[route]}:\n" + "\n".join(lines))
    return UserError(message, hint=f"{mirrors_hint(plan.profile)}, as each line says (or start the mirrors); "
                                   f"`snapbuild plan {plan.recipe_name} --mirrors ...` shows every URL the build uses")


def require_reachable(plan: Plan, route: Route, *, timeout: float = DEFAULT_TIMEOUT,
                      allow_blocked: bool = False) -> None:
    """Raise sources_error(...) when any source of the plan is out of the build's reach."""
    problems = check_sources(plan, route, timeout=timeout, allow_blocked=allow_blocked)
    if problems:
        raise sources_error(plan, route, problems)

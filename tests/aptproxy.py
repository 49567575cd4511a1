"""A forwarding HTTP proxy on 127.0.0.1 for guests' apt (QEMU guestfwd reaches it; nothing else can), and a
mirror of the Debian archive at the same address (`http://ADDR/debian`, `http://ADDR/debian-security`).

Test infrastructure, not a fake: every request goes to the real Debian archive. Only the archive's hosts are
forwarded, so a guest cannot use it to reach anything else. It counts what it served, so a test can show the
guest's downloads really came this way.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

ARCHIVE_HOSTS = frozenset({"deb.debian.org", "security.debian.org"})
MIRROR_HOST = "deb.debian.org"      # serves /debian and /debian-security
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
                        "transfer-encoding", "upgrade", "proxy-connection"})
PASSED_ON = ("User-Agent", "Range", "If-Range", "If-Modified-Since", "Cache-Control", "Accept")


@dataclass
class ProxyStats:
    served: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._forward(body=True)

    def do_HEAD(self) -> None:
        self._forward(body=False)

    def _forward(self, *, body: bool) -> None:
        # Also a mirror: a plain path (`GET /debian/dists/…`, as apt asks a mirror URL) is the archive's own path.
        target = f"http://{MIRROR_HOST}{self.path}" if self.path.split("/")[1:2] in (["debian"],
                                                                                  ["debian-security"]) else self.path
        url = urlsplit(target)
        if url.scheme != "http" or url.hostname not in ARCHIVE_HOSTS:
            with self.server.stats.lock:
                self.server.stats.refused.append(self.path)
            self.send_error(403, "only the Debian archive is forwarded")
            return
        upstream = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=120)
        try:
            headers = {k: v for k in PASSED_ON if (v := self.headers.get(k))}
            upstream.request(self.command, url.path + (f"?{url.query}" if url.query else ""), headers=headers)
            reply = upstream.getresponse()
            data = reply.read() if reply.getheader("Content-Length") is None else None
            self.send_response(reply.status, reply.reason)
            for name, value in reply.getheaders():
                if name.lower() not in HOP_BY_HOP and not (data is not None and name.lower() == "content-length"):
                    self.send_header(name, value)
            if data is not None:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body and data is not None:
                self.wfile.write(data)
            elif body:
                while chunk := reply.read(1 << 16):
                    self.wfile.write(chunk)
            with self.server.stats.lock:
                self.server.stats.served.append(self.path)
        finally:
            upstream.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    stats: ProxyStats


@contextmanager
def apt_proxy(host: str = "127.0.0.1", port: int = 0) -> Iterator[tuple[int, ProxyStats]]:
    """Serve on `port` (0: a free one) of `host`; yields (port, stats)."""
    server = _Server((host, port), _Handler)
    server.stats = ProxyStats()
    thread = threading.Thread(target=server.serve_forever, name="apt-proxy", daemon=True)
    thread.start()
    try:
        yield server.server_address[1], server.stats
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)

"""fetch-base on a per-connection-limited mirror (127.0.0.1, in-process test server from the unit tests).

Far mirrors usually cap each TCP connection, not the client: parallel Range requests multiply the rate.
Figures: time with 1 vs 4 connections, bytes the server sent when it drops connections repeatedly (goal ≤ 1.2×
the image), and the cost of a cache hit (only SHA256SUMS is fetched).

    python3 benchmarks/fetch_base.py [--mb 64]
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from snapbuild.transfer.fetch import FetchRequest, fetch_base
from snapbuild.transfer.ranged import DownloadSettings
from tests.unit.test_fetch_base_http import IMAGE_PATH, SUMS_PATH, Behaviour, Handler, QuietServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=64)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the retry lines for the 30 drops are expected here
    size = args.mb * 1024 * 1024
    b = Behaviour()
    image = os.urandom(size)
    b.files[IMAGE_PATH] = image
    b.files[SUMS_PATH] = f"{hashlib.sha256(image).hexdigest()} *noble-server-cloudimg-amd64.img\n".encode()
    b.throttle = 0.004  # per 64 KiB and connection: ≈ 16 MB/s per connection
    httpd = QuietServer(("127.0.0.1", 0), type("H", (Handler,), {"behaviour": b}))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name, settings, cuts in [
                ("1 connection", DownloadSettings(connections=1, progress_every=60), 0),
                ("4 connections", DownloadSettings(connections=4, chunk_bytes=8 << 20, progress_every=60), 0),
                ("4 connections, 30 drops", DownloadSettings(connections=4, chunk_bytes=8 << 20,
                                                             backoff_initial=0.2, progress_every=60), 30),
            ]:
                os.environ["SNAPBUILD_CACHE_DIR"] = str(Path(tmp) / name.replace(" ", "_"))
                b.sent.clear()
                b.cut_after, b.cuts_left = 1 << 20, cuts
                started = time.monotonic()
                fetch_base(FetchRequest(image="ubuntu-24.04", mirror=url), settings=settings)
                seconds = time.monotonic() - started
                rows.append((name, seconds, b.sent[IMAGE_PATH] / size, cuts - b.cuts_left))
            b.requests.clear()
            started = time.monotonic()
            hit = fetch_base(FetchRequest(image="ubuntu-24.04", mirror=url), settings=DownloadSettings())
            hit_seconds = time.monotonic() - started
    finally:
        httpd.shutdown()
        httpd.server_close()
    print(f"image: {args.mb} MiB, mirror capped at ≈16 MB/s per connection (sha256 verification included)")
    for name, seconds, ratio, drops in rows:
        print(f"  {name:26s} {seconds:6.2f} s   server sent {ratio:.3f}× the image   drops {drops}")
    print(f"  cache hit                  {hit_seconds:6.2f} s   image requests {b.requests.get(IMAGE_PATH, 0)}"
          f"   cached={hit.cached}")


if __name__ == "__main__":
    main()

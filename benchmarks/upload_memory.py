"""Peak RSS and throughput of `snapbuild upload`, side by side with `openstack image create --file`.

Runs against OS_CLOUD (the project's test cloud: `source /var/lib/snapbuild-testcloud/env`). For each size a
sparse-ish raw file is made (1 MiB of random data every 16 MiB, holes between), uploaded by snapbuild in a fresh
process and by python-openstackclient in another (install it in its own venv, not the project's:
`python3 -m venv /tmp/osc-venv && /tmp/osc-venv/bin/pip install python-openstackclient`), and both images are
deleted. Peak RSS is the highest of an RSS curve sampled every 0.1 s.

    python benchmarks/upload_memory.py --sizes 256M,1G,2G --osc /tmp/osc-venv/bin/openstack
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}

SNAPBUILD_CHILD = """
import sys
from pathlib import Path
from snapbuild.openstack.upload import UploadSettings, upload_image
from snapbuild.run.context import Reporter
import io
result = upload_image(UploadSettings(file=Path(sys.argv[1]), name=sys.argv[2], progress_tty=False,
                                     timeout_active=3600), Reporter(io.StringIO()))
print(result.image_id)
"""


@dataclass(frozen=True, kw_only=True)
class Run:
    tool: str
    size: int
    seconds: float
    peak_rss_mb: float
    curve_mb: tuple[float, ...]

    @property
    def mb_s(self) -> float:
        return self.size / self.seconds / 1e6


def parse_size(text: str) -> int:
    text = text.strip().upper()
    return int(float(text[:-1]) * UNITS[text[-1]]) if text[-1] in UNITS else int(text)


def make_file(path: Path, size: int) -> None:
    with path.open("wb") as handle:
        handle.truncate(size)
        for offset in range(0, size, 16 << 20):
            handle.seek(offset)
            handle.write(os.urandom(min(1 << 20, size - offset)))


def measure(tool: str, argv: list[str], size: int, env: dict[str, str]) -> Run:
    started = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    samples: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        try:
            ps = psutil.Process(proc.pid)
            while not stop.is_set():
                rss = ps.memory_info().rss / 2**20
                if rss:                       # 0 once the child is a zombie
                    samples.append(rss)
                stop.wait(0.1)
        except psutil.Error:
            return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _out, err = proc.communicate()
    seconds = time.monotonic() - started
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{tool} failed ({proc.returncode}):\n{err.decode(errors='replace')[-2000:]}")
    return Run(tool=tool, size=size, seconds=seconds, peak_rss_mb=max(samples, default=0.0), curve_mb=tuple(samples))


def delete_named(name: str) -> None:
    import openstack

    conn = openstack.connect()
    for image in conn.image.images(name=name):
        conn.image.delete_image(image.id, ignore_missing=True)
    conn.close()


def flatness(curve: tuple[float, ...]) -> str:
    """RSS over the run after start-up: min / median / max of the samples past the first 20 %."""
    body = curve[len(curve) // 5:] or curve
    if not body:
        return "-"
    return f"{min(body):.0f}/{statistics.median(body):.0f}/{max(body):.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="256M,1G,2G")
    parser.add_argument("--osc", default="/tmp/osc-venv/bin/openstack", help="openstack CLI (empty: skip)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per tool and size (alternating)")
    parser.add_argument("--dir", default=None, help="where the test files go (default: a temp dir)")
    args = parser.parse_args()
    if not os.environ.get("OS_CLOUD"):
        raise SystemExit("set OS_CLOUD (source /var/lib/snapbuild-testcloud/env)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        env["SNAPBUILD_STATE_DIR"] = str(Path(tmp) / "state")
        for size in [parse_size(s) for s in args.sizes.split(",")]:
            path = Path(tmp) / f"bench-{size}.raw"
            make_file(path, size)
            # alternate the tools and keep every run: the host is shared, so single runs are noisy
            for _ in range(args.repeat):
                name = f"sbtest-bench-{uuid.uuid4().hex[:8]}"
                try:
                    runs.append(measure("snapbuild upload",
                                        [sys.executable, "-c", SNAPBUILD_CHILD, str(path), name], size, env))
                finally:
                    delete_named(name)
                if args.osc and Path(args.osc).exists():
                    name = f"sbtest-bench-osc-{uuid.uuid4().hex[:8]}"
                    try:
                        runs.append(measure("openstack image create", [
                            args.osc, "image", "create", "--file", str(path), "--disk-format", "raw",
                            "--container-format", "bare", "--private", name, "-f", "value", "-c", "id"], size, env))
                    finally:
                        delete_named(name)
            path.unlink()
            for run in [r for r in runs if r.size == size]:
                print(f"{run.tool:<24} {run.size / 2**20:>7.0f} MiB  {run.seconds:7.1f} s  {run.mb_s:7.1f} MB/s  "
                      f"peak RSS {run.peak_rss_mb:6.1f} MiB  RSS min/median/max {flatness(run.curve_mb)} MiB",
                      flush=True)
    print()
    print("best of each (wall time of the whole command, start-up and auth included):")
    for size in sorted({r.size for r in runs}):
        ours = max((r for r in runs if r.size == size and r.tool == "snapbuild upload"), key=lambda r: r.mb_s)
        peers = [r for r in runs if r.size == size and r.tool != "snapbuild upload"]
        peer = max(peers, key=lambda r: r.mb_s) if peers else None
        ratio = f"{ours.mb_s / peer.mb_s:.2f}x the CLI's {peer.mb_s:.1f} MB/s" if peer else "no CLI run"
        peak = max(r.peak_rss_mb for r in runs if r.size == size and r.tool == "snapbuild upload")
        print(f"{size / 2**20:>7.0f} MiB: snapbuild {ours.mb_s:.1f} MB/s ({ratio}), peak RSS {peak:.1f} MiB")


if __name__ == "__main__":
    main()

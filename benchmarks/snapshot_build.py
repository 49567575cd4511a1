"""One snapshot build against a real cloud: API calls, time outside the waits, CLI start to first API call.

Runs `snapbuild build base --no-provision` in this process (boot, stop, snapshot, properties, cleanup) against
the cloud named by OS_CLOUD (the project's test cloud: `tests/cloud/start; source …/env`). Every HTTP request
keystoneauth sends is counted and timed, and every sleep of snapbuild's waits is timed, so:

    outside = wall time - time inside HTTP requests - time asleep between polls

is what snapbuild itself costs (goal: under 5 s per build). Also checked: no poll loop sleeps under 1 s, and
the first API call comes less than 1 s after the process started (goal).
"""

from __future__ import annotations

import collections
import os
import sys
import time

START = time.monotonic()


def main() -> None:
    import keystoneauth1.session

    from snapbuild.cli import main as cli_main

    calls: collections.Counter[str] = collections.Counter()
    timing = {"http": 0.0, "sleep": 0.0, "first_call": 0.0, "short_sleeps": 0}
    original_request = keystoneauth1.session.Session.request
    original_sleep = time.sleep

    def request(self: object, url: str, method: str, *args: object, **kwargs: object) -> object:
        if not timing["first_call"]:
            timing["first_call"] = time.monotonic() - START
        begin = time.monotonic()
        try:
            return original_request(self, url, method, *args, **kwargs)  # type: ignore[arg-type]
        finally:
            timing["http"] += time.monotonic() - begin
            endpoint = kwargs.get("endpoint_filter") or {}
            service = endpoint.get("service_type") if isinstance(endpoint, dict) else None
            path = url.split("//", 1)[-1].split("?", 1)[0].strip("/").split("/")
            calls[f"{method} {service or 'identity'} /{path[-1] if not service else path[0]}"] += 1

    def sleep(seconds: float) -> None:
        if 0 < seconds < 1:
            timing["short_sleeps"] += 1
        begin = time.monotonic()
        original_sleep(seconds)
        timing["sleep"] += time.monotonic() - begin

    keystoneauth1.session.Session.request = request  # type: ignore[method-assign]
    time.sleep = sleep
    args = ["build", "base", "--distro", "debian-12", "--mirrors", "upstream", "--flavor", "m1.small",
            "--base-image", "debian-12", "--network", "private", "--no-provision",
            "--image-name", f"bench-{os.getpid()}", *sys.argv[1:]]
    began = time.monotonic()
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            cli_main(args)
        except SystemExit as exc:
            if exc.code:
                raise
    wall = time.monotonic() - began
    image_id = out.getvalue().strip().splitlines()[-1]
    keystoneauth1.session.Session.request = original_request  # type: ignore[method-assign]
    time.sleep = original_sleep
    import openstack

    openstack.connect(cloud=os.environ.get("OS_CLOUD")).image.delete_image(image_id)   # the benchmark's image
    outside = wall - timing["http"] - timing["sleep"]
    print(f"API calls: {sum(calls.values())}")
    for key, count in sorted(calls.items()):
        print(f"  {count:4} {key}")
    print(f"wall {wall:.1f} s; in HTTP {timing['http']:.1f} s; asleep in waits {timing['sleep']:.1f} s; "
          f"outside both {outside:.2f} s (goal < 5 s)")
    print(f"polls sleeping under 1 s: {timing['short_sleeps']} (goal 0)")
    print(f"process start to first API call: {timing['first_call']:.2f} s (goal < 1 s)")


if __name__ == "__main__":
    main()

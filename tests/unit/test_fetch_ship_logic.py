"""The pure parts of fetch-base and ship: checksum files, hop parsing, the generated ssh_config, rsync's verdicts."""

from __future__ import annotations

import hashlib

import pytest

from snapbuild.errors import BuildError, UserError
from snapbuild.transfer.checksums import algorithm_of, lookup
from snapbuild.transfer.fetch import FetchRequest, resolve
from snapbuild.transfer.rsync import Failure, classify, rsync_argv
from snapbuild.transfer.ship import upload_argv
from snapbuild.transfer.sshchain import Hop, SSHOptions, parse_hops, render_config


def test_checksum_lines_in_both_layouts_are_found() -> None:
    text = f"{'a' * 64} *noble.img\n{'b' * 64}  ./other.img\nnot a line\n"
    assert lookup(text, "noble.img", algorithm="sha256", source="S") == "a" * 64
    assert lookup(text, "other.img", algorithm="sha256", source="S") == "b" * 64
    with pytest.raises(BuildError, match="lists no sha512"):
        lookup(text, "noble.img", algorithm="sha512", source="S")
    assert algorithm_of("SHA512SUMS") == "sha512"
    assert hashlib.new(algorithm_of("SHA256SUMS")).name == "sha256"


def test_default_urls_follow_the_cloud_images_layout() -> None:
    assert resolve(FetchRequest(image="ubuntu-24.04")) == (
        "https://cloud-images.ubuntu.com/noble/current/noble-server-cloudimg-amd64.img",
        "https://cloud-images.ubuntu.com/noble/current/SHA256SUMS")
    assert resolve(FetchRequest(image="debian-12", mirror="http://m/cloud/"))[1] == \
        "http://m/cloud/bookworm/latest/SHA512SUMS"
    with pytest.raises(UserError, match="not an http"):
        resolve(FetchRequest(image="debian-12", url="file:///etc/passwd"))


def test_hops_parse_with_users_and_ports() -> None:
    hops = parse_hops("ops@relay1, relay2:2222", default_port=22)
    assert hops == (Hop(host="relay1", user="ops", port=22), Hop(host="relay2", user=None, port=2222))
    assert str(Hop.parse("root@[fd00::1]:2200")) == "root@fd00::1:2200"
    with pytest.raises(UserError):
        Hop.parse("a b")
    with pytest.raises(UserError, match="port 65536 of 'ops@relay:65536' is out of range"):
        Hop.parse("ops@relay:65536")
    with pytest.raises(UserError, match="port 0 of 'relay' is out of range"):
        parse_hops("relay", default_port=0)


def test_each_hop_jumps_through_all_previous_ones_and_nothing_is_forwarded() -> None:
    hops = (Hop(host="r1", user="u"), Hop(host="r2", user="u"), Hop(host="ctl", user="u", port=2200))
    text = render_config(hops, SSHOptions(identity=None, known_hosts=None, connect_timeout=7))
    blocks = text.split("Host ")
    assert "ProxyJump none" in blocks[1]
    assert "LogLevel INFO" in blocks[1] and "LogLevel INFO" in blocks[2] and "LogLevel" not in blocks[3]
    assert "ProxyJump snapbuild-hop0\n" in blocks[2]
    assert "ProxyJump snapbuild-hop0,snapbuild-hop1" in blocks[3] and "Port 2200" in blocks[3]
    for line in ("BatchMode yes", "StrictHostKeyChecking yes", "ForwardAgent no", "ConnectTimeout 7",
                 "ServerAliveInterval 15", "ServerAliveCountMax 3"):
        assert line in blocks[4]


def test_rsync_resumes_by_appending_and_keeps_partial_data() -> None:
    from pathlib import Path
    argv = rsync_argv(Path("/x/img"), "snapbuild-hop1:dir/img", rsh="ssh -F cfg", io_timeout=60, bwlimit="10m")
    assert {"--append-verify", "--partial", "--inplace", "--timeout=60", "--bwlimit=10m"} <= set(argv)
    assert argv[-3:] == ["--", "/x/img", "snapbuild-hop1:dir/img"]


@pytest.mark.parametrize(("code", "stderr", "verdict"), [
    (0, "", Failure.NONE),
    (11, "rsync: [receiver] write failed on \"/d/img\": No space left on device (28)", Failure.NO_SPACE),
    (255, "root@10.0.0.2: Permission denied (publickey).", Failure.AUTH),
    (255, "Host key verification failed.", Failure.HOST_KEY),
    (255, "client_loop: send disconnect: Broken pipe", Failure.TRANSIENT),
    (12, "rsync error: error in rsync protocol data stream (code 12)", Failure.TRANSIENT),
    (30, "rsync error: timeout in data send/receive (code 30)", Failure.TRANSIENT),
    (1, "rsync: syntax or usage error", Failure.OTHER),
    (255, "ssh: connect to host 127.0.0.1 port 2222: Connection refused", Failure.REFUSED),
    (255, "channel 0: open failed: connect failed: Connection refused\nstdio forwarding failed", Failure.REFUSED),
    (255, "ssh: Could not resolve hostname ctl: Name or service not known", Failure.UNKNOWN_HOST),
    (255, "ssh: Could not resolve hostname ctl: Temporary failure in name resolution", Failure.TRANSIENT),
    (255, "channel 0: open failed: connect failed: Name or service not known\nstdio forwarding failed",
     Failure.UNKNOWN_HOST),
])
def test_rsync_failures_are_told_apart(code: int, stderr: str, verdict: Failure) -> None:
    assert classify(code, stderr) is verdict


def test_upload_runs_snapbuild_on_the_controller() -> None:
    assert upload_argv("imgs/k8s.qcow2", ("--recipe", "k8s")) == ["snapbuild", "upload", "imgs/k8s.qcow2",
                                                                  "--recipe", "k8s"]

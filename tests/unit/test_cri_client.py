"""The CRI client the k8s verify check sends into the guest: its protobuf and HTTP/2 encodings, checked against the
specifications' own examples (the vm tier runs it against the guest's real containerd)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from tests import cri_client as cri


def test_varints_and_fields_are_protobufs_wire_format() -> None:
    assert cri.varint(1) == b"\x01" and cri.varint(150) == b"\x96\x01" and cri.varint(300) == b"\xac\x02"
    assert cri.field(1, 150) == b"\x08\x96\x01"                 # the protobuf encoding guide's example
    assert cri.field(2, "testing") == b"\x12\x07testing"
    parsed = cri.fields(cri.field(1, "id") + cri.field(3, 2) + cri.field(1, b"again"))
    assert parsed == {1: [b"id", b"again"], 3: [2]}


def test_the_sandbox_request_runs_in_the_nodes_namespaces_with_the_given_names() -> None:
    request = cri.fields(cri.run_pod_sandbox_request("pod", "uid-1"))
    config = cri.fields(cri.submessage(request, 1))
    assert cri.fields(cri.submessage(config, 1)) == {1: [b"pod"], 2: [b"uid-1"], 3: [b"snapbuild-verify"]}
    linux = cri.fields(cri.submessage(config, 8))
    assert cri.submessage(linux, 1) == b"snapbuildverify.slice"
    security = cri.fields(cri.submessage(linux, 2))
    assert cri.fields(cri.submessage(security, 1)) == {1: [cri.NODE], 2: [cri.NODE], 3: [cri.NODE]}
    assert cri.submessage({}, 1) == b""


def test_a_pull_asks_for_the_reference_in_an_image_spec_and_runs_as_the_check_does_with_pull_ref() -> None:
    assert cri.fields(cri.submessage(cri.fields(cri.pull_image_request("registry.k8s.io/pause:3.10")), 1)) == {
        1: [b"registry.k8s.io/pause:3.10"]}
    check, pull = cri.guest_check("/run/c.sock"), cri.guest_pull("r/x:1", "/run/c.sock")
    assert pull == (*check[:-1], "pull", "r/x:1", "/run/c.sock")


def test_a_pull_without_a_reference_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cri.main(["-c", "pull", "/run/c.sock"]) == 2
    assert "usage: pull REF" in capsys.readouterr().err


def test_headers_are_plain_hpack_literals_and_frames_have_the_nine_byte_header() -> None:
    # RFC 7541 C.2.2: literal header field without indexing, new name: 0x00, length-prefixed name and value
    assert cri._hpack_literal("custom-key", "v") == b"\x00\x0acustom-key\x01v"
    long = cri._hpack_literal("k", "x" * 200)
    assert long[:4] == b"\x00\x01k\x7f" and long[4] == 200 - 127 and long[5:] == b"x" * 200
    frame = cri._frame(cri.DATA, cri.END_STREAM, 3, b"abc")
    assert frame == b"\x00\x00\x03" + b"\x00\x01" + b"\x00\x00\x00\x03" + b"abc"


def test_it_needs_nothing_but_the_standard_library() -> None:
    """The guest runs it as `python3 -c SOURCE`: no import of snapbuild, tests or anything outside the stdlib."""
    tree = ast.parse(Path(cri.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported - {"__future__"} <= set(sys.stdlib_module_names), imported

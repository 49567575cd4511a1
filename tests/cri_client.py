"""A CRI client small enough to send into a verify guest: does containerd's CRI start a pod sandbox offline?

kubelet's first act on a node is RunPodSandbox, which makes containerd run the pause image; an image whose
pause image is missing, unusable or of another name than containerd's `sandbox_image` fails there, at
`kubeadm init`, with no network to pull it. crictl asks exactly that, but Debian ships no cri-tools and the test's
kubeadm is a stand-in, so this module speaks the CRI itself: gRPC over HTTP/2 over containerd's socket, with
the few frames a unary call needs (our own encoder, standard library only: the guest runs it as
`python3 -c SOURCE`). It runs a sandbox in the node's network namespace (no CNI on an image that has never
joined a cluster), checks that containerd reports it ready, stops and removes it, and exits 0; otherwise it
prints what the runtime said and exits 1. With `pull REF` it pulls as kubelet pulls afterwards (ImageService
PullImage, which resolves through containerd's `config_path` hosts.toml, so through the node's mirrors).

The messages and field numbers are the CRI's (k8s.io/cri-api, runtime.v1 api.proto): RunPodSandboxRequest
{config=1}, PodSandboxConfig {metadata=1, hostname=2, log_directory=3, linux=8}, PodSandboxMetadata {name=1,
uid=2, namespace=3}, LinuxPodSandboxConfig {cgroup_parent=1, security_context=2}, LinuxSandboxSecurityContext
{namespace_options=1}, NamespaceOption {network=1, pid=2, ipc=3} with NODE=2; the responses' first field is the
sandbox id (RunPodSandboxResponse) or the status (PodSandboxStatusResponse: PodSandboxStatus {id=1, state=3},
SANDBOX_READY=0). PullImageRequest {image=1: ImageSpec {image=1}}; PullImageResponse {image_ref=1}.
"""

from __future__ import annotations

import base64
import socket
import struct
import subprocess
import sys
import uuid
import zlib
from pathlib import Path

SOCKET = "/run/containerd/containerd.sock"
SERVICE = "/runtime.v1.RuntimeService/"
IMAGE_SERVICE = "/runtime.v1.ImageService/"
NODE = 2                        # NamespaceMode NODE: the node's own namespace
SANDBOX_READY = 0

DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4


class CRIError(Exception):
    pass


# ---------------------------------------------------------------- protobuf, the wire format only

def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field(number: int, value: bytes | str | int) -> bytes:
    """One field: an int as a varint (wire type 0), anything else length-delimited (wire type 2)."""
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    data = value.encode() if isinstance(value, str) else value
    return varint(number << 3 | 2) + varint(len(data)) + data


def fields(message: bytes) -> dict[int, list[bytes | int]]:
    """A message's fields by number (varints as ints, length-delimited as bytes)."""
    found: dict[int, list[bytes | int]] = {}
    pos = 0

    def read_varint() -> int:
        nonlocal pos
        shift = result = 0
        while True:
            byte = message[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result

    while pos < len(message):
        key = read_varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            found.setdefault(number, []).append(read_varint())
        elif wire == 2:
            size = read_varint()
            found.setdefault(number, []).append(message[pos:pos + size])
            pos += size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise CRIError(f"protobuf wire type {wire} in a response")
    return found


def run_pod_sandbox_request(name: str, uid: str) -> bytes:
    metadata = field(1, name) + field(2, uid) + field(3, "snapbuild-verify")
    namespaces = field(1, NODE) + field(2, NODE) + field(3, NODE)
    # A parent cgroup as kubelet gives one: a systemd slice (the recipe's containerd uses the systemd driver),
    # which systemd creates on demand.
    linux = field(1, "snapbuildverify.slice") + field(2, field(1, namespaces))
    config = field(1, metadata) + field(3, f"/var/log/pods/snapbuild-verify_{name}_{uid}") + field(8, linux)
    return field(1, config)


def pull_image_request(ref: str) -> bytes:
    return field(1, field(1, ref))


# ---------------------------------------------------------------- HTTP/2 and gRPC, one unary call at a time

def _hpack_literal(name: str, value: str) -> bytes:
    """A header as 'literal without indexing, new name', no Huffman: every HPACK decoder takes it."""
    def string(text: str) -> bytes:
        data = text.encode()
        if len(data) < 127:
            return bytes([len(data)]) + data
        rest, out = len(data) - 127, bytearray([127])
        while rest >= 128:
            out.append(rest % 128 + 128)
            rest //= 128
        return bytes(out) + bytes([rest]) + data
    return b"\x00" + string(name) + string(value)


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


class Connection:
    def __init__(self, path: str = SOCKET, timeout: float = 60.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(SETTINGS, 0, 0))
        self.stream = 1

    def close(self) -> None:
        self.sock.close()

    def _read(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise CRIError("containerd closed the connection")
            data += chunk
        return data

    def call(self, method: str, request: bytes, service: str = SERVICE) -> bytes:
        """One unary gRPC call; the response message, or CRIError with what the runtime said."""
        stream, self.stream = self.stream, self.stream + 2
        headers = b"".join(_hpack_literal(k, v) for k, v in (
            (":method", "POST"), (":scheme", "http"), (":path", service + method), (":authority", "localhost"),
            ("content-type", "application/grpc"), ("te", "trailers")))
        body = b"\x00" + struct.pack(">I", len(request)) + request
        self.sock.sendall(_frame(HEADERS, END_HEADERS, stream, headers) + _frame(DATA, END_STREAM, stream, body))
        data = b""
        trailers = b""
        while True:
            head = self._read(9)
            size, kind, flags = int.from_bytes(head[:3], "big"), head[3], head[4]
            on = struct.unpack(">I", head[5:])[0] & 0x7FFFFFFF
            payload = self._read(size)
            if kind == SETTINGS and not flags & ACK:
                self.sock.sendall(_frame(SETTINGS, ACK, 0))
            elif kind == PING and not flags & ACK:
                self.sock.sendall(_frame(PING, ACK, 0, payload))
            elif kind == GOAWAY:
                raise CRIError(f"containerd ended the connection: {payload[8:].decode(errors='replace')}")
            elif on != stream:
                continue
            elif kind == RST_STREAM:
                raise CRIError(f"{method}: stream reset, HTTP/2 error {int.from_bytes(payload[:4], 'big')}")
            elif kind == DATA:
                data += payload
            elif kind == HEADERS:
                trailers += payload
            if on == stream and flags & END_STREAM:
                break
        if len(data) >= 5:
            return data[5:5 + struct.unpack(">I", data[1:5])[0]]
        # No message: a trailers-only error. grpc-message is HPACK-coded (often Huffman); keep its readable bytes,
        # the guest's journal has the whole story.
        readable = "".join(chr(b) if 32 <= b < 127 else " " for b in trailers).split()
        raise CRIError(f"{method} failed: {' '.join(readable)[:400] or 'no response message'}")


def submessage(found: dict[int, list[bytes | int]], number: int) -> bytes:
    """The first length-delimited field `number` of a parsed message (b"" when absent: proto3 leaves defaults out)."""
    value = found.get(number, [b""])[0]
    if not isinstance(value, bytes):
        raise CRIError(f"field {number} is a varint where a message or string belongs")
    return value


def check_sandbox(path: str = SOCKET) -> str:
    """Run, check, stop and remove a pod sandbox; its id. Once it exists, it is removed whatever the check says."""
    name = "snapbuild-verify-sandbox"
    conn = Connection(path)
    try:
        reply = fields(conn.call("RunPodSandbox", run_pod_sandbox_request(name, str(uuid.uuid4()))))
        sandbox = submessage(reply, 1).decode()
        if not sandbox:
            raise CRIError("RunPodSandbox returned no sandbox id")
        try:
            status = fields(submessage(fields(conn.call("PodSandboxStatus", field(1, sandbox))), 1))
            state = status.get(3, [SANDBOX_READY])[0]
            if state != SANDBOX_READY:
                raise CRIError(f"sandbox {sandbox[:12]} is not ready (state {state})")
        finally:
            conn.call("StopPodSandbox", field(1, sandbox))
            conn.call("RemovePodSandbox", field(1, sandbox))
        return sandbox
    finally:
        conn.close()


def pull_image(ref: str, path: str = SOCKET) -> str:
    """Pull `ref` as kubelet does (ImageService.PullImage: containerd resolves it through its `config_path`
    hosts.toml, so through the node's mirrors); the image id containerd returns."""
    conn = Connection(path, timeout=300.0)
    try:
        image_id = submessage(fields(conn.call("PullImage", pull_image_request(ref), IMAGE_SERVICE)), 1).decode()
    finally:
        conn.close()
    if not image_id:
        raise CRIError(f"PullImage {ref} returned no image reference")
    return image_id


def guest_check(socket_path: str = SOCKET) -> tuple[str, ...]:
    """This module as a verify check (an argv the guest runs as root): compressed, so the check's name, which is its
    command line, stays a few lines long."""
    source = zlib.compress(Path(__file__).read_bytes(), 9)
    return ("python3", "-c", "import base64,zlib;exec(zlib.decompress(base64.b64decode("
            f"'{base64.b64encode(source).decode()}')))", socket_path)


def guest_pull(ref: str, socket_path: str = SOCKET) -> tuple[str, ...]:
    """The argv a guest runs as root to pull `ref` through the CRI."""
    *program, socket_arg = guest_check(socket_path)
    return (*program, "pull", ref, socket_arg)


def main(argv: list[str]) -> int:
    """`[SOCKET]`: the pod sandbox check; `pull REF [SOCKET]`: a pull through the CRI."""
    args = argv[1:]
    path = next((arg for arg in args if arg.startswith("/")), SOCKET)
    what = "pull" if args[:1] == ["pull"] else "pod sandbox"
    try:
        if what == "pull":
            if len(args) < 2 or args[1].startswith("/"):
                print("usage: pull REF [SOCKET]", file=sys.stderr)
                return 2
            print(f"pulled {args[1]} through the CRI: {pull_image(args[1], path)}")
            return 0
        sandbox = check_sandbox(path)
    except (OSError, CRIError) as exc:
        print(f"{what}: {exc}", file=sys.stderr)
        # gRPC's own message is usually Huffman-coded in the trailers; containerd's journal says it plainly.
        try:
            journal = subprocess.run(["journalctl", "-u", "containerd", "-n", "20", "--no-pager", "-o", "cat"],
                                     capture_output=True, text=True, check=False).stdout
        except OSError:
            journal = ""
        for line in journal.splitlines():
            if "level=error" in line:
                print(line[:600], file=sys.stderr)
        return 1
    print(f"pod sandbox {sandbox[:12]} ran ready from the local pause image, stopped and removed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

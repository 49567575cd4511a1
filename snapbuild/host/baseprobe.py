"""Look inside a base image offline, in seconds and before anything boots: is it a disk image with a partition
table and a Linux root file system, and which distro is on it?

The layout (MBR or GPT, each partition's file system) and an ext2/3/4 root's /etc/os-release are read without
root and without the kernel: a raw image straight from its file, a qcow2 through `qemu-nbd --read-only` on a
private unix socket (QEMU does the qcow2 work: compression, backing files), parsed here. What this reader
cannot read (an XFS or btrfs root, an ext4 feature it does not know) is read as root through the read-only
attach + mount of `snapbuild.sealing.offline.mounted_root`; without root it stays unread and the builder's in-guest
check is the backstop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import struct
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from snapbuild.distros import DISTROS, Distro
from snapbuild.errors import SnapbuildError, UserError
from snapbuild.host.commands import die_with_parent

log = logging.getLogger(__name__)

Read = Callable[[int, int], bytes]          # (offset, length) -> exactly `length` bytes (zeros past the end)

SECTOR = 512
ROOT_FSTYPES = ("ext4", "ext3", "ext2", "xfs", "btrfs")
ROOT_LABELS = ("cloudimg-rootfs", "rootfs", "root")
OS_RELEASE_PATHS = ("/etc/os-release", "/usr/lib/os-release")   # os-release(5): the second is the fallback
MAX_SYMLINKS = 40
NOT_A_DISK_HINT = "pass a cloud image (qcow2 or raw) with an MBR or GPT partition table and a root file system"


class Unreadable(Exception):
    """The offline reader cannot read this (a layout or feature it does not know); not the user's fault."""


# ---------------------------------------------------------------- os-release

def parse_os_release(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            values[key.strip()] = value.strip().strip('"').strip("'")
    return values


H = TypeVar("H")


class Tree(Protocol[H]):
    """A file tree seen from outside (a mounted directory, an unmounted file system): lookups, links, reads."""

    def root(self) -> H: ...

    def lookup(self, directory: H, name: str) -> H | None: ...

    def link_target(self, node: H) -> str | None: ...

    def read(self, node: H) -> bytes: ...


def resolve(tree: Tree[H], path: str) -> H | None:
    """Follow `path` inside the tree; symlinks resolve inside it too (an absolute target starts at ITS root,
    never at the host's: /etc/os-release -> /usr/lib/os-release must not read this host's file)."""
    stack = [tree.root()]
    pending = [p for p in reversed(path.split("/")) if p]
    hops = 0
    while pending:
        name = pending.pop()
        if name == ".":
            continue
        if name == "..":
            if len(stack) > 1:
                stack.pop()
            continue
        child = tree.lookup(stack[-1], name)
        if child is None:
            return None
        target = tree.link_target(child)
        if target is not None:
            hops += 1
            if hops > MAX_SYMLINKS:
                raise Unreadable(f"too many symlinks resolving {path}")
            if target.startswith("/"):
                del stack[1:]
            pending.extend(p for p in reversed(target.split("/")) if p)
            continue
        stack.append(child)
    return stack[-1]


class DirTree:
    """A mounted root file system, read with the host's syscalls but resolved as if chrooted."""

    def __init__(self, top: Path) -> None:
        self.top = top

    def root(self) -> Path:
        return self.top

    def lookup(self, directory: Path, name: str) -> Path | None:
        child = directory / name
        try:
            os.lstat(child)
        except OSError:   # missing, or `directory` is not a directory
            return None
        return child

    def link_target(self, node: Path) -> str | None:
        return os.readlink(node) if stat.S_ISLNK(os.lstat(node).st_mode) else None

    def read(self, node: Path) -> bytes:
        return node.read_bytes()


def read_os_release(tree: Tree[Any]) -> dict[str, str] | None:
    """/etc/os-release (usually a symlink to ../usr/lib/os-release), else /usr/lib/os-release; None if neither."""
    for path in OS_RELEASE_PATHS:
        node = resolve(tree, path)
        if node is not None:
            try:
                return parse_os_release(tree.read(node).decode(errors="replace"))
            except IsADirectoryError:
                continue
    return None


# ---------------------------------------------------------------- matching the recipe's distro

def describe_os(os_release: Mapping[str, str]) -> str:
    return (os_release.get("PRETTY_NAME")
            or f"{os_release.get('ID', 'unknown')} {os_release.get('VERSION_ID', '')}".strip())


def distro_of(os_release: Mapping[str, str]) -> Distro | None:
    """The snapbuild distro this os-release names, if snapbuild knows it."""
    found = (os_release.get("ID", "").lower(), os_release.get("VERSION_ID", ""))
    return next((d for d in DISTROS.values() if (d.id, d.version) == found), None)


def distro_mismatch(os_release: Mapping[str, str], want: Distro, *, recipe: str, supported: Sequence[str],
                    image: Path | str, option: str = "--base", what: str = "base image") -> UserError | None:
    """None when the base is the recipe's distro; else the error to raise: what it is, what is wanted, the fix."""
    found = distro_of(os_release)
    if found is not None and found.name == want.name:
        return None
    message = f"{what} {image} is {describe_os(os_release)}, but recipe {recipe!r} is for {want.pretty}"
    if found is not None and (not supported or found.name in supported):
        hint = (f"pass --distro {found.name} (recipe {recipe!r} for {found.pretty}), "
                f"or {_a(want.pretty)} image as {option}")
    elif found is not None:
        hint = (f"recipe {recipe!r} does not support {found.pretty} (it supports {', '.join(supported)}): "
                f"pass {_a(want.pretty)} image as {option}")
    else:
        known = ", ".join(supported) if supported else ", ".join(DISTROS)
        hint = f"snapbuild builds {known}: pass {_a(want.pretty)} image as {option}"
    return UserError(message, hint=hint)


def _a(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


# ---------------------------------------------------------------- partition tables

@dataclass(frozen=True, kw_only=True)
class TableEntry:
    number: int
    start: int      # bytes from the start of the disk
    size: int       # bytes
    type: str       # MBR type byte ("0x83") or GPT type GUID


@dataclass(frozen=True, kw_only=True)
class PartitionTable:
    kind: str       # "gpt" or "dos" (blkid's PTTYPE names)
    entries: tuple[TableEntry, ...]


MBR_EXTENDED = (0x05, 0x0F, 0x85)


def read_partition_table(read: Read, disk_size: int) -> PartitionTable | None:
    """GPT (header at LBA 1) or MBR; None when there is neither (random bytes, an empty disk, a bare file system)."""
    head = read(0, 2 * SECTOR)
    if head[SECTOR:SECTOR + 8] == b"EFI PART":
        return _gpt(read, head[SECTOR:], disk_size)
    if head[510:512] != b"\x55\xaa":
        return None
    entries = []
    for index in range(4):
        boot, kind, lba, count = struct.unpack_from("<B3xB3xII", head, 446 + 16 * index)
        if kind == 0 or count == 0:
            continue
        if boot not in (0, 0x80) or lba == 0 or (lba + count) * SECTOR > disk_size:
            return None   # not a partition table: a boot sector of a bare file system, or noise
        if kind in MBR_EXTENDED:
            continue      # logical partitions: only the root path below reads them (through the kernel)
        entries.append(TableEntry(number=index + 1, start=lba * SECTOR, size=count * SECTOR, type=f"0x{kind:02x}"))
    if not entries and not any(head[446 + 16 * i + 4] in MBR_EXTENDED for i in range(4)):
        return None
    return PartitionTable(kind="dos", entries=tuple(entries))


def _gpt(read: Read, header: bytes, disk_size: int) -> PartitionTable | None:
    entries_lba, count, entry_size = struct.unpack_from("<QII", header, 72)
    if entry_size < 128 or count > 1024 or entries_lba * SECTOR >= disk_size:
        return None
    table = read(entries_lba * SECTOR, count * entry_size)
    entries = []
    for index in range(count):
        raw = table[index * entry_size:(index + 1) * entry_size]
        if raw[:16] == bytes(16):
            continue
        first, last = struct.unpack_from("<QQ", raw, 32)
        if last < first:
            continue
        entries.append(TableEntry(number=index + 1, start=first * SECTOR, size=(last - first + 1) * SECTOR,
                                  type=str(uuid.UUID(bytes_le=raw[:16]))))
    return PartitionTable(kind="gpt", entries=tuple(entries))


# ---------------------------------------------------------------- file systems

SNIFF_BYTES = 0x10000 + 0x1000      # up to btrfs's superblock at 64 KiB


def sniff_filesystem(head: bytes) -> tuple[str, str]:
    """(type, label) of the file system whose first bytes are `head`, in blkid's names; ("", "") if unknown."""
    def label(at: int, size: int) -> str:
        return head[at:at + size].split(b"\0", 1)[0].decode(errors="replace")

    if head[0x438:0x43A] == b"\x53\xef":
        compat, incompat, ro_compat = struct.unpack_from("<III", head, 0x45C)
        if incompat & 0x2C0 or ro_compat & 0x478:   # extents/64bit/flex_bg; huge_file/gdt_csum/dir_nlink/…/csum
            kind = "ext4"
        else:
            kind = "ext3" if compat & 0x4 else "ext2"
        return kind, label(0x478, 16)
    if head[:4] == b"XFSB":
        return "xfs", label(0x6C, 12)
    if head[0x10040:0x10048] == b"_BHRfS_M":
        return "btrfs", label(0x1012B, 256)
    if head[:6] == b"LUKS\xba\xbe":
        return "crypto_LUKS", ""
    if head[512:520] == b"LABELONE" and head[536:544] == b"LVM2 001":
        return "LVM2_member", ""
    if head[4086:4096] in (b"SWAPSPACE2", b"SWAP-SPACE"):
        return "swap", ""
    if head[510:512] == b"\x55\xaa" and (head[0x52:0x55] == b"FAT" or head[0x36:0x39] == b"FAT"):
        return "vfat", ""
    return "", ""


class PartLike(Protocol):
    @property
    def number(self) -> int: ...

    @property
    def fstype(self) -> str: ...

    @property
    def label(self) -> str: ...

    @property
    def size(self) -> int: ...


P = TypeVar("P", bound=PartLike)


def pick_root(parts: Sequence[P], image: Path | str) -> P:
    """The root: a Linux file system labelled as a root (cloudimg-rootfs, …), else the largest one."""
    if not parts:
        raise UserError(f"{image} is not a disk image (no partition table)", hint=NOT_A_DISK_HINT)
    linux = [p for p in parts if p.fstype in ROOT_FSTYPES]
    labelled = [p for p in linux if p.label in ROOT_LABELS]
    if labelled or linux:
        return (labelled or [max(linux, key=lambda p: p.size)])[0]
    if any(p.fstype == "LVM2_member" for p in parts):
        raise UserError(f"{image}: the root file system is on LVM, which snapbuild cannot look into offline",
                        hint="use a cloud image with a plain root partition (ext4, xfs or btrfs)")
    seen = ", ".join(f"p{p.number}={p.fstype or '?'}" for p in parts)
    raise UserError(f"{image}: no root file system found ({seen})",
                    hint="the base needs an ext4, xfs or btrfs root partition")


# ---------------------------------------------------------------- ext2/3/4, read-only

EXT4_EXTENTS_FL = 0x80000
EXT4_INLINE_DATA_FL = 0x10000000
INCOMPAT_FILETYPE, INCOMPAT_META_BG, INCOMPAT_64BIT = 0x2, 0x10, 0x80
INCOMPAT_KNOWN = 0x2 | 0x4 | 0x40 | 0x80 | 0x200 | 0x400 | 0x1000 | 0x8000 | 0x10000 | 0x20000
# filetype, recover (journal needs replay: we read the last checkpoint, good enough for os-release), extents,
# 64bit, flex_bg, ea_inode, large_dir, inline_data, encrypt, casefold. Anything else: Unreadable.


class ExtFS:
    """Just enough of ext2/3/4 to find and read a file: superblock, group descriptors, inodes, extent trees and
    block maps, directories (htree directories read as linear ones)."""

    def __init__(self, read: Read) -> None:
        self._read = read
        sb = read(1024, 1024)
        if sb[0x38:0x3A] != b"\x53\xef":
            raise Unreadable("no ext2/3/4 superblock")
        self.first_data_block = struct.unpack_from("<I", sb, 0x14)[0]
        self.block_size = 1024 << struct.unpack_from("<I", sb, 0x18)[0]
        self.inodes_per_group = struct.unpack_from("<I", sb, 0x28)[0]
        rev = struct.unpack_from("<I", sb, 0x4C)[0]
        self.inode_size = struct.unpack_from("<H", sb, 0x58)[0] if rev >= 1 else 128
        self.incompat = struct.unpack_from("<I", sb, 0x60)[0]
        unknown = self.incompat & ~INCOMPAT_KNOWN
        if unknown or self.incompat & INCOMPAT_META_BG:
            raise Unreadable(f"ext feature flags 0x{self.incompat:x} not handled offline")
        desc = struct.unpack_from("<H", sb, 0xFE)[0]
        self.desc_size = desc if self.incompat & INCOMPAT_64BIT and desc >= 64 else 32
        if self.block_size > 65536 or not self.inodes_per_group or self.inode_size < 128:
            raise Unreadable("implausible ext superblock")

    def _block(self, number: int, count: int = 1) -> bytes:
        return self._read(number * self.block_size, count * self.block_size)

    def _inode(self, number: int) -> bytes:
        group, index = divmod(number - 1, self.inodes_per_group)
        gdt = (self.first_data_block + 1) * self.block_size
        desc = self._read(gdt + group * self.desc_size, self.desc_size)
        table = struct.unpack_from("<I", desc, 0x8)[0]
        if self.desc_size >= 64:
            table |= struct.unpack_from("<I", desc, 0x28)[0] << 32
        return self._read(table * self.block_size + index * self.inode_size, 160)

    # Tree protocol: nodes are inode numbers.
    def root(self) -> int:
        return 2

    def lookup(self, directory: int, name: str) -> int | None:
        inode = self._inode(directory)
        if struct.unpack_from("<H", inode, 0)[0] & 0xF000 != 0x4000:
            return None
        data = self._data(inode)
        wanted = name.encode()
        pos = 0
        while pos + 8 <= len(data):
            number, rec_len, name_len = struct.unpack_from("<IHB", data, pos)
            if not self.incompat & INCOMPAT_FILETYPE:
                name_len = struct.unpack_from("<H", data, pos + 6)[0]
            if rec_len < 8:
                # a corrupt or unused tail: skip to the next block
                pos = (pos // self.block_size + 1) * self.block_size
                continue
            if number and data[pos + 8:pos + 8 + name_len] == wanted:
                return int(number)
            pos += rec_len
        return None

    def link_target(self, node: int) -> str | None:
        inode = self._inode(node)
        if struct.unpack_from("<H", inode, 0)[0] & 0xF000 != 0xA000:
            return None
        size = self._size(inode)
        flags = struct.unpack_from("<I", inode, 0x20)[0]
        if size < 60 and not flags & (EXT4_EXTENTS_FL | EXT4_INLINE_DATA_FL):
            return inode[0x28:0x28 + size].decode(errors="replace")   # a fast symlink: the target is in i_block
        return self._data(inode)[:size].decode(errors="replace")

    def read(self, node: int) -> bytes:
        inode = self._inode(node)
        if struct.unpack_from("<H", inode, 0)[0] & 0xF000 == 0x4000:
            raise IsADirectoryError(node)
        return self._data(inode)[:self._size(inode)]

    def _size(self, inode: bytes) -> int:
        lo, hi = struct.unpack_from("<I", inode, 4)[0], struct.unpack_from("<I", inode, 0x6C)[0]
        size = lo | hi << 32
        if size > 64 << 20:
            raise Unreadable(f"a {size}-byte file is not what the probe reads")
        return int(size)

    def _data(self, inode: bytes) -> bytes:
        flags = struct.unpack_from("<I", inode, 0x20)[0]
        size = self._size(inode)
        i_block = inode[0x28:0x28 + 60]
        if flags & EXT4_INLINE_DATA_FL:
            if size > 60:
                raise Unreadable("inline data beyond i_block")
            return i_block[:size]
        nblocks = -(-size // self.block_size)
        if flags & EXT4_EXTENTS_FL:
            runs = self._extents(i_block, depth_limit=8)
        else:
            runs = self._block_map(i_block, nblocks)
        out = bytearray(nblocks * self.block_size)
        for logical, physical, count, initialised in runs:
            if logical >= nblocks:
                continue
            count = min(count, nblocks - logical)
            if initialised:
                out[logical * self.block_size:(logical + count) * self.block_size] = self._block(physical, count)
        return bytes(out)

    def _extents(self, node: bytes, depth_limit: int) -> list[tuple[int, int, int, bool]]:
        magic, entries, _max, depth = struct.unpack_from("<HHHH", node, 0)
        if magic != 0xF30A or depth_limit <= 0:
            raise Unreadable("bad extent tree")
        runs: list[tuple[int, int, int, bool]] = []
        for index in range(entries):
            at = 12 + 12 * index
            if depth == 0:
                logical, length, start_hi, start_lo = struct.unpack_from("<IHHI", node, at)
                initialised = length <= 32768
                runs.append((logical, start_hi << 32 | start_lo, length if initialised else length - 32768,
                             initialised))
            else:
                _logical, leaf_lo, leaf_hi = struct.unpack_from("<IIH", node, at)
                runs += self._extents(self._block(leaf_hi << 32 | leaf_lo), depth_limit - 1)
        return runs

    def _block_map(self, i_block: bytes, nblocks: int) -> list[tuple[int, int, int, bool]]:
        pointers = list(struct.unpack("<15I", i_block))
        per_block = self.block_size // 4
        numbers = pointers[:12]
        if nblocks > 12 and pointers[12]:
            numbers += struct.unpack(f"<{per_block}I", self._block(pointers[12]))
        if nblocks > len(numbers):
            raise Unreadable("a file bigger than direct + single indirect blocks")
        return [(i, n, 1, n != 0) for i, n in enumerate(numbers[:nblocks])]


# ---------------------------------------------------------------- reading an image without root

class _FileReader:
    def __init__(self, handle: Any, size: int) -> None:
        self.handle, self.size = handle, size

    def read(self, offset: int, length: int) -> bytes:
        self.handle.seek(offset)
        data: bytes = self.handle.read(length)
        return data + bytes(length - len(data))


class _NbdReader:
    """A minimal NBD client (fixed newstyle handshake, NBD_OPT_EXPORT_NAME, simple replies), read-only."""

    REQUEST, REPLY = 0x25609513, 0x67446698
    MAX_READ = 1 << 20

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.cookie = 0
        magic, opt_magic, flags = struct.unpack(">8s8sH", self._recv(18))
        if magic != b"NBDMAGIC" or opt_magic != b"IHAVEOPT" or not flags & 1:
            raise Unreadable("not a fixed-newstyle NBD server")
        no_zeroes = bool(flags & 2)
        sock.sendall(struct.pack(">I", 1 | (2 if no_zeroes else 0)))
        sock.sendall(struct.pack(">8sII", b"IHAVEOPT", 1, 0))     # NBD_OPT_EXPORT_NAME, the default export ""
        self.size = struct.unpack(">QH", self._recv(10))[0]
        if not no_zeroes:
            self._recv(124)

    def _recv(self, length: int) -> bytes:
        chunks, left = [], length
        while left:
            chunk = self.sock.recv(min(left, 1 << 20))
            if not chunk:
                raise Unreadable("qemu-nbd closed the connection")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def read(self, offset: int, length: int) -> bytes:
        out = []
        end = min(offset + length, self.size)
        while offset < end:
            count = min(end - offset, self.MAX_READ)
            self.cookie += 1
            self.sock.sendall(struct.pack(">IHHQQI", self.REQUEST, 0, 0, self.cookie, offset, count))
            magic, error, cookie = struct.unpack(">IIQ", self._recv(16))
            if magic != self.REPLY or cookie != self.cookie or error:
                raise Unreadable(f"NBD read at {offset} failed (error {error})")
            out.append(self._recv(count))
            offset += count
        data = b"".join(out)
        return data + bytes(length - len(data))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(struct.pack(">IHHQQI", self.REQUEST, 0, 2, 0, 0, 0))   # NBD_CMD_DISC
        self.sock.close()


@contextlib.contextmanager
def open_image(image: Path, fmt: str, *, timeout: float = 20.0) -> Iterator[_FileReader | _NbdReader]:
    """Read access to the guest-visible bytes of `image`; nothing is written, nothing needs root."""
    if fmt == "raw":
        with image.open("rb") as handle:
            yield _FileReader(handle, image.stat().st_size)
        return
    with tempfile.TemporaryDirectory(prefix="snapbuild-probe-") as tmp:
        sock_path = Path(tmp) / "nbd.sock"
        argv = ["qemu-nbd", "--read-only", f"--format={fmt}", f"--socket={sock_path}", "--shared=1", str(image)]
        log.debug("host: %s", " ".join(argv))
        with open(Path(tmp) / "qemu-nbd.log", "wb") as errors:
            try:
                # Not persistent: qemu-nbd exits when our one connection closes, even if we are killed.
                # And killed with us even by kill -9 before it saw a connection (it is in no ledger).
                proc = subprocess.Popen([*die_with_parent(), *argv], stdin=subprocess.DEVNULL, stdout=errors,
                                        stderr=subprocess.STDOUT)
            except FileNotFoundError:
                raise Unreadable("qemu-nbd is not installed") from None
        try:
            sock = _connect(sock_path, proc, Path(tmp) / "qemu-nbd.log", time.monotonic() + timeout)
            reader = _NbdReader(sock)
            try:
                yield reader
            finally:
                reader.close()
        finally:
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _connect(path: Path, proc: subprocess.Popen[bytes], log_file: Path, deadline: float) -> socket.socket:
    while True:
        if proc.poll() is not None:
            text = log_file.read_text(errors="replace").strip()
            raise Unreadable(f"qemu-nbd exited {proc.returncode}: {text[-300:]}")
        if path.exists():
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(max(1.0, deadline - time.monotonic()))
            try:
                sock.connect(str(path))
                return sock
            except OSError:
                sock.close()
        if time.monotonic() > deadline:
            raise Unreadable("qemu-nbd did not open its socket in time")
        time.sleep(0.02)   # polling for the socket; bounded by the deadline


# ---------------------------------------------------------------- the probe

@dataclass(frozen=True, kw_only=True)
class FoundPartition:
    number: int
    start: int
    size: int
    fstype: str
    label: str


@dataclass(frozen=True, kw_only=True)
class BaseProbe:
    image: Path
    format: str
    table: str                       # "gpt" or "dos"
    partitions: tuple[FoundPartition, ...]
    root: FoundPartition
    os_release: Mapping[str, str] | None    # None: not read (see `unread`)
    unread: str = ""                 # why the distro was not read offline
    method: str = "offline reader"   # or "read-only mount"
    seconds: float = 0.0

    def describe(self) -> str:
        distro = describe_os(self.os_release) if self.os_release is not None else f"distro not read ({self.unread})"
        return (f"{self.table.upper()} table, root partition {self.root.number} ({self.root.fstype}, label "
                f"{self.root.label or '-'}, {self.root.size / 2**30:.1f} GiB): {distro}; {self.method}, "
                f"{self.seconds:.2f} s")


def read_layout(read: Read, disk_size: int, image: Path | str) -> tuple[PartitionTable, list[FoundPartition]]:
    """The partition table and each partition's file system; a UserError when it is no disk image."""
    table = read_partition_table(read, disk_size)
    if table is None:
        raise UserError(f"{image} is not a disk image (no partition table)", hint=NOT_A_DISK_HINT)
    found = []
    for entry in table.entries:
        head = read(entry.start, min(entry.size, SNIFF_BYTES))
        fstype, label = sniff_filesystem(head + bytes(SNIFF_BYTES - len(head)))
        found.append(FoundPartition(number=entry.number, start=entry.start, size=entry.size, fstype=fstype,
                                    label=label))
    return table, found


def probe_base(image: Path, fmt: str, *, mount_if_root: bool = True) -> BaseProbe:
    """Layout and distro of a base image, offline. UserError if it is no disk image or has no root file system;
    Unreadable when this host cannot look inside it at all (no qemu-nbd): the caller says so and goes on."""
    started = time.monotonic()
    with open_image(image, fmt) as reader:
        table, parts = read_layout(reader.read, reader.size, image)
        root = pick_root(parts, image)
        os_release, unread = _read_distro(reader.read, root)
    method = "offline reader"
    if os_release is None and mount_if_root and os.geteuid() == 0:
        os_release, unread, method = _read_distro_mounted(image, fmt), "", "read-only mount"
        if os_release is None:
            unread = "no /etc/os-release in the root file system, or it could not be mounted"
    elif os_release is None and os.geteuid() != 0:
        unread += "; reading it needs root (a read-only mount)"
    probe = BaseProbe(image=image, format=fmt, table=table.kind, partitions=tuple(parts), root=root,
                      os_release=os_release, unread=unread, method=method, seconds=time.monotonic() - started)
    log.info("base %s: %s", image, probe.describe())
    return probe


def _read_distro(read: Read, root: FoundPartition) -> tuple[dict[str, str] | None, str]:
    if not root.fstype.startswith("ext"):
        return None, f"the offline reader does not read {root.fstype}"

    def in_partition(offset: int, length: int) -> bytes:
        if offset + length > root.size:
            raise Unreadable("read past the end of the root partition")
        return read(root.start + offset, length)

    try:
        os_release = read_os_release(ExtFS(in_partition))
    except (Unreadable, struct.error, ValueError, IndexError) as exc:
        return None, f"the offline reader could not read it: {exc}"
    return (os_release, "") if os_release is not None else (None, "no /etc/os-release in the root file system")


def _read_distro_mounted(image: Path, fmt: str) -> dict[str, str] | None:
    from snapbuild.sealing.offline import mounted_root

    try:
        with mounted_root(image, fmt=fmt) as top:
            return read_os_release(DirTree(top))
    except SnapbuildError as exc:
        log.warning("could not mount the root of %s read-only: %s", image, exc.message)
        return None


def unread_note(why: str, image: Path) -> str:
    """The one line that says the distro was not checked offline, why, and what still checks it."""
    return f"distro of the base {image} not checked offline: {why}; it is checked once the guest is up"

"""The console transport's line format: how the runner inside the builder talks to snapbuild through the console.

One message (a step started, a step ended, an output line, the final verdict, …) is a JSON value sent as one or
more console lines:

    SNAPBUILD~<nonce>~<seq>~<kind>~<part><+|.>~<chunk>~<crc32>

- `nonce`: 12 hex digits chosen per build (not a secret): lines of another build, or of a runner's source
  printed to the console, are not this build's.
- `seq`: every line's own number, from 0, without gaps: the reader finds what is new in a console tail by it,
  sees lines lost to truncation, and refuses two different lines with the same number.
- `kind`, `part`: a message longer than CHUNK characters goes over numbered lines (`0+`, `1+`, …, `n.`), so no
  line is longer than MAX_LINE bytes (consoles truncate and interleave long lines).
- `chunk`: a piece of the message's JSON, ASCII only, with `~` written as `\\u007e` (still valid JSON): nothing a
  command prints can contain the separator, so recipe output carried in a message can never read as a line of
  its own, wherever a reader starts looking.
- `crc32` over everything between the marker and it: a line that kernel or systemd messages were spliced into is
  recognised as damaged (and repaired where the pieces are still there, see find_pieces).

Standard library only: this module runs inside the guest too.
"""

from __future__ import annotations

import json
import re
import secrets
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

MARK = "SNAPBUILD~"
CHUNK = 400                  # characters of JSON per line
MAX_LINE = 1000              # bytes: every line stays below (asserted by the tests)
REPAIR_LOOKAHEAD = 3         # a damaged line's rest is looked for in this many following lines
KINDS = ("hello", "step", "done", "line", "warn", "prog", "result", "final")
PROTOCOL_VERSION = 1

_NONCE = re.compile(r"[0-9a-f]{12}")
_PIECE = re.compile(re.escape(MARK) + r"([0-9a-f]{12})~(\d{1,9})~([a-z]{1,8})~(\d{1,6})([+.])~([^~]*)~([0-9a-f]{8})")


class ProtocolError(Exception):
    """The console holds lines that cannot both be true (two different lines with one number)."""


def new_nonce() -> str:
    return secrets.token_hex(6)


def check_nonce(nonce: str) -> str:
    if not _NONCE.fullmatch(nonce):
        raise ValueError(f"a console nonce is 12 lowercase hex digits, not {nonce!r}")
    return nonce


@dataclass(frozen=True, kw_only=True)
class Piece:
    """One console line of a message."""

    seq: int
    kind: str
    part: int
    last: bool
    chunk: str

    def body(self, nonce: str) -> str:
        return f"{nonce}~{self.seq}~{self.kind}~{self.part}{'.' if self.last else '+'}~{self.chunk}"

    def line(self, nonce: str) -> str:
        body = self.body(nonce)
        return f"{MARK}{body}~{zlib.crc32(body.encode()):08x}"


@dataclass(frozen=True, kw_only=True)
class Message:
    """A whole message: `seq` is the number of its first line."""

    seq: int
    kind: str
    data: Any


@dataclass(frozen=True, kw_only=True)
class Lost:
    """Lines `first`..`last` never made it to the reader whole (the console overflowed or damaged them)."""

    first: int
    last: int


Event = Message | Lost


def encode(data: Any) -> str:
    """The JSON a message carries: ASCII, no control characters, no `~`."""
    return json.dumps(data, ensure_ascii=True, separators=(",", ":"), sort_keys=True).replace("~", "\\u007e")


class Emitter:
    """Numbers messages and turns them into console lines, handed to `write` one at a time (with no newline)."""

    def __init__(self, nonce: str, write: Callable[[str], None]) -> None:
        self.nonce = check_nonce(nonce)
        self.write = write
        self.seq = 0

    def emit(self, kind: str, data: Any) -> int:
        """Send one message; returns the number of its first line."""
        if kind not in KINDS:
            raise ValueError(f"unknown message kind {kind!r}")
        text = encode(data)
        chunks = [text[i:i + CHUNK] for i in range(0, len(text), CHUNK)] or [""]
        first = self.seq
        for part, chunk in enumerate(chunks):
            piece = Piece(seq=self.seq, kind=kind, part=part, last=part == len(chunks) - 1, chunk=chunk)
            self.write(piece.line(self.nonce))
            self.seq += 1
        return first


def clean_line(raw: str) -> str:
    """A console line without its line ending (CR LF, CR CR LF) and NULs."""
    return raw.rstrip("\r\n").replace("\x00", "")


def _parse(candidate: str, nonce: str) -> Piece | None:
    match = _PIECE.match(candidate)
    if match is None or match.group(1) != nonce:
        return None
    piece = Piece(seq=int(match.group(2)), kind=match.group(3), part=int(match.group(4)), last=match.group(5) == ".",
                  chunk=match.group(6))
    if f"{zlib.crc32(piece.body(nonce).encode()):08x}" != match.group(7) or piece.kind not in KINDS:
        return None
    return piece


def _repair(fragment: str, following: Sequence[str], nonce: str) -> Piece | None:
    """A line cut by spliced noise: `ourA<noise>\\n ourB`. Cut the fragment at every position and put each of the
    next lines after it; the checksum says which (if any) is the line that was written."""
    if not fragment.startswith(MARK + nonce):
        return None
    for cut in range(len(fragment), len(MARK) + len(nonce), -1):
        head = fragment[:cut]
        for rest in following[:REPAIR_LOOKAHEAD]:
            piece = _parse(head + rest, nonce)
            if piece is not None:
                return piece
    return None


def find_pieces(lines: Sequence[str], nonce: str) -> list[Piece]:
    """Every line of this build's protocol in `lines` (complete console lines), in console order, damaged lines
    repaired where their pieces are there. Lines of other builds and noise are skipped."""
    cleaned = [clean_line(line) for line in lines]
    found: list[Piece] = []
    for index, line in enumerate(cleaned):
        start = line.find(MARK)
        while start >= 0:
            candidate = line[start:]
            piece = _parse(candidate, nonce)
            if piece is None:
                piece = _repair(candidate, cleaned[index + 1:], nonce)
            if piece is not None:
                found.append(piece)
            start = line.find(MARK, start + len(MARK))
    return found


def join(pieces: Sequence[Piece]) -> Any:
    """The message `pieces` (parts 0..n of one message, in order) carry."""
    return json.loads("".join(p.chunk for p in pieces))

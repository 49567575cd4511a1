"""Read the console protocol out of a console log, incrementally.

Two sources: Nova's console-output API, which returns the last N lines of the server's console each time it is
asked (`read_window`), and the local VM's serial log, a file that grows (`FileTail`). Both hand complete lines to a
ConsoleReader, which turns this build's protocol lines into messages in order, once each:

- noise (kernel, systemd, cloud-init, other builds) is skipped and spliced lines repaired (protocol.find_pieces);
- a line still being written (no newline yet) waits for the next read;
- lines seen again (overlapping tails, a file read twice) are recognised by their number and not repeated; two
  different lines with one number are a ProtocolError;
- lines that scrolled out of reach or were damaged beyond repair become one `Lost` event, and reading goes on with
  the next message that starts whole.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from snapbuild.console.protocol import REPAIR_LOOKAHEAD, Event, Lost, Message, Piece, ProtocolError, find_pieces, join

log = logging.getLogger(__name__)


def complete_lines(text: str) -> tuple[list[str], str]:
    """Lines ended by a newline, and the unfinished rest."""
    head, sep, rest = text.rpartition("\n")
    return (head.split("\n") if sep else []), rest


class ConsoleReader:
    def __init__(self, nonce: str) -> None:
        self.nonce = nonce
        self.next_seq = 0                          # the first line number not yet turned into an event
        self.pending: dict[int, Piece] = {}        # pieces at or after next_seq, waiting for the rest
        self.seen: dict[int, Piece] = {}           # every piece taken, to refuse a second, different one
        self.recent: list[str] = []                # the last lines fed: a damaged line's rest may come next

    def feed(self, lines: Sequence[str]) -> list[Event]:
        """Complete console lines, in console order (overlap with earlier feeds is fine); new events, in order."""
        scanned = [*self.recent, *lines]
        self.recent = scanned[-REPAIR_LOOKAHEAD - 1:]
        for piece in find_pieces(scanned, self.nonce):
            known = self.seen.get(piece.seq)
            if known is not None:
                if known != piece:
                    raise ProtocolError(f"two different console lines numbered {piece.seq}: {known} and {piece}")
                continue
            self.seen[piece.seq] = piece
            if piece.seq >= self.next_seq:
                self.pending[piece.seq] = piece
        return self._assemble()

    def oldest_new(self, lines: Sequence[str]) -> int | None:
        """The smallest line number in `lines` not yet taken (None if none): above next_seq means a gap."""
        numbers = [p.seq for p in find_pieces(lines, self.nonce) if p.seq not in self.seen]
        return min(numbers, default=None)

    def _assemble(self) -> list[Event]:
        events: list[Event] = []
        while True:
            run = self._run_from(self.next_seq)
            if run is not None and run[-1].last:
                try:
                    events.append(Message(seq=run[0].seq, kind=run[0].kind, data=join(run)))
                    self._advance(run[-1].seq + 1)
                    continue
                except ValueError:
                    log.warning("console message at line %d does not decode", run[0].seq)
            # No whole message at next_seq (yet). Lines come in order: once a later line is here, the missing ones
            # are gone (scrolled out, or damaged for good); until then they may still come.
            end = run[-1].seq if run is not None else self.next_seq - 1
            if not any(k > end for k in self.pending):
                return events
            restart = min((k for k, p in self.pending.items() if k > self.next_seq and p.part == 0), default=None)
            if restart is None:
                return events          # only the middle of a message so far; its loss shows with the next start
            events.append(Lost(first=self.next_seq, last=restart - 1))
            self._advance(restart)

    def _run_from(self, seq: int) -> list[Piece] | None:
        """The pieces of the message starting at `seq`, as far as they are here; None if it cannot start there."""
        first = self.pending.get(seq)
        if first is None or first.part != 0:
            return None
        run = [first]
        while not run[-1].last:
            following = self.pending.get(run[-1].seq + 1)
            if following is None or following.kind != first.kind or following.part != run[-1].part + 1:
                break
            run.append(following)
        return run

    def _advance(self, seq: int) -> None:
        self.pending = {k: v for k, v in self.pending.items() if k >= seq}
        self.next_seq = seq


Fetch = Callable[[int | None], str]        # console text, the last N lines (None: all of it)


class ConsoleWindow:
    """Nova's console-output as a tail: each read asks for the last `length` lines; when they do not reach back
    to the first line not yet read, it asks again for more (up to `max_length`, then all) before counting a gap
    as lost."""

    def __init__(self, reader: ConsoleReader, fetch: Fetch, *, length: int = 200, max_length: int = 6400) -> None:
        self.reader = reader
        self.fetch = fetch
        self.length = length
        self.max_length = max_length

    def read(self) -> list[Event]:
        length: int | None = self.length
        while True:
            text = self.fetch(length)
            lines, _unfinished = complete_lines(text)
            oldest = self.reader.oldest_new(lines)
            short = length is not None and len(lines) < length      # the whole log came back
            if oldest is None or oldest <= self.reader.next_seq or short or length is None:
                break
            length = length * 2 if length < self.max_length else None
            log.debug("console tail did not reach line %d; asking for %s lines", self.reader.next_seq,
                      length or "all")
        return self.reader.feed(lines)


class FileTail:
    """A growing console log file (the local VM's serial log): reads what was added since the last read."""

    def __init__(self, reader: ConsoleReader, path: Path) -> None:
        self.reader = reader
        self.path = path
        self.offset = 0
        self.unfinished = b""

    def read(self) -> list[Event]:
        try:
            with self.path.open("rb") as handle:
                size = handle.seek(0, 2)
                if size < self.offset:           # truncated or replaced: read it again (numbers drop repeats)
                    self.offset, self.unfinished = 0, b""
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        head, sep, rest = (self.unfinished + data).rpartition(b"\n")
        if not sep:
            self.unfinished = rest
            return []
        self.unfinished = rest
        return self.reader.feed(head.decode(errors="replace").split("\n"))

"""The console line format: short, numbered, checksummed lines that recipe output cannot forge and that survive
kernel messages spliced into them."""

from __future__ import annotations

import pytest

from snapbuild.console.protocol import MARK, MAX_LINE, Emitter, find_pieces, join, new_nonce

NONCE = "0123456789ab"


def emitted(*messages: tuple[str, object]) -> list[str]:
    lines: list[str] = []
    emitter = Emitter(NONCE, lines.append)
    for kind, data in messages:
        emitter.emit(kind, data)
    return lines


def test_a_message_round_trips_and_long_payloads_split_over_short_numbered_lines() -> None:
    big = {"packages": {f"pkg{i}": "1.2.3-" + "x" * 40 for i in range(100)}}
    lines = emitted(("hello", {"v": 1}), ("result", big))
    assert len(lines) > 3 and all(len(line.encode()) < MAX_LINE for line in lines)
    pieces = find_pieces(lines, NONCE)
    assert [p.seq for p in pieces] == list(range(len(lines)))
    assert join(pieces[1:]) == big and pieces[-1].last and not pieces[1].last


def test_recipe_output_carrying_a_protocol_line_stays_an_output_line() -> None:
    forged = emitted(("final", {"ok": True}))[0]
    lines = emitted(("line", "echo: " + forged))
    assert len(lines) == 1 and "~" not in lines[0].split("~", 6)[6].rsplit("~", 1)[0]
    pieces = find_pieces(lines, NONCE)
    assert [(p.kind, p.seq) for p in pieces] == [("line", 0)]
    assert join(pieces) == "echo: " + forged


def test_noise_other_builds_and_damaged_lines_are_not_taken() -> None:
    ours = emitted(("step", {"name": "a"}))
    theirs: list[str] = []
    Emitter("ba9876543210", theirs.append).emit("final", {"ok": True})
    damaged = ours[0][:30] + "X" + ours[0][31:]
    assert find_pieces(["[    1.2] kernel: hello", theirs[0], damaged], NONCE) == []


@pytest.mark.parametrize("noise", ["[   12.345678] audit: type=1400 apparmor=\"STATUS\"",
                                   "\x1b[0;32m  OK  \x1b[0m] Started foo.service.", "\r\x1b[K[  OK  ] Reached"])
def test_a_line_split_by_a_spliced_kernel_or_systemd_message_is_repaired(noise: str) -> None:
    line = emitted(("line", "some output of a step, long enough to be split"))[0]
    cut = len(line) // 2
    console = [line[:cut] + noise + "\r", line[cut:] + "\r"]
    pieces = find_pieces(console, NONCE)
    assert len(pieces) == 1 and join(pieces) == "some output of a step, long enough to be split"


def test_lines_are_found_mid_line_and_with_crlf_endings() -> None:
    lines = emitted(("warn", "w"))
    pieces = find_pieces(["garbage before " + lines[0] + "\r\r\n"], NONCE)
    assert join(pieces) == "w"
    assert lines[0].startswith(MARK) and len(new_nonce()) == 12

"""`--on-error ask`: the question put to the operator at a failed step, on the terminal (as Packer's -on-error=ask)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

import click

from snapbuild.errors import UserError

if TYPE_CHECKING:       # the CLI module stays light: the Run layer loads when a build runs
    from snapbuild.run.context import Asker, Choice, OnError

CHOICES: dict[str, Choice] = {"c": "cleanup", "r": "retry", "k": "keep"}


def terminal_asker(stdin: TextIO | None = None, stderr: TextIO | None = None) -> Asker | None:
    """None when there is no terminal to ask on: a build must never wait for an answer nobody can give."""
    stdin, stderr = stdin or sys.stdin, stderr or sys.stderr
    if not (stdin.isatty() and stderr.isatty()):
        return None

    def ask(step: str, can_retry: bool) -> Choice:
        offered = "[c]lean up, [r]etry the step, [k]eep everything" if can_retry else "[c]lean up, [k]eep everything"
        while True:
            stderr.write(f"step {step!r} failed: {offered}? ")
            stderr.flush()
            answer = stdin.readline()
            if not answer:           # end of input: nobody is there any more
                stderr.write("\n")
                return "cleanup"
            choice = CHOICES.get(answer.strip().lower()[:1])
            if choice is not None and (choice != "retry" or can_retry):
                return choice

    return ask


def on_error_of(on_error: str | None, keep_on_failure: bool) -> OnError:
    """--keep-on-failure is the older spelling of --on-error abort."""
    if keep_on_failure and on_error not in (None, "abort"):
        raise UserError(f"--keep-on-failure and --on-error {on_error} contradict each other",
                        hint="--keep-on-failure is --on-error abort: pass one of them")
    if keep_on_failure:
        return "abort"
    return on_error or "cleanup"    # type: ignore[return-value]  # click.Choice limits it


ON_ERROR_OPTION = click.option(
    "--on-error", "on_error", type=click.Choice(["cleanup", "abort", "ask"]), default=None,
    help="When a step fails: cleanup (default) removes everything; abort keeps it and says how to reach and "
         "remove it (as --keep-on-failure); ask pauses, says how to log in, and lets you clean up, retry the "
         "step or keep (only with a terminal; otherwise it cleans up and says so).")

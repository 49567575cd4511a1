"""snapbuild's error types: each knows its exit code and carries a hint for the user."""

from __future__ import annotations

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_BUILD = 3
EXIT_CLOUD = 4
EXIT_INTERRUPTED = 130


class SnapbuildError(Exception):
    """Base error: one line of what is wrong, plus an optional hint on how to fix it."""

    exit_code = EXIT_BUILD

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class UserError(SnapbuildError):
    """Bad input: nothing was created. Exit code 2."""

    exit_code = EXIT_USAGE


class RecipeError(UserError):
    """A recipe or profile file is wrong; names the file and, where known, the line."""

    def __init__(self, message: str, *, path: str, line: int | None = None, hint: str | None = None) -> None:
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {message}", hint=hint)
        self.path = path
        self.line = line


class BuildError(SnapbuildError):
    """The build failed after it started. Exit code 3."""

    exit_code = EXIT_BUILD


class CommandFailed(BuildError):
    """A command (on the host or in a guest) exited non-zero or timed out."""

    def __init__(self, argv: list[str] | tuple[str, ...], returncode: int | None, output_tail: str = "",
                 *, where: str = "host", timed_out: bool = False) -> None:
        shown = " ".join(argv)
        if len(shown) > 200:
            shown = shown[:197] + "..."
        what = "timed out" if timed_out else f"exited {returncode}"
        message = f"{where}: {shown!r} {what}"
        if output_tail.strip():
            message += "\n" + output_tail.rstrip()
        super().__init__(message)
        self.argv = tuple(argv)
        self.returncode = returncode
        self.output_tail = output_tail
        self.timed_out = timed_out


class CloudError(SnapbuildError):
    """The cloud refused or failed something; carries the cloud's own message. Exit code 4."""

    exit_code = EXIT_CLOUD

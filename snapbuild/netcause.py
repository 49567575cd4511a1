"""Why a network connection failed, in a few words, whatever library wrapped the socket error.

requests, urllib3, keystoneauth and paramiko each wrap the OS error in their own exceptions and messages
(urllib3's alone runs to 300 characters). `cause_of` digs out the socket-level reason, so callers can tell
"nobody listens there" and "no such host" (the user's address is wrong: fail at once) from a drop in the
middle of a transfer (the link is flaky: retry), and say which in one short phrase.
"""

from __future__ import annotations

import enum
import errno
import socket
from collections.abc import Iterator
from dataclasses import dataclass


class Kind(enum.Enum):
    REFUSED = "refused"             # the host answered: nothing listens on that port
    NO_SUCH_HOST = "no such host"   # DNS says the name does not exist
    DNS_TEMPORARY = "dns temporary"  # the resolver could not answer (yet)
    TIMEOUT = "timeout"
    RESET = "reset"
    UNREACHABLE = "unreachable"     # no route to the network or host
    OTHER = "other"


# Wrong on the user's side as soon as the first connection fails this way: no retry can fix it.
WRONG_ADDRESS = frozenset({Kind.REFUSED, Kind.NO_SUCH_HOST})

_NO_SUCH_HOST = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}
_UNREACHABLE = {errno.ENETUNREACH, errno.EHOSTUNREACH}
# by name: urllib3/requests/http.client need not be imported to recognise their exceptions
_DROPPED = frozenset({"IncompleteRead", "ProtocolError", "ChunkedEncodingError", "RemoteDisconnected"})
_TIMEOUTS = frozenset({"ConnectTimeoutError", "ReadTimeoutError", "ConnectTimeout", "ReadTimeout"})


@dataclass(frozen=True, kw_only=True)
class Cause:
    kind: Kind
    text: str                       # "connection refused", "host name not found", …


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and everything it wraps: causes, contexts, urllib3's `reason`, exceptions passed as arguments."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        inner: list[object] = [current.__cause__, current.__context__, getattr(current, "reason", None),
                               *current.args]
        errors = getattr(current, "errors", None)   # paramiko's NoValidConnectionsError: {address: error}
        if isinstance(errors, dict):
            inner.extend(errors.values())
        todo.extend(e for e in inner if isinstance(e, BaseException))


def cause_of(exc: BaseException) -> Cause:
    """The socket-level reason behind `exc` (OTHER with the exception's own text when there is none)."""
    chain = list(_chain(exc))
    for e in chain:
        if isinstance(e, ConnectionRefusedError):
            return Cause(kind=Kind.REFUSED, text="connection refused")
        if isinstance(e, socket.gaierror):
            if e.errno in _NO_SUCH_HOST:
                return Cause(kind=Kind.NO_SUCH_HOST, text="host name not found")
            return Cause(kind=Kind.DNS_TEMPORARY, text=f"name resolution failed ({e.strerror or e})")
    for e in chain:
        if isinstance(e, ConnectionResetError | BrokenPipeError | EOFError) or type(e).__name__ in _DROPPED:
            return Cause(kind=Kind.RESET, text="connection dropped")
        if isinstance(e, TimeoutError) or type(e).__name__ in _TIMEOUTS:
            return Cause(kind=Kind.TIMEOUT, text="timed out")
        if isinstance(e, OSError) and e.errno in _UNREACHABLE:
            return Cause(kind=Kind.UNREACHABLE, text=e.strerror.lower() if e.strerror else "unreachable")
    return Cause(kind=Kind.OTHER, text=str(exc) or type(exc).__name__)


def short(exc: BaseException) -> str:
    """One short phrase for a log line or an error message."""
    return cause_of(exc).text

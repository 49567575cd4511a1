"""The build ledger: every resource is written down before it is made (DESIGN rule 2).

One small JSON file per build under the state directory. It survives `kill -9`, so
`snapbuild cleanup --host` (and the cloud sweep, for ids) can finish an interrupted build.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from snapbuild import paths


def installation_id() -> str:
    """A per-user UUID that marks this installation's cloud resources."""
    path = paths.state_dir() / "installation-id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(str(uuid.uuid4()) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        # link() never replaces: when two first builds race, one id wins and both read it back.
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path.read_text().strip()


def new_build_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S") + "-" + uuid.uuid4().hex[:8]


def now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (as snapbuild.host.procs reads it; the ledger imports no host code)."""
    try:
        # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _running(pid: int, started: int | None) -> bool:
    """The build's process is still there: the pid exists and, where both are known, started at the same time
    (a later process that got the same pid is not the build). When in doubt, it runs: it is never swept."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass    # another user's process: it exists
    now = _start_time(pid)
    return started is None or now is None or now == started


@dataclass(frozen=True, kw_only=True)
class Entry:
    kind: str          # "server", "floating_ip", "mount", "loop", "process", "tempdir", ...
    ref: str           # id, path or pid
    info: dict[str, Any]


class Ledger:
    """A build's ledger file. Thread-safe; each change is written to disk at once."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self._data = data
        self._lock = threading.Lock()

    @classmethod
    def create(cls, *, build_id: str, builder: str, recipe: str, directory: Path | None = None) -> Ledger:
        directory = directory or paths.state_dir() / "builds"
        directory.mkdir(parents=True, exist_ok=True)
        data = {
            "build_id": build_id,
            "installation_id": installation_id(),
            "builder": builder,
            "recipe": recipe,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_started": _start_time(os.getpid()),
            "created_at": now_iso(),
            "status": "running",
            "resources": [],
        }
        ledger = cls(directory / f"{build_id}.json", data)
        ledger._save()
        return ledger

    @classmethod
    def load(cls, path: Path) -> Ledger:
        return cls(path, json.loads(path.read_text()))

    @property
    def build_id(self) -> str:
        return str(self._data["build_id"])

    @property
    def status(self) -> str:
        return str(self._data["status"])

    @property
    def pid(self) -> int:
        return int(self._data["pid"])

    @property
    def here(self) -> bool:
        """Written on this host (a shared home directory may hold other machines' ledgers)."""
        return self._data.get("host") == socket.gethostname()

    @property
    def abandoned(self) -> bool:
        """Nobody will undo what this ledger lists: a build still "running" on this host whose process is gone,
        or a finished one that still lists resources. A build running on another host is never abandoned here:
        its process cannot be seen from this one."""
        with self._lock:
            if self._data["status"] == "running":
                return self.here and not _running(self.pid, self._data.get("pid_started"))
            return bool(self._data["resources"])

    @property
    def data(self) -> dict[str, Any]:
        copied: dict[str, Any] = json.loads(json.dumps(self._data))
        return copied

    def entries(self) -> list[Entry]:
        with self._lock:
            return [Entry(kind=r["kind"], ref=r["ref"], info=dict(r.get("info", {})))
                    for r in self._data["resources"]]

    def record(self, kind: str, ref: str, **info: Any) -> None:
        """Write a resource down; call it before creating the resource when the ref is known."""
        with self._lock:
            self._data["resources"].append({"kind": kind, "ref": str(ref), "info": info, "at": now_iso()})
            self._save()

    def update(self, kind: str, ref: str, **info: Any) -> None:
        with self._lock:
            for item in self._data["resources"]:
                if item["kind"] == kind and item["ref"] == str(ref):
                    item["info"].update(info)
            self._save()

    def forget(self, kind: str, ref: str) -> None:
        """The resource is gone (undone, or handed over as the build's result)."""
        with self._lock:
            self._data["resources"] = [r for r in self._data["resources"]
                                       if not (r["kind"] == kind and r["ref"] == str(ref))]
            self._save()

    def finish(self, status: str) -> None:
        with self._lock:
            self._data["status"] = status
            self._data["finished_at"] = now_iso()
            self._save()

    def remove_if_clean(self) -> None:
        """A finished build with nothing left to undo needs no ledger."""
        with self._lock:
            if not self._data["resources"] and self._data["status"] != "running":
                self.path.unlink(missing_ok=True)

    def _save(self) -> None:
        _atomic_write(self.path, json.dumps(self._data, indent=1, sort_keys=True))


def all_ledgers(directory: Path | None = None) -> list[Ledger]:
    directory = directory or paths.state_dir() / "builds"
    if not directory.is_dir():
        return []
    found = []
    for path in sorted(directory.glob("*.json")):
        try:
            found.append(Ledger.load(path))
        except (OSError, ValueError):
            continue
    return found

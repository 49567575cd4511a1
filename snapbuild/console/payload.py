"""The console builder's user-data: the runner (a zip of the stdlib-only snapbuild modules it imports, run by the
guest's python3) and the plan, carried in one #cloud-config document.

Why write_files with `encoding: gz+b64` rather than a MIME multipart part: the document stays one cloud-config
that cloud-init's schema validator checks (the unit tier runs it); cloud-init itself unpacks both files into /run
(tmpfs: they never reach the image's disk) before runcmd, so no shell part has to unpack anything; and each file
is gzipped where it compresses (Python source, JSON), after which Nova's encoding (base64, gzipped again only
when that is needed to fit) adds little. Nova refuses user-data over 64 KiB of base64: `encode_console_userdata`
checks that in preflight and says what to shrink.
"""

from __future__ import annotations

import ast
import base64
import gzip
import io
import json
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import snapbuild
from snapbuild import paths
from snapbuild.console import plandata
from snapbuild.console.credentials import refuse_credentials
from snapbuild.console.plandata import RunnerOrders
from snapbuild.errors import UserError
from snapbuild.templating import environment, render_file
from snapbuild.userdata import NOVA_USER_DATA_LIMIT, encode_for_nova

if TYPE_CHECKING:
    from snapbuild.plan import Plan

RUNNER_MODULE = "snapbuild.console.runner"
RUNNER_PATH = "/run/snapbuild/runner.pyz"
ORDERS_PATH = "/run/snapbuild/plan.json"
PAYLOAD_PATHS = (RUNNER_PATH, ORDERS_PATH, "/run/snapbuild")
# Imported by shipped modules only in code the runner never reaches (a progress bar on a terminal).
LAZY_THIRD_PARTY = frozenset({"tqdm"})
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)      # fixed: the same plan gives the same bytes
_MAIN = "import sys\n\nfrom snapbuild.console.runner import main\n\nsys.exit(main())\n"

_PACKAGE = Path(snapbuild.__file__).resolve().parent


def _module_file(name: str) -> Path | None:
    relative = Path(*name.split(".")[1:])
    for candidate in (_PACKAGE / relative / "__init__.py", (_PACKAGE / relative).with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(source: str) -> set[str]:
    """Every module a source imports, function-level imports included, `if TYPE_CHECKING:` blocks not."""
    found: set[str] = set()
    todo: list[ast.AST] = [ast.parse(source)]
    while todo:
        node = todo.pop()
        if _is_type_checking(node):
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        todo.extend(ast.iter_child_nodes(node))
    return found


@cache
def runner_modules() -> dict[str, Path]:
    """The snapbuild modules the runner needs, by name: what it imports, what those import, and their packages."""
    modules: dict[str, Path] = {}
    todo = [RUNNER_MODULE]
    while todo:
        name = todo.pop()
        path = _module_file(name)
        if path is None or name in modules:
            continue          # `from snapbuild.x import function`: the name is not a module
        modules[name] = path
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]       # the packages it lives in
        todo += [m for m in _imports(path.read_text()) if m.startswith("snapbuild.") or m == "snapbuild"]
    return dict(sorted(modules.items()))


def third_party_imports() -> dict[str, set[str]]:
    """Non-stdlib, non-snapbuild imports of the shipped modules (tests assert only LAZY_THIRD_PARTY)."""
    import sys

    found: dict[str, set[str]] = {}
    for name, path in runner_modules().items():
        tops = {m.split(".")[0] for m in _imports(path.read_text())}
        outside = {t for t in tops if t != "snapbuild" and t not in sys.stdlib_module_names and t != "__future__"}
        if outside:
            found[name] = outside
    return found


def shipped_source(path: Path) -> bytes:
    """A module's source without docstrings and comments (ast.unparse): the runner is most of the user-data, and
    Nova allows 64 KiB. Same code, same behaviour; only tracebacks lose the original line numbers."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                body[0] = ast.Pass() if len(body) == 1 else body[0]
                if len(body) > 1:
                    del body[0]
    return (ast.unparse(tree) + "\n").encode()


def runner_zip() -> bytes:
    """The runner as a zip application: `python3 runner.pyz` runs __main__.py with the zip on sys.path."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:   # gzip compresses it whole
        entries = [("__main__.py", _MAIN.encode())]
        entries += [(str(path.relative_to(_PACKAGE.parent)), shipped_source(path))
                    for path in runner_modules().values()]
        for arcname, data in entries:
            info = zipfile.ZipInfo(arcname, date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return buffer.getvalue()


@dataclass(frozen=True, kw_only=True)
class PayloadFile:
    path: str
    content: str        # gzip, then base64 (write_files `encoding: gz+b64`)


def _gz_b64(data: bytes) -> str:
    return base64.b64encode(gzip.compress(data, compresslevel=9, mtime=0)).decode()


def orders_for(plan: Plan, *, build_id: str, nonce: str, step_timeout: float | None = None,
               cloud_init_timeout: float = 900.0) -> RunnerOrders:
    """What the runner is told for `plan`; refuses a plan that carries credentials (user-data is not secret)."""
    refuse_credentials(plan)
    return RunnerOrders(nonce=nonce, build_id=build_id, recipe=plan.recipe_name, actions=plan.actions,
                        resolv_symlink=plan.distro.resolv_conf_symlink, step_timeout=step_timeout,
                        cloud_init_timeout=cloud_init_timeout, payload_paths=PAYLOAD_PATHS)


def render_console_userdata(plan: Plan, orders: RunnerOrders) -> str:
    from snapbuild.plan import _MirrorView

    apt_proxy = plan.build_apt_proxy
    files = [PayloadFile(path=RUNNER_PATH, content=_gz_b64(runner_zip())),
             PayloadFile(path=ORDERS_PATH, content=_gz_b64(plandata.dump(orders)))]
    context = {
        "recipe": plan.recipe_name, "distro": plan.distro, "build_id": orders.build_id,
        "mirrors": _MirrorView(plan.profile, plan.distro),
        "apt_mirrors": plan.profile.has_apt_mirror(plan.distro.id) or bool(apt_proxy), "apt_proxy": apt_proxy,
        "payload_files": files, "runner_path": RUNNER_PATH, "orders_path": ORDERS_PATH,
        "builder_user": orders.builder_user,
    }
    return render_file(environment([paths.data_dir("cloudinit")]), "console-userdata.yaml.j2", context,
                       folder=paths.data_dir("cloudinit"))


def encode_console_userdata(text: str, orders: RunnerOrders) -> str:
    """Nova's base64 user-data; a UserError (exit 2, before anything exists) when it does not fit, with the size,
    the runner's and the plan's shares, and the plan steps that weigh most."""
    try:
        return encode_for_nova(text)
    except UserError:
        pass
    packed = len(base64.b64encode(gzip.compress(text.encode(), mtime=0)))
    runner = len(_gz_b64(runner_zip()))
    heaviest = sorted(((len(_gz_b64(json.dumps(item).encode())), action.describe())
                       for item, action in zip(plandata.dump_actions(orders.actions), orders.actions, strict=True)),
                      reverse=True)[:3]
    over = packed - NOVA_USER_DATA_LIMIT
    raise UserError(
        f"console build: the builder user-data is {packed} bytes after gzip and base64, {over} over Nova's "
        f"{NOVA_USER_DATA_LIMIT}; the runner takes {runner}, the heaviest plan steps: "
        + "; ".join(f"{describe} ({size} bytes)" for size, describe in heaviest),
        hint=f"shrink the plan by {over} bytes or more: fetch large files from a mirror in a script step instead of "
             "shipping them in the recipe, or build with --transport ssh")


@dataclass(frozen=True, kw_only=True)
class ConsoleUserData:
    nonce: str          # the runner's protocol lines carry it
    text: str           # the cloud-config, as a NoCloud or ConfigDrive seed takes it
    nova: str           # as Nova takes it (base64, gzipped when needed), checked against its 64 KiB


def console_user_data(plan: Plan, *, build_id: str, cloud_init_timeout: float,
                      step_timeout: float | None = None) -> ConsoleUserData:
    """The runner, its orders and the mirrors as user-data, for the cloud and the local builder alike: credentials
    refused and Nova's limit checked (UserErrors) on both, so a recipe that builds locally builds in the cloud."""
    from snapbuild.console.protocol import new_nonce

    orders = orders_for(plan, build_id=build_id, nonce=new_nonce(), step_timeout=step_timeout,
                        cloud_init_timeout=cloud_init_timeout)
    text = render_console_userdata(plan, orders)
    return ConsoleUserData(nonce=orders.nonce, text=text, nova=encode_console_userdata(text, orders))

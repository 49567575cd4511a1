"""Refuse a plan that carries credentials into a console build's user-data.

User-data is readable through the metadata service by anything on the builder and by the cloud's admins, and
Nova keeps it with the server: a console build puts the whole plan there. What looks like a secret is refused,
named by where it is, never printed.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from snapbuild import actions
from snapbuild.errors import UserError

if TYPE_CHECKING:
    from snapbuild.plan import Plan

SECRET_NAME = re.compile(r"(passw(or)?d|passphrase|secret|token|api_?key|access_?key|private_?key|credential|auth)",
                         re.IGNORECASE)
SECRET_TEXT = (
    (re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----"), "a private key"),
    (re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.IGNORECASE), "a URL with a user and password"),
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), "an AWS access key id"),
    (re.compile(r"authorization:\s*(bearer|basic)\s+\S", re.IGNORECASE), "an HTTP Authorization header"),
    (re.compile(r"\"auths?\"\s*:\s*\{[^}]*\"auth\"\s*:\s*\"[A-Za-z0-9+/=]{8,}"), "registry credentials (auth)"),
    # `password=…`, `api_key: …` in a config file; not `lock_passwd: true`, `PasswordAuthentication no` or
    # `token_file: /path` (a name that ends in the secret word, given a value that is not a yes/no).
    (re.compile(r"^\s*[\w.-]*(passw(or)?d|passphrase|secret|token|api_?key)\s*[=:]\s*"
                r"(?!(true|false|yes|no|none|null|~|''|\"\")\s*$)\S", re.IGNORECASE | re.MULTILINE),
     "a password, secret, token or API key assigned a value"),
)
SECRET_FILES = re.compile(r"^/etc/apt/auth\.conf(\.d/.*)?$|/\.docker/config\.json$|/\.netrc$|/\.git-credentials$")


def _texts(action: actions.Action) -> list[tuple[str, str]]:
    """(where, text) for everything an action carries into the guest; `where` never holds the text itself."""
    where = type(action).__name__
    if isinstance(action, actions.WriteFile):
        return [(f"file {action.path}", action.content.decode(errors="replace"))]
    if isinstance(action, actions.RunScript):
        return [(f"script {action.name}", action.content.decode(errors="replace"))]
    if isinstance(action, actions.AptSource):
        found = [(f"apt source {action.name}", action.deb822)]
        if action.key is not None:
            found.append((f"apt source {action.name} key URL", action.key.url or ""))
        return found
    if isinstance(action, actions.RunCommand):
        return [(f"the command {action.argv[0]} …" if action.argv else where, "\n".join(action.argv))]
    return [(where, repr(action))]


def _variables(value: Any, name: str) -> list[str]:
    if isinstance(value, dict):
        return [n for k, v in value.items() for n in _variables(v, f"{name}.{k}")]
    if SECRET_NAME.search(name.rsplit(".", 1)[-1]) and value not in (None, "", [], {}, False):
        return [name]
    return []


def find_credentials(plan: Plan) -> list[str]:
    """Where the plan seems to carry a secret: one line each, the secret itself never shown."""
    found = [f"recipe variable {name!r} (its name says it is a secret)"
             for key, value in plan.variables.items() for name in _variables(value, key)]
    for action in plan.actions:
        if isinstance(action, actions.WriteFile) and SECRET_FILES.search(action.path):
            found.append(f"file {action.path} (a credentials file)")
            continue
        for where, text in _texts(action):
            found += [f"{where}: {what}" for pattern, what in SECRET_TEXT if pattern.search(text)]
    return list(dict.fromkeys(found))


def refuse_credentials(plan: Plan) -> None:
    found = find_credentials(plan)
    if found:
        raise UserError("console build: the plan would put credentials into the builder's user-data, which the "
                        "metadata service and the cloud's admins can read: " + "; ".join(found),
                        hint="remove them from the recipe (hand them to the image at first boot instead), or build "
                             "with --transport ssh")

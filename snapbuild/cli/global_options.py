"""Global options anywhere on the line, as the openstack CLI takes them: `snapbuild k8s --os-cloud x` is
`snapbuild --os-cloud x k8s`.

A click group parses only what stands before the subcommand's name. `GlobalOptionsGroup` first walks the whole
line with the option tables click already has, lifts the group's own options found after the subcommand to the
front, and takes out the openstack CLI's authentication options (`--os-*` that snapbuild does not declare, and
`--insecure`): openstacksdk parses those with its own argparse registration when a cloud connection is made
(snapbuild.openstack.cloud), so snapbuild keeps no copy of keystoneauth's option list.

Only click here: `snapbuild --help` stays fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import click

# Where the group leaves the authentication words for its callback (and for tests).
AUTH_ARGS = "snapbuild.auth_args"
AUTH_PREFIX = "--os-"
AUTH_FLAGS = frozenset({"--insecure"})    # keystoneauth's session flags that take no value


@dataclass
class Split:
    """One command line, taken apart: the group's options (to go first), the auth words, the rest in order."""

    lifted: list[str] = field(default_factory=list)
    auth: list[str] = field(default_factory=list)
    rest: list[str] = field(default_factory=list)

    @property
    def args(self) -> list[str]:
        return [*self.lifted, *self.rest]


def option_table(command: click.Command) -> dict[str, click.Option]:
    """Every spelling of `command`'s declared options (the eager --help/--version are added by click itself)."""
    table: dict[str, click.Option] = {}
    for param in command.params:
        if isinstance(param, click.Option):
            for name in (*param.opts, *param.secondary_opts):
                table[name] = param
    return table


def values_taken(option: click.Option) -> int:
    """How many following words an option consumes when not given as --name=value."""
    return 0 if option.is_flag or option.count else max(option.nargs, 1)


def is_auth_word(name: str) -> bool:
    return name in AUTH_FLAGS or (name.startswith(AUTH_PREFIX) and len(name) > len(AUTH_PREFIX))


def split_line(group: click.Group, ctx: click.Context, args: Sequence[str]) -> Split:
    """Take `args` apart. A subcommand's own option of the same name as a global one stays the subcommand's;
    option values are skipped by the option tables (so `--name --verbose` names an image `--verbose`); nothing
    after `--` is touched; what no table knows stays in place for click to report."""
    ours = {name: param for name, param in option_table(group).items() if not param.is_eager}
    split = Split()
    current: click.Command | None = group     # whose options the words are now; None: an unknown command
    words = list(args)
    index = 0
    while index < len(words):
        word = words[index]
        index += 1
        if word == "--":
            split.rest += words[index - 1:]
            break
        if not word.startswith("-") or word == "-":
            split.rest.append(word)
            if isinstance(current, click.Group):     # the (sub)command's name
                current = current.get_command(ctx, word)
            continue
        name, has_value, _ = word.partition("=") if word.startswith("--") else (word, "", "")
        local = option_table(current) if current is not None and current is not group else {}
        if name in local:                           # the subcommand's own, even when a global one shares the name
            taken = 0 if has_value else values_taken(local[name])
            split.rest += words[index - 1:index + taken]
            index += taken
        elif name in ours:
            taken = 0 if has_value else values_taken(ours[name])
            if index + taken > len(words):          # its value not typed yet (completion): leave it where it is
                split.rest.append(word)
                continue
            split.lifted += words[index - 1:index + taken]
            index += taken
        elif is_auth_word(name):
            taken = 0 if has_value or name in AUTH_FLAGS else 1
            if index + taken > len(words):
                if ctx.resilient_parsing:           # completion: a half-typed line
                    continue
                raise click.BadOptionUsage(name, f"Option '{name}' requires an argument.", ctx=ctx)
            split.auth += words[index - 1:index + taken]
            index += taken
        else:
            split.rest.append(word)
    return split


class GlobalOptionsGroup(click.Group):
    """A group whose options may also follow the subcommand, and which passes the openstack CLI's authentication
    options on (to `ctx.meta[AUTH_ARGS]`) instead of refusing them."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        split = split_line(self, ctx, args)
        ctx.meta[AUTH_ARGS] = tuple(split.auth)
        return super().parse_args(ctx, split.args)

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)
        with formatter.section("OpenStack authentication"):
            # \b: click keeps these lines as they are (its wrapping would split --os-auth-url at a hyphen)
            formatter.write_text(
                "\b\nThe options above work before or after the subcommand. As in the openstack CLI:\n"
                "  --os-auth-url URL  --os-auth-type TYPE  --os-project-name NAME\n"
                "  --os-username NAME  --os-password PW  --os-user-domain-name NAME\n"
                "  --os-cacert FILE  --insecure  --os-interface public|internal  …\n"
                "and the OS_* variables, passed to openstacksdk as they are. --os-cloud with\n"
                "clouds.yaml (secrets in secure.yaml) is the recommended way.")


def auth_args_of(ctx: click.Context) -> tuple[str, ...]:
    """The authentication words the group took out of the line (none when the group did not parse it)."""
    found: Any = ctx.meta.get(AUTH_ARGS, ())
    return tuple(found)

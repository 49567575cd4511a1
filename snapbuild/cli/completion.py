"""Shell completion of recipe and mirror profile names (click's own completion does the rest).

`eval "$(_SNAPBUILD_COMPLETE=bash_source snapbuild)"` (zsh_source, fish_source) installs it; see the README.
Names come from the folder listing of the recipe library (--recipes-dir, snapbuild.yaml's recipes_path, the
shipped recipes): no recipe is parsed while the user waits.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import click
from click.shell_completion import CompletionItem

if TYPE_CHECKING:
    from snapbuild.recipes import Library

log = logging.getLogger(__name__)


def library_of(ctx: click.Context) -> Library:
    """The library the command would use, from the global options typed so far (the group's callback, which
    makes the Session, does not run while completing)."""
    from snapbuild.cli import Session
    from snapbuild.errors import SnapbuildError
    from snapbuild.paths import data_dir
    from snapbuild.recipes import Library

    params = ctx.find_root().params
    session = Session(config_file=params.get("config_file"), recipes_dirs=tuple(params.get("recipes_dir") or ()),
                      os_cloud=None, os_region=None, verbose=False)
    try:
        return session.library
    except SnapbuildError as exc:       # a broken snapbuild.yaml or --recipes-dir: still offer the shipped ones
        log.debug("completion: %s", exc)
        return Library([data_dir("recipes")])


def complete_recipe(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    return [CompletionItem(name) for name in library_of(ctx).recipe_names() if name.startswith(incomplete)]


def complete_profile(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Profile names; a profile may also be a path to a .yaml, so a path-like word completes as a file."""
    if "/" in incomplete or incomplete.startswith(("~", ".")):
        return [CompletionItem(incomplete, type="file")]
    names = [CompletionItem(name) for name in library_of(ctx).profile_names() if name.startswith(incomplete)]
    return names or [CompletionItem(incomplete, type="file")]

"""The command line: parse, build settings, call one function, map errors to exit codes.

Nothing heavy is imported at module level: `snapbuild --help` must stay fast and never load
openstacksdk or paramiko.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from snapbuild import __version__
from snapbuild.cli.asking import ON_ERROR_OPTION, on_error_of, terminal_asker
from snapbuild.cli.cloud_options import (  # click and dataclasses: --help stays light
    IMAGE_OPTIONS,
    image_visibility,
    site_defaults,
    snapshot_options,
)
from snapbuild.cli.completion import complete_profile, complete_recipe
from snapbuild.cli.global_options import GlobalOptionsGroup, auth_args_of
from snapbuild.cli.output import Output, Result, choose, output_options
from snapbuild.errors import EXIT_BUILD, EXIT_INTERRUPTED, EXIT_USAGE, SnapbuildError, UserError

if TYPE_CHECKING:
    from snapbuild.config import Config
    from snapbuild.host.cleanup import SweptBuild
    from snapbuild.openstack.settings import SnapshotResult
    from snapbuild.plan import Plan
    from snapbuild.recipes import Library

log = logging.getLogger("snapbuild")


@dataclass
class Session:
    """What the global options decided; passed to every command."""

    config_file: str | None
    recipes_dirs: tuple[str, ...]
    os_cloud: str | None
    os_region: str | None
    verbose: bool
    # The openstack CLI's authentication options as typed (--os-auth-url URL, --insecure, …): openstacksdk parses
    # them when a connection is made. Passwords among them: never shown.
    auth_args: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    _config: Config | None = None
    variant: str | None = None      # --variant, from the shared recipe options (see _remember_variant)

    @property
    def config(self) -> Config:
        if self._config is None:
            from snapbuild.config import load_config

            self._config = load_config(self.config_file)
        return self._config

    @property
    def library(self) -> Library:
        from snapbuild.paths import data_dir
        from snapbuild.recipes import Library

        folders = [Path(d).expanduser().resolve() for d in self.recipes_dirs]
        for folder in folders:
            if not folder.is_dir():
                from snapbuild.errors import UserError

                raise UserError(f"--recipes-dir {folder} is not a directory")
        return Library([*folders, *self.config.recipes_path, data_dir("recipes")])

    def plan(self, recipe: str, *, distro: str | None, mirrors: str | None, sets: tuple[str, ...],
             variant: str | None = None) -> Plan:
        from snapbuild.plan import plan_from_names
        from snapbuild.recipes import parse_set

        return plan_from_names(library=self.library, recipe_name=recipe, distro_name=distro or self.config.distro,
                               profile_name=mirrors or self.config.mirrors or "cloudinative",
                               config_variables=self.config.variables, set_values=parse_set(sets),
                               config_path=self.config.path, variant=variant or self.variant)


pass_session = click.make_pass_decorator(Session)

# The commands whose options take defaults from snapbuild.yaml's `build:` section (snapbuild.config.BUILD_KEYS).
BUILD_COMMANDS = ("build", "k8s", "docker-ce", "validate")


@click.group(cls=GlobalOptionsGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--os-cloud", envvar="OS_CLOUD", help="Cloud name from clouds.yaml (env OS_CLOUD).")
@click.option("--os-region-name", envvar="OS_REGION_NAME", help="Region (env OS_REGION_NAME); always passed on.")
@click.option("--config", "config_file", metavar="FILE",
              help="Config file (default: ./snapbuild.yaml, then ~/.config/snapbuild/snapbuild.yaml).")
@click.option("--recipes-dir", multiple=True, metavar="DIR",
              help="Extra recipes folder (repeatable); wins over shipped recipes and profiles of the same name.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging and tracebacks.")
@click.version_option(__version__, prog_name="snapbuild")
@click.pass_context
def cli(ctx: click.Context, os_cloud: str | None, os_region_name: str | None, config_file: str | None,
        recipes_dir: tuple[str, ...], verbose: bool) -> None:
    """Build ready-to-boot OpenStack images (Docker CE, Kubernetes) through mirrors.

    Global options work before or after the subcommand."""
    ctx.obj = Session(config_file=config_file, recipes_dirs=recipes_dir, os_cloud=os_cloud,
                      os_region=os_region_name, verbose=verbose, auth_args=auth_args_of(ctx))
    _setup_logging(verbose)
    if ctx.invoked_subcommand in BUILD_COMMANDS:
        # snapbuild.yaml's `build:` section, then the chosen cloud's and region's (`clouds:`), become their options'
        # defaults: click applies them with its own types, a command-line value wins, and they count for
        # required=True (--flavor). Only these commands read the config here; the others (and `snapbuild --help`,
        # which ends before this) load it when they need it.
        command = cli.get_command(ctx, ctx.invoked_subcommand)
        defaults = site_defaults(ctx.obj.config, command, ctx, cloud=os_cloud,
                                 region=os_region_name) if command is not None else {}
        if defaults:
            ctx.default_map = {**(ctx.default_map or {}), ctx.invoked_subcommand: defaults}


# Libraries whose DEBUG output is noise, or shows request bodies (user-data) and so is only for --debug-http.
QUIET_LOGGERS = ("paramiko", "keystoneauth", "openstack", "urllib3", "stevedore", "os_service_types")


def _ours_only(record: logging.LogRecord) -> bool:
    # Libraries' warnings and tracebacks (paramiko's refused banners while a guest boots, keystoneauth's
    # "Failed to discover available identity versions", urllib3's retries) are detail for the build log file
    # and --verbose: snapbuild reports the failure that matters itself, in one line.
    return record.name == "snapbuild" or record.name.startswith("snapbuild.")


def _setup_logging(verbose: bool) -> None:
    root = logging.getLogger()
    if not any(getattr(h, "_snapbuild", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler._snapbuild = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    for existing in root.handlers:
        if getattr(existing, "_snapbuild", False):
            existing.setLevel(logging.DEBUG if verbose else logging.WARNING)
            existing.removeFilter(_ours_only)
            if not verbose:
                existing.addFilter(_ours_only)
    # The root passes everything on: the build log file (see build_log) keeps the full story.
    root.setLevel(logging.DEBUG)
    logging.captureWarnings(True)   # libraries' warnings.warn() too: to the log, not the terminal
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


@contextlib.contextmanager
def build_log(kind: str, recipe: str) -> Iterator[Path]:
    """Every build keeps a full log file; its path is printed when the build fails."""
    from snapbuild.ledger import now_iso
    from snapbuild.paths import state_dir

    folder = state_dir() / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{now_iso().replace(':', '')}-{kind}-{recipe}.log"
    handler = logging.FileHandler(path)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        yield path
    except BaseException:
        click.echo(f"snapbuild: full log: {path}", err=True)
        raise
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


# -- recipes, render, plan -------------------------------------------------------------------------------

def _remember_variant(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    # Not passed to the command functions (their signatures stay as they are): Session.plan picks it up.
    session = ctx.find_object(Session)
    if value is not None and session is not None:
        session.variant = value


recipe_options = [
    click.option("--distro", help="ubuntu-24.04 (default), debian-12 or debian-13."),
    click.option("--mirrors", metavar="PROFILE", shell_complete=complete_profile,
                 help="Mirror profile name or path (default: cloudinative)."),
    click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Set a recipe variable (repeatable)."),
    click.option("--variant", metavar="NAME", expose_value=False, callback=_remember_variant,
                 help="Recipe variant, e.g. k8s: full (default) or slim (no pre-pulled images)."),
]


def with_recipe_options(func: Any) -> Any:
    for option in reversed(recipe_options):
        func = option(func)
    return func


RECIPE_COLUMNS = ("name", "description", "distros", "path", "variants", "variables")


@cli.command()
@output_options(*RECIPE_COLUMNS, json_help="Machine-readable output: recipes and mirror profiles (same as -f json).")
@pass_session
def recipes(session: Session, fmt: str | None, columns: tuple[str, ...], as_json: bool) -> None:
    """List recipes with their description, distros and variables (one row each)."""
    output = choose(fmt, columns, as_json)
    library = session.library
    items: list[dict[str, Any]] = []
    for name in library.recipe_names():
        recipe = library.load(name)
        items.append({
            "name": name, "description": recipe.description, "distros": list(recipe.distros),
            "path": str(recipe.path),
            "variants": {v.name: v.description for v in recipe.variants.values()},
            "variables": {v.name: {"type": v.type, "default": v.default, "required": v.required,
                                   "description": v.description} for v in recipe.variables.values()},
        })
    lines = []
    for item in items:
        lines.append(f"{item['name']:<12} {item['description']}")
        lines.append(f"{'':<12} distros: {', '.join(item['distros'])}")
        for number, (vname, description) in enumerate(item["variants"].items()):
            lines.append(f"{'':<12} --variant {vname}{' (default)' if number == 0 else ''}  {description}")
        for vname, var in item["variables"].items():
            default = "(required)" if var["required"] else f"= {var['default']!r}"
            lines.append(f"{'':<12} --set {vname} {default}  {var['description']}")
    lines += ["", f"mirror profiles: {', '.join(library.profile_names())}"]
    emit(output, Result(rows=items, text="\n".join(lines),
                        document=json.dumps({"recipes": items, "profiles": library.profile_names()}, indent=2)))


@cli.command()
@click.argument("recipe", shell_complete=complete_recipe)
@with_recipe_options
@click.option("-o", "--output", "output_dir", metavar="DIR", help="Write everything into DIR instead of printing.")
@pass_session
def render(session: Session, recipe: str, distro: str | None, mirrors: str | None, sets: tuple[str, ...],
           output_dir: str | None) -> None:
    """Show everything a build would use: user-data, files, drop-ins, steps, image properties."""
    from snapbuild import render as rendering

    plan = session.plan(recipe, distro=distro, mirrors=mirrors, sets=sets)
    _warn_plan(plan)
    if output_dir:
        written = rendering.write_rendered(plan, Path(output_dir))
        click.echo(f"wrote {len(written)} files to {output_dir}")
    else:
        click.echo(rendering.render_text(plan), nl=False)


@cli.command("plan")
@click.argument("recipe", shell_complete=complete_recipe)
@with_recipe_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_session
def plan_command(session: Session, recipe: str, distro: str | None, mirrors: str | None, sets: tuple[str, ...],
                 as_json: bool) -> None:
    """Print the ordered build steps in readable form."""
    from snapbuild import render as rendering

    plan = session.plan(recipe, distro=distro, mirrors=mirrors, sets=sets)
    _warn_plan(plan)
    if as_json:
        click.echo(json.dumps(rendering.plan_summary(plan), indent=2))
    else:
        click.echo(rendering.steps_text(plan), nl=False)


def _warn_plan(plan: Plan) -> None:
    from snapbuild.profiles import mirrors_hint

    for line in plan.blocked_without_mirror:
        click.echo(f"WARNING: blocked without a mirror: {line}", err=True)
    if plan.blocked_without_mirror:
        click.echo("WARNING: a build refuses to start with these unless given --allow-blocked; "
                   + mirrors_hint(plan.profile), err=True)
    for host in plan.unreliable_hosts:
        click.echo(f"WARNING: {host} is unreliable where the image is used", err=True)


def refuse_blocked(plan: Plan, allow_blocked: bool) -> None:
    """A build does not start when it would pull from a blocked host without a mirror, unless told to."""
    if plan.blocked_without_mirror and not allow_blocked:
        raise blocked_problem(plan)


def blocked_problem(plan: Plan) -> UserError:
    from snapbuild.profiles import mirrors_hint

    return UserError(f"recipe {plan.recipe_name!r} would download from blocked hosts without a mirror: "
                     + "; ".join(plan.blocked_without_mirror),
                     hint=mirrors_hint(plan.profile) + "; or pass --allow-blocked to go ahead anyway")


@cli.group("profile")
def profile_group() -> None:
    """Mirror profiles: start your own."""


@profile_group.command("init")
@click.option("--from", "source", default="airgap-example", show_default=True, metavar="PROFILE",
              shell_complete=complete_profile,
              help="Profile to start from: a name (shipped, or in --recipes-dir) or a path to a .yaml.")
@click.option("-o", "--output", type=click.Path(path_type=Path), metavar="FILE",
              help="Write to FILE instead of printing (an existing FILE is kept unless --force).")
@click.option("--force", is_flag=True, help="Overwrite an existing FILE.")
@pass_session
def profile_init_command(session: Session, source: str, output: Path | None, force: bool) -> None:
    """Print a mirror profile to start from, every key explained; edit it and pass --mirrors FILE."""
    from snapbuild.profiles import starting_profile, write_new_profile

    text = starting_profile(session.library.profile_path(source))
    if output is None:
        click.echo(text, nl=False)
        return
    write_new_profile(text, output, force=force)
    click.echo(str(output))
    click.echo(f"next: replace its placeholder hosts, then `snapbuild plan k8s --mirrors {output}` shows "
               "what is pulled through which mirror", err=True)


def _reporter() -> Any:
    from snapbuild.run.monitor import TerminalMonitor

    return TerminalMonitor()


EVENTS_HELP = ("Stream the build as JSON lines to FILE, or to stdout with '-' (the result is then the stream's "
               "last event): build, steps with timings, resources, progress, warnings, result.")


def events_option(func: Any) -> Any:
    return click.option("--events", "events", metavar="FILE|-", help=EVENTS_HELP)(func)


@contextlib.contextmanager
def build_monitor(events: str | None) -> Iterator[Any]:
    """The terminal, plus the JSON-lines event stream when --events asks for one."""
    from snapbuild.run.monitor import EventStream, Monitors, TerminalMonitor

    if not events:
        yield TerminalMonitor()
        return
    if events == "-":
        yield Monitors(TerminalMonitor(), EventStream(sys.stdout))
        return
    try:
        handle = open(events, "a", encoding="utf-8")
    except OSError as exc:
        raise UserError(f"--events {events}: cannot write it: {exc.strerror}",
                        hint="pass a writable file, or '-' for stdout") from None
    try:
        yield Monitors(TerminalMonitor(), EventStream(handle))
    finally:
        handle.close()


def emit(output: Output, result: Result, events: str | None = None) -> None:
    """stdout carries the result, unless it carries the event stream (whose last event is the result)."""
    if events == "-":
        return
    text = output.render(result)
    if text:
        click.echo(text)


def build_options(func: Any) -> Any:
    """Options every builder on this host shares: the recipe's inputs plus failure handling (the output options
    are each command's: its columns)."""
    for option in reversed([
        *recipe_options,
        click.option("--allow-blocked", is_flag=True,
                     help="Build even if the recipe downloads from hosts the profile marks blocked."),
        click.option("--keep-on-failure", is_flag=True, help="Same as --on-error abort."),
        ON_ERROR_OPTION,
        click.option("--events", "events", metavar="FILE|-", help=EVENTS_HELP),
    ]):
        func = option(func)
    return func


@cli.command("build")
@click.argument("recipe", shell_complete=complete_recipe)
@with_recipe_options
@snapshot_options
@events_option
@pass_session
def build_command(session: Session, /, recipe: str, distro: str | None, mirrors: str | None,
                  sets: tuple[str, ...], events: str | None, **options: Any) -> None:
    """Build RECIPE's image on OpenStack from a snapshot of a temporary builder server."""
    from snapbuild.cli.cloud_options import settings_from_options
    from snapbuild.openstack.snapshot import build_snapshot

    output = choose(options.pop("fmt"), options.pop("columns"), options["as_json"])
    settings = settings_from_options(cloud=session.os_cloud, region=session.os_region, auth_args=session.auth_args,
                                     **options)
    plan = session.plan(recipe, distro=distro, mirrors=mirrors, sets=sets)
    _warn_plan(plan)
    refuse_blocked(plan, settings.allow_blocked)   # before any cloud is contacted
    with build_log("build", recipe) as log_path, build_monitor(events) as monitor:
        result = build_snapshot(dataclasses.replace(settings, log_path=log_path), plan, monitor,
                                ask=terminal_asker() if settings.on_error == "ask" else None)
    log.info("build log: %s", log_path)
    emit(output, build_result(result), events)


def build_result(result: SnapshotResult) -> Result:
    """A cloud build's answer: the image id by default, one row for -f, the JSON --json always printed."""
    row = {"id": result.image_id, "name": result.image_name, "build_id": result.build_id,
           "manifest": str(result.manifest_path) if result.manifest_path else None,
           "properties": dict(result.properties), "seconds": round(result.seconds, 1)}
    return Result(rows=row, text=result.image_id, document=result.to_json())


def _shortcut(name: str) -> None:
    @cli.command(name, help=f"Build the {name} image on OpenStack (same as: snapbuild build {name}).")
    @with_recipe_options
    @snapshot_options
    @events_option
    @click.pass_context
    def command(ctx: click.Context, /, **kw: Any) -> None:
        # The callback, in this context: where each option came from (command line or snapbuild.yaml) stays known.
        assert build_command.callback is not None
        ctx.invoke(build_command.callback, recipe=name, **kw)


for _name in ("k8s", "docker-ce"):
    _shortcut(_name)


def vm_options(func: Any) -> Any:
    """How `local` and `verify` run their throw-away VMs."""
    for option in reversed([
        click.option("--network", type=click.Choice(["nat", "isolated"]), default="nat", show_default=True,
                     help="nat: the VM reaches out as a cloud server does (QEMU user-mode NAT); isolated: "
                          "restrict=on, only the mirror profile's forwards (air-gapped hosts, tests). Nothing "
                          "listens beyond 127.0.0.1 either way."),
        click.option("--boot-timeout", "boot_timeout", type=click.FloatRange(min=10), default=900.0,
                     show_default=True, metavar="SECONDS",
                     help="Launch to SSH (local --transport console: to the runner's first console line); "
                          "generous for TCG. A boot the serial console shows failing (no "
                          "bootable disk, kernel panic, no userspace on the console within a third of it) ends "
                          "at once."),
    ]):
        func = option(func)
    return func


LOCAL_COLUMNS = ("output", "manifest", "sha256", "size_bytes", "virtual_size_bytes", "accel", "timings")


@cli.command("local")
@click.argument("recipe", shell_complete=complete_recipe)
@build_options
@output_options(*LOCAL_COLUMNS, json_help="Print the result as JSON on stdout (same as -f json).")
@vm_options
@click.option("--base", type=click.Path(path_type=Path), required=True, help="Base cloud image (never modified).")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="qcow2 file to write.")
@click.option("--compression", type=click.Choice(["zstd", "zlib", "none"]), default="zstd", show_default=True)
@click.option("--memory", "memory_mb", type=click.IntRange(256), default=2048, show_default=True,
              help="VM memory in MiB.")
@click.option("--cpus", type=click.IntRange(1), default=2, show_default=True)
@click.option("--seed", type=click.Choice(["nocloud", "configdrive"]), default="nocloud", show_default=True,
              help="How the VM gets its user-data.")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@click.option("--transport", type=click.Choice(["ssh", "console"]), default="ssh", show_default=True,
              help="How the builder VM is driven: over SSH (a loopback port forward), or by a runner cloud-init "
                   "starts that reports on the serial console and powers the VM off (the cloud's console build, "
                   "rehearsed on this host).")
@pass_session
def local_command(session: Session, recipe: str, distro: str | None, mirrors: str | None, sets: tuple[str, ...],
                  allow_blocked: bool, keep_on_failure: bool, on_error: str | None, events: str | None,
                  fmt: str | None, columns: tuple[str, ...], as_json: bool, network: str, boot_timeout: float,
                  base: Path, output: Path, compression: str, memory_mb: int, cpus: int, seed: str,
                  force: bool, transport: str) -> None:
    """Build in a throw-away QEMU VM on this host; the result is a compressed qcow2."""
    from snapbuild.local.build import LocalSettings, run_local

    printed = choose(fmt, columns, as_json)
    plan = session.plan(recipe, distro=distro, mirrors=mirrors, sets=sets)
    _warn_plan(plan)
    refuse_blocked(plan, allow_blocked)
    with build_log("local", recipe) as log_path, build_monitor(events) as monitor:
        result = run_local(plan, LocalSettings(base=base, output=output, compression=compression,  # type: ignore[arg-type]
                                               memory_mb=memory_mb, cpus=cpus, seed=seed,  # type: ignore[arg-type]
                                               force=force, network=network,  # type: ignore[arg-type]
                                               allow_blocked=allow_blocked, boot_timeout_s=boot_timeout,
                                               transport=transport),  # type: ignore[arg-type]
                           monitor=monitor, on_error=(policy := on_error_of(on_error, keep_on_failure)),
                           ask=terminal_asker() if policy == "ask" else None, log_path=log_path)
    row = {"output": str(result.output), "manifest": str(result.manifest), "sha256": result.sha256,
           "size_bytes": result.size_bytes, "virtual_size_bytes": result.virtual_size_bytes, "accel": result.accel,
           "timings": result.timings}
    emit(printed, Result(rows=row, text=str(result.output), document=json.dumps(row, indent=2)), events)


@cli.command("verify")
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--recipe", shell_complete=complete_recipe,
              help="Also run this recipe's checks and expect its default user groups.")
@with_recipe_options
@vm_options
@output_options("name", "ok", "detail", json_help="Machine-readable output (same as -f json).")
@pass_session
def verify_command(session: Session, image: Path, recipe: str | None, distro: str | None, mirrors: str | None,
                   sets: tuple[str, ...], network: str, boot_timeout: float, fmt: str | None,
                   columns: tuple[str, ...], as_json: bool) -> None:
    """Boot IMAGE twice as a new instance (side by side when memory allows) and check it behaves as a
    marketplace image should (one row per check)."""
    from snapbuild.local.verify import VerifySettings, verify_image

    output = choose(fmt, columns, as_json)
    plan = session.plan(recipe, distro=distro, mirrors=mirrors, sets=sets) if recipe else None
    settings = VerifySettings(network=network, boot_timeout_s=boot_timeout)  # type: ignore[arg-type]
    result = verify_image(image, plan=plan, settings=settings, reporter=_reporter())
    emit(output, Result(rows=[dataclasses.asdict(check) for check in result.checks], text=result.render(),
                        document=result.render(json=True)))
    if not result.ok:
        sys.exit(EXIT_BUILD)


CHROOT_COLUMNS = ("build_id", "output", "manifest", "attach", "size_bytes", "uncompressed_bytes")


@cli.command("chroot")
@click.argument("recipe", shell_complete=complete_recipe)
@build_options
@output_options(*CHROOT_COLUMNS, json_help="Print the result as JSON on stdout (same as -f json).")
@click.option("--base", "base", required=True, type=click.Path(path_type=Path), help="Base cloud image.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="qcow2 file to write.")
@click.option("--size", help="Virtual disk size of the result (default: the recipe's disk_size_gb).")
@click.option("--attach", type=click.Choice(["auto", "nbd", "loop"]), default="auto", show_default=True,
              help="How to attach the image: qemu-nbd, or loop devices (via qemu-storage-daemon).")
@click.option("--compression", type=click.Choice(["zstd", "zlib", "none"]), default="zstd", show_default=True)
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@pass_session
def chroot_command(session: Session, recipe: str, distro: str | None, mirrors: str | None, sets: tuple[str, ...],
                   allow_blocked: bool, keep_on_failure: bool, on_error: str | None, events: str | None,
                   fmt: str | None, columns: tuple[str, ...], as_json: bool, base: Path, output: Path,
                   size: str | None, attach: str, compression: str, force: bool) -> None:
    """Build on this host: customise a copy of the base in a chroot, seal, compact (root)."""
    from snapbuild.chroot.build import ChrootSettings, build_chroot

    printed = choose(fmt, columns, as_json)
    plan = session.plan(recipe, distro=distro, mirrors=mirrors, sets=sets)
    refuse_blocked(plan, allow_blocked)
    with build_log("chroot", recipe) as log_path, build_monitor(events) as monitor:
        settings = ChrootSettings(base=base, output=output, size=size, attach=attach, compression=compression,
                                  on_error=on_error_of(on_error, keep_on_failure), force=force,
                                  allow_blocked=allow_blocked, log_path=log_path)
        result = build_chroot(plan, settings, monitor,
                              ask=terminal_asker() if settings.on_error == "ask" else None)
    summary = {"build_id": result.build_id, "output": str(result.output), "manifest": str(result.manifest),
               "attach": result.backend, "size_bytes": result.compacted.after_bytes,
               "uncompressed_bytes": result.compacted.before_bytes}
    emit(printed, Result(rows=summary, text=str(result.output), document=json.dumps(summary, indent=2)), events)


@cli.command("base")
@click.argument("distro", type=click.Choice(["debian-12", "debian-13"]))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="qcow2 file to write.")
@click.option("--mirror", default="http://deb.debian.org/debian", show_default=True, help="Debian archive URL.")
@click.option("--security-mirror",
              help="Debian security archive URL (default: deb.debian.org's, only when --mirror is the default).")
@click.option("--size", default="2G", show_default=True, help="Virtual disk size.")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
def base_command(distro: str, output: Path, mirror: str, security_mirror: str | None, size: str,
                 force: bool) -> None:
    """Build a cloud-init Debian cloud image from a Debian archive (debootstrap; root); debian-13 is Ubuntu-shaped."""
    from snapbuild.local.baseimage import build_base_image

    result = build_base_image(distro=distro, output=output, mirror=mirror, size=size, force=force,
                              security_mirror=security_mirror)
    click.echo(f"{result.path} ({result.file_size / 2**20:.0f} MiB, {result.virtual_size / 2**30:.1f} GiB virtual, "
               f"{result.seconds:.0f} s)")


@cli.command("fetch-base")
@click.argument("image", type=click.Choice(["ubuntu-24.04", "debian-12", "debian-13"]))
@click.option("--url", help="Image URL; its SHA256SUMS/SHA512SUMS is read from the same folder.")
@click.option("--mirror", metavar="BASE", help="Mirror in the cloud-images layout (default: the distribution's).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Also place the verified image here (hard link or copy of the cache entry).")
@click.option("--connections", default=4, show_default=True, type=click.IntRange(1, 16),
              help="Parallel Range requests (one stream when the server ignores Range).")
@output_options("path", "url", "algorithm", "digest", "size", "cached", "received",
                json_help="Machine-readable output (same as -f json).")
def fetch_base_command(image: str, url: str | None, mirror: str | None, output: Path | None, connections: int,
                       fmt: str | None, columns: tuple[str, ...], as_json: bool) -> None:
    """Download a base cloud image: resumable, parallel, verified against the published checksums, cached."""
    from snapbuild.transfer.fetch import FetchRequest, fetch_base
    from snapbuild.transfer.ranged import DownloadSettings

    printed = choose(fmt, columns, as_json)
    result = fetch_base(FetchRequest(image=image, url=url, mirror=mirror, output=output),
                        settings=DownloadSettings(connections=connections), monitor=_reporter())
    row = {"path": str(result.path), "url": result.url, "algorithm": result.algorithm, "digest": result.digest,
           "size": result.size, "cached": result.cached, "received": result.received}
    emit(printed, Result(rows=row, text=str(result.path), document=json.dumps(row, indent=2)))


@cli.command("ship", context_settings={"ignore_unknown_options": True})
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("upload_args", nargs=-1, type=click.UNPROCESSED)
@click.option("--via", default="", metavar="USER@RELAY[,USER@RELAY2…]",
              help="Relays, in order; each is reached through the previous ones (ssh ProxyJump, no keys on relays).")
@click.option("--to", "to", required=True, metavar="USER@CONTROLLER", help="Where the file must arrive.")
@click.option("--dest", default="", metavar="DIR", help="Directory on the controller (default: the login's home).")
@click.option("--identity", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="SSH private key.")
@click.option("--port", type=int, help="SSH port for hops that do not say host:port.")
@click.option("--known-hosts", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="known_hosts file with every hop's host key (default: ~/.ssh/known_hosts).")
@click.option("--stage", is_flag=True, help="Also leave a verified copy in DIR on every relay.")
@click.option("--bwlimit", metavar="RATE", help="rsync --bwlimit, e.g. 20m, to leave the link usable.")
@click.option("--upload", is_flag=True,
              help="Then run `snapbuild upload FILE UPLOAD_ARGS…` on the controller (args after `--`).")
@output_options("remote_path", "sha256", "size", "seconds", "hops",
                json_help="Machine-readable output (same as -f json).")
def ship_command(file: Path, upload_args: tuple[str, ...], via: str, to: str, dest: str, identity: Path | None,
                 port: int | None, known_hosts: Path | None, stage: bool, bwlimit: str | None, upload: bool,
                 fmt: str | None, columns: tuple[str, ...], as_json: bool) -> None:
    """Carry FILE over flaky links to the controller: rsync over an SSH ProxyJump chain, resumed and verified."""
    from snapbuild.errors import UserError
    from snapbuild.transfer.ship import ShipRequest, ship
    from snapbuild.transfer.sshchain import Hop, SSHOptions, parse_hops

    output = choose(fmt, columns, as_json)

    if upload_args and not upload:
        raise UserError(f"unexpected arguments: {' '.join(upload_args)}", hint="pass them after --upload --")
    request = ShipRequest(file=file, via=parse_hops(via, default_port=port), to=Hop.parse(to, default_port=port),
                          dest=dest, stage=stage, upload=tuple(upload_args) if upload else None, bwlimit=bwlimit,
                          ssh=SSHOptions(identity=identity, known_hosts=known_hosts))
    result = ship(request, monitor=_reporter())
    row = {"remote_path": result.remote_path, "sha256": result.sha256, "size": result.size,
           "seconds": round(result.seconds, 1), "hops": [h.__dict__ for h in result.hops]}
    emit(output, Result(rows=row, text=f"{result.remote_path} sha256:{result.sha256}",
                        document=json.dumps(row, indent=2)))


CLEANUP_COLUMNS = ("scope", "kind", "id", "name", "build_id", "reason", "action")


def host_row(build: SweptBuild, action: str, *, dry_run: bool) -> dict[str, Any]:
    """One of `cleanup --host`'s actions ("KIND REF", with " (failed: …)" when it failed) as a cleanup row."""
    kind, _, ref = action.partition(" ")
    ref, failed, error = ref.partition(" (failed: ")
    done = f"failed: {error.removesuffix(')')}" if failed else ("would remove" if dry_run else "removed")
    return {"scope": "host", "kind": kind, "id": ref, "name": f"{build.builder} {build.recipe}",
            "build_id": build.build_id, "reason": build.status, "action": done}


@cli.command("cleanup")
@click.option("--host", "host", is_flag=True, help="Finish interrupted local builds on this host from their ledgers.")
@click.option("--cloud", "cloud", is_flag=True,
              help="Remove snapbuild's leftovers in the cloud (the default when --host is not given).")
@click.option("--older-than", metavar="AGE", help="Also what is older than AGE (30m, 2h, 1d); default: expired only.")
@click.option("--build-id", help="Only this build (in the cloud: whatever its age, unless it still runs).")
@click.option("--all-owners", is_flag=True, help="Also other snapbuild installations' leftovers in this project.")
@click.option("--dry-run", is_flag=True, help="Show what would be removed; change nothing.")
@output_options(*CLEANUP_COLUMNS, json_help="Machine-readable output (same as -f json).")
@pass_session
def cleanup_command(session: Session, host: bool, cloud: bool, older_than: str | None, build_id: str | None,
                    all_owners: bool, dry_run: bool, fmt: str | None, columns: tuple[str, ...],
                    as_json: bool) -> None:
    """Remove what interrupted or crashed builds left behind: in the cloud (default) and/or on this host (one row
    per resource)."""
    from snapbuild.host.cleanup import cleanup_host

    output = choose(fmt, columns, as_json)
    do_cloud = cloud or not host
    if not do_cloud and (older_than or all_owners):
        from snapbuild.errors import UserError

        raise UserError("--older-than and --all-owners choose cloud resources; --host alone cleans only this host",
                        hint="add --cloud to clean both, or leave those options out")
    report = None
    if do_cloud:
        from snapbuild.openstack.cleanup import CleanupSettings, cleanup_cloud, parse_duration, table
        from snapbuild.openstack.cloud import Cloud, NoCloudSelected

        settings = CleanupSettings(older_than=parse_duration(older_than) if older_than else None,
                                   build_id=build_id, all_owners=all_owners, dry_run=dry_run)
        try:
            adapter = Cloud.connect(session.os_cloud, session.os_region, auth_args=session.auth_args)
        except NoCloudSelected as exc:
            from snapbuild.errors import UserError

            known = f" (clouds.yaml has: {', '.join(exc.known)})" if exc.known else ""
            raise UserError("no cloud selected to clean up",
                            hint=f"pass --os-cloud NAME or set OS_CLOUD{known}; or use --host for this host's "
                                 "leftovers only") from None
        try:
            report = cleanup_cloud(adapter, settings)
        finally:
            adapter.close()
    swept = cleanup_host(dry_run=dry_run, build_id=build_id) if host else []
    document: dict[str, Any] = {"host": [s.__dict__ for s in swept], "dry_run": dry_run}
    rows: list[dict[str, Any]] = []
    text = ""
    if report is not None:
        document["cloud"] = [o.as_dict() for o in report.outcomes]
        document["cloud_skipped"] = report.skipped
        rows += [{"scope": "cloud", **{column: o.as_dict()[column] for column in CLEANUP_COLUMNS[1:]}}
                 for o in report.outcomes]
        text += table(report, dry_run=dry_run)
        for reason in report.skipped:
            log.info("left alone: %s", reason)
    if host:
        verb = "would remove" if dry_run else "removed"
        for build in swept:
            text += f"build {build.build_id} ({build.builder} {build.recipe}, {build.status}):\n"
            for action in build.actions:
                text += f"  {verb} {action}\n"
                rows.append(host_row(build, action, dry_run=dry_run))
        if not swept:
            text += "nothing left behind on this host\n"
    emit(output, Result(rows=rows, text=text.rstrip("\n"), document=json.dumps(document, indent=2)))
    if report is not None and report.failed:
        from snapbuild.errors import EXIT_CLOUD

        sys.exit(EXIT_CLOUD)


UPLOAD_COLUMNS = ("id", "name", "already_uploaded", "disk_format", "size", "sha256", "sha512", "seconds",
                  "properties")


def with_image_options(func: Any) -> Any:
    for option in reversed(IMAGE_OPTIONS):
        func = option(func)
    return func


@cli.command("upload")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--recipe", metavar="RECIPE", shell_complete=complete_recipe,
              help="Take name, properties, min_disk/min_ram from this recipe's plan.")
@click.option("--name", help="Image name (default: the recipe's image name).")
@with_recipe_options
@click.option("--property", "properties", multiple=True, metavar="KEY=VALUE",
              help="Image property (repeatable); wins over the recipe's.")
@click.option("--tag", "tags", multiple=True, help="Tag for the finished image (repeatable).")
@with_image_options
@click.option("--import", "use_import", is_flag=True,
              help="Use Glance's interoperable import (glance-direct: stage, then import).")
@click.option("--timeout", "timeout_active", default=1800.0, show_default=True, type=float, metavar="S",
              help="How long Glance may take to make the image active after the data is sent.")
@output_options(*UPLOAD_COLUMNS, json_help="Print the result as JSON on stdout (same as -f json).")
@pass_session
def upload_command(session: Session, /, file: Path, recipe: str | None, name: str | None, distro: str | None,
                   mirrors: str | None, sets: tuple[str, ...], properties: tuple[str, ...], tags: tuple[str, ...],
                   use_import: bool, timeout_active: float, fmt: str | None, columns: tuple[str, ...],
                   as_json: bool, **image: Any) -> None:
    """Upload a qcow2/raw FILE to Glance: streamed, hashed, verified, with the recipe's properties."""
    from snapbuild.cli.cloud_options import parse_properties
    from snapbuild.errors import UserError
    from snapbuild.openstack.upload import UploadSettings, upload_image

    output = choose(fmt, columns, as_json)
    visibility = image_visibility(image)   # the visibility options; the rest of `image` is below
    if not recipe and not name:
        raise UserError("name the image", hint="pass --recipe RECIPE (its image name and properties) or --name NAME")
    if not recipe and (distro or mirrors or sets):
        raise UserError("--distro, --mirrors and --set need --recipe")
    recipe_props: dict[str, str] = {}
    min_disk = min_ram = 0
    if recipe:
        plan = session.plan(recipe, distro=distro, mirrors=mirrors, sets=sets)
        recipe_props = dict(plan.image.properties)
        min_disk, min_ram = plan.image.min_disk_gb, plan.image.min_ram_mb
        name = name or plan.image.name
    assert name is not None
    min_disk = min_disk if image["min_disk_gb"] is None else image["min_disk_gb"]
    min_ram = min_ram if image["min_ram_mb"] is None else image["min_ram_mb"]
    settings = UploadSettings(file=file, name=name, cloud=session.os_cloud, region=session.os_region,
                              auth_args=session.auth_args,
                              recipe=recipe or "", recipe_properties=recipe_props, min_disk_gb=min_disk,
                              min_ram_mb=min_ram, properties=parse_properties(properties), tags=tags,
                              visibility=visibility, protected=image["protected"], hidden=image["hidden"],
                              use_import=use_import, timeout_active=timeout_active)
    with build_log("upload", recipe or "file"):
        result = upload_image(settings, _reporter())
    row = {"id": result.image_id, "name": result.name, "already_uploaded": result.already,
           "disk_format": result.disk_format, "size": result.size, "sha256": result.sha256, "sha512": result.sha512,
           "seconds": round(result.seconds, 1), "properties": dict(result.properties)}
    emit(output, Result(rows=row, text=result.image_id, document=result.to_json()))


@cli.command("inspect")
@click.argument("image", type=click.Path(path_type=Path))
@output_options("code", "path", "detail", json_help="Machine-readable output (same as -f json).")
def inspect_command(image: Path, fmt: str | None, columns: tuple[str, ...], as_json: bool) -> None:
    """Check a built image offline against the sealing policy (mounts it read-only; root); one row per violation."""
    from snapbuild.sealing.offline import inspect_image

    output = choose(fmt, columns, as_json)
    violations = inspect_image(image)
    text = [f"VIOLATION {violation}" for violation in violations]
    text.append(f"{image}: {'sealed' if not violations else f'{len(violations)} violation(s)'}")
    emit(output, Result(rows=[dict(v.__dict__) for v in violations], text="\n".join(text),
                        document=json.dumps({"image": str(image), "ok": not violations,
                                             "violations": [v.__dict__ for v in violations]}, indent=2)))
    if violations:
        sys.exit(EXIT_BUILD)


# -- entry point ---------------------------------------------------------------------------------------------


def _fail(error: SnapbuildError, verbose: bool) -> NoReturn:
    if verbose:
        log.exception("failed")
    click.echo(f"snapbuild: error: {error.message}", err=True)
    if error.hint:
        click.echo(f"snapbuild: hint: {error.hint}", err=True)
    sys.exit(error.exit_code)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    verbose = "-v" in args or "--verbose" in args
    try:
        cli.main(args=argv, prog_name="snapbuild", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("snapbuild: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_USAGE if exc.exit_code == 2 else exc.exit_code)
    except SnapbuildError as exc:
        _fail(exc, verbose)
    except KeyboardInterrupt:
        click.echo("snapbuild: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:
        if verbose:
            raise
        click.echo(f"snapbuild: internal error: {type(exc).__name__}: {exc} (run with --verbose for details)",
                   err=True)
        sys.exit(EXIT_BUILD)


# Commands in their own modules register themselves on `cli` (click only at their module level: --help stays fast).
from snapbuild.cli import apply as _apply  # noqa: E402,F401
from snapbuild.cli import validate as _validate  # noqa: E402,F401

if __name__ == "__main__":
    main()

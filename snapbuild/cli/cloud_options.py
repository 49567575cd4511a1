"""The click options of `snapbuild build` (OpenStack snapshot builds) and how they become SnapshotSettings.

Imports only click and the settings dataclass, so `snapbuild --help` stays fast (no openstacksdk, no paramiko).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from snapbuild.cli.asking import ON_ERROR_OPTION, on_error_of
from snapbuild.cli.output import output_option_list
from snapbuild.errors import UserError
from snapbuild.openstack.settings import SnapshotSettings

if TYPE_CHECKING:
    from snapbuild.config import Config
    from snapbuild.schema import Checker

VISIBILITIES = ("private", "shared", "community", "public")

# The image's own options, named as `openstack image create` names them; `build` (and its shortcuts) and `upload`
# take the same ones. The visibility flags are --visibility X spelled as the openstack CLI spells it.
IMAGE_OPTIONS: list[Callable[[Any], Any]] = [
    click.option("--min-disk", "min_disk_gb", type=click.IntRange(min=0), metavar="GB",
                 help="Minimum disk size to boot the image, in GB (default: the recipe's min_disk_gb)."),
    click.option("--min-ram", "min_ram_mb", type=click.IntRange(min=0), metavar="MB",
                 help="Minimum RAM to boot the image, in MB (default: the recipe's min_ram_mb)."),
    click.option("--protected/--unprotected", default=False, show_default=True,
                 help="Protect the finished image from deletion."),
    click.option("--hidden/--unhidden", default=False, show_default=True,
                 help="Hide the image from the default image list (os_hidden)."),
    click.option("--visibility", type=click.Choice(VISIBILITIES), help="Image visibility (default: private)."),
    *(click.option(f"--{name}", name, is_flag=True, help=f"Same as --visibility {name}.") for name in VISIBILITIES),
]

# What `build` answers, one row: -c takes these.
BUILD_COLUMNS = ("id", "name", "build_id", "manifest", "properties", "seconds")

_OPTIONS: list[Callable[[Any], Any]] = [
    click.option("--base-image", metavar="NAME|ID",
                 help="Base image; default: the most recent active image whose os_distro/os_version match."),
    click.option("--network", "networks", multiple=True, metavar="NAME|ID",
                 help="Network for the builder (repeatable); default: Nova's 'auto'."),
    click.option("--port", metavar="NAME|ID", help="An existing free port instead of --network."),
    click.option("--floating-network", metavar="NAME|ID|none", default="none", show_default=True,
                 help="External network for a temporary floating IP; 'none' for no floating IP."),
    click.option("--security-group", "security_groups", multiple=True, metavar="NAME|ID",
                 help="Existing security group (repeatable); default: a temporary one allowing SSH."),
    click.option("--ssh-cidr", default="0.0.0.0/0", show_default=True,
                 help="Who may reach port 22 through the temporary security group."),
    click.option("--availability-zone", metavar="AZ"),
    # A switch pair, so the command line can turn off a config file's `config_drive: true`.
    click.option("--config-drive/--no-config-drive", default=False, help="Boot the builder with a config drive."),
    click.option("--volume-size", "volume_size_gb", type=click.IntRange(min=1), metavar="GB",
                 help="Boot from a Cinder volume of this size; the image is the volume uploaded to Glance."),
    click.option("--volume-disk-format", default="qcow2", show_default=True,
                 type=click.Choice(["qcow2", "raw"]), help="Disk format of a volume upload."),
    click.option("--ssh-user", default="snapbuild", show_default=True,
                 help="Temporary builder user created by cloud-init (removed before capture)."),
    click.option("--ssh-port", default=22, show_default=True, type=int),
    click.option("--ssh-interface", metavar="NETWORK", help="Network whose address SSH uses (no floating IP)."),
    click.option("--ssh-ip-version", type=click.Choice(["4", "6"]), help="IP version of that address."),
    click.option("--ssh-bastion", metavar="[USER@]HOST[:PORT]", help="Jump host to reach the builder through."),
    click.option("--ssh-bastion-key", metavar="FILE", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                 help="Your private key for the jump host (default: ~/.ssh/id_ed25519, id_ecdsa or id_rsa); "
                      "its host key must be in ~/.ssh/known_hosts."),
    click.option("--insecure-accept-any-host-key", "accept_any_host_key", is_flag=True,
                 help="Do NOT check the builder's SSH host key (it is pinned by default)."),
    click.option("--name", "--image-name", "image_name",
                 help="Name of the image (default: the recipe's image name and the date)."),
    *IMAGE_OPTIONS,
    click.option("--share-with", multiple=True, metavar="PROJECT_ID",
                 help="Add this project as an image member (repeatable; makes the image 'shared')."),
    click.option("--property", "properties", multiple=True, metavar="KEY=VALUE",
                 help="Image property (repeatable); wins over the recipe's."),
    click.option("--tag", "tags", multiple=True, help="Tag for the finished image (repeatable)."),
    click.option("--timeout-boot", default=900.0, show_default=True, type=float, metavar="S"),
    click.option("--timeout-ssh", default=600.0, show_default=True, type=float, metavar="S"),
    click.option("--timeout-provision", default=3600.0, show_default=True, type=float, metavar="S",
                 help="Per provisioning step."),
    click.option("--timeout-snapshot", default=1800.0, show_default=True, type=float, metavar="S"),
    click.option("--keep-on-failure", is_flag=True, help="Same as --on-error abort."),
    ON_ERROR_OPTION,
    click.option("--transport", type=click.Choice(["ssh", "console"]), default="ssh", show_default=True,
                 help="How the builder is driven: over SSH, or by a runner cloud-init starts that reports on the "
                      "console and powers the builder off (no route to the builder needed)."),
    click.option("--no-provision", is_flag=True,
                 help="Test/debug mode: boot, stop, snapshot, set properties; no SSH, provisioning or sealing."),
    click.option("--allow-blocked", is_flag=True, help="Build even if the recipe pulls from blocked hosts."),
    click.option("--manifest", "manifest_path", type=click.Path(path_type=Path),
                 help="Where to write the build's manifest (default: the state directory's manifests/)."),
]


def snapshot_options(func: Any, *, require_flavor: bool = True, columns: Sequence[str] = BUILD_COLUMNS) -> Any:
    """`build`'s options. `validate` checks the recipe alone when no cloud is selected, so there --flavor may be
    missing (with a cloud, its absence is one of the problems listed); its result has its own `columns`."""
    flavor = click.option("--flavor", required=require_flavor,
                          help="Flavor (name or id) of the builder server."
                               + ("" if require_flavor else " Needed when a cloud is checked."))
    output = output_option_list(columns, json_help="Print the result as JSON on stdout (same as -f json).")
    for option in reversed([flavor, *_OPTIONS, *output]):
        func = option(func)
    return func


def parse_properties(items: Sequence[str]) -> dict[str, str]:
    props: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--property")
        props[key.strip()] = value
    return props


def settings_from_options(*, cloud: str | None, region: str | None, auth_args: Sequence[str] = (),
                          log_path: Path | None = None, **options: Any) -> SnapshotSettings:
    """Every option of `snapshot_options` (as click passes them) → SnapshotSettings."""
    floating = options.pop("floating_network")
    version = options.pop("ssh_ip_version")
    as_json = options.pop("as_json")
    on_error = on_error_of(options.pop("on_error"), options.pop("keep_on_failure"))
    options.pop("fmt", None), options.pop("columns", None)    # how the result is printed: the command's business
    return SnapshotSettings(
        cloud=cloud, region=region, auth_args=tuple(auth_args), log_path=log_path, json=as_json, on_error=on_error,
        visibility=image_visibility(options),
        floating_network=None if floating in (None, "", "none") else floating,
        ssh_ip_version=int(version) if version else None,
        properties=parse_properties(options.pop("properties")),
        networks=tuple(options.pop("networks")), security_groups=tuple(options.pop("security_groups")),
        share_with=tuple(options.pop("share_with")), tags=tuple(options.pop("tags")),
        **options)


def image_visibility(options: dict[str, Any]) -> str:
    """--visibility and the --public/--private/--community/--shared flags (popped from `options`) as one visibility.

    Two flags, or a flag and a different --visibility on the command line, are refused; a flag wins over a
    `visibility:` default from snapbuild.yaml, as any command-line value does.
    """
    visibility: str | None = options.pop("visibility")
    flags = [name for name in VISIBILITIES if options.pop(name)]
    hint = "an image has one visibility: pass one of --public, --private, --community, --shared or --visibility"
    if len(flags) > 1:
        raise UserError(f"--{flags[0]} and --{flags[1]} conflict", hint=hint)
    if not flags:
        return visibility or "private"
    ctx = click.get_current_context(silent=True)
    from_file = ctx is not None and ctx.get_parameter_source("visibility") is ParameterSource.DEFAULT_MAP
    if visibility is not None and visibility != flags[0] and not from_file:
        raise UserError(f"--{flags[0]} and --visibility {visibility} conflict", hint=hint)
    return flags[0]


# -- snapbuild.yaml's `build:` section ------------------------------------------------------------------------

def long_name(param: click.Parameter) -> str:
    """An option as the `build:` section names it: `--floating-network` is `floating_network`."""
    longs = [opt for opt in param.opts if opt.startswith("--")]
    return longs[0][2:].replace("-", "_") if longs else param.name or ""


def site_defaults(config: Config, command: click.Command, ctx: click.Context, *, cloud: str | None = None,
                  region: str | None = None) -> dict[str, Any]:
    """The config file's build defaults for `cloud`/`region` (`build:`, then `clouds.CLOUD.build`, then
    `clouds.CLOUD.regions.REGION.build`) as `command`'s `default_map`: by parameter name, each value shaped as the
    option takes it (one string for a repeatable option is one item; a `property` mapping is KEY=VALUE items; a
    relative path is the config file's) and converted by the option's own click type. Click converts them again
    when it applies them; converting here first makes a bad value fail with the file and line."""
    merged = config.build_for(cloud, region)
    if not merged.values:
        return {}
    from snapbuild.schema import Checker

    check = Checker(config.path or "snapbuild.yaml")
    options = {long_name(param): param for param in command.params if isinstance(param, click.Option)}
    base = Path(config.path).absolute().parent if config.path else Path.cwd()
    defaults: dict[str, Any] = {}
    for key, value in merged.values.items():
        where, section = merged.origins[key]
        param = options.get(key)
        if param is None or param.name is None:   # config.BUILD_KEYS names an option the command lacks (a bug)
            raise check.fail(f"{where}.{key} is not an option of `snapbuild {command.name}`", section, key)
        if not param.multiple:
            defaults[param.name] = _convert(check, ctx, param, f"{where}.{key}", value, section, key, base)
            continue
        # Each item with where it is: a list's items, a property mapping's entries, or one value alone.
        entries: list[tuple[Any, str, Any, str | int]]
        if isinstance(value, list):
            entries = [(item, f"{where}.{key}[{index}]", value, index) for index, item in enumerate(value)]
        elif key == "property" and isinstance(value, dict):
            entries = [(_property(check, f"{where}.property.{name}", item, value, name), f"{where}.property.{name}",
                        value, name) for name, item in value.items()]
        else:
            entries = [(value, f"{where}.{key}", section, key)]
        converted = [_convert(check, ctx, param, at_path, item, node, at, base, listable=node is section)
                     for item, at_path, node, at in entries]
        if key == "property":
            try:
                parse_properties(converted)
            except click.BadParameter as exc:
                raise check.fail(f"{where}.property: {exc.message}", section, key,
                                 hint="give a mapping of name: value, or a list of KEY=VALUE items") from None
        defaults[param.name] = tuple(converted)
    return defaults


def _property(check: Checker, where: str, value: Any, node: Any, name: str) -> str:
    """A `property:` mapping entry as --property takes it; booleans read as a recipe's image properties read them."""
    from snapbuild.schema import type_name

    if isinstance(value, bool):
        value = "true" if value else "false"
    if not isinstance(value, str | int | float):
        raise check.fail(f"{where} must be a string or number, not {type_name(value)}", node, name)
    return f"{name}={value}"


def _convert(check: Checker, ctx: click.Context, param: click.Option, where: str, value: Any, node: Any,
             at: str | int, base: Path, listable: bool = False) -> Any:
    """One value (or item) as click would take it from the command line, or an error naming file, line and key."""
    from snapbuild.schema import type_name

    kind = param.type
    flag = f"--{long_name(param).replace('_', '-')}"
    if isinstance(kind, click.types.BoolParamType):
        if not isinstance(value, bool):
            raise check.fail(f"{where} must be true or false, not {type_name(value)}", node, at)
        return value
    number = isinstance(kind, click.types.IntParamType | click.types.FloatParamType)
    if isinstance(value, bool) or not isinstance(value, str | int | float) or (number and isinstance(value, str)):
        wanted = ("a number" if number else "a string") + (", or a list of them" if listable else "")
        raise check.fail(f"{where} must be {wanted}, not {type_name(value)}", node, at,
                         hint=f"the values {flag} takes: see `snapbuild build --help`")
    if isinstance(kind, click.types.IntParamType) and isinstance(value, float) and not value.is_integer():
        raise check.fail(f"{where} must be a whole number, not {value}", node, at)
    if isinstance(kind, click.Path) and not isinstance(value, int | float):
        value = base / Path(value).expanduser()   # relative to the config file, as recipes_path is
    try:
        return kind(value, param, ctx)
    except click.BadParameter as exc:
        raise check.fail(f"{where}: {exc.message}", node, at,
                         hint=f"the values {flag} takes: see `snapbuild build --help`") from None

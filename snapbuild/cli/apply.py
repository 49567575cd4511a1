"""`snapbuild apply CATALOGUE`: make the clouds match an image catalogue (plan, build, copy, rotate).

Only click at module level: `snapbuild --help` stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from snapbuild.cli import Session, build_log, cli, emit, pass_session
from snapbuild.cli.output import Result, choose, output_options

if TYPE_CHECKING:
    from snapbuild.catalogue.model import Target
    from snapbuild.openstack.cloud import Cloud

PLAN_COLUMNS = ("entry", "target", "action", "image", "digest", "reason")
SUMMARY_COLUMNS = ("entry", "target", "action", "image_id", "seconds", "detail")


def connect_target(target: Target) -> Cloud:
    from snapbuild.openstack.cloud import Cloud

    return Cloud.connect(target.cloud, target.region)


@cli.command("apply", short_help="Make the clouds match an image catalogue: build, copy, rotate.")
@click.argument("catalogue", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Print the plan (what would be built, copied, hidden, deleted, skipped "
                                               "and why) and touch nothing.")
@click.option("--only", "only", multiple=True, metavar="ENTRY@TARGET",
              help="Only this entry on this target (repeatable): how CI runners share a catalogue's work.")
@output_options(*sorted(set(PLAN_COLUMNS) | set(SUMMARY_COLUMNS)),
                json_help="Machine-readable output (same as -f json).")
@pass_session
def apply_command(session: Session, catalogue: Path, dry_run: bool, only: tuple[str, ...], fmt: str | None,
                  columns: tuple[str, ...], as_json: bool) -> None:
    """Build every image of CATALOGUE that is missing on its targets (only what changed: content digests), copy it
    to the targets that receive copies, and retire old images per the catalogue's policy. One row per entry ×
    target and per retired image; --dry-run shows the same decisions without acting."""
    from snapbuild.catalogue.apply import Runtime, apply_catalogue
    from snapbuild.catalogue.load import load_catalogue
    from snapbuild.catalogue.planner import Clouds, make_plan, parse_only
    from snapbuild.openstack.cloud import cloud_names

    output = choose(fmt, columns, as_json)
    loaded = load_catalogue(catalogue, library=session.library, known_clouds=cloud_names())
    pairs = parse_only(loaded, only) if only else None
    clouds = Clouds(connect_target)
    try:
        plan = make_plan(loaded, library=session.library, clouds=clouds, only=pairs)
    finally:
        clouds.close()
    if dry_run:
        rows = plan.rows()
        emit(output, Result(rows=rows, text=_table(rows, PLAN_COLUMNS),
                            document=json.dumps({"dry_run": True, **plan.as_dict()}, indent=2, default=str)))
        return
    from snapbuild.catalogue.hostbuild import build_on_host

    with build_log("apply", catalogue.stem):
        report = apply_catalogue(loaded, plan, Runtime(connect=connect_target, host_builder=build_on_host))
    rows = report.rows()
    emit(output, Result(rows=rows, text=_table(rows, SUMMARY_COLUMNS),
                        document=json.dumps({"dry_run": False, "plan": plan.as_dict(), "done": rows}, indent=2,
                                            default=str)))
    if report.failed:
        from snapbuild.errors import EXIT_BUILD

        click.echo(f"snapbuild: {len(report.failed)} of the catalogue's jobs failed (see the table); the next "
                   "apply retries them", err=True)
        sys.exit(EXIT_BUILD)


def _table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    from snapbuild.cli.output import aligned, cell

    if not rows:
        return "nothing to do"
    return aligned([columns, *[tuple(cell(row.get(c)) for c in columns) for row in rows]])

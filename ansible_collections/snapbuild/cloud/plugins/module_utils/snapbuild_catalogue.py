# -*- coding: utf-8 -*-
# Copyright: snapbuild contributors
# Apache License 2.0 (see the repository's LICENSE / setup.cfg)
"""`snapbuild apply CATALOGUE` as the snapbuild.cloud.catalogue module uses it: the argument list, and apply's JSON
answers read back - the plan `--dry-run -f json` prints (`{"dry_run": true, "items": [...], "rotations": [...]}`)
and the run's (`{"dry_run": false, "plan": {...}, "done": [...]}`), as snapbuild/cli/apply.py writes them.

Pure functions over plain data, as snapbuild_command.py (whose global options and helpers this reuses): no Ansible
import, Python 3.8 and later.
"""

from __future__ import absolute_import, annotations, division, print_function

import json
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ansible_collections.snapbuild.cloud.plugins.module_utils.snapbuild_command import Params, global_argv

__metaclass__ = type

# What would change the clouds: a plan item's action, a rotation's action (keep and untouched change nothing;
# an item waiting for another apply's claim is that apply's change), and what a run reports having done.
PLANNED_CHANGES = ("build", "copy")
RETIREMENTS = ("hide", "delete")
DONE_CHANGES = ("built", "copied", "hidden", "deleted")
# A run's rows for the plan's items (one each, recorded before any rotation row of the same entry and target);
# the others (hidden, deleted, kept, untouched, or failed with a `hide:`/`delete:` detail) are the rotation's.
ITEM_OUTCOMES = ("built", "copied", "skipped", "failed")


def apply_argv(executable: str, params: Params, catalogue: str, dry_run: bool) -> List[str]:
    """`snapbuild [--config FILE] [--recipes-dir DIR ...] apply CATALOGUE [--only E@T ...] [--dry-run] -f json`."""
    argv = [executable] + global_argv(params) + ["apply", catalogue]
    for pair in params.get("only") or ():
        argv += ["--only", str(pair)]
    if dry_run:
        argv.append("--dry-run")
    return argv + ["-f", "json"]


def catalogue_text(content: Mapping[str, Any]) -> str:
    """An inline catalogue as a file apply reads: JSON is YAML, one key a line, so apply's file:line errors point
    somewhere readable."""
    return json.dumps(content, indent=2, sort_keys=False) + "\n"


def plan_of(document: Mapping[str, Any]) -> Dict[str, Any]:
    """The plan (items, rotations) of either answer: the dry run's document is the plan itself."""
    plan = document.get("plan") if document.get("dry_run") is False else document
    plan = plan or {}
    return {"items": list(plan.get("items") or []), "rotations": list(plan.get("rotations") or [])}


def key_of(row: Mapping[str, Any]) -> str:
    return "%s@%s" % (row.get("entry"), row.get("target"))


def plan_changes(document: Mapping[str, Any]) -> bool:
    """Check mode's `changed`: the plan builds, copies, hides or deletes something."""
    plan = plan_of(document)
    return (any(item.get("action") in PLANNED_CHANGES for item in plan["items"])
            or any(rotation.get("action") in RETIREMENTS for rotation in plan["rotations"]))


def done_changes(document: Mapping[str, Any]) -> bool:
    """A run's `changed`: it built, copied, hid or deleted something (a run that failed half-way too)."""
    return any(row.get("action") in DONE_CHANGES for row in document.get("done") or ())


def images_of(document: Mapping[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Per ENTRY@TARGET of the plan: the action, and the image that is current after the run (image_id; in a dry run
    the current one if it is up to date, else null), with the content digest and the reason or outcome."""
    plan = plan_of(document)
    done = document.get("done") if document.get("dry_run") is False else None
    outcomes: Dict[str, Mapping[str, Any]] = {}
    for row in done or ():
        if row.get("action") in ITEM_OUTCOMES:
            outcomes.setdefault(key_of(row), row)
    images: Dict[str, Dict[str, Any]] = {}
    for item in plan["items"]:
        key = key_of(item)
        image = {"entry": item.get("entry"), "target": item.get("target"), "digest": item.get("digest")}
        if done is None:
            current = item.get("image_id") if item.get("action") == "skip" else None
            image.update(action=item.get("action"), image_id=current, detail=item.get("reason"))
        else:
            outcome = outcomes.get(key) or {}
            image.update(action=outcome.get("action"), image_id=outcome.get("image_id"),
                         detail=outcome.get("detail"))
        images[key] = image
    return images


def summary_of(document: Mapping[str, Any]) -> Dict[str, int]:
    """How many of each action: the plan's items and retirements (dry run), or the run's rows."""
    counts: Dict[str, int] = {}
    if document.get("dry_run") is False:
        actions = [row.get("action") for row in document.get("done") or ()]
    else:
        plan = plan_of(document)
        actions = [item.get("action") for item in plan["items"]]
        actions += [r.get("action") for r in plan["rotations"] if r.get("reason") != "current"]
    for action in actions:
        counts[str(action)] = counts.get(str(action), 0) + 1
    return counts


def failures_of(document: Mapping[str, Any]) -> List[str]:
    """A run's failed rows, `ENTRY@TARGET: detail` each."""
    return ["%s: %s" % (key_of(row), row.get("detail") or "failed")
            for row in document.get("done") or () if row.get("action") == "failed"]


def _image_line(image_id: Any, name: Any) -> str:
    return "image %s%s" % (image_id, " %s" % name if name else "")


def _before(rotations: Sequence[Mapping[str, Any]]) -> Dict[str, str]:
    """The images of ours an entry has at a target before the run (apply leaves the others alone), by id."""
    return {str(r.get("image_id")): _image_line(r.get("image_id"), r.get("image_name"))
            for r in rotations if r.get("action") != "untouched"}


def _planned_after(before: Mapping[str, str], item: Optional[Mapping[str, Any]],
                   rotations: Sequence[Mapping[str, Any]]) -> List[str]:
    after = dict(before)
    for rotation in rotations:
        image_id = str(rotation.get("image_id"))
        if rotation.get("action") == "hide" and image_id in after:
            after[image_id] += " - hidden: %s" % rotation.get("reason")
        elif rotation.get("action") == "delete":
            after.pop(image_id, None)
    lines = list(after.values())
    if item is not None and item.get("action") == "build":
        base = item.get("base") or {}
        lines.append("new image: built from base %s, digest %s (%s)" % (
            base.get("name") or base.get("id"), str(item.get("digest"))[:12], item.get("reason")))
    elif item is not None and item.get("action") == "copy":
        lines.append("new image: copy from target %s, digest %s (%s)" % (
            item.get("source"), str(item.get("digest"))[:12], item.get("reason")))
    return lines


def _done_after(before: Mapping[str, str], rows: Sequence[Mapping[str, Any]]) -> List[str]:
    after = dict(before)
    added: List[str] = []
    for row in rows:
        image_id = str(row.get("image_id"))
        action = row.get("action")
        if action == "hidden":
            after[image_id] = after.get(image_id, _image_line(image_id, None)) + " - hidden: %s" % row.get("detail")
        elif action == "deleted":
            after.pop(image_id, None)
        elif action in ("built", "copied") and image_id not in after:
            added.append("%s - %s: %s" % (_image_line(image_id, None), action, row.get("detail")))
    return list(after.values()) + added


def _text(key: str, lines: Sequence[str]) -> str:
    return "%s\n" % key + "".join("  %s\n" % line for line in lines)


def diff_of(document: Mapping[str, Any]) -> List[Dict[str, str]]:
    """Ansible's diff, one per ENTRY@TARGET that changes: its images before, and after the plan (dry run) or the
    run. Every catalogue image carries its entry, so this is all of that entry's images there."""
    plan = plan_of(document)
    dry_run = document.get("dry_run") is not False
    keys: List[str] = []
    for row in plan["items"] + plan["rotations"] + list(document.get("done") or ()):
        if key_of(row) not in keys:
            keys.append(key_of(row))
    diffs: List[Dict[str, str]] = []
    for key in keys:
        item = next((i for i in plan["items"] if key_of(i) == key), None)
        rotations = [r for r in plan["rotations"] if key_of(r) == key]
        before = _before(rotations)
        if dry_run:
            if not ((item is not None and item.get("action") in PLANNED_CHANGES)
                    or any(r.get("action") in RETIREMENTS for r in rotations)):
                continue
            after = _planned_after(before, item, rotations)
        else:
            rows = [row for row in document.get("done") or () if key_of(row) == key]
            if not any(row.get("action") in DONE_CHANGES for row in rows):
                continue
            after = _done_after(before, rows)
        diffs.append({"before_header": key, "after_header": key, "before": _text(key, list(before.values())),
                      "after": _text(key, after)})
    return diffs

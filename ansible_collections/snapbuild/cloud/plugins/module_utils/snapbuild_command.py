# -*- coding: utf-8 -*-
# Copyright: snapbuild contributors
# Apache License 2.0 (see the repository's LICENSE / setup.cfg)
"""The snapbuild command line as the snapbuild.cloud modules use it: argv lists from module parameters, and
snapbuild's JSON answers (the build result, validate's verdict, the --events stream) read back.

Pure functions over plain data: no Ansible import, so the repository's unit tier tests them without ansible-core.
Module code runs on the target's Python (3.8 and later for the ansible-core versions this collection supports),
so nothing newer than 3.8 is used here.
"""

from __future__ import absolute_import, annotations, division, print_function

import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

__metaclass__ = type

Params = Mapping[str, Any]

VISIBILITIES = ("private", "shared", "community", "public")

# What the module decides itself: how snapbuild answers (-f json, --json, --events) and what a failure does
# (a playbook has no terminal to ask on, and keeping a half-built server is an operator's choice by hand).
OWNED_OPTIONS = ("-f", "--format", "-c", "--column", "--json", "--events", "--on-error", "--keep-on-failure")

# Module parameters that become one `--option VALUE` each (parameter name, snapbuild option).
SINGLE_VALUED = (
    ("distro", "--distro"),
    ("mirrors", "--mirrors"),
    ("variant", "--variant"),
    ("flavor", "--flavor"),
    ("base_image", "--base-image"),
    ("port", "--port"),
    ("floating_network", "--floating-network"),
    ("ssh_cidr", "--ssh-cidr"),
    ("availability_zone", "--availability-zone"),
    ("volume_size", "--volume-size"),
    ("ssh_user", "--ssh-user"),
    ("ssh_interface", "--ssh-interface"),
    ("ssh_bastion", "--ssh-bastion"),
    ("ssh_bastion_key", "--ssh-bastion-key"),
    ("name", "--name"),
    ("min_disk", "--min-disk"),
    ("min_ram", "--min-ram"),
    ("visibility", "--visibility"),
    ("manifest", "--manifest"),
)

# Module parameters that are lists: `--option VALUE` per item.
REPEATED = (
    ("networks", "--network"),
    ("security_groups", "--security-group"),
    ("share_with", "--share-with"),
    ("tags", "--tag"),
)

# Switch pairs: true -> the first, false -> the second, None (not given) -> neither (snapbuild.yaml decides).
SWITCHES = (
    ("protected", "--protected", "--unprotected"),
    ("hidden", "--hidden", "--unhidden"),
    ("config_drive", "--config-drive", "--no-config-drive"),
)

# Timeouts in seconds, as snapbuild names them.
TIMEOUTS = ("boot", "ssh", "provision", "snapshot")


# The module options every snapbuild.cloud module has (documented in the snapbuild.cloud.snapbuild doc fragment):
# snapbuild's global options that every command reads, and the command itself.
COMMON_OPTIONS = dict(
    config=dict(type="path"),
    recipes_dirs=dict(type="list", elements="path"),
    executable=dict(type="str", default="snapbuild"),
)


class ArgvError(ValueError):
    """A parameter snapbuild could not be given as asked; the message says which and why."""


def set_value(name: str, value: Any) -> str:
    """One recipe variable as `--set NAME=VALUE` takes it: lists comma-joined, booleans as true/false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        items = [set_value(name, item) for item in value]
        if any("," in item for item in items):
            raise ArgvError("variables.%s: a list item contains a comma, which --set uses to separate items" % name)
        return ",".join(items)
    if isinstance(value, dict) or value is None:
        raise ArgvError("variables.%s: give a string, number, boolean or list, not %s"
                        % (name, "null" if value is None else "a mapping"))
    return str(value)


def global_argv(params: Params) -> List[str]:
    """The options that come before the subcommand: cloud, region, config file, recipe folders."""
    argv: List[str] = []
    if params.get("cloud"):
        argv += ["--os-cloud", params["cloud"]]
    if params.get("region"):
        argv += ["--os-region-name", params["region"]]
    if params.get("config"):
        argv += ["--config", params["config"]]
    for folder in params.get("recipes_dirs") or ():
        argv += ["--recipes-dir", folder]
    return argv


def find_executable(module: Any) -> str:
    """The snapbuild command the task runs (`executable`: a path, or a name looked up in PATH); fails the task when
    there is none. `module` is the AnsibleModule (not imported here: see the module docstring)."""
    executable = module.params["executable"]
    if os.sep in executable:
        if not os.access(executable, os.X_OK):
            module.fail_json(msg="executable %s is not an executable file" % executable)
        return str(executable)
    found = module.get_bin_path(executable)
    if not found:
        module.fail_json(msg="%s not found in PATH: install snapbuild (pip install snapbuild) on the host that "
                             "runs this task, or give its path as executable" % executable)
    return str(found)


def command_argv(params: Params) -> List[str]:
    """The build options common to `build` and `validate`, in a stable order."""
    argv: List[str] = []
    for name, option in SINGLE_VALUED:
        value = params.get(name)
        if value is not None and value != "":
            argv += [option, str(value)]
    for name, option in REPEATED:
        for item in params.get(name) or ():
            argv += [option, str(item)]
    for name, on, off in SWITCHES:
        value = params.get(name)
        if value is not None:
            argv.append(on if value else off)
    for key in sorted(params.get("variables") or {}):
        argv += ["--set", "%s=%s" % (key, set_value(key, params["variables"][key]))]
    for key in sorted(params.get("properties") or {}):
        value = params["properties"][key]
        argv += ["--property", "%s=%s" % (key, set_value(key, value) if isinstance(value, bool) else value)]
    for which in TIMEOUTS:
        value = (params.get("timeouts") or {}).get(which)
        if value is not None:
            argv += ["--timeout-%s" % which, str(value)]
    if params.get("allow_blocked"):
        argv.append("--allow-blocked")
    extra = [str(arg) for arg in params.get("extra_args") or ()]
    owned = [arg for arg in extra if arg.split("=", 1)[0] in OWNED_OPTIONS]
    if owned:
        raise ArgvError("extra_args may not contain %s: the module sets how snapbuild answers and what a failure "
                        "does (--on-error cleanup)" % ", ".join(owned))
    return argv + extra


def build_argv(executable: str, params: Params, events_path: str) -> List[str]:
    """`snapbuild [globals] build RECIPE [options] --on-error cleanup -f json --events FILE`."""
    return ([executable] + global_argv(params) + ["build", params["recipe"]] + command_argv(params)
            + ["--on-error", "cleanup", "-f", "json", "--events", events_path])


def validate_argv(executable: str, params: Params) -> List[str]:
    """`snapbuild [globals] validate RECIPE [the build's options] --json`: check mode, nothing created.

    --json rather than -f json: validate prints its verdict document for --json (its -f is accepted for the
    shared option list but does not change its output)."""
    return [executable] + global_argv(params) + ["validate", params["recipe"]] + command_argv(params) + ["--json"]


def parse_json_document(stdout: Optional[str], what: str) -> Dict[str, Any]:
    """snapbuild's JSON answer on stdout (stdout carries only the result); ArgvError if it is not one."""
    text = (stdout or "").strip()
    if not text:
        raise ArgvError("%s printed nothing on stdout" % what)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ArgvError("%s: stdout is not JSON (%s): %s" % (what, exc, text[-500:])) from None
    if not isinstance(data, dict):
        raise ArgvError("%s: expected a JSON object on stdout, got: %s" % (what, text[-500:]))
    return data


def image_facts(result: Mapping[str, Any], params: Params) -> Dict[str, Any]:
    """The build's JSON result as the module reports it (also the `snapbuild_image` fact)."""
    properties = result.get("properties") or {}
    return {
        "id": result.get("image_id") or result.get("id"),
        "name": result.get("image_name") or result.get("name"),
        "build_id": result.get("build_id"),
        "manifest": result.get("manifest"),
        "seconds": result.get("seconds"),
        "properties": properties,
        "content_digest": properties.get("snapbuild_content_digest"),
        "recipe": params["recipe"],
        "variant": params.get("variant") or properties.get("snapbuild_variant"),
        "cloud": params.get("cloud"),
        "region": params.get("region"),
    }


# Events left out of the module's result: many per build, and their story is in the build's log file.
CHATTY_EVENTS = ("progress", "output")


def read_events(text: Optional[str]) -> List[Dict[str, Any]]:
    """The --events JSON-lines stream without its chatty events; a line that is not JSON (a build killed
    mid-write) is left out."""
    events: List[Dict[str, Any]] = []
    for line in (text or "").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") not in CHATTY_EVENTS:
            events.append(event)
    return events


def last_result(events: Sequence[Mapping[str, Any]]) -> Optional[Mapping[str, Any]]:
    """The stream's `result` event (ok, image id or failing step and error), or None when the build never
    got that far (bad input: exit 2 before the build started)."""
    found = [event for event in events if event.get("event") == "result"]
    return found[-1] if found else None


def tail(text: Optional[str], lines: int = 20) -> str:
    return "\n".join((text or "").rstrip().splitlines()[-lines:])


def warnings_of(stderr: Optional[str]) -> List[str]:
    """snapbuild's `WARNING: ...` lines, for Ansible's warnings."""
    found: List[str] = []
    for line in (stderr or "").splitlines():
        if line.startswith("WARNING: "):
            found.append(line[len("WARNING: "):])
    return found


def failure_message(command: str, rc: int, stderr: Optional[str],
                    result_event: Optional[Mapping[str, Any]]) -> str:
    """One message for a failed snapbuild run: what failed (bad input or the build, at which step), then the last
    lines of snapbuild's stderr, which name the cause and the log file."""
    if rc == 2:
        head = "snapbuild %s refused its input (exit 2, nothing was created)" % command
    elif result_event is not None and result_event.get("step"):
        head = "snapbuild %s failed at step '%s' (exit %d): %s" % (
            command, result_event["step"], rc, result_event.get("error") or "")
        if result_event.get("kept"):
            head += "; its resources were kept"
    else:
        head = "snapbuild %s failed (exit %d)" % (command, rc)
    last = tail(stderr, 10)
    return head + ("\n" + last if last else "")


def validation_problems(verdict: Mapping[str, Any]) -> List[str]:
    """validate's problems, one line each with its hint (a recipe error's message starts with its file:line)."""
    lines: List[str] = []
    for problem in verdict.get("problems") or ():
        line = problem.get("message") or ""
        if problem.get("hint"):
            line += " (hint: %s)" % problem["hint"]
        lines.append(line)
    return lines


def planned_image(verdict: Mapping[str, Any], params: Params) -> Dict[str, Any]:
    """What check mode says would be built: from validate's verdict (the cloud's resolution when one was
    checked) and the module's parameters."""
    checked = verdict.get("checked") or {}
    resolved = verdict.get("resolved") or {}
    cloud = verdict.get("cloud") or {}
    return {
        "id": None,
        "name": resolved.get("image_name") or params.get("name"),
        "recipe": checked.get("recipe") or params["recipe"],
        "distro": checked.get("distro"),
        "mirrors": checked.get("mirrors"),
        "variant": checked.get("variant"),
        "cloud": cloud.get("name") or params.get("cloud"),
        "region": cloud.get("region") or params.get("region"),
        "cloud_checked": bool(cloud.get("checked")),
        "flavor": (resolved.get("flavor") or {}).get("name") or params.get("flavor"),
        "base_image": (resolved.get("base_image") or {}).get("name") or params.get("base_image"),
        "visibility": params.get("visibility") or "private",
    }


def describe(image: Mapping[str, Any]) -> str:
    """The image as a diff's `after` text: a new image, so `before` is empty."""
    keys = ("name", "id", "recipe", "variant", "distro", "mirrors", "cloud", "region", "flavor", "base_image",
            "visibility", "content_digest")
    lines = ["image %s from recipe %s on cloud %s" % (
        image.get("name") or "(the recipe's default name)", image.get("recipe"),
        image.get("cloud") or "(OS_CLOUD / clouds.yaml)")]
    for key in keys:
        if image.get(key) not in (None, ""):
            lines.append("  %s: %s" % (key, image[key]))
    return "\n".join(lines) + "\n"

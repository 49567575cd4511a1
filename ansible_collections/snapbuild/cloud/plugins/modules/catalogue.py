#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: snapbuild contributors
# Apache License 2.0 (see the repository's setup.cfg)
"""snapbuild.cloud.catalogue: make the clouds match an image catalogue with `snapbuild apply`; check mode runs
`snapbuild apply --dry-run`."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: catalogue
short_description: Keep an image catalogue true on OpenStack clouds with snapbuild
description:
  - Applies a snapbuild image catalogue with C(snapbuild apply) - which images (recipe, variant, variables, base
    image) should exist on which targets (a clouds.yaml cloud and region each) - and returns what it did.
  - Idempotent. Every image carries its content digest (recipe files, resolved variables, distro, mirror profile,
    variant, base image checksum); an entry is built only where no active image of it has the digest it would get,
    and copied to receiving targets that lack it. Old images are retired per the catalogue's policy (hidden, then
    deleted after the grace period, never while a server uses them, never an image snapbuild did not make).
    A run with nothing to do reports C(changed=false).
  - In check mode it runs C(snapbuild apply --dry-run) instead - the catalogue is validated and the plan made from
    what the clouds hold, nothing is touched - and reports C(changed) when the plan builds, copies, hides or
    deletes anything; with C(--diff) each entry and target that would change is shown, its images before and
    after.
  - The module runs the C(snapbuild) command (installed on the host the task runs on, usually C(localhost)) with
    an argument list and reads its JSON answer (C(-f json)).
  - Two applies of the same catalogue at once (two hosts, two CI runners) share the work through claims in Glance
    (see snapbuild's README); the module needs nothing for that.
version_added: "0.2.0"
author:
  - snapbuild maintainers (!UNKNOWN)
extends_documentation_fragment:
  - snapbuild.cloud.snapbuild
requirements:
  - a clouds.yaml entry for every cloud the catalogue's targets name
options:
  catalogue:
    description:
      - Path of the catalogue file (YAML, C(images:), C(targets:) and C(policy:); snapbuild's
        C(snapbuild/schemas/catalogue.schema.json) is its JSON Schema).
      - Relative paths are taken from the directory the module runs in; C("{{ playbook_dir }}/catalogue.yaml") says
        which one.
      - Exactly one of O(catalogue) and O(content) is required.
    type: path
    aliases: [path]
  content:
    description:
      - The catalogue itself, as a mapping with the same keys as the file. The module writes it to a temporary file
        (mode 0600, in the module's temporary directory) for C(snapbuild apply) and removes it afterwards; error
        messages name that file's lines.
      - Exactly one of O(catalogue) and O(content) is required.
    type: dict
  only:
    description:
      - Only these entries on these targets, C(ENTRY@TARGET) each (C(--only)); default the whole catalogue.
      - A copy whose source is not built yet and not in the list is skipped (and said so).
    type: list
    elements: str
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Runs C(snapbuild apply --dry-run); nothing is created, copied, hidden or deleted.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details:
      - One diff per entry and target that changes - before, the entry's images there; after, those left (hidden
        ones marked) and the new image built or copied.
notes:
  - The C(snapbuild.cloud) collection lives in snapbuild's repository; install it with
    C(ansible-galaxy collection install PATH/TO/snapbuild/ansible_collections/snapbuild/cloud).
  - The targets name their clouds and regions, so the module has no C(cloud) or C(region) option; the clouds must
    be in the C(clouds.yaml) of the user the task runs as (or the file C(OS_CLIENT_CONFIG_FILE) names, which the
    task's C(environment) can set).
  - Builds run as C(snapbuild build) does and always clean up after a failure. A failed build or copy fails the
    task (exit 3) after every other job has run; what succeeded is in the result and the next run retries the rest.
  - An entry another apply is building (a live claim) is skipped or waited for, as the catalogue's
    C(policy.on_claimed) says; check mode does not count it as a change.
seealso:
  - module: snapbuild.cloud.image
"""

EXAMPLES = r"""
- name: Keep the marketplace images true in every region
  snapbuild.cloud.catalogue:
    catalogue: "{{ playbook_dir }}/catalogue.yaml"
  register: applied

- name: Say what changed
  ansible.builtin.debug:
    msg: "{{ applied.summary }}"

- name: The catalogue written in the playbook, one entry on one target
  snapbuild.cloud.catalogue:
    content:
      images:
        docker-ce:
          recipe: docker-ce
          mirrors: "{{ playbook_dir }}/my-mirrors.yaml"
          variables:
            docker_version: "29.2.1"
          visibility: public
      targets:
        fra:
          cloud: mycloud
          region: RegionOne
          build:
            flavor: m1.medium
            network: private
            floating_network: public
      policy:
        keep: 2
        grace_period: 7d

- name: Use the image current on target fra
  ansible.builtin.debug:
    msg: "{{ snapbuild_catalogue.images['docker-ce@fra'].image_id }}"

- name: Only the slim Kubernetes image in the first region (how CI runners split a catalogue)
  snapbuild.cloud.catalogue:
    catalogue: /etc/snapbuild/catalogue.yaml
    only:
      - k8s-slim@fra
  environment:
    OS_CLIENT_CONFIG_FILE: /etc/snapbuild/clouds.yaml

- name: What would be built, copied and retired (same as running the playbook with --check --diff)
  snapbuild.cloud.catalogue:
    catalogue: "{{ playbook_dir }}/catalogue.yaml"
  check_mode: true
  diff: true
"""

RETURN = r"""
images:
  description:
    - Per C(ENTRY@TARGET) of the plan, what happened there and the image that is current now.
    - In check mode the planned action, and the current image where it is up to date (null where it would be built
      or copied).
  returned: success, and on a failed build or copy
  type: dict
  sample:
    docker-ce@fra:
      entry: docker-ce
      target: fra
      action: built
      image_id: 6f7d2c5e-1b7a-4b8e-9a55-0d2f3c9e8a11
      digest: 7df22effb487baa437f03e695c4fcd4a9e6deb8220f678aff8181954b2e8f3b0
      detail: digest 7df22effb487
  contains:
    entry:
      description: The catalogue entry.
      type: str
      returned: always
    target:
      description: The target.
      type: str
      returned: always
    action:
      description:
        - What the run did, C(built), C(copied), C(skipped) (up to date, or claimed by another apply) or C(failed).
        - In check mode what it would do, C(build), C(copy), C(skip) or C(wait) (another apply is building it).
      type: str
      returned: always
    image_id:
      description:
        - The Glance image id of the entry's current image on the target; null if there is none (failed, or
          skipped because another apply holds the claim; in check mode, to be built or copied).
      type: str
      returned: always
    digest:
      description: The content digest the entry has (or gets) on the target (C(snapbuild_content_digest)).
      type: str
      returned: always
    detail:
      description: Why (the plan's reason in check mode; the outcome's detail, or the error of a failed job).
      type: str
      returned: always
summary:
  description: How many of each action - the run's (C(built), C(copied), C(skipped), C(hidden), C(deleted),
    C(kept), C(untouched), C(failed)), or in check mode the plan's (C(build), C(copy), C(skip), C(wait), C(hide),
    C(delete), C(keep), C(untouched)).
  returned: success, and on a failed build or copy
  type: dict
  sample: {built: 1, copied: 1, skipped: 4, hidden: 2}
plan:
  description:
    - C(snapbuild apply)'s plan, as its C(-f json) prints it. C(items) - one per entry and target (C(entry),
      C(target), C(action), C(digest), C(reason), C(image_id), C(base), C(source), C(store)); C(rotations) - what
      happens to older images (C(entry), C(target), C(image_id), C(image_name), C(action), C(reason)).
  returned: success, and on a failed build or copy
  type: dict
done:
  description:
    - The run's rows, one per entry and target and per retired or kept image - C(entry), C(target), C(action),
      C(image_id), C(seconds), C(detail) (not in check mode).
  returned: success, not in check mode, and on a failed build or copy
  type: list
  elements: dict
failures:
  description: The failed jobs, each as C(ENTRY@TARGET) followed by its error.
  returned: on a failed build or copy
  type: list
  elements: str
cmd:
  description: The snapbuild command line that ran.
  returned: always
  type: list
  elements: str
  sample: [snapbuild, apply, /srv/play/catalogue.yaml, --only, docker-ce@fra, -f, json]
rc:
  description: snapbuild's exit code (0; 2 bad input, nothing touched; 3 a build or copy failed; 4 cloud error).
  returned: always
  type: int
stderr:
  description: snapbuild's progress and messages (its last lines are in C(msg) on failure).
  returned: always
  type: str
ansible_facts:
  description: Facts set by the module.
  returned: success, not in check mode
  type: dict
  contains:
    snapbuild_catalogue:
      description: The run's RV(images), RV(summary), RV(done) and RV(plan), as one dictionary.
      type: dict
      returned: success, not in check mode
"""

import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.snapbuild.cloud.plugins.module_utils.snapbuild_catalogue import (  # noqa: E402
    apply_argv,
    catalogue_text,
    diff_of,
    done_changes,
    failures_of,
    images_of,
    plan_changes,
    plan_of,
    summary_of,
)
from ansible_collections.snapbuild.cloud.plugins.module_utils.snapbuild_command import (  # noqa: E402
    COMMON_OPTIONS,
    ArgvError,
    failure_message,
    find_executable,
    parse_json_document,
    tail,
    warnings_of,
)

ARGUMENT_SPEC = dict(
    catalogue=dict(type="path", aliases=["path"]),
    content=dict(type="dict"),
    only=dict(type="list", elements="str"),
    **COMMON_OPTIONS
)


def write_inline(module: AnsibleModule, folder: str) -> str:
    """O(content) as a file only this user reads (it may name private clouds and projects)."""
    path = os.path.join(folder, "catalogue.yaml")
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(catalogue_text(module.params["content"]))
    return path


def run_apply(module: AnsibleModule, executable: str, catalogue: str) -> None:
    dry_run = module.check_mode
    argv = apply_argv(executable, module.params, catalogue, dry_run)
    rc, stdout, stderr = module.run_command(argv)
    for warning in warnings_of(stderr):
        module.warn(warning)
    command = "apply --dry-run" if dry_run else "apply"
    if rc != 0 and not (stdout or "").strip():
        # bad input (exit 2) or a cloud that refused the plan (exit 4): nothing was touched
        module.fail_json(msg=failure_message(command, rc, stderr, None), cmd=argv, rc=rc, stderr=stderr)
    try:
        document = parse_json_document(stdout, "snapbuild " + command)
    except ArgvError as exc:
        module.fail_json(msg=failure_message(command, rc, stderr, None) + "\n" + str(exc), cmd=argv, rc=rc,
                         stdout=stdout, stderr=stderr)
    result = dict(images=images_of(document), summary=summary_of(document), plan=plan_of(document))
    if not dry_run:
        result["done"] = list(document.get("done") or [])
    changed = plan_changes(document) if dry_run else done_changes(document)
    extra = dict(diff=diff_of(document)) if module._diff else {}
    if rc != 0:
        failures = failures_of(document)
        head = "snapbuild apply: %d of the catalogue's jobs failed (exit %d): %s" % (
            len(failures), rc, "; ".join(failures) or "see stderr")
        last = tail(stderr, 10)
        module.fail_json(msg=head + ("\n" + last if last else ""), changed=changed, failures=failures, cmd=argv,
                         rc=rc, stderr=stderr, **dict(result, **extra))
    if not dry_run:
        extra["ansible_facts"] = dict(snapbuild_catalogue=dict(result))
    module.exit_json(changed=changed, cmd=argv, rc=rc, stderr=stderr, **dict(result, **extra))


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True,
                           mutually_exclusive=[("catalogue", "content")],
                           required_one_of=[("catalogue", "content")])
    executable = find_executable(module)
    catalogue = module.params["catalogue"]
    folder = None
    try:
        if catalogue is None:
            folder = tempfile.mkdtemp(prefix="snapbuild-catalogue-", dir=module.tmpdir)
            catalogue = write_inline(module, folder)
        run_apply(module, executable, catalogue)
    finally:
        # exit_json and fail_json leave through SystemExit: the inline catalogue goes either way
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

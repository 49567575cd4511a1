#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: snapbuild contributors
# Apache License 2.0 (see the repository's setup.cfg)
"""snapbuild.cloud.image: build an OpenStack image with `snapbuild build`; check mode runs `snapbuild validate`."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: image
short_description: Build an OpenStack image with snapbuild
description:
  - Builds a ready-to-boot Glance image from a snapbuild recipe (for example C(docker-ce) or C(k8s)) with
    C(snapbuild build) - a temporary server is booted, provisioned over SSH, sealed and snapshotted, and every
    temporary resource is removed again, on success and on failure.
  - The module runs the C(snapbuild) command (it must be installed on the host the task runs on, usually
    C(localhost)) with an argument list, reads its JSON result and returns the image as the C(snapbuild_image)
    fact.
  - In check mode it runs C(snapbuild validate) with the same options instead - the recipe, and with a cloud
    everything the build checks before it creates anything (flavor, base image, networks, security groups,
    floating network, root disk, quotas) - creates nothing, and reports the image that would be built as a diff.
    Every problem found is listed in the failure message.
  - Not idempotent. snapbuild has no option to skip a build whose result already exists, so every run that is
    not in check mode builds a new image and reports C(changed). Guard the task with C(when) (for example on
    M(openstack.cloud.image_info)) where a rebuild is not wanted.
  - A failed build is always cleaned up (C(--on-error cleanup)); a playbook has no terminal to ask on.
version_added: "0.1.0"
author:
  - snapbuild maintainers (!UNKNOWN)
extends_documentation_fragment:
  - snapbuild.cloud.snapbuild
requirements:
  - a clouds.yaml entry (or C(OS_*) variables) for the cloud
options:
  recipe:
    description:
      - Name of the recipe (C(docker-ce), C(k8s), C(base), or one of your own in O(recipes_dirs)).
    type: str
    required: true
  cloud:
    description:
      - Cloud name from clouds.yaml (C(--os-cloud)). Without it snapbuild uses C(OS_CLOUD) or the only cloud in
        clouds.yaml.
    type: str
  region:
    description:
      - Region name (C(--os-region-name)).
    type: str
  distro:
    description:
      - Distribution to build on (C(--distro)), for example C(ubuntu-24.04), C(debian-12) or C(debian-13).
    type: str
  mirrors:
    description:
      - Mirror profile name or path (C(--mirrors)).
    type: str
  variant:
    description:
      - Recipe variant (C(--variant)), for example C(slim) for C(k8s).
    type: str
  variables:
    description:
      - Recipe variables, each passed as C(--set NAME=VALUE). Lists are joined with commas, booleans are
        C(true)/C(false).
    type: dict
  flavor:
    description:
      - Flavor (name or id) of the builder server (C(--flavor)). Required unless the config file's C(build:)
        section names one.
    type: str
  base_image:
    description:
      - Base image (C(--base-image)); default the newest active image whose C(os_distro)/C(os_version) match.
    type: str
  networks:
    description:
      - Networks for the builder (C(--network), one per item).
    type: list
    elements: str
    aliases: [network]
  port:
    description:
      - An existing free port instead of O(networks) (C(--port)).
    type: str
  floating_network:
    description:
      - External network for a temporary floating IP, or C(none) (C(--floating-network)).
    type: str
  security_groups:
    description:
      - Existing security groups (C(--security-group)); default a temporary one allowing SSH from O(ssh_cidr).
    type: list
    elements: str
  ssh_cidr:
    description:
      - Who may reach port 22 through the temporary security group (C(--ssh-cidr)).
    type: str
  availability_zone:
    description:
      - Availability zone of the builder (C(--availability-zone)).
    type: str
  config_drive:
    description:
      - Boot the builder with a config drive (C(--config-drive) or C(--no-config-drive)); unset leaves it to the
        config file.
    type: bool
  volume_size:
    description:
      - Boot the builder from a Cinder volume of this size in GB (C(--volume-size)).
    type: int
  ssh_user:
    description:
      - Temporary builder user (C(--ssh-user)).
    type: str
  ssh_interface:
    description:
      - Network whose address SSH uses when there is no floating IP (C(--ssh-interface)).
    type: str
  ssh_bastion:
    description:
      - Jump host C([USER@]HOST[:PORT]) to reach the builder through (C(--ssh-bastion)).
    type: str
  ssh_bastion_key:
    description:
      - Private key for the jump host (C(--ssh-bastion-key)).
    type: path
  name:
    description:
      - Name of the image (C(--name)); default the recipe's image name and the date.
    type: str
  min_disk:
    description:
      - Minimum disk to boot the image, in GB (C(--min-disk)); default the recipe's.
    type: int
  min_ram:
    description:
      - Minimum RAM to boot the image, in MB (C(--min-ram)); default the recipe's.
    type: int
  visibility:
    description:
      - Image visibility (C(--visibility)); snapbuild's default is C(private).
    type: str
    choices: [private, shared, community, public]
  protected:
    description:
      - Protect the finished image from deletion (C(--protected) or C(--unprotected)).
    type: bool
  hidden:
    description:
      - Hide the image from the default image list, C(os_hidden) (C(--hidden) or C(--unhidden)).
    type: bool
  properties:
    description:
      - Image properties (C(--property KEY=VALUE) each); they win over the recipe's.
    type: dict
  tags:
    description:
      - Tags for the finished image (C(--tag) each).
    type: list
    elements: str
  share_with:
    description:
      - Projects to add as image members (C(--share-with) each).
    type: list
    elements: str
  timeouts:
    description:
      - Deadlines in seconds (C(--timeout-boot), C(--timeout-ssh), C(--timeout-provision) per step,
        C(--timeout-snapshot)).
    type: dict
    suboptions:
      boot:
        description: Until the builder server is ACTIVE.
        type: float
      ssh:
        description: Until SSH answers.
        type: float
      provision:
        description: Per provisioning step.
        type: float
      snapshot:
        description: Until the snapshot is active.
        type: float
  allow_blocked:
    description:
      - Build even if the recipe downloads from hosts the mirror profile marks blocked (C(--allow-blocked)).
    type: bool
    default: false
  manifest:
    description:
      - Where to write the build's manifest (C(--manifest)); default the state directory's C(manifests/).
    type: path
  extra_args:
    description:
      - More C(snapbuild build) options, one list item per word, placed after the module's own (for example
        C([--volume-disk-format, raw])). The module owns C(-f), C(-c), C(--json), C(--events), C(--on-error)
        and C(--keep-on-failure); giving one of them fails the task.
    type: list
    elements: str
    default: []
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Runs C(snapbuild validate) with the same options; nothing is created.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details: The image that is (or would be) created; there is no previous state, so C(before) is empty.
notes:
  - The C(snapbuild.cloud) collection lives in snapbuild's repository; install it with
    C(ansible-galaxy collection install PATH/TO/snapbuild/ansible_collections/snapbuild/cloud).
  - To keep a whole catalogue of images true (build only what changed, copy, retire old images), use
    M(snapbuild.cloud.catalogue).
  - Without a cloud (no O(cloud), no C(OS_CLOUD), several clouds in clouds.yaml) check mode validates only the
    recipe and warns that the cloud was not checked.
"""

EXAMPLES = r"""
- name: Build the Docker CE image
  snapbuild.cloud.image:
    recipe: docker-ce
    cloud: mycloud
    flavor: m1.medium
    networks: [private]
    floating_network: public
    mirrors: "{{ playbook_dir }}/my-mirrors.yaml"
    visibility: public
    properties:
      hw_qemu_guest_agent: "yes"

- name: Build the Kubernetes image without pre-pulled images, another Kubernetes version
  snapbuild.cloud.image:
    recipe: k8s
    variant: slim
    cloud: mycloud
    flavor: m1.large
    networks: [private]
    variables:
      kubernetes_version: 1.32.12
      extra_images: [docker.io/library/busybox:1.36]
    timeouts:
      provision: 1800
  register: k8s

- name: Use the result
  ansible.builtin.debug:
    msg: "{{ snapbuild_image.id }} ({{ k8s.image.name }})"

- name: Check the inputs only (same as running the playbook with --check)
  snapbuild.cloud.image:
    recipe: k8s
    cloud: mycloud
    flavor: m1.large
  check_mode: true
"""

RETURN = r"""
image:
  description:
    - The image built; in check mode the image that would be built (C(id) is null, and C(name) is the cloud's
      resolution when a cloud was checked).
  returned: success
  type: dict
  contains:
    id:
      description: Glance image id.
      type: str
      returned: success, not in check mode
      sample: 6f7d2c5e-1b7a-4b8e-9a55-0d2f3c9e8a11
    name:
      description: Image name.
      type: str
      returned: success
      sample: Ubuntu 24.04 - Docker CE 2026-05-09
    build_id:
      description: snapbuild's build id (the C(snapbuild_build_id) image property).
      type: str
      returned: success, not in check mode
      sample: 20260509-101500-3f9a
    manifest:
      description: Path of the build's manifest on the host that ran the task.
      type: str
      returned: success, not in check mode
    seconds:
      description: How long the build took.
      type: float
      returned: success, not in check mode
    properties:
      description: The image's properties as snapbuild set them (provenance and content digest included).
      type: dict
      returned: success, not in check mode
    content_digest:
      description: The image's C(snapbuild_content_digest) property.
      type: str
      returned: success, not in check mode
    recipe:
      description: The recipe.
      type: str
      returned: success
    variant:
      description: The recipe variant, if any.
      type: str
      returned: success
    cloud:
      description: The cloud name, if one was given or resolved.
      type: str
      returned: success
    region:
      description: The region, if one was given.
      type: str
      returned: success
validation:
  description: C(snapbuild validate)'s verdict (check mode only) - C(ok), C(checked), C(cloud), C(resolved),
    C(problems), C(warnings), C(not_checked).
  returned: check mode
  type: dict
cmd:
  description: The snapbuild command line that ran.
  returned: always
  type: list
  elements: str
  sample: [snapbuild, --os-cloud, mycloud, build, docker-ce, --flavor, m1.medium, --on-error, cleanup, -f, json]
rc:
  description: snapbuild's exit code (0; 2 bad input, nothing created; 3 build failed; 4 cloud error).
  returned: always
  type: int
stderr:
  description: snapbuild's progress and messages (its last lines are in C(msg) on failure).
  returned: always
  type: str
events:
  description:
    - The build's C(--events) stream, one object per event, without its C(progress) and C(output) events
      (not in check mode). The last is the C(result) event (C(ok), and on failure C(step) and C(error)).
  returned: when the build started
  type: list
  elements: dict
ansible_facts:
  description: Facts set by the module.
  returned: success, not in check mode
  type: dict
  contains:
    snapbuild_image:
      description: The same dictionary as RV(image).
      type: dict
      returned: success, not in check mode
"""

import os  # noqa: E402
import tempfile  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.snapbuild.cloud.plugins.module_utils.snapbuild_command import (  # noqa: E402
    COMMON_OPTIONS,
    VISIBILITIES,
    ArgvError,
    build_argv,
    describe,
    failure_message,
    find_executable,
    image_facts,
    last_result,
    parse_json_document,
    planned_image,
    read_events,
    tail,
    validate_argv,
    validation_problems,
    warnings_of,
)

ARGUMENT_SPEC = dict(
    recipe=dict(type="str", required=True),
    cloud=dict(type="str"),
    region=dict(type="str"),
    distro=dict(type="str"),
    mirrors=dict(type="str"),
    variant=dict(type="str"),
    variables=dict(type="dict"),
    flavor=dict(type="str"),
    base_image=dict(type="str"),
    networks=dict(type="list", elements="str", aliases=["network"]),
    port=dict(type="str"),
    floating_network=dict(type="str"),
    security_groups=dict(type="list", elements="str"),
    ssh_cidr=dict(type="str"),
    availability_zone=dict(type="str"),
    config_drive=dict(type="bool"),
    volume_size=dict(type="int"),
    ssh_user=dict(type="str"),
    ssh_interface=dict(type="str"),
    ssh_bastion=dict(type="str"),
    ssh_bastion_key=dict(type="path"),
    name=dict(type="str"),
    min_disk=dict(type="int"),
    min_ram=dict(type="int"),
    visibility=dict(type="str", choices=list(VISIBILITIES)),
    protected=dict(type="bool"),
    hidden=dict(type="bool"),
    properties=dict(type="dict"),
    tags=dict(type="list", elements="str"),
    share_with=dict(type="list", elements="str"),
    timeouts=dict(type="dict", options=dict(
        boot=dict(type="float"),
        ssh=dict(type="float"),
        provision=dict(type="float"),
        snapshot=dict(type="float"),
    )),
    allow_blocked=dict(type="bool", default=False),
    manifest=dict(type="path"),
    extra_args=dict(type="list", elements="str", default=[]),
    **COMMON_OPTIONS
)


def check(module: AnsibleModule, executable: str) -> None:
    """Check mode: `snapbuild validate`, nothing created; the image that would be built as the diff."""
    params = module.params
    argv = validate_argv(executable, params)
    rc, stdout, stderr = module.run_command(argv)
    try:
        verdict = parse_json_document(stdout, "snapbuild validate")
    except ArgvError as exc:
        module.fail_json(msg=failure_message("validate", rc, stderr, None) + "\n" + str(exc), cmd=argv, rc=rc,
                         stdout=stdout, stderr=stderr)
    problems = validation_problems(verdict)
    if rc != 0 or problems:
        count = len(problems)
        module.fail_json(
            msg="snapbuild validate found %d problem%s (nothing was created):\n%s"
                % (count, "" if count == 1 else "s", "\n".join(problems) or tail(stderr, 10)),
            problems=problems, validation=verdict, cmd=argv, rc=rc, stderr=stderr)
    for warning in verdict.get("warnings") or ():
        module.warn(warning)
    cloud = verdict.get("cloud") or {}
    if not cloud.get("checked"):
        module.warn("check mode validated the recipe only, the cloud was not checked: %s"
                    % cloud.get("reason", "no cloud selected"))
    image = planned_image(verdict, params)
    module.exit_json(changed=True, image=image, validation=verdict, cmd=argv, rc=rc, stderr=stderr,
                     diff=dict(before="", after=describe(image), before_header="(no image)",
                               after_header=image.get("name") or params["recipe"]))


def build(module: AnsibleModule, executable: str) -> None:
    """`snapbuild build ... -f json --events FILE`; the image as the module's result and fact."""
    params = module.params
    folder = tempfile.mkdtemp(prefix="snapbuild-events-", dir=module.tmpdir)
    events_path = os.path.join(folder, "events.jsonl")
    argv = build_argv(executable, params, events_path)
    rc, stdout, stderr = module.run_command(argv)
    events_text = ""
    if os.path.exists(events_path):
        with open(events_path, encoding="utf-8") as handle:
            events_text = handle.read()
    events = read_events(events_text)
    for warning in warnings_of(stderr):
        module.warn(warning)
    if rc != 0:
        result = last_result(events)
        module.fail_json(msg=failure_message("build", rc, stderr, result), cmd=argv, rc=rc, stderr=stderr,
                         events=events, step=(result or {}).get("step"))
    try:
        image = image_facts(parse_json_document(stdout, "snapbuild build"), params)
    except ArgvError as exc:
        module.fail_json(msg="the build finished but its result could not be read: %s" % exc, cmd=argv, rc=rc,
                         stdout=stdout, stderr=stderr, events=events)
    module.exit_json(changed=True, image=image, cmd=argv, rc=rc, stderr=stderr, events=events,
                     ansible_facts=dict(snapbuild_image=image),
                     diff=dict(before="", after=describe(image), before_header="(no image)",
                               after_header=image.get("name") or params["recipe"]))


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True,
                           mutually_exclusive=[("networks", "port")])
    executable = find_executable(module)
    try:
        if module.check_mode:
            check(module, executable)
        else:
            build(module, executable)
    except ArgvError as exc:
        module.fail_json(msg=str(exc))


if __name__ == "__main__":
    main()

# -*- coding: utf-8 -*-
# Copyright: snapbuild contributors
# Apache License 2.0 (see the repository's setup.cfg)
"""The options every snapbuild.cloud module has (module_utils/snapbuild_command.py COMMON_OPTIONS)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):

    DOCUMENTATION = r"""
options:
  config:
    description:
      - snapbuild's config file (C(--config)); its C(recipes_path) adds recipe folders, and for M(snapbuild.cloud.image)
        its C(build:) section gives defaults for the build's options.
    type: path
  recipes_dirs:
    description:
      - Extra folders of recipes and mirror profiles (C(--recipes-dir)); they win over the shipped ones.
    type: list
    elements: path
  executable:
    description:
      - The snapbuild command, a path or a name looked up in C(PATH).
    type: str
    default: snapbuild
requirements:
  - snapbuild (the C(snapbuild) command) on the host that runs the task
"""

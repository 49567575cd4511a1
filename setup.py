"""Ships cloudinit/ and recipes/ inside the wheel as snapbuild/_data/ (never as a top-level `cloudinit`
package, which would shadow cloud-init's own on build hosts). Everything else is in setup.cfg."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

DATA_DIRS = ("cloudinit", "recipes")


class BuildPyWithData(build_py):
    def run(self) -> None:
        super().run()
        here = Path(__file__).resolve().parent
        for name in DATA_DIRS:
            target = Path(self.build_lib) / "snapbuild" / "_data" / name
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(here / name, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithData})

"""snapbuild: ready-to-boot OpenStack marketplace images for clouds behind mirrors."""

__version__ = "0.1.0"

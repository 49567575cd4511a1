"""Guests: the places a plan is applied to (SSH to a VM or server, or a chroot on the host)."""

from snapbuild.guest.base import Completed, Guest, OutputCallback

__all__ = ["Completed", "Guest", "OutputCallback"]

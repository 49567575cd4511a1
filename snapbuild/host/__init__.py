"""The host layer: what snapbuild does to disks, commands and processes on the build host itself."""

"""snapbuild's test cloud: real OpenStack services from PyPI on 127.0.0.1 (see ../README)."""

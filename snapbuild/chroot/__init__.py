"""The chroot builder: attach a copy of a base image on this host, grow it, mount it, provision it in a chroot."""

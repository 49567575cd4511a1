"""snapbuild's OpenStack side: the Cloud adapter (the one seam over openstacksdk) and the snapshot builder."""

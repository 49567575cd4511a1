"""Listing a catalogue entry's images in the tests' checks and cleanups.

openstacksdk's `image.images(**query)` drops query parameters it does not know (a custom property such as
`snapbuild_catalogue_entry`) and lists every image: a cleanup built on it would try to delete the whole project's
images. So the filter is applied here, on what Glance returns, hidden images included (listed only when asked)."""

from __future__ import annotations

from typing import Any

from openstack.connection import Connection

ENTRY_PROPERTY = "snapbuild_catalogue_entry"


def entry_images(conn: Connection, entry: str, *, hidden: bool | None = None) -> list[Any]:
    found = {i.id: i for i in conn.image.images()}
    found.update({i.id: i for i in conn.image.images(os_hidden=True)})
    return [i for i in found.values() if (i.properties or {}).get(ENTRY_PROPERTY) == entry
            and (hidden is None or bool(i.is_hidden) == hidden)]

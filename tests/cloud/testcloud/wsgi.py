"""gunicorn entry points for the API services: `gunicorn testcloud.wsgi:nova` and so on.

Keystone, Nova and Neutron parse sys.argv while building their app, and would choke on gunicorn's own
arguments: strip them first. Each service finds its config through its OS_*_CONFIG_DIR variable, set by
the launcher. Attribute access builds the app (PEP 562), so one module serves every service.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

_MODULES = {
    "keystone": "keystone.wsgi.api",
    "glance": "glance.wsgi.api",
    "placement": "placement.wsgi.api",
    "nova": "nova.wsgi.osapi_compute",
    "neutron": "neutron.wsgi.api",
}


def _neutron_prepare() -> None:
    # An API-only Neutron (no neutron-server/RPC process) never registers its versioned objects, and the
    # first request would hit half-configured SQLAlchemy mappers.
    from neutron import objects

    objects.register_objects()


def _neutron_finish() -> None:
    import sqlalchemy.orm
    from neutron.db.migration.models import head  # noqa: F401 - imports every model

    sqlalchemy.orm.configure_mappers()


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(name)
    sys.argv = sys.argv[:1]
    if name == "neutron":
        _neutron_prepare()
    app = importlib.import_module(_MODULES[name]).application
    if name == "neutron":
        _neutron_finish()
    globals()[name] = app
    return app

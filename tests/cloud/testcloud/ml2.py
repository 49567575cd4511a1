"""ML2 mechanism driver `testcloud`: binds every port on its first segment.

The test cloud runs no L2 agent, so no stock driver would bind a port and Nova would see `binding_failed`.
"""

from __future__ import annotations

from typing import Any

from neutron_lib import constants
from neutron_lib.api.definitions import portbindings
from neutron_lib.plugins.ml2 import api


class AcceptAllMechanismDriver(api.MechanismDriver):  # type: ignore[misc]  # neutron_lib is untyped
    def initialize(self) -> None:
        pass

    def bind_port(self, context: Any) -> None:
        for segment in context.segments_to_bind:
            context.set_binding(segment[api.ID], portbindings.VIF_TYPE_OTHER, {},
                                status=constants.PORT_STATUS_ACTIVE)
            return

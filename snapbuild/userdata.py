"""The builder's cloud-init user-data, and its encoding for Nova."""

from __future__ import annotations

import base64
import gzip
from typing import TYPE_CHECKING, Protocol

from snapbuild import paths
from snapbuild.errors import UserError
from snapbuild.templating import environment, render_file

if TYPE_CHECKING:
    from snapbuild.plan import Plan

NOVA_USER_DATA_LIMIT = 65535
BUILDER_USER = "snapbuild"


class HostKey(Protocol):
    @property
    def private_openssh(self) -> str: ...

    @property
    def public_openssh(self) -> str: ...


def render_builder_userdata(plan: Plan, *, builder_user: str = BUILDER_USER, builder_public_key: str,
                            host_key: HostKey, build_id: str = "render") -> str:
    env = environment([paths.data_dir("cloudinit")])
    from snapbuild.plan import _MirrorView

    mirrors = _MirrorView(plan.profile, plan.distro)
    apt_proxy = plan.build_apt_proxy
    context = {
        "recipe": plan.recipe_name, "distro": plan.distro, "build_id": build_id, "builder_user": builder_user,
        "builder_public_key": builder_public_key.strip(), "host_private_key": host_key.private_openssh.strip(),
        "host_public_key": host_key.public_openssh.strip(), "mirrors": mirrors,
        # The apt block is needed for mirrors, and also when only a proxy is set.
        "apt_mirrors": plan.profile.has_apt_mirror(plan.distro.id) or bool(apt_proxy), "apt_proxy": apt_proxy,
    }
    return render_file(env, "builder-userdata.yaml.j2", context, folder=paths.data_dir("cloudinit"))


def encode_for_nova(text: str) -> str:
    """Base64 for Nova's user_data; gzip first when the plain encoding is over Nova's limit."""
    plain = base64.b64encode(text.encode()).decode()
    if len(plain) <= NOVA_USER_DATA_LIMIT:
        return plain
    packed = base64.b64encode(gzip.compress(text.encode(), mtime=0)).decode()
    if len(packed) > NOVA_USER_DATA_LIMIT:
        raise UserError(f"builder user-data is {len(packed)} characters even gzipped; Nova accepts "
                        f"{NOVA_USER_DATA_LIMIT}", hint="move large files out of cloud-init into recipe file steps")
    return packed


class PlaceholderKey:
    """Stands in for generated keys when rendering without building (`snapbuild render`)."""

    private_openssh = ("-----BEGIN OPENSSH PRIVATE KEY-----\n"
                       "(generated at build time; never stored)\n"
                       "-----END OPENSSH PRIVATE KEY-----")
    public_openssh = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGVuZXJhdGVkLWF0LWJ1aWxkLXRpbWUtcGxhY2Vob2xkZXI "
                      "snapbuild-render")

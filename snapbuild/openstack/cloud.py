"""The Cloud adapter: OpenStack in snapbuild's words, the one seam over openstacksdk.

Everything here returns values from `model.py` and raises snapbuild's errors with the cloud's own message.
Reads and deletes are retried on transient faults (faults.py); creates are tried exactly once.
Waits poll no faster than once a second and always have a deadline (DESIGN rule 3).
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import json
import logging
import os
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from keystoneauth1 import exceptions as ksa_exc
from openstack import exceptions as sdk_exc

from snapbuild import netcause
from snapbuild.errors import CloudError, UserError
from snapbuild.openstack import faults, marks
from snapbuild.openstack.model import (
    Address,
    Flavor,
    FloatingIP,
    Image,
    Marked,
    Network,
    QuotaItem,
    SecurityGroup,
    Server,
    ServerSpec,
    Volume,
)

log = logging.getLogger(__name__)

RECORD_SETTLE_S = 10.0   # how long an interrupted POST /images may still make its record (Glance under load)

T = TypeVar("T")

MIN_POLL = 1.0   # never hammer the API faster than this
JSON_PATCH = "application/openstack-images-v2.1-json-patch"
# Glance's own fields: everything else in an image record is a property.
IMAGE_CORE = frozenset({
    "id", "name", "status", "visibility", "protected", "checksum", "os_hash_algo", "os_hash_value", "owner",
    "size", "virtual_size", "min_ram", "min_disk", "created_at", "updated_at", "tags", "self", "file", "schema",
    "disk_format", "container_format", "direct_url", "locations", "os_hidden", "stores", "member_status",
})
# openstacksdk re-sends image calls on 503 five times by default (POST and PATCH included) and keystoneauth
# can re-send on connection errors: snapbuild decides about retries itself (faults.py), so those are off.
NO_HIDDEN_RETRIES = {"status_code_retries": 0, "image_status_code_retries": 0, "connect_retries": 0}
NOVA_TAGS_MICROVERSION = "2.52"
NOVA_CREATE_IMAGE_MICROVERSION = "2.45"


class _Gone(Exception):
    """A resource answered 404."""


class WaitTimeout(CloudError):
    """A wait reached its deadline (as opposed to the resource failing)."""


class NoCloudSelected(UserError):
    """Neither --os-cloud/OS_CLOUD nor the OS_* variables name a cloud; `known` lists clouds.yaml's clouds."""

    def __init__(self, message: str, *, hint: str, known: Sequence[str]) -> None:
        super().__init__(message, hint=hint)
        self.known = tuple(known)


def close_matches(wanted: str, available: Iterable[str]) -> str:
    names = sorted({name for name in available if name})
    near = difflib.get_close_matches(wanted, names, n=5, cutoff=0.4)
    if near:
        return "did you mean: " + ", ".join(near)
    if names:
        shown = ", ".join(names[:10]) + (" …" if len(names) > 10 else "")
        return "available: " + shown
    return "none available to this project"


class Cloud:
    """One cloud connection. `clock`/`sleep` are injectable so tests drive every deadline without real time."""

    def __init__(self, conn: Any, *, name: str = "", clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, poll_interval: float = 2.0) -> None:
        self._conn = conn
        self.name = name or "cloud"
        self._clock = clock
        self._sleep = sleep
        self.poll_interval = max(MIN_POLL, poll_interval)
        self.auth_url_option = False   # the auth_url came from --os-auth-url: hints point there, not at clouds.yaml

    # ---- connecting -------------------------------------------------------------------------------------

    @classmethod
    def connect(cls, cloud: str | None, region: str | None = None, *, auth_args: Sequence[str] = (),
                **kwargs: Any) -> Cloud:
        """Connect to a clouds.yaml cloud (or the OS_* variables' one, or the one `auth_args` describe) and prove the
        credentials work (fails fast, before anything is made)."""
        from openstack import connection

        try:
            conn = connection.Connection(config=connection_config(cloud, region, auth_args))
        except sdk_exc.ConfigException as exc:
            _refuse_unreadable_clouds_yaml()
            raise UserError(f"cloud {cloud!r} not found in clouds.yaml ({exc})",
                            hint=close_matches(cloud or "", _cloud_names())) from None
        except ksa_exc.auth_plugins.MissingRequiredOptions as exc:
            if auth_args:           # the command line describes a cloud, but not all of it
                missing = ", ".join(f"--os-{option.name}" for option in exc.options)
                raise UserError(f"the OpenStack authentication options lack {missing}",
                                hint=f"pass {missing} (or OS_* variables) too; or use --os-cloud NAME with "
                                     "clouds.yaml") from None
            _refuse_unreadable_clouds_yaml()
            known = _cloud_names()
            raise NoCloudSelected(f"no cloud to build on: {exc}",
                                  hint="name a clouds.yaml cloud with --os-cloud or OS_CLOUD (or set the OS_* "
                                       "variables)" + (f"; clouds.yaml has: {', '.join(known)}" if known else ""),
                                  known=known) from None
        name = cloud or str(getattr(conn.config, "name", "") or "default")
        adapter = cls(conn, name=name, **kwargs)
        adapter.auth_url_option = any(word.partition("=")[0] == "--os-auth-url" for word in auth_args)
        auth_url = _auth_url(conn)
        if auth_url and not auth_url.startswith(("http://", "https://")):
            raise UserError(f"cloud {name!r}: auth_url {auth_url!r} is not an http(s) URL",
                            hint=f"fix {adapter.auth_url_source()}, e.g. https://keystone.example:5000/v3")
        adapter.authorize()
        return adapter

    def authorize(self) -> None:
        try:
            self._conn.authorize()
        except (ksa_exc.ClientException, sdk_exc.SDKException) as exc:
            if _caused_by(exc, ksa_exc.Unauthorized):
                raise UserError(f"cloud {self.name!r}: authentication failed (401)",
                                hint="check username, password, project and domain in clouds.yaml") from None
            if _caused_by(exc, ksa_exc.ConnectionError):
                raise self._unreachable(exc) from exc
            raise CloudError(f"cloud {self.name!r}: cannot authenticate: {faults.cloud_message(exc)}") from None
        except Exception as exc:
            # keystoneauth's generic password plugin says so with a bare Exception, at the first request
            if "is a required attribute" not in str(exc):
                raise
            raise UserError(f"cloud {self.name!r}: {exc}",
                            hint="give it in clouds.yaml (secrets in secure.yaml), as --os-* options or OS_* "
                                 "variables") from None

    def auth_url_source(self) -> str:
        return "--os-auth-url" if self.auth_url_option else f"auth_url {_where_configured(self.name)}"

    def _unreachable(self, exc: BaseException) -> CloudError | UserError:
        """One line for an identity endpoint that cannot be reached (keystoneauth's own runs to 350 characters).

        Refused or an unknown host name at the very first request: the cloud's configuration is wrong (or
        names a cloud that is down), which is the user's to fix: exit 2. A timeout or a dropped connection
        may be the network: a cloud error."""
        cause = netcause.cause_of(exc)
        url = _auth_url(self._conn) or "(no auth_url)"
        message = f"cloud {self.name!r}: cannot reach its identity endpoint {url}: {cause.text}"
        hint = (f"check {self.auth_url_source()} and that this host can reach it, "
                "or pick another cloud with --os-cloud")
        if cause.kind in netcause.WRONG_ADDRESS:
            return UserError(message, hint=hint)
        return CloudError(message, hint=hint)

    @property
    def project_id(self) -> str:
        return str(self._conn.current_project_id)

    def close(self) -> None:
        self._conn.close()

    # ---- the two ways of calling ------------------------------------------------------------------------

    def _read(self, what: str, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """An idempotent call (GET): retried on transient faults; 404 → _Gone."""
        return self._idempotent(what, func, *args, attempts=4, max_delay=60.0, **kwargs)

    def _delete(self, what: str, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A DELETE: retried longer than a read, since it is what cleanup rests on (a service restart
        in the middle of an undo should not leak the resource)."""
        return self._idempotent(what, func, *args, attempts=10, max_delay=120.0, **kwargs)

    def _idempotent(self, what: str, func: Callable[..., T], *args: Any, attempts: int, max_delay: float,
                    **kwargs: Any) -> T:
        try:
            for attempt in faults.retrying(self._sleep, attempts=attempts, max_delay=max_delay):
                with attempt:
                    return func(*args, **kwargs)
        except sdk_exc.NotFoundException as exc:
            raise _Gone(what) from exc
        except (sdk_exc.SDKException, ksa_exc.ClientException) as exc:
            raise faults.translate(exc, what) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _create(self, what: str, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A call that makes something: tried once, never retried (DESIGN rule 7)."""
        try:
            return func(*args, **kwargs)
        except (sdk_exc.SDKException, ksa_exc.ClientException) as exc:
            raise faults.translate(exc, what) from exc

    def _raw(self, proxy: Any, method: str, url: str, **kwargs: Any) -> Any:
        response = getattr(proxy, method)(url, **kwargs)
        sdk_exc.raise_from_response(response)
        return response

    def _poll(self, what: str, fetch: Callable[[], T], done: Callable[[T], bool], timeout: float,
              describe: Callable[[T], str] = str, on_poll: Callable[[T], None] | None = None) -> T:
        deadline = self._clock() + timeout
        while True:
            value = fetch()
            if on_poll is not None:
                on_poll(value)      # progress: what each poll saw
            if done(value):
                return value
            left = deadline - self._clock()
            if left <= 0:
                raise WaitTimeout(f"{what}: timed out after {timeout:.0f} s (last seen: {describe(value)})")
            self._sleep(max(MIN_POLL, min(self.poll_interval, left)))

    # ---- looking things up ------------------------------------------------------------------------------

    def resolve_flavor(self, name_or_id: str) -> Flavor:
        compute = self._conn.compute
        try:
            found = self._read("find flavor", compute.find_flavor, name_or_id, ignore_missing=False)
        except _Gone:
            raise UserError(f"flavor {name_or_id!r} not found",
                            hint=close_matches(name_or_id, self.flavor_names())) from None
        return Flavor(id=found.id, name=found.name, vcpus=int(found.vcpus or 0), ram_mb=int(found.ram or 0),
                      disk_gb=int(found.disk or 0))

    def flavor_names(self) -> list[str]:
        compute = self._conn.compute
        return [str(f.name) for f in self._read("list flavors", lambda: list(compute.flavors()))]

    def _image_json(self, image_id: str) -> dict[str, Any]:
        response = self._read(f"image {image_id}", self._raw, self._conn.image, "get",
                              f"/images/{urllib.parse.quote(image_id, safe='')}")
        return dict(response.json())

    def _images(self, **query: str) -> list[dict[str, Any]]:
        def fetch() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = []
            url = "/images?" + urllib.parse.urlencode({"limit": "200", **query})
            while url:
                body = self._raw(self._conn.image, "get", url).json()
                found.extend(body.get("images", []))
                nxt = body.get("next")
                url = nxt[len("/v2"):] if nxt and nxt.startswith("/v2") else (nxt or "")
            return found
        return self._read("list images", fetch)

    def resolve_image(self, name_or_id: str) -> Image:
        """By id, else by name (the most recent active one when names repeat)."""
        try:
            return _image(self._image_json(name_or_id))
        except _Gone:
            pass
        except CloudError:
            # Glance answers 400 for a name in an id's place on some versions
            log.debug("image %r is not an id", name_or_id)
        candidates = [i for i in self._images(name=name_or_id) if i.get("status") == "active"]
        if not candidates:
            names = [i.get("name") or "" for i in self._images(status="active")]
            raise UserError(f"image {name_or_id!r} not found (or not active)", hint=close_matches(name_or_id, names))
        if len(candidates) > 1:
            log.info("%d images named %r: using the most recent", len(candidates), name_or_id)
        return _image(max(candidates, key=lambda i: str(i.get("created_at", ""))))

    def default_image(self, os_distro: str, os_version: str, properties: Mapping[str, str] | None = None) -> Image:
        """The most recent active image with the recipe distro's `os_distro` and `os_version` properties, never one
        snapbuild built from a recipe: its outputs carry the same os_distro/os_version, and a rebuild must not
        start from the last build (naming one with --base-image still may)."""
        from snapbuild.openstack.properties import built_from_recipe

        wanted = {"os_distro": os_distro, "os_version": os_version, **dict(properties or {})}
        wanted = {k: v for k, v in wanted.items() if v}
        candidates = [i for i in self._images(status="active")
                      if all(str(i.get(k, "")) == v for k, v in wanted.items()) and not built_from_recipe(i)]
        if not candidates:
            shown = ", ".join(f"{k}={v}" for k, v in sorted(wanted.items()))
            raise UserError(f"no active image with {shown}",
                            hint="name one with --base-image, or set those properties on your base image")
        return _image(max(candidates, key=lambda i: str(i.get("created_at", ""))))

    def resolve_network(self, name_or_id: str, *, external: bool | None = None) -> Network:
        net = self._conn.network
        try:
            found = self._read("find network", net.find_network, name_or_id, ignore_missing=False)
        except _Gone:
            found = None
        except CloudError as exc:
            if isinstance(exc.__cause__, sdk_exc.DuplicateResource):
                raise UserError(f"network name {name_or_id!r} is ambiguous", hint="pass its id") from None
            raise
        if found is None or (external is not None and bool(found.is_router_external) != external):
            query = {"is_router_external": True} if external else {}
            names = [n.name for n in self._read("list networks", lambda: list(net.networks(**query)))]
            kind = "external network" if external else "network"
            raise UserError(f"{kind} {name_or_id!r} not found", hint=close_matches(name_or_id, names))
        return Network(id=found.id, name=found.name or found.id, external=bool(found.is_router_external))

    def resolve_security_group(self, name_or_id: str) -> SecurityGroup:
        net = self._conn.network
        try:
            found = self._read("find security group", net.find_security_group, name_or_id,
                               ignore_missing=False, project_id=self.project_id)
        except _Gone:
            found = None
        except CloudError as exc:
            if isinstance(exc.__cause__, sdk_exc.DuplicateResource):
                raise UserError(f"security group name {name_or_id!r} is ambiguous", hint="pass its id") from None
            raise
        if found is None:
            names = [g.name for g in self._read("list security groups", lambda: list(net.security_groups()))]
            raise UserError(f"security group {name_or_id!r} not found", hint=close_matches(name_or_id, names))
        return SecurityGroup(id=found.id, name=found.name)

    def resolve_port(self, name_or_id: str) -> str:
        net = self._conn.network
        try:
            found = self._read("find port", net.find_port, name_or_id, ignore_missing=False)
        except _Gone:
            names = [p.name for p in self._read("list ports", lambda: list(net.ports()))]
            raise UserError(f"port {name_or_id!r} not found", hint=close_matches(name_or_id, names)) from None
        if found.device_id:
            raise UserError(f"port {name_or_id!r} is in use by {found.device_id}", hint="pass a free port")
        return str(found.id)

    # ---- quotas -----------------------------------------------------------------------------------------

    def quotas(self) -> dict[str, QuotaItem]:
        """Compute (instances, cores, ram) and network (floatingip, security_group) limits with usage."""
        project = self.project_id
        items: dict[str, QuotaItem] = {}
        qs = self._read("read compute quota", self._conn.compute.get_quota_set, project, usage=True)
        usage = qs.usage or {}
        for key in ("instances", "cores", "ram"):
            limit = getattr(qs, key, None)
            if limit is not None:
                items[key] = QuotaItem(resource=key, limit=int(limit), in_use=int(usage.get(key, 0) or 0))
        try:
            nq = self._read("read network quota", self._raw, self._conn.network, "get",
                            f"/quotas/{project}/details.json").json()["quota"]
        except (_Gone, CloudError) as exc:
            log.info("network quota details unavailable (%s); skipping that check", exc)
            nq = {}
        for key in ("floatingip", "security_group", "security_group_rule"):
            if isinstance(nq.get(key), dict):
                items[key] = QuotaItem(resource=key, limit=int(nq[key].get("limit", -1)),
                                       in_use=int(nq[key].get("used", 0)) + int(nq[key].get("reserved", 0)))
        return items

    def check_fits(self, flavor: Flavor, *, floating_ips: int = 0, security_groups: int = 0) -> None:
        """Raise a UserError naming every quota the build would exceed."""
        need = {"instances": 1, "cores": flavor.vcpus, "ram": flavor.ram_mb, "floatingip": floating_ips,
                "security_group": security_groups, "security_group_rule": 1 if security_groups else 0}
        short = []
        for key, item in self.quotas().items():
            free = item.free()
            if need.get(key, 0) and free is not None and free < need[key]:
                short.append(f"{key}: need {need[key]}, {free} free ({item.in_use} of {item.limit} used)")
        if short:
            raise UserError("the build does not fit the project's quota: " + "; ".join(short),
                            hint="free resources (snapbuild cleanup), pick a smaller flavor, or ask for more quota")

    # ---- servers ----------------------------------------------------------------------------------------

    def boot(self, spec: ServerSpec) -> Server:
        compute = self._conn.compute
        attrs: dict[str, Any] = {"name": spec.name, "flavorRef": spec.flavor_id, "metadata": dict(spec.metadata)}
        if spec.boot_volume_id:
            attrs["block_device_mapping_v2"] = [{
                "boot_index": 0, "uuid": spec.boot_volume_id, "source_type": "volume",
                "destination_type": "volume", "delete_on_termination": False}]
        else:
            attrs["imageRef"] = spec.image_id
        networks = [{"uuid": n} for n in spec.network_ids] + [{"port": p} for p in spec.port_ids]
        attrs["networks"] = networks or "auto"
        if spec.security_group_ids and not spec.port_ids:
            # ids, not names: Nova answers 409 when two groups share a name
            attrs["security_groups"] = [{"name": g} for g in spec.security_group_ids]
        if spec.user_data:
            attrs["user_data"] = spec.user_data
        if spec.availability_zone:
            attrs["availability_zone"] = spec.availability_zone
        if spec.config_drive:
            attrs["config_drive"] = True
        if spec.tags:
            if not self._supports("compute", NOVA_TAGS_MICROVERSION):
                raise CloudError(f"compute API too old: server tags need microversion {NOVA_TAGS_MICROVERSION}")
            attrs["tags"] = list(spec.tags)
        server = self._create(f"create server {spec.name}", compute.create_server, **attrs)
        return _server(server)

    def _supports(self, service: str, microversion: str) -> bool:
        from openstack import utils

        return bool(utils.supports_microversion(getattr(self._conn, service), microversion))

    def get_server(self, server_id: str) -> Server:
        return _server(self._read(f"server {server_id}", self._conn.compute.get_server, server_id))

    def _server_or_fail(self, server_id: str, what: str) -> Server:
        try:
            server = self.get_server(server_id)
        except _Gone:
            raise CloudError(f"{what}: server {server_id} disappeared") from None
        if server.status == "ERROR":
            raise CloudError(f"server ERROR: {server.fault or 'no fault message from Nova'}")
        return server

    def wait_active(self, server_id: str, timeout: float) -> Server:
        return self._poll(f"wait for server {server_id} ACTIVE", lambda: self._server_or_fail(server_id, "boot"),
                          lambda s: s.status == "ACTIVE", timeout, lambda s: s.status)

    def wait_shutoff(self, server_id: str, timeout: float) -> Server:
        return self._poll(f"wait for server {server_id} SHUTOFF",
                          lambda: self._server_or_fail(server_id, "power off"),
                          lambda s: s.status == "SHUTOFF" and not s.task_state, timeout,
                          lambda s: f"{s.status}/{s.task_state}")

    def wait_task_idle(self, server_id: str, timeout: float) -> Server:
        """The server's task state clears after a snapshot; deleting it earlier can lose the image."""
        return self._poll(f"wait for server {server_id} task state idle",
                          lambda: self._server_or_fail(server_id, "snapshot"),
                          lambda s: not s.task_state, timeout, lambda s: f"task_state={s.task_state}")

    def stop(self, server_id: str) -> None:
        try:
            self._read(f"stop server {server_id}", self._conn.compute.stop_server, server_id)
        except CloudError as exc:
            # 409: already stopped (the guest powered itself off) — that is what we wanted
            if "409" not in str(exc):
                raise

    def console_log(self, server_id: str, lines: int | None = 40) -> str:
        try:
            out = self._read("console log", self._conn.compute.get_server_console_output, server_id, length=lines)
        except (_Gone, CloudError) as exc:
            return f"(console log unavailable: {exc})"
        return str((out or {}).get("output") or "")

    def delete_server(self, server_id: str, timeout: float = 300) -> None:
        """Delete and wait until it is gone (its ports and volumes are only freed then)."""
        try:
            self._delete(f"delete server {server_id}", self._conn.compute.delete_server, server_id)
        except _Gone:
            return

        def fetch() -> Server | None:
            try:
                return self.get_server(server_id)
            except _Gone:
                return None

        self._poll(f"wait for server {server_id} deleted", fetch, lambda s: s is None, timeout,
                   lambda s: s.status if s else "gone")

    # A create that failed mid-air (connection reset, Ctrl-C) may still have made the resource:
    # these find it by its unique name (or description) so it can be undone.

    def servers_named(self, name: str) -> list[str]:
        found = self._read("list servers", lambda: list(self._conn.compute.servers(name=f"^{name}$")))
        return [s.id for s in found if s.name == name]

    def security_groups_named(self, name: str) -> list[str]:
        found = self._read("list security groups", lambda: list(self._conn.network.security_groups(name=name)))
        return [g.id for g in found if g.name == name]

    def floating_ips_described(self, description: str) -> list[str]:
        found = self._read("list floating IPs", lambda: list(self._conn.network.ips(description=description)))
        return [ip.id for ip in found if ip.description == description]

    def images_named(self, name: str) -> list[str]:
        return [str(i["id"]) for i in self._images(name=name)]

    def volumes_named(self, name: str) -> list[str]:
        found = self._read("list volumes", lambda: list(self._conn.block_storage.volumes(name=name)))
        return [v.id for v in found if v.name == name]

    def server_port(self, server_id: str, network_id: str | None = None) -> str:
        ports = self._read("list ports", lambda: list(self._conn.network.ports(device_id=server_id)))
        ports = [p for p in ports if network_id is None or p.network_id == network_id]
        if not ports:
            raise CloudError(f"server {server_id} has no port" + (f" on network {network_id}" if network_id else ""))
        return str(ports[0].id)

    # ---- networking -------------------------------------------------------------------------------------

    def create_security_group(self, name: str, *, ssh_cidr: str, tags: Sequence[str],
                              description: str = "") -> SecurityGroup:
        """A temporary group allowing SSH from `ssh_cidr`. The caller registers its undo right after."""
        net = self._conn.network
        group = self._create(f"create security group {name}", net.create_security_group, name=name,
                             description=description or "snapbuild temporary builder group")
        made = SecurityGroup(id=group.id, name=group.name)
        try:
            self._create("tag security group", net.set_tags, group, list(tags))
            ethertype = "IPv6" if ipaddress.ip_network(ssh_cidr, strict=False).version == 6 else "IPv4"
            self._create("create SSH rule", net.create_security_group_rule, security_group_id=group.id,
                         direction="ingress", ethertype=ethertype, protocol="tcp", port_range_min=22,
                         port_range_max=22, remote_ip_prefix=ssh_cidr)
        except BaseException:
            self.delete_security_group(made.id)
            raise
        return made

    def delete_security_group(self, group_id: str) -> None:
        try:
            self._delete(f"delete security group {group_id}", self._conn.network.delete_security_group, group_id,
                       ignore_missing=False)
        except _Gone:
            pass

    def create_floating_ip(self, *, floating_network_id: str, port_id: str, tags: Sequence[str],
                           description: str = "") -> FloatingIP:
        net = self._conn.network
        ip = self._create("create floating IP", net.create_ip, floating_network_id=floating_network_id,
                          port_id=port_id, description=description or "snapbuild temporary builder address")
        made = FloatingIP(id=ip.id, address=ip.floating_ip_address)
        try:
            self._create("tag floating IP", net.set_tags, ip, list(tags))
        except BaseException:
            self.delete_floating_ip(made.id)
            raise
        return made

    def delete_floating_ip(self, ip_id: str) -> None:
        try:
            self._delete(f"delete floating IP {ip_id}", self._conn.network.delete_ip, ip_id, ignore_missing=False)
        except _Gone:
            pass

    # ---- images -----------------------------------------------------------------------------------------

    def snapshot(self, server_id: str, name: str, metadata: Mapping[str, str]) -> str:
        """Nova createImage; returns the new image id (needs microversion 2.45 for the id in the body)."""
        if not self._supports("compute", NOVA_CREATE_IMAGE_MICROVERSION):
            raise CloudError(f"compute API too old: snapshots need microversion {NOVA_CREATE_IMAGE_MICROVERSION}")
        compute = self._conn.compute
        server = self._read(f"server {server_id}", compute.get_server, server_id)
        return str(self._create(f"snapshot server {server_id}", server.create_image, compute, name, dict(metadata)))

    def get_image(self, image_id: str) -> Image:
        return _image(self._image_json(image_id))

    def wait_image_active(self, image_id: str, timeout: float,
                          on_poll: Callable[[Image], None] | None = None) -> Image:
        """Active with a non-zero size and a checksum; killed/deleted/deactivated or vanished fail at once.
        `on_poll` sees the image at every poll (its status for a progress display)."""

        def fetch() -> Image:
            try:
                image = self.get_image(image_id)
            except _Gone:
                raise CloudError(f"image {image_id} was deleted by the cloud (snapshot failed)") from None
            if image.status in ("killed", "deleted", "deactivated", "pending_delete"):
                raise CloudError(f"image {image_id} went {image.status}")
            return image

        return self._poll(f"wait for image {image_id} active", fetch,
                          lambda i: i.status == "active" and bool(i.size) and bool(i.checksum), timeout,
                          lambda i: f"{i.status}, size={i.size}", on_poll)

    def tag_image(self, image_id: str, tags: Iterable[str]) -> None:
        for tag in tags:
            self._read(f"tag image {image_id}", self._raw, self._conn.image, "put", f"/images/{image_id}/tags/{tag}")

    def finish_image(self, image_id: str, *, properties: Mapping[str, str], remove: Iterable[str] = (),
                     tags: Sequence[str] | None = None, visibility: str | None = None,
                     min_disk: int | None = None, min_ram: int | None = None, protected: bool | None = None,
                     hidden: bool | None = None) -> list[dict[str, Any]]:
        """Set properties and fields with one JSON-patch on the image id; returns the patch sent.

        The id, not an Image object: multi-store Glance answers 409 "Property stores does not exist"
        for openstacksdk's object form. Removing a property needs its own `remove` op. `hidden` is
        `os_hidden` (image API 2.7); None leaves a field as it is.
        """
        current = self._image_json(image_id)
        ops: list[dict[str, Any]] = []
        for key in sorted(set(remove)):
            if key in current and key not in properties and key not in IMAGE_CORE:
                ops.append({"op": "remove", "path": f"/{key}"})
        fields: dict[str, Any] = {}
        if visibility is not None:
            fields["visibility"] = visibility
        if min_disk is not None:
            fields["min_disk"] = int(min_disk)
        if min_ram is not None:
            fields["min_ram"] = int(min_ram)
        if tags is not None:
            fields["tags"] = sorted(set(tags))
        if protected is not None:
            fields["protected"] = bool(protected)
        # A Glance older than image API 2.7 has no os_hidden: it would take the op as a property, so "not hidden"
        # is only sent where the field exists.
        if hidden is not None and (hidden or "os_hidden" in current):
            fields["os_hidden"] = bool(hidden)
        for key, value in sorted({**{k: str(v) for k, v in properties.items()}, **fields}.items()):
            if key in current and current[key] == value:
                continue
            ops.append({"op": "replace" if key in current else "add", "path": f"/{key}", "value": value})
        if ops:
            self._create(f"update image {image_id}", self._raw, self._conn.image, "patch", f"/images/{image_id}",
                         json=ops, headers={"Content-Type": JSON_PATCH})
        return ops

    def share_image(self, image_id: str, project_ids: Iterable[str]) -> None:
        for project in project_ids:
            try:
                self._create(f"share image with {project}", self._raw, self._conn.image, "post",
                             f"/images/{image_id}/members", json={"member": project})
            except CloudError as exc:
                if "409" not in str(exc):   # already a member
                    raise

    def delete_image(self, image_id: str) -> None:
        """Delete one of snapbuild's images (partial, or a leftover); one it protected is unprotected first."""
        try:
            self._delete(f"delete image {image_id}", self._raw, self._conn.image, "delete", f"/images/{image_id}")
        except _Gone:
            pass
        except CloudError:
            # --protected is set by the finishing patch: a build that fails between that patch and the image
            # becoming its result (or a kill -9 there, then `cleanup`) must still be able to undo it.
            try:
                protected = self._image_json(image_id).get("protected") is True
            except _Gone:
                return
            if not protected:
                raise
            self._create(f"unprotect image {image_id}", self._raw, self._conn.image, "patch", f"/images/{image_id}",
                         json=[{"op": "replace", "path": "/protected", "value": False}],
                         headers={"Content-Type": JSON_PATCH})
            try:
                self._delete(f"delete image {image_id}", self._raw, self._conn.image, "delete",
                             f"/images/{image_id}")
            except _Gone:
                pass

    # ---- volumes (boot-from-volume builds) --------------------------------------------------------------

    def create_volume(self, *, name: str, size_gb: int, image_id: str, metadata: Mapping[str, str]) -> Volume:
        vol = self._create(f"create volume {name}", self._conn.block_storage.create_volume, name=name,
                           size=size_gb, image_id=image_id, metadata=dict(metadata))
        return Volume(id=vol.id, status=vol.status)

    def get_volume(self, volume_id: str) -> Volume:
        vol = self._read(f"volume {volume_id}", self._conn.block_storage.get_volume, volume_id)
        return Volume(id=vol.id, status=vol.status)

    def wait_volume_available(self, volume_id: str, timeout: float) -> Volume:
        def fetch() -> Volume:
            try:
                vol = self.get_volume(volume_id)
            except _Gone:
                raise CloudError(f"volume {volume_id} disappeared") from None
            if vol.status in ("error", "error_deleting", "error_restoring"):
                raise CloudError(f"volume {volume_id} went {vol.status}")
            return vol

        return self._poll(f"wait for volume {volume_id} available", fetch, lambda v: v.status == "available",
                          timeout, lambda v: v.status)

    def upload_volume(self, volume_id: str, *, image_name: str, disk_format: str = "qcow2") -> str:
        """Cinder's upload-to-image: a real, downloadable image (Nova's snapshot of a volume is a 0-byte pointer)."""
        result = self._create(f"upload volume {volume_id} to an image",
                              self._conn.block_storage.upload_volume_to_image, volume_id, image_name,
                              disk_format=disk_format, container_format="bare")
        return str(result["image_id"])

    def delete_volume(self, volume_id: str, timeout: float = 300) -> None:
        bs = self._conn.block_storage
        try:
            self._delete(f"delete volume {volume_id}", bs.delete_volume, volume_id, ignore_missing=False)
        except _Gone:
            return

        def fetch() -> Volume | None:
            try:
                return self.get_volume(volume_id)
            except _Gone:
                return None

        self._poll(f"wait for volume {volume_id} deleted", fetch, lambda v: v is None, timeout,
                   lambda v: v.status if v else "gone")

    # ---- the sweep ---------------------------------------------------------------------------------------

    def find_marked(self, kind: str) -> list[Marked]:
        """Resources carrying snapbuild's tag, with the marks `snapbuild cleanup` decides on."""
        found: list[Marked] = []
        if kind == "server":
            for s in self._read("list servers", lambda: list(self._conn.compute.servers(tags=marks.TAG))):
                found.append(_marked(kind, s.id, s.name, marks.from_metadata(s.metadata or {})))
        elif kind == "floating_ip":
            for ip in self._read("list floating IPs", lambda: list(self._conn.network.ips(tags=marks.TAG))):
                found.append(_marked(kind, ip.id, ip.floating_ip_address, marks.from_tags(ip.tags or [])))
        elif kind == "security_group":
            groups = self._read("list security groups",
                                lambda: list(self._conn.network.security_groups(tags=marks.TAG)))
            for g in groups:
                found.append(_marked(kind, g.id, g.name, marks.from_tags(g.tags or [])))
        elif kind == "image":
            for i in self._images(tag=marks.TAG):
                found.append(_marked(kind, i["id"], i.get("name") or "", marks.from_metadata(i)))
        elif kind == "volume":
            vols = self._read("list volumes", lambda: list(self._conn.block_storage.volumes(details=True)))
            for v in vols:
                meta = marks.from_metadata(v.metadata or {})
                if meta:
                    found.append(_marked(kind, v.id, v.name or "", meta))
        else:
            raise ValueError(f"unknown kind {kind!r}")
        return found


    # ---- upload and the wider sweep (added for `snapbuild upload` / `snapbuild cleanup`) -----------------

    def has_service(self, service_type: str) -> bool:
        """Whether the catalog lists the service (a cloud without Cinder has no volumes to sweep)."""
        try:
            return bool(self._conn.has_service(service_type))
        except Exception:  # noqa: BLE001 - discovery trouble means "not usable"
            return False

    def image_data(self, image_id: str) -> ImageData:
        return _image_data(self._image_json(image_id))

    def images_data_named(self, name: str) -> list[ImageData]:
        return [_image_data(i) for i in self._images(name=name)]

    def create_image_record(self, *, name: str, disk_format: str, container_format: str = "bare",
                            properties: Mapping[str, str], tags: Sequence[str], min_disk: int = 0,
                            min_ram: int = 0, visibility: str = "private") -> ImageData:
        """POST /images: the record only (status `queued`); tried once. The caller registers its undo."""
        body: dict[str, Any] = {k: str(v) for k, v in properties.items() if k not in IMAGE_CORE}
        body.update(name=name, disk_format=disk_format, container_format=container_format, tags=list(tags),
                    min_disk=int(min_disk), min_ram=int(min_ram), visibility=visibility)
        response = self._create(f"create image {name}", self._raw, self._conn.image, "post", "/images", json=body)
        return _image_data(response.json())

    def put_image_data(self, image_id: str, data: Any, size: int, *, stage: bool = False) -> None:
        """Stream `data` (read(n) + __len__) to /file (or /stage for the import path). Tried exactly once:
        a consumed stream cannot be re-sent, so any failure is the caller's to undo and redo from scratch."""
        where = "stage" if stage else "file"
        self._create(f"upload image {image_id}", self._raw, self._conn.image, "put", f"/images/{image_id}/{where}",
                     data=data, headers={"Content-Type": "application/octet-stream", "Accept": "",
                                         "X-OpenStack-Image-Size": str(size)})

    def import_methods(self) -> tuple[str, ...]:
        try:
            body = self._read("image import info", self._raw, self._conn.image, "get", "/info/import").json()
        except (_Gone, CloudError):
            return ()
        return tuple((body.get("import-methods") or {}).get("value") or ())

    def import_image(self, image_id: str, method: str = "glance-direct") -> None:
        self._create(f"import image {image_id}", self._raw, self._conn.image, "post", f"/images/{image_id}/import",
                     json={"method": {"name": method}})

    def image_store_types(self) -> list[str]:
        """Best effort: the kinds of Glance stores (`rbd`, `file`, …); the details need admin, else the ids."""
        for url, key in (("/info/stores/detail", "type"), ("/info/stores", "id")):
            try:
                body = self._read("image stores info", self._raw, self._conn.image, "get", url).json()
            except (_Gone, CloudError):
                continue
            return [str(s.get(key) or s.get("id") or "") for s in body.get("stores") or []]
        return []

    def wait_image_uploaded(self, image_id: str, timeout: float,
                            on_poll: Callable[[ImageData], None] | None = None) -> ImageData:
        """Active with size and digest; killed/deleted or a failed import (back to queued with
        `os_glance_failed_import`) fail at once. Upload and import pass through saving/uploading/importing."""

        def fetch() -> ImageData:
            try:
                image = self.image_data(image_id)
            except _Gone:
                raise CloudError(f"image {image_id} was deleted while uploading") from None
            if image.status in ("killed", "deleted", "deactivated", "pending_delete"):
                raise CloudError(f"image {image_id} went {image.status}")
            if image.failed_import:
                raise CloudError(f"image {image_id}: import failed for store(s) {image.failed_import}")
            return image

        return self._poll(f"wait for image {image_id} active", fetch,
                          lambda i: i.status == "active" and bool(i.size) and bool(i.hash_value or i.checksum),
                          timeout, lambda i: f"{i.status}, size={i.size}", on_poll)

    def marked_ports(self) -> list[Marked]:
        ports = self._read("list ports", lambda: list(self._conn.network.ports(tags=marks.TAG)))
        return [_marked("port", p.id, p.name or "", marks.from_tags(p.tags or [])) for p in ports
                if marks.TAG in (p.tags or [])]

    def delete_port(self, port_id: str) -> None:
        try:
            self._delete(f"delete port {port_id}", self._conn.network.delete_port, port_id, ignore_missing=False)
        except _Gone:
            pass

    def keypairs_with_prefix(self, prefix: str) -> list[str]:
        found = self._read("list keypairs", lambda: list(self._conn.compute.keypairs()))
        return [k.name for k in found if (k.name or "").startswith(prefix)]

    def delete_keypair(self, name: str) -> None:
        try:
            self._delete(f"delete keypair {name}", self._conn.compute.delete_keypair, name, ignore_missing=False)
        except _Gone:
            pass

    def delete_security_group_when_free(self, group_id: str, timeout: float) -> None:
        """Neutron answers 409 while a port still uses the group (a server being torn down): retry until the
        deadline, then fail with Neutron's message."""
        deadline = self._clock() + timeout
        while True:
            try:
                self.delete_security_group(group_id)
                return
            except CloudError as exc:
                if not isinstance(exc.__cause__, sdk_exc.ConflictException) or self._clock() >= deadline:
                    raise
                log.info("security group %s still in use; retrying", group_id)
            self._sleep(max(MIN_POLL, min(self.poll_interval, deadline - self._clock())))

    def server_exists(self, server_id: str) -> bool:
        try:
            self.get_server(server_id)
        except _Gone:
            return False
        return True


    # ---- the catalogue (`snapbuild apply`): find by property, images in use, copy between Glances ----------

    def image_endpoint(self) -> str:
        """The Glance endpoint this connection uses: two targets with the same one share a Glance."""
        try:
            return str(self._conn.image.get_endpoint() or "").rstrip("/")
        except (sdk_exc.SDKException, ksa_exc.ClientException) as exc:
            raise faults.translate(exc, "image endpoint") from exc

    def images_with(self, **properties: str) -> list[ImageData]:
        """Every image visible to the project whose properties (or `tag`) match, the hidden ones included: Glance
        leaves `os_hidden` images out of a listing unless asked for them, so that is a second listing."""
        shown = self._images(**properties)
        hidden = self._images(**properties, os_hidden="true")
        seen = {i["id"] for i in shown}

        def matches(image: Mapping[str, Any]) -> bool:
            # Checked here too: a Glance (or a proxy before it) that ignores a filter it does not know would
            # otherwise hand over every image, and a catalogue would rotate another entry's.
            return all(value in (image.get("tags") or ()) if key == "tag" else str(image.get(key)) == value
                       for key, value in properties.items())

        return [_image_data(i) for i in [*shown, *(h for h in hidden if h["id"] not in seen)] if matches(i)]

    def images_in_use(self) -> dict[str, list[str]]:
        """Image id → the servers (names) the user can see booted from it. Boot-from-volume servers name no image
        here (their volume's image metadata would): those images are not known to be in use."""
        servers = self._read("list servers", lambda: list(self._conn.compute.servers(details=True)))
        used: dict[str, list[str]] = {}
        for server in servers:
            image = server.image if isinstance(server.image, Mapping) else {}
            image_id = image.get("id") or getattr(server.image, "id", None)
            if image_id:
                used.setdefault(str(image_id), []).append(str(server.name or server.id))
        return used

    def download_image(self, image_id: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """GET /file as a stream of chunks (never the whole image in memory or on disk); tried once."""
        response = self._create(f"download image {image_id}", self._raw, self._conn.image, "get",
                                f"/images/{urllib.parse.quote(image_id, safe='')}/file", stream=True)
        try:
            yield from response.iter_content(chunk_size=chunk_size)
        finally:
            response.close()

    def upload_image_stream(self, image_id: str, chunks: Iterable[bytes], size: int | None) -> None:
        """PUT /file with the data as a generator (chunked transfer); tried once, as a stream cannot be re-sent."""
        headers = {"Content-Type": "application/octet-stream", "Accept": ""}
        if size:
            headers["X-OpenStack-Image-Size"] = str(size)
        self._create(f"upload image {image_id}", self._raw, self._conn.image, "put", f"/images/{image_id}/file",
                     data=iter(chunks), headers=headers)

    def copy_image_to_stores(self, image_id: str, stores: Sequence[str]) -> None:
        """Glance's own copy between the stores of a multi-store Glance (the `copy-image` import method)."""
        self._create(f"copy image {image_id} to {', '.join(stores)}", self._raw, self._conn.image, "post",
                     f"/images/{image_id}/import",
                     json={"method": {"name": "copy-image"}, "stores": list(stores), "all_stores_must_succeed": True})


@dataclass(frozen=True, kw_only=True)
class ImageData:
    """An image record with what an upload checks: its digests and store state."""

    id: str
    name: str
    status: str
    size: int | None
    checksum: str | None          # md5, when Glance computes it
    hash_algo: str | None         # os_hash_algo (sha512 by default)
    hash_value: str | None
    disk_format: str | None
    tags: tuple[str, ...]
    properties: Mapping[str, str]
    failed_import: str = ""
    created_at: str = ""
    hidden: bool = False          # os_hidden
    owner: str | None = None
    visibility: str | None = None
    container_format: str | None = None
    min_disk: int = 0
    min_ram: int = 0
    protected: bool = False
    stores: tuple[str, ...] = ()


def _image_data(data: Mapping[str, Any]) -> ImageData:
    props = {k: str(v) for k, v in data.items() if k not in IMAGE_CORE and v is not None}
    return ImageData(id=str(data["id"]), name=str(data.get("name") or ""), status=str(data.get("status") or ""),
                     size=data.get("size"), checksum=data.get("checksum") or None,
                     hash_algo=data.get("os_hash_algo") or None, hash_value=data.get("os_hash_value") or None,
                     disk_format=data.get("disk_format"), tags=tuple(data.get("tags") or ()), properties=props,
                     failed_import=str(data.get("os_glance_failed_import") or ""),
                     created_at=str(data.get("created_at") or ""), hidden=data.get("os_hidden") is True,
                     owner=data.get("owner") or None, visibility=data.get("visibility") or None,
                     container_format=data.get("container_format") or None, min_disk=int(data.get("min_disk") or 0),
                     min_ram=int(data.get("min_ram") or 0), protected=data.get("protected") is True,
                     stores=tuple(s for s in str(data.get("stores") or "").split(",") if s))


class _Parser(argparse.ArgumentParser):
    """openstacksdk's argparse registration on a parser whose mistakes are snapbuild's usage errors."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"OpenStack authentication options: {message}",
                        hint="see `snapbuild --help` (OpenStack authentication) and the README")


def connection_config(cloud: str | None, region: str | None, auth_args: Sequence[str] = ()) -> Any:
    """The openstacksdk CloudRegion a connection is made from: clouds.yaml/secure.yaml and the OS_* variables as
    openstacksdk reads them, plus the openstack CLI's authentication options from the command line (`auth_args`,
    e.g. --os-auth-url URL --insecure), parsed by openstacksdk's and keystoneauth's own argparse registration.

    What the command line says wins over the cloud's settings (`--os-cloud site --os-project-name other` switches the
    project). Only what it says: the parser's defaults (which keystoneauth takes from the OS_* variables) are
    dropped, so a named clouds.yaml cloud is not mixed with OS_PASSWORD and friends, as before; without a named
    cloud openstacksdk reads the OS_* variables itself."""
    import openstack.config
    from keystoneauth1 import loading

    config = openstack.config.OpenStackConfig()
    # --os-cloud goes in too: openstacksdk peeks at the cloud's auth_type to register that plugin's options.
    argv = [*(("--os-cloud", cloud) if cloud else ()), *auth_args]
    parser = _Parser(prog="snapbuild", add_help=False, allow_abbrev=False)
    try:
        config.register_argparse_arguments(parser, list(argv))
    except sdk_exc.ConfigException as exc:
        if "auth-type" not in str(exc):    # the cloud itself is unknown: the caller says so
            raise
        raise UserError(f"--os-auth-type: {exc}") from None
    spellings: dict[str, str] = {}
    for action in parser._actions:          # argparse has no public way to drop the defaults
        action.default = argparse.SUPPRESS
        spellings.update((spelling.replace("_", "-"), spelling) for spelling in action.option_strings)
    # keystoneauth registers some as --os-application_credential_secret: both spellings work, as in openstacksdk
    words = [_respelled(word, spellings) for word in argv]
    namespace, unknown = parser.parse_known_args(words)
    if unknown:
        raise unknown_auth_option(unknown, spellings)
    # openstacksdk lets a cloud's `auth:` win over the same option given on the line: hand the auth plugin's
    # options over as `auth` (which it merges over the cloud's), the session's and adapter's stay as they are.
    peek = config.get_one(cloud=cloud, argparse=namespace, region_name=region, validate=False)
    plugin = {opt.dest for opt in loading.get_plugin_options(peek.config["auth_type"])}
    given = dict(vars(namespace))
    auth = {name[3:]: given.pop(name) for name in list(given) if name.startswith("os_") and name[3:] in plugin}
    # region passed explicitly: with clouds.yaml, OS_REGION_NAME alone does not select it
    return config.get_one(cloud=cloud, argparse=argparse.Namespace(**given), region_name=region,
                          **({"auth": auth} if auth else {}), **NO_HIDDEN_RETRIES)


def _respelled(word: str, spellings: Mapping[str, str]) -> str:
    if not word.startswith("--"):
        return word
    name, equals, value = word.partition("=")
    return spellings.get(name.replace("_", "-"), name) + equals + value


def unknown_auth_option(unknown: Sequence[str], spellings: Mapping[str, str]) -> UserError:
    """An option openstacksdk's parser does not know, with the close ones it does know."""
    options = [word.partition("=")[0] for word in unknown if word.startswith("-")]
    name = options[0].replace("_", "-") if options else unknown[0]
    known = sorted(spelling for spelling in spellings if spelling.startswith("--os-") or spelling == "--insecure")
    near = difflib.get_close_matches(name, known, n=4, cutoff=0.6)
    hint = (f"did you mean {', '.join(near)}?" if near
            else f"the authentication options for this cloud's auth type: {', '.join(known)}")
    what = f"unknown option {name}" if options else f"unexpected argument {name!r} among the authentication options"
    return UserError(what, hint=hint)


def _auth_url(conn: Any) -> str | None:
    """The connection's auth_url (None for a stand-in connection or a token-only cloud)."""
    config = getattr(getattr(conn, "config", None), "config", None)
    auth = config.get("auth") if isinstance(config, dict) else None
    url = auth.get("auth_url") if isinstance(auth, dict) else None
    return str(url) if url else None


def cloud_names() -> list[str] | None:
    """clouds.yaml's cloud names (None when there is no clouds.yaml: only the OS_* variables can name a cloud)."""
    import openstack.config

    try:
        config = openstack.config.OpenStackConfig()
    except Exception:  # noqa: BLE001 - an unreadable file is reported where a cloud is connected to
        return None
    return list(config.get_cloud_names()) if config.config_filename else None


def _cloud_names() -> list[str]:
    import openstack.config

    try:
        config = openstack.config.OpenStackConfig()
        # without any clouds.yaml openstacksdk still lists one made-up cloud, "defaults"
        return list(config.get_cloud_names()) if config.config_filename else []
    except Exception:  # noqa: BLE001 - only for a hint
        return []


def _where_configured(name: str) -> str:
    """Where cloud `name`'s settings come from, for a hint: its clouds.yaml file, or the OS_* variables."""
    import openstack.config

    if name == "envvars":
        return "(OS_AUTH_URL)"
    try:
        path = openstack.config.OpenStackConfig().config_filename
    except Exception:  # noqa: BLE001 - only for a hint
        path = None
    return f"of cloud {name!r} in {path or 'clouds.yaml'}"


def _refuse_unreadable_clouds_yaml() -> None:
    """openstacksdk skips a clouds.yaml it cannot parse (with a warning only the log file sees) and then
    reports the cloud as unknown: name the broken file instead."""
    import yaml
    from openstack.config import loader

    env = os.environ.get("OS_CLIENT_CONFIG_FILE")
    candidates = [env] if env else []
    candidates += [str(c) for c in getattr(loader, "CONFIG_FILES", [])]
    for candidate in candidates:
        path = Path(candidate)
        if not path.is_file():
            continue
        try:
            text = path.read_text()
            if path.suffix == ".json":
                json.loads(text)
            else:
                yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            where, problem = str(path), " ".join(str(exc).split())
            mark = getattr(exc, "problem_mark", None)
            if isinstance(exc, yaml.MarkedYAMLError) and mark is not None:
                where, problem = f"{path}:{mark.line + 1}", f"not valid YAML: {exc.problem}"
            raise UserError(f"{where}: {problem}",
                            hint="fix the file: openstacksdk skips a file it cannot read, and sees no cloud in it"
                            ) from None
        return   # the first existing file is the one openstacksdk uses


def _caused_by(exc: BaseException | None, kind: type[BaseException]) -> bool:
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, kind):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _marked(kind: str, rid: str, name: str, meta: Mapping[str, str]) -> Marked:
    return Marked(kind=kind, id=rid, name=name or "", build_id=meta.get("build_id"),
                  installation_id=meta.get("installation_id"), created_at=meta.get("created_at"),
                  expires_at=meta.get("expires_at"))


def _server(server: Any) -> Server:
    addresses = []
    for network, entries in (server.addresses or {}).items():
        for entry in entries or []:
            addresses.append(Address(network=network, ip=str(entry.get("addr")), version=int(entry.get("version", 4)),
                                     kind=str(entry.get("OS-EXT-IPS:type", "fixed"))))
    fault = server.fault or None
    message = None
    if isinstance(fault, dict):
        message = str(fault.get("message") or "") or None
        if message and fault.get("details") and "Traceback" not in str(fault["details"]):
            message = f"{message} ({fault['details']})"
    return Server(id=server.id, name=server.name or "", status=str(server.status or "").upper(),
                  task_state=server.task_state or None, fault=message, addresses=tuple(addresses))


def _image(data: Mapping[str, Any]) -> Image:
    props = {k: str(v) for k, v in data.items() if k not in IMAGE_CORE and v is not None}
    checksum = data.get("checksum") or data.get("os_hash_value")
    return Image(id=str(data["id"]), name=str(data.get("name") or ""), status=str(data.get("status") or ""),
                 size=data.get("size"), checksum=checksum, hash_algo=data.get("os_hash_algo") or None,
                 hash_value=data.get("os_hash_value") or None, visibility=data.get("visibility"),
                 min_disk=int(data.get("min_disk") or 0), min_ram=int(data.get("min_ram") or 0),
                 created_at=str(data.get("created_at") or ""), tags=tuple(data.get("tags") or ()),
                 properties=props)

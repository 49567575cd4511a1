"""Configuration files of every service, rendered from the Layout (rewritten on each start: cheap, never stale)."""

from __future__ import annotations

import shutil
from pathlib import Path

from testcloud.layout import HOST, REGION, Layout

Sections = dict[str, dict[str, object]]


def write_ini(path: Path, sections: Sections) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    for section, options in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {value}" for key, value in options.items())
        lines.append("")
    path.write_text("\n".join(lines))


# RabbitMQ may boot after the services: reconnect every second instead of backing off for up to 30 s.
RABBIT_CLIENT: dict[str, object] = {"heartbeat_timeout_threshold": 0, "rabbit_retry_interval": 1,
                                    "rabbit_retry_backoff": 0}


def _authtoken(lay: Layout, user: str) -> dict[str, object]:
    return {
        "www_authenticate_uri": lay.url("keystone"),
        "auth_url": lay.url("keystone"),
        "auth_type": "password",
        "project_domain_name": "Default",
        "user_domain_name": "Default",
        "project_name": "service",
        "username": user,
        "password": lay.password,
        "region_name": REGION,
        "service_token_roles_required": "true",
    }


def _client(lay: Layout, user: str) -> dict[str, object]:
    """Credentials a service uses to call another one."""
    return {
        "auth_type": "password",
        "auth_url": lay.url("keystone"),
        "project_domain_name": "Default",
        "user_domain_name": "Default",
        "project_name": "service",
        "username": user,
        "password": lay.password,
        "region_name": REGION,
    }


def _data(lay: Layout, *parts: str) -> Path:
    path = lay.data.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def keystone(lay: Layout) -> None:
    write_ini(lay.etc / "keystone" / "keystone.conf", {
        "DEFAULT": {"use_stderr": "true"},
        "database": {"connection": lay.db_url("keystone")},
        "token": {"provider": "fernet"},
        "fernet_tokens": {"key_repository": _data(lay, "keystone", "fernet-keys")},
        "credential": {"key_repository": _data(lay, "keystone", "credential-keys")},
    })


def glance(lay: Layout, name: str = "glance") -> None:
    """A Glance API: `glance` for RegionOne, `glance2` for RegionTwo (its own config dir, database, port, store)."""
    etc = lay.etc / name
    write_ini(etc / "glance-api.conf", {
        "DEFAULT": {
            "use_stderr": "true",
            # Multi-store layout, as modern deployments have: this is what makes `stores` a reserved
            # property and exposes the openstacksdk update_image(<Image>) bug.
            "enabled_backends": "file1:file",
            "worker_self_reference_url": lay.url(name),
            "workers": 1,
            "image_size_cap": 64 * 1024**3,
        },
        "database": {"connection": lay.db_url(name)},
        "glance_store": {"default_backend": "file1"},
        "file1": {"filesystem_store_datadir": _data(lay, name, "images")},
        "os_glance_staging_store": {"filesystem_store_datadir": _data(lay, name, "staging")},
        "os_glance_tasks_store": {"filesystem_store_datadir": _data(lay, name, "tasks")},
        "keystone_authtoken": _authtoken(lay, "glance"),
        "paste_deploy": {"flavor": "keystone", "config_file": etc / "glance-api-paste.ini"},
        "oslo_concurrency": {"lock_path": _data(lay, name, "lock")},
    })
    shutil.copy(lay.venv / "etc" / "glance" / "glance-api-paste.ini", etc / "glance-api-paste.ini")


def glance2(lay: Layout) -> None:
    glance(lay, "glance2")


def placement(lay: Layout) -> None:
    write_ini(lay.etc / "placement" / "placement.conf", {
        "DEFAULT": {"use_stderr": "true"},
        "placement_database": {"connection": lay.db_url("placement")},
        "api": {"auth_strategy": "keystone"},
        "keystone_authtoken": _authtoken(lay, "placement"),
    })


def nova(lay: Layout) -> None:
    etc = lay.etc / "nova"
    write_ini(etc / "nova.conf", {
        "DEFAULT": {
            "use_stderr": "true",
            "transport_url": lay.transport_url,
            "compute_driver": "snapbuild_testcloud.TestCloudDriver",
            "host": "testcloud",
            "my_ip": HOST,
            "state_path": _data(lay, "nova"),
            "instances_path": _data(lay, "nova", "instances"),
            # Services otherwise ignore SIGTERM for minutes while they "drain".
            "graceful_shutdown_timeout": 3,
            "osapi_compute_workers": 1,
            "metadata_workers": 1,
            "report_interval": 3,
            # First resource report may race Placement's start: retry soon, not after a minute.
            "update_resources_interval": 10,
            "heal_instance_info_cache_interval": -1,
            # Real guests power themselves off: Nova notices within seconds (the default is 10 minutes).
            **({"sync_power_state_interval": 5} if lay.backend != "fake" else {}),
        },
        "wsgi": {"api_paste_config": etc / "api-paste.ini"},
        "api_database": {"connection": lay.db_url("nova_api")},
        "database": {"connection": lay.db_url("nova")},
        "conductor": {"workers": 1},
        "scheduler": {"workers": 1},
        "keystone_authtoken": _authtoken(lay, "nova"),
        "service_user": {**_client(lay, "nova"), "send_service_user_token": "true"},
        "placement": _client(lay, "placement"),
        "neutron": _client(lay, "neutron"),
        "glance": {"region_name": REGION},
        "vnc": {"enabled": "false"},
        "oslo_concurrency": {"lock_path": _data(lay, "nova", "lock")},
        "oslo_messaging_rabbit": RABBIT_CLIENT,
        # Read by testcloud/virt.py.
        "testcloud": {"backend": lay.backend, "run_dir": lay.run, "guestfwd": lay.guestfwd},
    })
    shutil.copy(lay.venv / "etc" / "nova" / "api-paste.ini", etc / "api-paste.ini")


def neutron(lay: Layout) -> None:
    etc = lay.etc / "neutron"
    write_ini(etc / "neutron.conf", {
        "DEFAULT": {
            "use_stderr": "true",
            "core_plugin": "ml2",
            "service_plugins": "router",
            "auth_strategy": "keystone",
            "transport_url": lay.transport_url,
            "state_path": _data(lay, "neutron"),
            "api_paste_config": etc / "api-paste.ini",
            "api_workers": 1,
            "rpc_workers": 0,
            # No agents and no Nova callbacks: the API alone is the network service here.
            "notify_nova_on_port_status_changes": "false",
            "notify_nova_on_port_data_changes": "false",
            "dhcp_agent_notification": "false",
        },
        "database": {"connection": lay.db_url("neutron")},
        "keystone_authtoken": _authtoken(lay, "neutron"),
        "oslo_concurrency": {"lock_path": _data(lay, "neutron", "lock")},
        "oslo_messaging_rabbit": RABBIT_CLIENT,
    })
    write_ini(etc / "plugins" / "ml2" / "ml2_conf.ini", {
        "ml2": {
            "type_drivers": "flat,vxlan",
            "tenant_network_types": "vxlan",
            "mechanism_drivers": "testcloud",
            "extension_drivers": "port_security",
        },
        "ml2_type_flat": {"flat_networks": "public"},
        "ml2_type_vxlan": {"vni_ranges": "1:1000"},
    })
    shutil.copy(lay.venv / "etc" / "neutron" / "api-paste.ini", etc / "api-paste.ini")


def rabbitmq(lay: Layout) -> None:
    etc = lay.etc / "rabbitmq"
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "rabbitmq.conf").write_text(
        f"listeners.tcp.default = {HOST}:{lay.port('rabbitmq')}\n"
        f"default_user = testcloud\ndefault_pass = {lay.password}\n"
        "loopback_users = none\n"
    )
    (etc / "enabled_plugins").write_text("[].\n")  # no management plugin: faster start, less memory
    (etc / "rabbitmq-env.conf").write_text("")  # shadows Debian's /etc/rabbitmq/rabbitmq-env.conf


def all_services(lay: Layout) -> None:
    for render in (keystone, glance, glance2, placement, nova, neutron, rabbitmq):
        render(lay)

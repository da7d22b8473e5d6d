from dataclasses import replace

import pytest

from cloudconfig.units import (
    component_unit,
    container_name,
    etcd_dropin,
    etcd_proxy_unit,
    image_environment,
    image_file,
    peer_url,
    quote,
    secrets_dir,
    unit_name,
    url,
)
from tasks.model.errors import ConfigError, RecordError


def test_names():
    assert unit_name("web") == "air-web.service"
    assert container_name("web") == "air-web"


def test_component_unit(cluster):
    assert component_unit(cluster, cluster.component("web"), "10.0.0.2") == """\
[Unit]
Description=Air web
After=docker.service etcd-member.service
Requires=docker.service

[Service]
EnvironmentFile=/etc/air/images/web.env
ExecStartPre=-/usr/bin/docker rm -f air-web
ExecStart=/usr/bin/docker run --rm --name air-web --network host --label air.version=${AIR_VERSION} \
-e AIR_COMPONENT=web -e AIR_VERSION=${AIR_VERSION} -e AIR_MACHINE=10.0.0.2 -e AIR_PORT=8080 \
-e AIR_ETCD=http://127.0.0.1:2379 -e AIR_ETCD_PREFIX=/air/prod/app/ \
-v /etc/air/state:/air/state:ro -v /var/lib/air/web:/air/data \
${AIR_IMAGE}
ExecStop=/usr/bin/docker stop --time 20 air-web
TimeoutStopSec=35
Restart=on-failure
RestartSec=2

[Install]
WantedBy=multi-user.target
"""


def test_a_stop_signal_goes_to_docker_run(cluster):
    web = replace(cluster.component("web"), stop_signal="SIGQUIT")
    unit = component_unit(cluster, web, "10.0.0.2")
    assert "ExecStart=/usr/bin/docker run --rm --name air-web --network host --stop-signal SIGQUIT --label " in unit
    assert "\nExecStop=/usr/bin/docker stop --time 20 air-web\nTimeoutStopSec=35\n" in unit


def test_a_stop_command_runs_in_the_container_before_docker_stop(cluster):
    web = replace(cluster.component("web"), stop_command="bin/web stop --graceful")
    unit = component_unit(cluster, web, "10.0.0.2")
    assert "--stop-signal" not in unit
    assert ("\nExecStop=-/usr/bin/timeout 20 /usr/bin/docker exec air-web sh -c \"bin/web stop --graceful\"\n"
            "ExecStop=-/usr/bin/docker stop --time 20 air-web\nTimeoutStopSec=55\n") in unit


def test_a_component_with_secrets_mounts_its_own_folder_only(cluster):
    web = replace(cluster.component("web"), secrets=("db_password",))
    unit = component_unit(cluster, web, "10.0.0.2")
    assert " -v /etc/air/secrets/web:/air/secrets:ro " in unit
    assert unit.count("/etc/air/secrets") == 1
    assert secrets_dir("web") == "/etc/air/secrets/web"


def test_a_component_with_a_user_runs_as_it_and_owns_its_data_folder(cluster):
    web = replace(cluster.component("web"), user=1000)
    unit = component_unit(cluster, web, "10.0.0.2")
    assert ("ExecStart=/usr/bin/docker run --rm --name air-web --network host --user 1000 "
            "--label air.version=${AIR_VERSION} -e ") in unit
    assert "\nExecStartPre=/usr/bin/install -d -o 1000 -m 0700 /var/lib/air/web\nExecStart=" in unit


def test_a_root_component_has_no_user_flag_nor_ownership_step(cluster):
    unit = component_unit(cluster, cluster.component("web"), "10.0.0.2")
    assert "--user" not in unit and "install -d" not in unit


def test_the_release_is_the_image_file_the_unit_reads_and_the_same_unit_runs_every_release(cluster):
    pinned = "registry.example.org:5000/aircloak/prod_web@sha256:" + "e" * 64
    assert image_file("web") == "/etc/air/images/web.env"
    assert image_environment("1.2.3", pinned) == f"AIR_VERSION=1.2.3\nAIR_IMAGE={pinned}\n"
    assert image_environment("2.0.0-rc.1+b7", "[fd00::1]:5000/ns/prod_worker:2.0.0-rc.1+b7") == \
        "AIR_VERSION=2.0.0-rc.1+b7\nAIR_IMAGE=[fd00::1]:5000/ns/prod_worker:2.0.0-rc.1+b7\n"
    with pytest.raises(RecordError, match="not a plain version or image reference"):
        image_environment("1.2.3\nAIR_IMAGE=evil", pinned)
    unit = component_unit(cluster, cluster.component("web"), "10.0.0.2")
    assert unit.splitlines()[8].endswith(" -v /var/lib/air/web:/air/data ${AIR_IMAGE}")
    assert "1.2.3" not in unit and "sha256" not in unit


def test_component_unit_on_ipv6(cluster):
    unit = component_unit(cluster, cluster.component("worker"), "fd00::2")
    assert unit.splitlines()[8] == (
        "ExecStart=/usr/bin/docker run --rm --name air-worker --network host --label air.version=${AIR_VERSION} "
        "-e AIR_COMPONENT=worker -e AIR_VERSION=${AIR_VERSION} -e AIR_MACHINE=fd00::2 -e AIR_PORT=9090 "
        "-e AIR_ETCD=http://127.0.0.1:2379 -e AIR_ETCD_PREFIX=/air/prod/app/ "
        "-v /etc/air/state:/air/state:ro -v /var/lib/air/worker:/air/data "
        "${AIR_IMAGE}")


@pytest.mark.parametrize("word, quoted", [
    ("plain-word_1.2:3/x=y,[::1]", "plain-word_1.2:3/x=y,[::1]"),
    ("two words", '"two words"'),
    ('say "hi"', '"say \\"hi\\""'),
    ("back\\slash", '"back\\\\slash"'),
    ("100%", '"100%%"'),
    ("$HOME", '"$$HOME"'),
    (";", '";"'),
    ("", '""'),
])
def test_quote(word, quoted):
    assert quote(word) == quoted


@pytest.mark.parametrize("word", ["two\nlines", "cr\r", "tab\t", "esc\x1b[2J", "del\x7f"])
def test_quote_refuses_control_characters_with_a_config_error(word):
    with pytest.raises(ConfigError, match="control character in unit command word"):
        quote(word)


def test_url():
    assert url("10.0.0.1", 2379) == "http://10.0.0.1:2379"
    assert url("fd00::1", 2380) == "http://[fd00::1]:2380"
    assert peer_url("10.0.0.1") == "https://10.0.0.1:2380"
    assert peer_url("fd00::1") == "https://[fd00::1]:2380"


def test_etcd_dropin(cluster):
    assert etcd_dropin(cluster, "10.0.0.2", cluster.machines, "new") == """\
[Service]
Environment=ETCD_NAME=10.0.0.2
Environment=ETCD_INITIAL_CLUSTER=10.0.0.1=https://10.0.0.1:2380,10.0.0.2=https://10.0.0.2:2380,10.0.0.3=https://10.0.0.3:2380
Environment=ETCD_INITIAL_CLUSTER_STATE=new
Environment=ETCD_INITIAL_CLUSTER_TOKEN=air-prod
Environment=ETCD_INITIAL_ADVERTISE_PEER_URLS=https://10.0.0.2:2380
Environment=ETCD_LISTEN_PEER_URLS=https://10.0.0.2:2380
Environment=ETCD_LISTEN_CLIENT_URLS=http://127.0.0.1:2379,https://10.0.0.2:2379
Environment=ETCD_ADVERTISE_CLIENT_URLS=http://127.0.0.1:2379
Environment=ETCD_CERT_FILE=/etc/air/etcd-peer/peer.crt
Environment=ETCD_KEY_FILE=/etc/air/etcd-peer/peer.key
Environment=ETCD_TRUSTED_CA_FILE=/etc/air/etcd-peer/ca.crt
Environment=ETCD_CLIENT_CERT_AUTH=true
Environment=ETCD_PEER_CERT_FILE=/etc/air/etcd-peer/peer.crt
Environment=ETCD_PEER_KEY_FILE=/etc/air/etcd-peer/peer.key
Environment=ETCD_PEER_TRUSTED_CA_FILE=/etc/air/etcd-peer/ca.crt
Environment=ETCD_PEER_CLIENT_CERT_AUTH=true
Environment=ETCD_DATA_DIR=/var/lib/etcd/member
"""


def test_etcd_dropin_ipv6_existing(cluster):
    assert etcd_dropin(cluster, "fd00::3", ["fd00::1", "fd00::3"], "existing") == """\
[Service]
Environment=ETCD_NAME=fd00::3
Environment=ETCD_INITIAL_CLUSTER=fd00::1=https://[fd00::1]:2380,fd00::3=https://[fd00::3]:2380
Environment=ETCD_INITIAL_CLUSTER_STATE=existing
Environment=ETCD_INITIAL_CLUSTER_TOKEN=air-prod
Environment=ETCD_INITIAL_ADVERTISE_PEER_URLS=https://[fd00::3]:2380
Environment=ETCD_LISTEN_PEER_URLS=https://[fd00::3]:2380
Environment=ETCD_LISTEN_CLIENT_URLS=http://127.0.0.1:2379,https://[fd00::3]:2379
Environment=ETCD_ADVERTISE_CLIENT_URLS=http://127.0.0.1:2379
Environment=ETCD_CERT_FILE=/etc/air/etcd-peer/peer.crt
Environment=ETCD_KEY_FILE=/etc/air/etcd-peer/peer.key
Environment=ETCD_TRUSTED_CA_FILE=/etc/air/etcd-peer/ca.crt
Environment=ETCD_CLIENT_CERT_AUTH=true
Environment=ETCD_PEER_CERT_FILE=/etc/air/etcd-peer/peer.crt
Environment=ETCD_PEER_KEY_FILE=/etc/air/etcd-peer/peer.key
Environment=ETCD_PEER_TRUSTED_CA_FILE=/etc/air/etcd-peer/ca.crt
Environment=ETCD_PEER_CLIENT_CERT_AUTH=true
Environment=ETCD_DATA_DIR=/var/lib/etcd/member
"""


@pytest.mark.parametrize("state", ["", "New", "joining", None])
def test_etcd_dropin_refuses_unknown_state(cluster, state):
    with pytest.raises(ValueError, match="state"):
        etcd_dropin(cluster, "10.0.0.1", cluster.machines, state)


def test_etcd_dropin_refuses_machine_outside_members(cluster):
    with pytest.raises(ValueError, match="10.0.0.9"):
        etcd_dropin(cluster, "10.0.0.9", cluster.machines, "existing")


def test_etcd_dropin_serves_the_v2_api_when_the_cluster_asks(cluster):
    assert "Environment=ETCD_ENABLE_V2" not in etcd_dropin(cluster, "10.0.0.2", cluster.machines, "new")
    v2 = replace(cluster, etcd_v2=True)
    assert etcd_dropin(v2, "10.0.0.2", cluster.machines, "new").endswith(
        "Environment=ETCD_DATA_DIR=/var/lib/etcd/member\nEnvironment=ETCD_ENABLE_V2=true\n")


def test_etcd_proxy_unit_forwards_loopback_to_the_members_over_tls():
    assert etcd_proxy_unit(["10.0.0.1", "fd00::2"]) == """\
[Unit]
Description=Air etcd proxy (to the cluster's etcd members)
After=network-online.target
Wants=network-online.target
StartLimitIntervalSec=0

[Service]
User=etcd
StateDirectory=etcd/proxy
ExecStart=/usr/bin/etcd grpc-proxy start --endpoints=10.0.0.1:2379,[fd00::2]:2379 --listen-addr=127.0.0.1:2379 \
--cert=/etc/air/etcd-peer/peer.crt --key=/etc/air/etcd-peer/peer.key --cacert=/etc/air/etcd-peer/ca.crt \
--data-dir=/var/lib/etcd/proxy
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
"""


def test_etcd_proxy_unit_needs_a_member():
    with pytest.raises(ValueError):
        etcd_proxy_unit([])


def test_a_member_listens_for_the_workers_proxies_over_tls_with_client_certificates(cluster):
    dropin = etcd_dropin(cluster, "10.0.0.2", cluster.machines, "new")
    assert "ETCD_LISTEN_CLIENT_URLS=http://127.0.0.1:2379,https://10.0.0.2:2379\n" in dropin
    assert "ETCD_CLIENT_CERT_AUTH=true\n" in dropin
    assert "ETCD_ADVERTISE_CLIENT_URLS=http://127.0.0.1:2379\n" in dropin


def test_etcd_dropin_names_a_bcrypt_cost_other_than_etcds_default(cluster):
    assert "BCRYPT" not in etcd_dropin(cluster, "10.0.0.2", cluster.machines, "new")
    cheap = replace(cluster, etcd_bcrypt_cost=4)
    assert etcd_dropin(cheap, "10.0.0.2", cluster.machines, "new").endswith(
        "Environment=ETCD_DATA_DIR=/var/lib/etcd/member\nEnvironment=ETCD_BCRYPT_COST=4\n")



import copy

import pytest
import yaml

import cloudconfig
from cloudconfig import File, base, files, final, render, secret_paths, started_units
from cloudconfig.units import component_unit, etcd_dropin
from tasks.model.release import Image, Release

KEYS = ["ssh-ed25519 AAAA one", "ssh-ed25519 BBBB two"]
CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
AUTH = ("deploy", "s3cret")  # base64("deploy:s3cret") == "ZGVwbG95OnMzY3JldA=="
REGISTRY_WEB = "registry.example.org:5000/aircloak/prod_web@sha256:" + "e" * 64  # pinned by its manifest digest
RELEASE = Release((Image("worker", "1.3.0", "sha256:" + "b" * 64),
                   Image("web", "1.2.3", "sha256:" + "a" * 64, "sha256:" + "e" * 64)))

EXPECTED_BASE = {
    "ssh_authorized_keys": ["ssh-ed25519 AAAA one", "ssh-ed25519 BBBB two"],
    "write_files": [
        {"path": "/etc/docker/certs.d/registry.example.org:5000/ca.crt", "permissions": "0644",
         "content": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"},
        {"path": "/root/.docker/config.json", "permissions": "0600",
         "content": '{"auths": {"registry.example.org:5000": {"auth": "ZGVwbG95OnMzY3JldA=="}}}\n'},
    ],
    "coreos": {"units": []},
}

EXPECTED_BASE_YAML = """\
#cloud-config
ssh_authorized_keys:
- ssh-ed25519 AAAA one
- ssh-ed25519 BBBB two
write_files:
- path: /etc/docker/certs.d/registry.example.org:5000/ca.crt
  permissions: '0644'
  content: |
    -----BEGIN CERTIFICATE-----
    MIIB
    -----END CERTIFICATE-----
- path: /root/.docker/config.json
  permissions: '0600'
  content: |
    {"auths": {"registry.example.org:5000": {"auth": "ZGVwbG95OnMzY3JldA=="}}}
coreos:
  units: []
"""

EXPECTED_FINAL_YAML = """\
#cloud-config
ssh_authorized_keys:
- ssh-ed25519 AAAA one
- ssh-ed25519 BBBB two
write_files:
- path: /etc/docker/certs.d/registry.example.org:5000/ca.crt
  permissions: '0644'
  content: |
    -----BEGIN CERTIFICATE-----
    MIIB
    -----END CERTIFICATE-----
- path: /root/.docker/config.json
  permissions: '0600'
  content: |
    {"auths": {"registry.example.org:5000": {"auth": "ZGVwbG95OnMzY3JldA=="}}}
- path: /etc/air/state/release
  permissions: '0644'
  content: |
    0570bb33ff35
- path: /etc/air/state/components
  permissions: '0644'
  content: |
    web 1.2.3 8080
    worker 1.3.0 9090
- path: /etc/air/images/web.env
  permissions: '0644'
  content: |
    AIR_VERSION=1.2.3
    AIR_IMAGE=registry.example.org:5000/aircloak/prod_web@sha256:eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee
- path: /etc/air/images/worker.env
  permissions: '0644'
  content: |
    AIR_VERSION=1.3.0
    AIR_IMAGE=registry.example.org:5000/aircloak/prod_worker:1.3.0
coreos:
  units:
  - name: etcd-member.service
    enable: true
    command: start
    drop_ins:
    - name: 20-air.conf
      content: |
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
  - name: air-web.service
    enable: true
    command: start
    content: |
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
  - name: air-worker.service
    enable: true
    command: start
    content: |
      [Unit]
      Description=Air worker
      After=docker.service etcd-member.service
      Requires=docker.service

      [Service]
      EnvironmentFile=/etc/air/images/worker.env
      ExecStartPre=-/usr/bin/docker rm -f air-worker
      ExecStart=/usr/bin/docker run --rm --name air-worker --network host --label air.version=${AIR_VERSION} \
-e AIR_COMPONENT=worker -e AIR_VERSION=${AIR_VERSION} -e AIR_MACHINE=10.0.0.2 -e AIR_PORT=9090 \
-e AIR_ETCD=http://127.0.0.1:2379 -e AIR_ETCD_PREFIX=/air/prod/app/ \
-v /etc/air/state:/air/state:ro -v /var/lib/air/worker:/air/data \
${AIR_IMAGE}
      ExecStop=/usr/bin/docker stop --time 20 air-worker
      TimeoutStopSec=35
      Restart=on-failure
      RestartSec=2

      [Install]
      WantedBy=multi-user.target
  update:
    reboot_strategy: 'off'
"""


@pytest.fixture
def base_doc(cluster):
    return base(cluster, KEYS, CA, AUTH)


@pytest.fixture
def final_doc(cluster, base_doc):
    return final(cluster, "10.0.0.2", cluster.machines, "new", RELEASE, base_doc)


def test_release_id_is_the_one_written_in_expected():
    assert RELEASE.id == "0570bb33ff35"


def test_base(base_doc):
    assert base_doc == EXPECTED_BASE
    assert render(base_doc) == EXPECTED_BASE_YAML


def test_base_without_registry_ca(cluster):
    assert base(cluster, KEYS, None, AUTH) == {
        "ssh_authorized_keys": KEYS,
        "write_files": [EXPECTED_BASE["write_files"][1]],
        "coreos": {"units": []},
    }


def test_final(final_doc):
    assert render(final_doc) == EXPECTED_FINAL_YAML
    assert final_doc == yaml.safe_load(EXPECTED_FINAL_YAML)


def test_final_leaves_base_doc_unchanged(cluster, base_doc):
    before = copy.deepcopy(base_doc)
    final(cluster, "10.0.0.2", cluster.machines, "new", RELEASE, base_doc)
    assert base_doc == before == EXPECTED_BASE


def test_final_refuses_unknown_state(cluster, base_doc):
    with pytest.raises(ValueError):
        final(cluster, "10.0.0.2", cluster.machines, "restart", RELEASE, base_doc)


@pytest.mark.parametrize("doc", ["base_doc", "final_doc"])
def test_render_reads_back(request, doc):
    doc = request.getfixturevalue(doc)
    text = render(doc)
    assert text.startswith("#cloud-config\n")
    assert yaml.safe_load(text) == doc


@pytest.mark.parametrize("doc", ["base_doc", "final_doc"])
def test_libyamls_emitter_writes_the_same_text_as_pyyamls(request, doc):
    """Machines keep the digest of the cloud config air-deploy wrote: which emitter renders it must
    not change a byte of it."""
    doc = request.getfixturevalue(doc)

    class PurePython(yaml.SafeDumper):
        pass
    PurePython.add_representer(str, cloudconfig._represent_str)
    assert render(doc) == cloudconfig.HEADER + yaml.dump(doc, Dumper=PurePython, sort_keys=False,
                                                         default_flow_style=False)


def test_render_does_not_change_yaml_globally(final_doc):
    render(final_doc)
    assert yaml.safe_dump({"a": "one\ntwo\n"}) == "a: 'one\n\n  two\n\n  '\n"


def test_files_of_base(base_doc):
    assert files(base_doc) == [
        File("/etc/docker/certs.d/registry.example.org:5000/ca.crt", CA, 0o644),
        File("/root/.docker/config.json",
             '{"auths": {"registry.example.org:5000": {"auth": "ZGVwbG95OnMzY3JldA=="}}}\n', 0o600),
    ]


def test_files_of_final(cluster, final_doc):
    web, worker = cluster.components
    assert files(final_doc) == files(EXPECTED_BASE) + [
        File("/etc/air/state/release", "0570bb33ff35\n", 0o644),
        File("/etc/air/state/components", "web 1.2.3 8080\nworker 1.3.0 9090\n", 0o644),
        File("/etc/air/images/web.env", f"AIR_VERSION=1.2.3\nAIR_IMAGE={REGISTRY_WEB}\n", 0o644),
        File("/etc/air/images/worker.env",
             "AIR_VERSION=1.3.0\nAIR_IMAGE=registry.example.org:5000/aircloak/prod_worker:1.3.0\n", 0o644),
        File("/etc/systemd/system/etcd-member.service.d/20-air.conf",
             etcd_dropin(cluster, "10.0.0.2", cluster.machines, "new"), 0o644),
        File("/etc/systemd/system/air-web.service", component_unit(cluster, web, "10.0.0.2"), 0o644),
        File("/etc/systemd/system/air-worker.service", component_unit(cluster, worker, "10.0.0.2"), 0o644),
    ]


def test_files_read_back_from_rendered_yaml(final_doc):
    assert files(yaml.safe_load(render(final_doc))) == files(final_doc)


def test_units(base_doc, final_doc):
    assert started_units(base_doc) == []
    assert started_units(final_doc) == ["etcd-member.service", "air-web.service", "air-worker.service"]


def test_secret_paths(base_doc, final_doc):
    assert secret_paths(base_doc) == ["/root/.docker/config.json"]
    assert secret_paths(final_doc) == ["/root/.docker/config.json"]


def test_file_repr_hides_content():
    assert "s3cret" not in repr(File("/root/.docker/config.json", "s3cret", 0o600))


def test_final_on_ipv6_machines(cluster):
    cluster = cluster.with_machines(["fd00::1", "fd00::2", "fd00::3"])
    doc = final(cluster, "fd00::1", cluster.machines, "existing", RELEASE, base(cluster, KEYS, None, AUTH))
    dropin = doc["coreos"]["units"][0]["drop_ins"][0]["content"]
    assert "Environment=ETCD_LISTEN_PEER_URLS=https://[fd00::1]:2380\n" in dropin
    assert yaml.safe_load(render(doc)) == doc
    assert cloudconfig.started_units(doc)[0] == "etcd-member.service"


# ---------------------------------------------------------------- the administrator's base, extended

ADMIN_BASE = """\
#cloud-config
ssh_authorized_keys:
- ssh-ed25519 CCCC admin
write_files:
- path: /etc/monitoring/agent.conf
  permissions: '0640'
  content: |
    server=monitor.example.org
coreos:
  units:
  - name: admin-monitor.service
    command: start
    content: |
      [Service]
      ExecStart=/usr/bin/monitor
users:
- name: ops
"""


def test_the_administrators_base_is_extended_and_nothing_of_it_replaced(cluster):
    admin = cloudconfig.parse(ADMIN_BASE, "m1:/var/lib/coreos-install/user_data")
    doc = final(cluster, "10.0.0.2", cluster.machines, "new", RELEASE, admin)
    assert doc["users"] == [{"name": "ops"}] and doc["ssh_authorized_keys"] == ["ssh-ed25519 CCCC admin"]
    assert [f["path"] for f in doc["write_files"]] == [
        "/etc/monitoring/agent.conf", "/etc/air/state/release", "/etc/air/state/components",
        "/etc/air/images/web.env", "/etc/air/images/worker.env"]
    assert [u["name"] for u in doc["coreos"]["units"]] == [
        "admin-monitor.service", "etcd-member.service", "air-web.service", "air-worker.service"]
    assert doc["coreos"]["update"] == {"reboot_strategy": "off"}
    # One document: the base's entries come first, byte for byte what it said.
    assert render(doc).startswith("#cloud-config\nssh_authorized_keys:\n- ssh-ed25519 CCCC admin\n")
    assert admin == cloudconfig.parse(ADMIN_BASE, "again")  # the base itself is left as it was


@pytest.mark.parametrize("base_text, message", [
    ("#cloud-config\ncoreos:\n  units:\n  - name: air-web.service\n",
     "unit air-web.service: the base cloud config has it, and so would the install"),
    ("#cloud-config\nwrite_files:\n- path: /etc/air/state/release\n  content: x\n",
     "write_files /etc/air/state/release: the base cloud config writes it, and so would the install"),
    ("#cloud-config\ncoreos:\n  update:\n    reboot_strategy: reboot\n",
     "coreos.update.reboot_strategy: the base cloud config says 'reboot', the install needs 'off'"),
])
def test_an_install_entry_that_would_replace_the_bases_is_a_conflict_naming_both(cluster, base_text, message):
    with pytest.raises(cloudconfig.Conflict) as conflict:
        final(cluster, "10.0.0.2", cluster.machines, "new", RELEASE, cloudconfig.parse(base_text, "x"))
    assert str(conflict.value) == message


@pytest.mark.parametrize("text, message", [
    ("ssh_authorized_keys: []\n", "m1:/u: not a cloud config (it does not start with #cloud-config)"),
    ("#cloud-config\n- a list\n", "m1:/u: expected a mapping of cloud-config sections"),
    ("#cloud-config\na: [\n", "m1:/u: malformed YAML"),
])
def test_parse_refuses_what_is_not_a_cloud_config(text, message):
    with pytest.raises(ValueError) as refused:
        cloudconfig.parse(text, "m1:/u")
    assert str(refused.value).startswith(message)


def test_ignition_has_every_key_file_and_unit_of_the_cloud_config(cluster, base_doc):
    doc = cloudconfig.merge(cloudconfig.parse(ADMIN_BASE, "x"), base_doc | {"ssh_authorized_keys": []})
    converted = cloudconfig.ignition(doc)
    assert converted["ignition"] == {"version": "3.3.0"}
    assert converted["passwd"] == {"users": [{"name": "core", "sshAuthorizedKeys": ["ssh-ed25519 CCCC admin"]}]}
    by_path = {f["path"]: f for f in converted["storage"]["files"]}
    assert set(by_path) == {f.path for f in files(doc) if not f.path.startswith("/etc/systemd/")}
    config = by_path["/root/.docker/config.json"]
    assert config["mode"] == 0o600 and config["overwrite"] is True
    assert config["contents"]["source"].startswith("data:,%7B%22auths%22")
    from urllib.parse import unquote
    assert unquote(by_path["/etc/monitoring/agent.conf"]["contents"]["source"][len("data:,"):]) == \
        "server=monitor.example.org\n"
    assert converted["systemd"]["units"] == [
        {"name": "admin-monitor.service", "enabled": True, "contents": "[Service]\nExecStart=/usr/bin/monitor\n"}]


def test_without_the_install_part_a_final_config_gives_back_its_base(cluster):
    admin = cloudconfig.parse(ADMIN_BASE, "x")
    part = cloudconfig.install_part(cluster, "10.0.0.2", cluster.machines, "existing", RELEASE)
    assert cloudconfig.without(cloudconfig.merge(admin, part), part) == admin


def test_a_worker_gets_the_etcd_proxy_instead_of_a_member_drop_in(cluster, base_doc):
    doc = final(cluster, "10.0.0.9", cluster.machines, "new", RELEASE, base_doc)
    etcd = doc["coreos"]["units"][0]
    assert etcd == {"name": "air-etcd-proxy.service", "enable": True, "command": "start",
                    "content": cloudconfig.units.etcd_proxy_unit(cluster.machines)}
    assert "etcd-member.service" not in started_units(doc)
    assert started_units(doc)[1:] == started_units(final(cluster, "10.0.0.2", cluster.machines, "new", RELEASE,
                                                         base_doc))[1:]

"""tasks/cluster.py: what a cluster file may say, and the one-line errors when it says something else.

Every error test checks the same contract: a ConfigError whose message is a
single line naming the file, the field and what was expected. Files are
written into tmp_path; nothing is contacted and no key file is read.
"""
import copy
from pathlib import Path

import pytest
import yaml

from tasks.model import cluster
from tasks.model.errors import ConfigError
from tasks.model.release import Image

ROOT = Path(__file__).resolve().parents[2]

VALID = {
    "namespace": "aircloak",
    "ssh": {"key": "keys/id_ed25519", "known_hosts": "keys/known_hosts"},
    "build": {"host": "build.example.com", "repository": "git@example.com:aircloak/air.git"},
    "registry": {"address": "registry.example.com:5000", "credentials": "registry.yaml"},
    "balancer": {"host": "192.0.2.10"},
    "machines": ["192.0.2.11", "192.0.2.12", "192.0.2.13"],
    "components": [{"name": "router", "port": 80}, {"name": "air_backend", "port": 8082}],
    "secrets": "secrets",
}


def write(directory: Path, name: str, data) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path

DELETE = object()


def variant(**changes) -> dict:
    """VALID with top-level or dotted fields changed; a value of DELETE removes the field."""
    data = copy.deepcopy(VALID)
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        target = data
        for parent in parents:
            target = target[parent]
        if value is DELETE:
            del target[key]
        else:
            target[key] = value
    return data


def error_of(directory: Path, name: str, data) -> str:
    """The message of the ConfigError that loading ``data`` as ``name`` raises; checked to be one line."""
    file = write(directory, name, data)
    with pytest.raises(ConfigError) as raised:
        cluster.load(name, directory)
    message = str(raised.value)
    assert "\n" not in message, message
    assert message.startswith(f"{file.resolve()}: "), message
    return message


# ---------------------------------------------------------------- a valid file and its defaults

def test_a_valid_file_loads_with_defaults_applied(tmp_path):
    write(tmp_path, "stage", VALID)
    c = cluster.load("stage", tmp_path)
    assert c.name == "stage" and c.file == tmp_path / "stage.yaml"
    assert c.build.checkout == "/aircloak/stage/air"
    assert c.build.branch == "master"
    assert (c.ssh.user, c.ssh.port) == ("core", 22)
    assert c.timeouts == cluster.Timeouts(connect=10, stop=30, healthy=60, lock=30, command=60, pull=300,
                                          alive=10, drain=30, reboot=600, build=1800, push=600)
    assert c.balancer == cluster.Balancer("192.0.2.10", None, 80, 443, "router", 3600, "/etc/haproxy/air/stage")
    assert c.cloud_config is None  # found per machine
    assert c.admin is None
    assert c.registry.ca is None
    assert c.components[0] == cluster.Component("router", 80, "/health", "components/router")
    assert c.machines == ("192.0.2.11", "192.0.2.12", "192.0.2.13")


def test_rollout_limits_default_to_one_at_a_time_and_are_read_as_n_or_percent(tmp_path):
    write(tmp_path, "stage", VALID)
    assert cluster.load("stage", tmp_path).rollout == cluster.RolloutLimits("1", 0, 10)
    write(tmp_path, "prod", variant(rollout={"max_unavailable": "25%", "max_failures": 2}))
    assert cluster.load("prod", tmp_path).rollout == cluster.RolloutLimits("25%", 2, 10)
    write(tmp_path, "test", variant(rollout={"max_unavailable": 3, "parallel": 4}))
    assert cluster.load("test", tmp_path).rollout == cluster.RolloutLimits("3", 0, 4)


def test_local_paths_are_relative_to_the_cluster_file_and_expand_home(tmp_path):
    write(tmp_path, "stage", variant(ssh__known_hosts="~/.ssh/known_hosts"))
    c = cluster.load("stage", tmp_path)
    assert c.ssh.key == (tmp_path / "keys" / "id_ed25519").resolve()
    assert c.ssh.known_hosts == Path("~/.ssh/known_hosts").expanduser().resolve()


def test_checkout_names_its_own_cluster(tmp_path):
    write(tmp_path, "prod", variant(build__checkout="/srv/{cluster}/src"))
    assert cluster.load("prod", tmp_path).build.checkout == "/srv/prod/src"


def test_timeouts_given_in_part_keep_the_other_defaults(tmp_path):
    write(tmp_path, "prod", variant(timeouts={"healthy": 180}))
    assert cluster.load("prod", tmp_path).timeouts == cluster.Timeouts(
        connect=10, stop=30, healthy=180, lock=30, command=60, pull=300, alive=10, drain=30, reboot=600, build=1800, push=600)


def test_image_names(tmp_path):
    write(tmp_path, "stage", VALID)
    c = cluster.load("stage", tmp_path)
    assert c.image("router") == "aircloak/stage_router"
    assert c.image_ref("router", "1.0.2") == "registry.example.com:5000/aircloak/stage_router:1.0.2"
    manifest = "sha256:" + "e" * 64
    assert c.pinned_ref(Image("router", "1.0.2", "sha256:c", manifest)) == \
        f"registry.example.com:5000/aircloak/stage_router@{manifest}"
    assert c.pinned_ref(Image("router", "1.0.2", "sha256:c")) == c.image_ref("router", "1.0.2")  # recorded before


def test_registry_accounts_token_hosts_and_images_kept(tmp_path):
    write(tmp_path, "stage", VALID)
    c = cluster.load("stage", tmp_path)
    assert (c.registry.pull_credentials, c.registry.token_hosts, c.registry.keep) == (None, (), 3)
    assert c.registry.machine_credentials == c.registry.credentials
    write(tmp_path, "stage", variant(registry__pull_credentials="pull.yaml", registry__token_hosts=["auth.example.com"],
                                     registry__keep=5))
    c = cluster.load("stage", tmp_path)
    assert (c.registry.machine_credentials, c.registry.token_hosts, c.registry.keep) == \
        (tmp_path / "pull.yaml", ("auth.example.com",), 5)


def test_include_completes_the_file_and_its_own_fields_win(tmp_path):
    (tmp_path / "base").mkdir()
    base = variant(namespace="base", ssh__user="root")
    del base["components"]
    (tmp_path / "base" / "common.yaml").write_text(yaml.safe_dump(base))
    write(tmp_path, "stage", {"include": "base/common.yaml", "namespace": "own",
                              "ssh": {"port": 2222}, "components": VALID["components"]})
    c = cluster.load("stage", tmp_path)
    assert c.namespace == "own"
    assert (c.ssh.user, c.ssh.port) == ("root", 2222)
    # Paths are relative to the file that names the cluster, not to the included one.
    assert c.ssh.key == (tmp_path / "keys" / "id_ed25519").resolve()


# ---------------------------------------------------------------- errors, one line each

def test_unknown_cluster_lists_the_known_ones(tmp_path):
    write(tmp_path, "stage", VALID)
    write(tmp_path, "prod", VALID)
    with pytest.raises(ConfigError) as raised:
        cluster.load("staging", tmp_path)
    message = str(raised.value)
    assert "\n" not in message
    assert message == f"unknown cluster 'staging': no {tmp_path / 'staging.yaml'} (known: prod, stage)"


@pytest.mark.parametrize("name", ["Prod", "prod-1", "1prod", "", "../etc/passwd", "a" * 41])
def test_bad_cluster_name_is_refused_before_any_file_is_read(tmp_path, name):
    with pytest.raises(ConfigError) as raised:
        cluster.load(name, tmp_path)
    message = str(raised.value)
    assert "\n" not in message
    assert message == f"cluster name {name!r} is not valid ({cluster.KINDS['name']})"


def test_malformed_yaml_names_the_line(tmp_path):
    message = error_of(tmp_path, "stage", "namespace: aircloak\nssh:\n  user: [core\n  port: 22\n")
    assert "malformed YAML at line" in message


def test_a_file_that_is_not_a_mapping(tmp_path):
    message = error_of(tmp_path, "stage", "- just\n- a list\n")
    assert "top level: expected a mapping of fields" in message


@pytest.mark.parametrize("missing, shown", [
    ("namespace", "namespace: missing (a Docker repository namespace"),
    ("ssh__key", "ssh.key: missing (a path on this machine"),
    ("machines", "machines: missing (a non-empty list of distinct IPv4 or IPv6 addresses"),
    ("build", "build: missing (The build server"),
    ("components", "components: missing (The Air components"),
])
def test_missing_field(tmp_path, missing, shown):
    message = error_of(tmp_path, "stage", variant(**{missing: DELETE}))
    assert f": {shown}" in message


def test_missing_field_of_a_component(tmp_path):
    message = error_of(tmp_path, "stage", variant(components=[{"name": "router"}]))
    assert ": components[0].port: missing (a TCP port (1 to 65535)" in message


def test_bad_address_in_machines(tmp_path):
    message = error_of(tmp_path, "stage", variant(machines=["192.0.2.11", "192.0.2.300"]))
    assert message.endswith(f": machines[1]: expected {cluster.KINDS['address']}, got '192.0.2.300'")


def test_a_host_name_is_not_a_machine_address(tmp_path):
    message = error_of(tmp_path, "stage", variant(machines=["m1.example.com"]))
    assert ": machines[0]: expected an IPv4 or IPv6 address" in message


def test_duplicate_machines(tmp_path):
    message = error_of(tmp_path, "stage", variant(machines=["192.0.2.11", "192.0.2.12", "192.0.2.11"]))
    assert f": machines: expected {cluster.KINDS['addresses']}, got " in message


def test_duplicate_machines_in_different_spellings(tmp_path):
    message = error_of(tmp_path, "stage", variant(machines=["2001:db8::1", "2001:DB8:0::1"]))
    assert ": machines: expected a non-empty list of distinct" in message


def test_empty_machines(tmp_path):
    message = error_of(tmp_path, "stage", variant(machines=[]))
    assert ": machines: expected a non-empty list of distinct" in message


@pytest.mark.parametrize("field, value, expected", [
    ("components", [{"name": "router", "port": "eighty"}], "components[0].port: expected a TCP port (1 to 65535), got 'eighty'"),
    ("ssh__port", "eighty", "ssh.port: expected a TCP port (1 to 65535), got 'eighty'"),
    ("ssh__port", True, "ssh.port: expected a TCP port (1 to 65535), got True"),
    ("ssh__port", 0, "ssh.port: expected a TCP port (1 to 65535), got 0"),
    ("components", [{"name": "router", "port": 80, "health": "/health;reboot"}],
     "components[0].health: expected an HTTP path starting with / (letters, digits, . _ ~ / ? = & % + -), "
     "got '/health;reboot'"),
    ("ssh__port", 70000, "ssh.port: expected a TCP port (1 to 65535), got 70000"),
    ("balancer", {"host": "192.0.2.9", "http_port": 65536},
     "balancer.http_port: expected a TCP port (1 to 65535), got 65536"),
    ("ssh__user", 17, "ssh.user: expected a non-empty string, got 17"),
    ("ssh", "root", "ssh: expected a mapping of fields, got 'root'"),
    ("namespace", "AirCloak", "namespace: expected a Docker repository namespace"),
    ("registry__address", "registry.example.com", "registry.address: expected HOST:PORT, got 'registry.example.com'"),
    ("registry__address", "registry.example.com:99999", "registry.address: expected HOST:PORT"),
    ("build__host", "build server", "build.host: expected an IP address or a DNS name, got 'build server'"),
    ("build__checkout", "/aircloak/../etc", "build.checkout: expected an absolute path on the remote host"),
    ("build__checkout", "aircloak/air", "build.checkout: expected an absolute path on the remote host"),
    ("components", [{"name": "router", "port": 80, "health": "health"}], "components[0].health: expected an HTTP path"),
    ("components", [{"name": "router", "port": 80, "source": "../other"}], "components[0].source: expected a relative path"),
    ("components", [{"name": "Router", "port": 80}], "components[0].name: expected a lower-case name"),
    ("components", {"name": "router", "port": 80}, "components: expected a non-empty list"),
    ("timeouts", {"healthy": -5}, "timeouts.healthy: expected a whole number of seconds, from 1 to 86400 (a day), got -5"),
    ("components", [{"name": "router", "port": 80, "proxy": {"http": 8080, "protocol": "v3"}}],
     "components[0].proxy.protocol: expected v1 or v2 (the PROXY protocol's text or binary version), got 'v3'"),
    ("components", [{"name": "router", "port": 80, "proxy": {"https": 8443}}],
     "components[0].proxy.http: missing (a TCP port (1 to 65535): PROXY protocol, then HTTP.)"),
    ("balancer", {"host": "192.0.2.9", "bind": "all"}, "balancer.bind: expected an IPv4 or IPv6 address, got 'all'"),
    ("balancer", {"host": "192.0.2.9", "component": "nginx"},
     "balancer.component: expected one of the components (router, air_backend), got 'nginx'"),
    ("components", [{"name": "router", "port": 80, "health_status": 99}],
     "components[0].health_status: expected an HTTP status code (100 to 599), got 99"),
    ("components", [{"name": "router", "port": 80, "health_status": "403"}],
     "components[0].health_status: expected an HTTP status code (100 to 599), got '403'"),
    ("components", [{"name": "router", "port": 80, "check": "udp"}],
     "components[0].check: expected `http` (the health path must answer) or `tcp`"),
    ("components", [{"name": "router", "port": 80, "stop_signal": "SIGQUIT; reboot"}],
     "components[0].stop_signal: expected a signal name such as SIGTERM, SIGQUIT, SIGINT, got 'SIGQUIT; reboot'"),
    ("components", [{"name": "router", "port": 80, "stop_command": " "}],
     "components[0].stop_command: expected a non-empty string on one line (no control characters), got ' '"),
    ("registry__token_hosts", "auth.example.com", "registry.token_hosts: expected a list of IP addresses or DNS "
     "names, got 'auth.example.com'"),
    ("registry__token_hosts", ["auth example"], "registry.token_hosts[0]: expected an IP address or a DNS name"),
    ("registry__keep", 0, "registry.keep: expected a whole number from 1 to 1000, got 0"),
    ("rollout", {"max_unavailable": 0}, "rollout.max_unavailable: expected a number of machines (1 to 1000) or a "
     "percent of the machines (`25%`: 1% to 100%), got 0"),
    ("rollout", {"max_unavailable": "0%"}, "rollout.max_unavailable: expected a number of machines"),
    ("rollout", {"max_unavailable": "25 %"}, "rollout.max_unavailable: expected a number of machines"),
    ("rollout", {"max_unavailable": True}, "rollout.max_unavailable: expected a number of machines"),
    ("rollout", {"max_failures": -1}, "rollout.max_failures: expected a whole number from 0 to 1000, got -1"),
    ("rollout", {"parallel": 0}, "rollout.parallel: expected a whole number from 1 to 1000, got 0"),
])
def test_wrong_type_or_shape(tmp_path, field, value, expected):
    message = error_of(tmp_path, "stage", variant(**{field: value}))
    assert f": {expected}" in message


@pytest.mark.parametrize("field, expected", [
    ("balancer__hots", "balancer.hots: unknown field (expected one of: host, bind, http_port, https_port, component, "
                        "tunnel, folder)"),
    ("registery", "registery: unknown field (expected one of: include, namespace, ssh, "),
])
def test_unknown_field(tmp_path, field, expected):
    message = error_of(tmp_path, "stage", variant(**{field: "x"}))
    assert f": {expected}" in message


def test_unknown_field_of_a_component(tmp_path):
    message = error_of(tmp_path, "stage", variant(components=[{"name": "router", "port": 80, "helth": "/h"}]))
    assert (": components[0].helth: unknown field (expected one of: name, port, health, health_status, "
            "health_body, check, stop_signal, stop_command, secrets, reads, user, source, dockerfile, ignore, args, "
            "target, prepare, prepare_timeout, repository, branch, https_port, proxy)") in message


def test_proxy_ports_and_the_balanced_component(tmp_path):
    write(tmp_path, "stage", variant(balancer={"host": "192.0.2.10", "component": "air_backend", "bind": "192.0.2.20"},
                                     components=[{"name": "router", "port": 80},
                                                 {"name": "air_backend", "port": 8082, "https_port": 8443,
                                                  "proxy": {"http": 8080}}]))
    c = cluster.load("stage", tmp_path)
    assert c.front.name == "air_backend" and c.balancer.bind == "192.0.2.20"
    assert c.front.proxy == cluster.Proxy(http=8080, https=None, protocol="v2") and c.front.https_port == 8443
    assert c.component("router").proxy is None and c.component("router").https_port is None


def test_health_and_stop_rules_default_to_http_200_and_sigterm(tmp_path):
    write(tmp_path, "stage", VALID)
    router = cluster.load("stage", tmp_path).components[0]
    assert (router.health, router.health_status, router.health_body, router.check) == ("/health", 200, None, "http")
    assert (router.stop_signal, router.stop_command) == ("SIGTERM", None)


def test_health_and_stop_rules_of_a_component(tmp_path):
    write(tmp_path, "stage", variant(components=[
        {"name": "router", "port": 80, "health": "/", "health_status": 403, "health_body": "Forbidden",
         "stop_signal": "QUIT"},
        {"name": "queue", "port": 5672, "check": "tcp", "stop_command": "bin/queue stop"}]))
    router, queue = cluster.load("stage", tmp_path).components
    assert (router.health, router.health_status, router.health_body, router.stop_signal) == \
        ("/", 403, "Forbidden", "SIGQUIT")
    assert (queue.check, queue.stop_command, queue.stop_signal) == ("tcp", "bin/queue stop", "SIGTERM")


def test_duplicate_component_names(tmp_path):
    message = error_of(tmp_path, "stage", variant(components=[{"name": "router", "port": 80},
                                                              {"name": "router", "port": 81}]))
    assert ": components: expected distinct component names, got ['router', 'router']" in message


def test_admin_component_must_be_a_component(tmp_path):
    message = error_of(tmp_path, "stage", variant(admin={"component": "air_frontend", "command": "/bin/x"}))
    assert ": admin.component: expected one of the components (router, air_backend), got 'air_frontend'" in message


def test_include_of_a_missing_file(tmp_path):
    message = error_of(tmp_path, "stage", variant(include="common.yaml"))
    assert message.endswith(f": include: {tmp_path.resolve() / 'common.yaml'} does not exist")


def test_include_of_a_missing_sandbox_file_says_to_bring_the_sandbox_up(tmp_path):
    message = error_of(tmp_path, "local", {"include": ".sandbox/cluster.yaml", "namespace": "aircloak"})
    assert message.endswith(f": include: {tmp_path.resolve() / '.sandbox' / 'cluster.yaml'} does not exist "
                            "(run `fab sandbox.up` first)")


def test_malformed_included_file_is_named(tmp_path):
    (tmp_path / "common.yaml").write_text("ssh: {user: root\n")
    write(tmp_path, "stage", variant(include="common.yaml"))
    with pytest.raises(ConfigError) as raised:
        cluster.load("stage", tmp_path)
    assert str(raised.value).startswith(f"{(tmp_path / 'common.yaml').resolve()}: malformed YAML")


def test_include_must_be_a_path(tmp_path):
    message = error_of(tmp_path, "stage", variant(include=["a.yaml"]))
    assert ": include: expected a path on this machine" in message


def test_unknown_component_is_named(tmp_path):
    write(tmp_path, "stage", VALID)
    with pytest.raises(ConfigError) as raised:
        cluster.load("stage", tmp_path).component("frontend")
    assert str(raised.value) == f"{tmp_path / 'stage.yaml'}: no component 'frontend' (known: router, air_backend)"


# ---------------------------------------------------------------- with_machines (--machines)

@pytest.fixture
def stage(tmp_path):
    write(tmp_path, "stage", VALID)
    return cluster.load("stage", tmp_path)


def test_with_machines_replaces_the_list_in_canonical_form(stage):
    other = stage.with_machines(["192.0.2.21", " 2001:DB8::1 "])
    assert other.machines == ("192.0.2.21", "2001:db8::1")
    assert other.name == stage.name and other.components == stage.components
    assert stage.machines == ("192.0.2.11", "192.0.2.12", "192.0.2.13")  # the original is untouched


def test_with_machines_accepts_the_command_line_form(stage):
    assert stage.with_machines("192.0.2.21,192.0.2.22,").machines == ("192.0.2.21", "192.0.2.22")


@pytest.mark.parametrize("machines, expected", [
    ("192.0.2.21,nope", "command line: --machines[1]: expected an IPv4 or IPv6 address, got 'nope'"),
    ("", "command line: --machines: expected a non-empty list of distinct IPv4 or IPv6 addresses, got []"),
    ([], "command line: --machines: expected a non-empty list of distinct IPv4 or IPv6 addresses, got []"),
    (["192.0.2.21", "192.0.2.21"], "command line: --machines: expected a non-empty list of distinct"),
    (None, "command line: --machines: expected a non-empty list of distinct IPv4 or IPv6 addresses, got None"),
])
def test_with_machines_validates(stage, machines, expected):
    with pytest.raises(ConfigError) as raised:
        stage.with_machines(machines)
    assert "\n" not in str(raised.value)
    assert str(raised.value).startswith(expected)


# ---------------------------------------------------------------- the files in clusters/ and their documentation

def test_every_kind_has_its_checker():
    """KINDS says what each kind is (the README); CHECKERS checks it (load): the same kinds."""
    assert set(cluster.CHECKERS) == set(cluster.KINDS)


def test_readme_is_written_from_the_schema():
    """clusters/README.md is regenerated with: python -m tasks.model.cluster --readme > clusters/README.md"""
    assert (ROOT / "clusters" / "README.md").read_text() == cluster.readme()


def test_readme_documents_every_field():
    text = cluster.readme()
    for key, spec in cluster.SCHEMA.fields.items():
        assert f"| `{key}` |" in text
        if isinstance(spec, cluster.Section):
            prefix = f"{key}[]." if spec.many else f"{key}."
            for sub in spec.fields:
                assert f"| `{prefix}{sub}` |" in text


# The sandbox's clusters (local, local2) include files that only `fab sandbox.up` writes.
CLUSTER_FILES = sorted(p.stem for p in (ROOT / "clusters").glob("*.yaml") if ".sandbox/" not in p.read_text())


def test_there_are_example_clusters():
    assert {"air_stage", "air_prod"} <= set(CLUSTER_FILES)


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_every_cluster_file_but_the_sandbox_loads(name):
    c = cluster.load(name, ROOT / "clusters")
    assert c.name == name
    assert len(c.machines) >= 1


def test_example_clusters_are_separate():
    stage, prod = cluster.load("air_stage", ROOT / "clusters"), cluster.load("air_prod", ROOT / "clusters")
    assert stage.build.checkout != prod.build.checkout
    assert stage.image("router") != prod.image("router")
    assert not set(stage.machines) & set(prod.machines)
    assert prod.build.branch == "release"
    assert prod.timeouts.healthy > stage.timeouts.healthy
    # One balancer host for both, as in the seed: each cluster on its own address there.
    assert stage.balancer.host == prod.balancer.host and stage.balancer.bind != prod.balancer.bind
    assert stage.balancer.folder != prod.balancer.folder


# ---------------------------------------------------------------- how a component is built

def components(tmp_path, *entries):
    write(tmp_path, "stage", variant(components=list(entries)))
    return cluster.load("stage", tmp_path)


def test_a_components_build_defaults_to_its_folder(tmp_path):
    c = components(tmp_path, {"name": "web", "port": 80}).components[0]
    assert (c.source, c.dockerfile, c.ignore, c.args, c.target, c.prepare, c.prepare_timeout) == \
        ("components/web", "components/web/Dockerfile", None, (), None, None, 300)
    assert (c.repository, c.branch) == (None, None)


def test_a_component_built_from_the_root_with_every_build_field(tmp_path):
    c = components(tmp_path, {"name": "web", "port": 80, "source": ".", "dockerfile": "images/web/Dockerfile",
                              "ignore": "images/web/Dockerfile.dockerignore", "target": "runtime",
                              "args": {"VERSION": "{version}", "MODE": "prod", "LEVEL": 3},
                              "prepare": "make assets", "prepare_timeout": 90}).components[0]
    assert (c.source, c.dockerfile, c.ignore, c.target, c.prepare, c.prepare_timeout) == \
        (".", "images/web/Dockerfile", "images/web/Dockerfile.dockerignore", "runtime", "make assets", 90)
    assert c.args == (("VERSION", "{version}"), ("MODE", "prod"), ("LEVEL", "3"))


def test_a_component_of_its_own_repository_has_its_own_checkout_and_branch(tmp_path):
    loaded = components(tmp_path, {"name": "web", "port": 80},
                        {"name": "site", "port": 81, "repository": "git@example.com:site.git", "branch": "develop"},
                        {"name": "docs", "port": 82, "repository": "git@example.com:docs.git"})
    web, site, docs = loaded.components
    assert loaded.checkout_of(web) == "/aircloak/stage/air"
    assert (site.repository, site.branch, loaded.checkout_of(site)) == \
        ("git@example.com:site.git", "develop", "/aircloak/stage/air-site")
    assert docs.branch == "master"  # build.branch


@pytest.mark.parametrize("entry, expected", [
    ({"branch": "develop"}, "components[0].branch: only a component with its own repository has its own branch"),
    ({"dockerfile": "other/Dockerfile"}, "components[0].dockerfile: other/Dockerfile is not inside the build "
                                         "context components/web"),
    ({"source": "images", "ignore": "images-web.ignore"}, "components[0].ignore: images-web.ignore is not inside "
                                                          "the build context images"),
    ({"args": {"VERSION": "{versoin}"}}, "components[0].args.VERSION: expected a mapping of build-argument names"),
    ({"args": {"NOT-A-NAME": "x"}}, "components[0].args.NOT-A-NAME: expected a mapping of build-argument names"),
    ({"args": {"FLAG": True}}, "components[0].args.FLAG: expected a mapping of build-argument names"),
    ({"args": ["VERSION"]}, "components[0].args: expected a mapping of build-argument names"),
    ({"target": "run time"}, "components[0].target: expected a Dockerfile stage name"),
    ({"repository": "x", "branch": "a..b"}, "components[0].branch: expected a git branch name"),
    ({"prepare_timeout": 0}, "components[0].prepare_timeout: expected a whole number of seconds, from 1 to 86400 (a day), got 0"),
    ({"prepare": ""}, "components[0].prepare: expected a non-empty string"),
])
def test_bad_build_fields_are_named(tmp_path, entry, expected):
    message = error_of(tmp_path, "stage", variant(components=[{"name": "web", "port": 80, **entry}]))
    assert f": {expected}" in message


def test_the_sandboxs_static_website_is_its_second_repository():
    from sandbox import testbed as sandbox
    local = yaml.safe_load((ROOT / "clusters" / "local.yaml").read_text())
    website = next(c for c in local["components"] if c["name"] == sandbox.WEBSITE)
    assert (website["repository"], website["branch"]) == (sandbox.WEBSITE_REPOSITORY, sandbox.WEBSITE_BRANCH)


# ---------------------------------------------------------------- settings and secrets per component

def _with_secrets(tmp_path, *names):
    folder = tmp_path / "secrets"
    folder.mkdir(mode=0o700, exist_ok=True)
    for name in names:
        (folder / name).write_text("s3cret\n")


def test_settings_secrets_per_component_and_v2_load(tmp_path):
    _with_secrets(tmp_path, "db_password", "tls.key")
    write(tmp_path, "stage", variant(
        components=[{"name": "router", "port": 80, "secrets": ["tls.key"]},
                    {"name": "air_backend", "port": 8082, "user": 1000, "secrets": ["db_password"]}],
        settings={"site/name": "Air", "db/port": 5432, "db/ssl": False, "db/password": {"secret": "db_password"}},
        etcd_v2=True, etcd_auth=False))
    loaded = cluster.load("stage", tmp_path)
    assert [(c.name, c.secrets, c.user) for c in loaded.components] == [
        ("router", ("tls.key",), 0), ("air_backend", ("db_password",), 1000)]
    assert loaded.settings == (cluster.Setting("site/name", "Air"), cluster.Setting("db/port", "5432"),
                               cluster.Setting("db/ssl", "false"), cluster.Setting("db/password", secret="db_password"))
    assert loaded.etcd_v2 is True and loaded.etcd_auth is False
    assert "s3cret" not in repr(loaded)


def test_what_components_read_from_etcd_loads_and_auth_is_on_by_default(tmp_path):
    _with_secrets(tmp_path, "db_password")
    write(tmp_path, "stage", variant(
        components=[{"name": "router", "port": 80, "reads": ["maintenance"]},
                    {"name": "air_backend", "port": 8082, "reads": ["settings/site/", "settings/db/password"]},
                    {"name": "static", "port": 8083}],
        settings={"site/name": "Air", "site/theme": "dark", "db/password": {"secret": "db_password"}}))
    loaded = cluster.load("stage", tmp_path)
    assert [c.reads for c in loaded.components] == [
        ("maintenance",), ("settings/site/", "settings/db/password"), ()]
    assert loaded.etcd_auth is True


@pytest.mark.parametrize("reads, expected", [
    (["settings/nope"], "components[0].reads: 'settings/nope': 'nope' is not one of the settings"),
    (["settings/x/"], "components[0].reads: 'settings/x/': no setting is below 'x/'"),
    (["settings/db/"], "components[0].reads: 'settings/db/' would cover 'db/password', a secret: name the keys"),
    (["lock"], "components[0].reads: expected a list of the application's keys the component reads"),
    (["maintenance", "maintenance"], "components[0].reads: expected a list of the application's keys"),
    (["settings//a"], "components[0].reads: expected a list of the application's keys"),
])
def test_what_a_component_reads_must_be_settings_there_are_and_no_secret_by_prefix(tmp_path, reads, expected):
    _with_secrets(tmp_path, "db_password")
    message = error_of(tmp_path, "stage", variant(
        components=[{"name": "router", "port": 80, "reads": reads}],
        settings={"db/host": "h", "db/password": {"secret": "db_password"}}))
    assert expected in message


def test_etcd_auth_goes_without_the_v2_store_and_logins_files_are_not_secret_names(tmp_path):
    assert "etcd_v2: etcd's v2 store has no roles, so with etcd_auth every process on a machine could read " \
           "and write it; set etcd_auth: false to keep it" in error_of(tmp_path, "stage", variant(etcd_v2=True))
    _with_secrets(tmp_path, "etcd-password")
    assert "components[0].secrets: 'etcd-password' is the name of an etcd login's file: rename that secret" in \
        error_of(tmp_path, "stage", variant(components=[{"name": "router", "port": 80, "secrets": ["etcd-password"]}]))


def test_no_settings_no_secrets_and_no_v2_by_default(tmp_path):
    write(tmp_path, "stage", VALID)
    loaded = cluster.load("stage", tmp_path)
    assert loaded.settings == () and loaded.etcd_v2 is False
    assert all(c.secrets == () and c.user == 0 for c in loaded.components)


@pytest.mark.parametrize("field, value, expected", [
    ("settings", {"a//b": "x"}, "settings.a//b: expected a key: words of letters, digits, . _ - joined by /"),
    ("settings", {"/abs": "x"}, "settings./abs: expected a key"),
    ("settings", {"a": ["x"]}, "settings.a: expected a text, a number or {secret: NAME}, got ['x']"),
    ("settings", {"a": {"file": "x"}}, "settings.a: expected {secret: NAME}"),
    ("settings", {"a": {"secret": "../etc/passwd"}}, "settings.a: expected {secret: NAME}"),
    ("settings", {"a": {"secret": "nope"}}, "settings.a: 'nope' is not a file of the secrets folder"),
    ("settings", "x", "settings: expected a mapping of keys"),
    ("etcd_v2", "yes", "etcd_v2: expected true or false, got 'yes'"),
    ("components", [{"name": "router", "port": 80, "secrets": ["nope"]}],
     "components[0].secrets: 'nope' is not a file of the secrets folder"),
    ("components", [{"name": "router", "port": 80, "secrets": ["a/b"]}],
     "components[0].secrets: expected a list of distinct file names of the secrets folder"),
    ("components", [{"name": "router", "port": 80, "secrets": ["db", "db"]}],
     "components[0].secrets: expected a list of distinct file names"),
    ("components", [{"name": "router", "port": 80, "user": -1}],
     "components[0].user: expected a numeric user id (0 to 2147483647), got -1"),
    ("components", [{"name": "router", "port": 80, "user": "www-data"}],
     "components[0].user: expected a numeric user id"),
])
def test_bad_settings_secrets_and_users(tmp_path, field, value, expected):
    _with_secrets(tmp_path, "db")
    message = error_of(tmp_path, "stage", variant(**{field: value}))
    assert f": {expected}" in message


# ---------------------------------------------------------------- text that reaches a unit file or a shell line

def _component_with(**entry) -> dict:
    return variant(components=[{"name": "router", "port": 80, **entry}])


@pytest.mark.parametrize("field", ["stop_command", "health_body", "prepare"])
@pytest.mark.parametrize("value", ["bin/stop\n", "bin/stop\nreboot", "bin/stop\r", "bin\tstop", "bin/\x1b[2Jstop",
                                   "bin/stop\x00", "bin/stop\x85"])
def test_a_components_one_line_text_refuses_control_characters(tmp_path, field, value):
    message = error_of(tmp_path, "stage", _component_with(**{field: value}))
    assert message.endswith(f": components[0].{field}: expected {cluster.KINDS['line']}, got {value!r}")


def test_a_stop_command_written_as_a_yaml_block_is_refused(tmp_path):
    text = yaml.safe_dump(VALID, sort_keys=False).replace(
        "- name: router\n  port: 80\n", "- name: router\n  port: 80\n  stop_command: |\n    bin/stop\n")
    message = error_of(tmp_path, "stage", text)
    assert message.endswith(": components[0].stop_command: expected a non-empty string on one line "
                            "(no control characters), got 'bin/stop\\n'")


def test_the_admin_command_is_one_line(tmp_path):
    message = error_of(tmp_path, "stage", variant(admin={"component": "router", "command": "/bin/x\nreboot"}))
    assert f": admin.command: expected {cluster.KINDS['command']}, got '/bin/x\\nreboot'" in message


@pytest.mark.parametrize("content", ["[Unit]\r\nDescription=x\r\n", "[Unit]\nDescription=\x1b[31mx\n"])
def test_an_added_unit_has_no_control_character_but_newline_and_tab(tmp_path, content):
    message = error_of(tmp_path, "stage", variant(additions={"units": [{"name": "x.service", "content": content}]}))
    assert message.endswith(f": additions.units[0].content: expected {cluster.KINDS['unit_text']}, got {content!r}")


def test_one_line_texts_and_an_added_units_lines_load(tmp_path):
    unit = "[Unit]\nDescription=x\n\n[Service]\nExecStart=/bin/true\tnow\n"
    write(tmp_path, "stage", variant(
        components=[{"name": "router", "port": 80, "stop_command": "bin/stop 'now'", "health_body": "OK ✓",
                     "prepare": "make gen"}],
        admin={"component": "router", "command": "/bin/x --y"},
        additions={"units": [{"name": "x.service", "content": unit}]}))
    loaded = cluster.load("stage", tmp_path)
    router = loaded.components[0]
    assert (router.stop_command, router.health_body, router.prepare) == ("bin/stop 'now'", "OK ✓", "make gen")
    assert loaded.admin.command == "/bin/x --y"
    assert loaded.additions.units[0].content == unit


# ---------------------------------------------------------------- a trailing newline is not the end of a word

@pytest.mark.parametrize("field, value, shown", [
    ("namespace", "aircloak\n", "namespace"),
    ("build__host", "build.example.com\n", "build.host"),
    ("build__checkout", "/srv/air\n", "build.checkout"),
    ("registry__address", "registry.example.com\n:5000", "registry.address"),
    ("components", [{"name": "router\n", "port": 80}], "components[0].name"),
    ("components", [{"name": "router", "port": 80, "health": "/health\n"}], "components[0].health"),
    ("components", [{"name": "router", "port": 80, "stop_signal": "SIGQUIT\n"}], "components[0].stop_signal"),
    ("components", [{"name": "router", "port": 80, "target": "run\n"}], "components[0].target"),
    ("components", [{"name": "router", "port": 80, "source": "src\n"}], "components[0].source"),
    ("components", [{"name": "router", "port": 80, "repository": "r", "branch": "main\n"}], "components[0].branch"),
    ("components", [{"name": "router", "port": 80, "secrets": ["db\n"]}], "components[0].secrets"),
    ("components", [{"name": "router", "port": 80, "args": {"A\n": "x"}}], "components[0].args.A?"),
    ("components", [{"name": "router", "port": 80, "reads": ["settings/db\n"]}], "components[0].reads"),
    ("settings", {"db\n": "x"}, "settings.db?"),
    ("settings", {"db": {"secret": "db\n"}}, "settings.db"),
    ("additions", {"units": [{"name": "x.service\n", "content": "[Unit]\n"}]}, "additions.units[0].name"),
    ("additions", {"files": [{"path": "/etc/x\n", "content": "x"}]}, "additions.files[0].path"),
    ("additions", {"files": [{"path": "/etc/x", "content": "x", "permissions": "0644\n"}]},
     "additions.files[0].permissions"),
])
def test_a_trailing_newline_is_refused(tmp_path, field, value, shown):
    _with_secrets(tmp_path, "db")
    message = error_of(tmp_path, "stage", variant(**{field: value}, settings={"db": "x"}) if field != "settings"
                       else variant(**{field: value}))
    assert f": {shown}: expected " in message


def test_an_unknown_field_with_a_newline_is_named_on_one_line(tmp_path):
    message = error_of(tmp_path, "stage", variant(**{"registry\nx": "y"}))
    assert ": registry?x: unknown field (expected one of: " in message


def test_a_cluster_name_with_a_trailing_newline_is_refused(tmp_path):
    write(tmp_path, "prod", VALID)
    with pytest.raises(ConfigError, match=r"cluster name 'prod\\n' is not valid"):
        cluster.load("prod\n", tmp_path)


# ---------------------------------------------------------------- addresses, ports and numbers of a sane size

@pytest.mark.parametrize("address", ["registry.example.com:5²", "registry.example.com:٥٠٠٠", "registry.example.com:+80",
                                     "registry.example.com:005000x"])
def test_a_registry_port_is_ascii_digits(tmp_path, address):
    message = error_of(tmp_path, "stage", variant(registry__address=address))
    assert message.endswith(f": registry.address: expected HOST:PORT, got {address!r}")


@pytest.mark.parametrize("machine", ["0.0.0.0", "127.0.0.1", "::", "::1", "224.0.0.1", "ff02::1", "::ffff:127.0.0.1"])
def test_a_machine_is_not_unspecified_loopback_or_multicast(tmp_path, machine):
    message = error_of(tmp_path, "stage", variant(machines=["192.0.2.11", machine]))
    assert message.endswith(f": machines[1]: expected {cluster.MACHINE}, got {machine!r}")


def test_a_machine_flag_is_not_loopback():
    with pytest.raises(ConfigError, match=r"^command line: --via: expected an IPv4 or IPv6 address of a machine"):
        cluster.check_address("127.0.0.1", "--via")


def test_an_ipv4_mapped_address_is_the_same_machine(tmp_path):
    message = error_of(tmp_path, "stage", variant(machines=["10.0.0.1", "::ffff:10.0.0.1", "10.0.0.2"]))
    assert f": machines: expected {cluster.KINDS['addresses']}, got " in message


@pytest.mark.parametrize("field, value, shown", [
    ("machines", "fe80::1%eth 0", "machines[0]"),
    ("machines", "fe80::1%eth0'", "machines[0]"),
    ("machines", 'fe80::1%"x', "machines[0]"),
    ("build__host", "fe80::1%a;b", "build.host"),
    ("balancer__bind", "fe80::1%a b", "balancer.bind"),
])
def test_a_scope_id_is_an_interface_name(tmp_path, field, value, shown):
    message = error_of(tmp_path, "stage", variant(**{field: [value] if field == "machines" else value}))
    assert f": {shown}: expected " in message and message.endswith(f"got {value!r}")


def test_link_local_machines_with_a_scope_id_and_a_wildcard_bind_load(tmp_path):
    write(tmp_path, "stage", variant(machines=["fe80::1%eth0", "fe80::2%2", "10.0.0.3"], balancer__bind="0.0.0.0"))
    loaded = cluster.load("stage", tmp_path)
    assert (loaded.machines, loaded.balancer.bind) == (("fe80::1%eth0", "fe80::2%2", "10.0.0.3"), "0.0.0.0")


@pytest.mark.parametrize("field, value, number, shown, kind", [
    ("timeouts", {"command": 10 ** 15}, 10 ** 15, "timeouts.command", "seconds"),
    ("timeouts", {"lock": 86401}, 86401, "timeouts.lock", "seconds"),
    ("balancer", {"host": "192.0.2.9", "tunnel": 10 ** 15}, 10 ** 15, "balancer.tunnel", "seconds"),
    ("components", [{"name": "router", "port": 80, "prepare_timeout": 10 ** 15}], 10 ** 15,
     "components[0].prepare_timeout", "seconds"),
    ("backups", {"max_age": 10 ** 15}, 10 ** 15, "backups.max_age", "seconds"),
    ("registry__keep", 10 ** 15, 10 ** 15, "registry.keep", "count"),
    ("backups", {"keep": 1001}, 1001, "backups.keep", "count"),
])
def test_numbers_have_a_sane_maximum(tmp_path, field, value, number, shown, kind):
    message = error_of(tmp_path, "stage", variant(**{field: value}))
    assert message.endswith(f": {shown}: expected {cluster.KINDS[kind]}, got {number!r}")


def test_a_days_timeout_and_a_thousand_snapshots_load(tmp_path):
    write(tmp_path, "stage", variant(timeouts={"pull": 86400}, backups={"keep": 1000}))
    loaded = cluster.load("stage", tmp_path)
    assert (loaded.timeouts.pull, loaded.backups.keep) == (86400, 1000)


# ---------------------------------------------------------------- the secrets folder is private

@pytest.mark.parametrize("mode", [0o750, 0o705, 0o720, 0o702, 0o755])
def test_a_secrets_folder_group_or_others_may_read_or_write_is_refused(tmp_path, mode):
    _with_secrets(tmp_path, "db")
    (tmp_path / "secrets").chmod(mode)
    message = error_of(tmp_path, "stage", VALID)
    folder = (tmp_path / "secrets").resolve()
    assert message.endswith(f": secrets: {folder} must be private (mode is {mode:o}); run: chmod 700 {folder}")


def test_a_private_secrets_folder_loads(tmp_path):
    _with_secrets(tmp_path, "db")
    write(tmp_path, "stage", VALID)
    assert cluster.load("stage", tmp_path).secrets == (tmp_path / "secrets").resolve()


@pytest.mark.parametrize("command", ["/bin/x 'unbalanced", '/bin/x "a', "/bin/x \\"])
def test_an_admin_command_with_an_unbalanced_quote_is_refused(tmp_path, command):
    message = error_of(tmp_path, "stage", variant(admin={"component": "router", "command": command}))
    assert message.endswith(f": admin.command: expected {cluster.KINDS['command']}, got {command!r}")


def test_etcd_members_caps_at_five_by_default_and_is_a_count(tmp_path):
    write(tmp_path, "stage", VALID)
    assert cluster.load("stage", tmp_path).etcd_members == 5
    write(tmp_path, "stage", variant(etcd={"members": 3}))
    assert cluster.load("stage", tmp_path).etcd_members == 3
    assert "etcd.members" in error_of(tmp_path, "stage", variant(etcd={"members": 0}))


def test_etcd_bcrypt_cost_is_etcds_default_unless_given_within_what_etcd_takes(tmp_path):
    write(tmp_path, "stage", VALID)
    assert cluster.load("stage", tmp_path).etcd_bcrypt_cost == 10
    write(tmp_path, "stage", variant(etcd={"bcrypt_cost": 4}))
    assert cluster.load("stage", tmp_path).etcd_bcrypt_cost == 4
    assert error_of(tmp_path, "stage", variant(etcd={"bcrypt_cost": 3})).endswith(
        f": etcd.bcrypt_cost: expected {cluster.KINDS['bcrypt_cost']}, got 3")

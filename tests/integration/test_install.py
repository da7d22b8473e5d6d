"""setup-cluster and create-admin, run as a user runs them and checked from outside.

The module resets the cluster's three machines to freshly prepared ones,
makes sure master is built and pushed, and runs `fab setup-cluster --cluster
local` once; every test then looks at what that one run left (etcd through
etcdctl on a machine, systemd, the balancer from this machine, the files on
the machines, the run's output). The refusals that follow (a second
setup-cluster, a preflight failure on a spare, bad input) must change
nothing, and create-admin adds only its record. Tests run in file order and
share that state; the module leaves the cluster installed and serving, the
spares fresh.
"""
import base64
import json
import secrets
from types import SimpleNamespace

import pytest
import requests
import yaml

from cloudconfig.units import ETCD_LOCAL_CLIENT_URL, peer_url
from tasks.model import etcd_access
from tasks.runbooks.publish import publish
from sandbox import testbed as sb
from tasks.net.registry import RegistryClient
from tasks.model.credentials import load_credentials
from tasks.net.executor import Executor
from tasks.net.session import session
from tasks.model.version import newest

from conftest import (etcdctl, MACHINE_ADDRESSES, NOBODY, SPARE_ADDRESSES, USER_DATA, error_line, etcd_of, fab,
                      fab_here, healthy_members, make_fresh, on, serving)
from tasks.runbooks import records
from tasks.runbooks import steps

SPARE = SPARE_ADDRESSES[0]
ADMINS = "/var/lib/air/air_backend/admins"
OUTPUTS = []             # every `fab` run of the module: no secret may appear in any


def run_fab(*args, runner=fab, **kwargs):
    proc = runner(*args, check=False, **kwargs)
    OUTPUTS.append(proc)
    return proc


def members(cluster, address):
    """etcd's member list, as etcdctl on ``address`` prints it."""
    out = etcdctl(cluster, address, "member list -w json").stdout
    return json.loads(out)["members"]


def member_ids(cluster, address):
    return sorted(m["ID"] for m in members(cluster, address))


def facts(cluster, address):
    with Executor(cluster) as ex:
        return steps.facts(ex, address)


def registry_release(cluster):
    """{component: (newest version, its config digest)} as the registry has them."""
    registry = RegistryClient.for_registry(cluster.registry)
    found = {}
    for component in cluster.component_names:
        version = str(newest(registry.tags(cluster.image(component))))
        found[component] = (version, registry.config_digest(cluster.image(component), version))
    return found


@pytest.fixture(scope="module")
def setup_run(sandbox, local, clock):
    """Fresh machines, master built and pushed, then `fab setup-cluster --cluster local` once."""
    with clock("the 3 machines freshly prepared (made afresh when an earlier module installed them)"):
        make_fresh(local, list(local.machines))
    with clock("build + push master (what is already pushed is not pushed again)"):
        with session(local, etcd=False) as s:
            pushed = publish(s.ex, local.build.host, local.build.branch).release
    with clock("fab setup-cluster --cluster local"):
        proc = run_fab("setup-cluster", "--cluster", "local")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return SimpleNamespace(proc=proc, pushed=pushed)


@pytest.fixture(scope="module")
def recorded(setup_run, local):
    """The release record etcd holds after the install."""
    with etcd_of(local) as client:
        _, record = records.read_release(client, local)
    return record


def test_setup_cluster_reports_its_steps(setup_run, local):
    err = setup_run.proc.stderr
    assert f"setup-cluster: local on {', '.join(local.machines)}, release {setup_run.pushed.id}" in err
    assert "setup-cluster: local is up on 3 machines in" in err


def test_etcd_has_the_three_machines_as_started_healthy_members(setup_run, local):
    for address in local.machines:  # every member sees the same three
        listed = members(local, address)
        assert sorted(m["name"] for m in listed) == sorted(local.machines)
        assert all(m["peerURLs"] == [peer_url(m["name"])] and not m.get("isLearner") for m in listed)
        # Clients are served on each machine's loopback only, and that is what members tell clients.
        assert all(m["clientURLs"] == [ETCD_LOCAL_CLIENT_URL] for m in listed)
    assert healthy_members(local, local.machines) == sorted(local.machines)


def test_every_air_unit_is_active_on_every_machine(setup_run, local):
    units = [f"air-{c}.service" for c in local.component_names]
    for address in local.machines:
        out = on(local, address, f"systemctl is-active {' '.join(units)} etcd-member.service").stdout.split()
        assert out == ["active"] * (len(units) + 1), (address, out)


def test_the_balancer_reaches_every_machine_with_the_pushed_release(setup_run, local, recorded):
    answers = [requests.get(f"http://{local.balancer.host}/version", timeout=5).json() for _ in range(30)]
    assert {a["machine"] for a in answers} == set(local.machines)
    in_registry = registry_release(local)
    assert recorded["id"] == setup_run.pushed.id
    assert recorded["outcome"] == "installed"
    assert {c: (v["version"], v["digest"]) for c, v in recorded["components"].items()} == in_registry
    for answer in answers:
        assert answer["release"] == recorded["id"]
        assert answer["components"] == {c: v for c, (v, _) in in_registry.items()}


def test_each_machine_records_the_release_it_runs(setup_run, local, recorded):
    for address in local.machines:
        assert on(local, address, "cat /etc/air/state/release").stdout.strip() == recorded["id"]


def test_the_cloud_config_is_private_and_names_every_unit(setup_run, local):
    expected = {"etcd-member.service", sb.ADMIN_UNIT} | {f"air-{c}.service" for c in local.component_names}
    assert len(set(USER_DATA[a] for a in local.machines)) == 2  # Flatcar's path and CoreOS's, both used
    for address in local.machines:
        mode = on(local, address, f"stat -c %a {USER_DATA[address]}").stdout.strip()
        assert mode == "600", address
        text = on(local, address, f"cat {USER_DATA[address]}").stdout
        assert text.startswith("#cloud-config\n")
        doc = yaml.safe_load(text)
        assert {u["name"] for u in doc["coreos"]["units"]} == expected
        assert all(u["enable"] and u["command"] == "start" for u in doc["coreos"]["units"])


def test_secrets_are_installed_per_component_private_and_never_printed(setup_run, local):
    local_secrets = {p.name: p.read_text() for p in sorted(local.secrets.iterdir()) if p.is_file()}
    assert local_secrets
    logins = [c for c in local.components if c.reads]  # and each component's etcd login
    wanted = sorted([f"{c.user} 400 {c.name}/{name}" for c in local.components for name in c.secrets]
                    + [f"{c.user} 400 {c.name}/etcd-password" for c in logins])
    assert len(wanted) == 6  # router: its certificate and key; air_backend: two of its own; their logins
    for address in local.machines:
        assert on(local, address, "stat -c %a /etc/air/secrets").stdout.strip() == "700"
        listing = on(local, address, "cd /etc/air/secrets && stat -c '%u %a %n' */*").stdout.split("\n")
        assert sorted(filter(None, listing)) == wanted
        for c in local.components:
            for name in c.secrets:
                assert on(local, address, f"cat /etc/air/secrets/{c.name}/{name}").stdout == local_secrets[name]
    root = etcd_access.root_password(local)
    passwords = [root] + [etcd_access.password_of(root, etcd_access.user_of(c.name)) for c in logins]
    for content in [*local_secrets.values(), *passwords]:
        assert content.strip() not in setup_run.proc.stdout + setup_run.proc.stderr


def test_setup_cluster_again_is_refused_and_changes_nothing(setup_run, local):
    before = member_ids(local, local.machines[0])
    proc = run_fab("setup-cluster", "--cluster", "local")
    line = error_line(proc)
    assert line.startswith("error: preflight failed: ")
    for address in local.machines:
        assert address in line
    assert "use add-machine or upgrade" in line
    assert member_ids(local, local.machines[0]) == before


def test_balancer_list_shows_the_three_machines(setup_run, local):
    proc = run_fab("balancer.list", "--cluster", "local")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == list(local.machines)


def test_preflight_failure_names_the_silent_machine_and_leaves_the_spare_fresh(setup_run, local, clock):
    assert facts(local, SPARE)["etcd_configured"] == "no"
    with clock("setup-cluster refused by preflight (one address nobody answers)"):
        proc = run_fab("setup-cluster", "--cluster", "local", "--machines", f"{SPARE},{NOBODY}")
    line = error_line(proc)
    assert line.startswith("error: preflight failed: ") and f"{NOBODY}: unreachable" in line
    assert f"{SPARE}:" not in line  # the spare itself passed
    assert "Nothing was changed." in line
    after = facts(local, SPARE)
    assert (after["etcd_configured"], after["etcd_active"], after["air_units"], after["etcd_data"]) == \
        ("no", "inactive", "0", "no")
    assert on(local, SPARE, "test -e /etc/air/secrets", check=False).exited != 0


def test_create_admin_stores_the_admin_but_not_the_password(setup_run, local):
    password = "Pw-" + secrets.token_urlsafe(12)
    proc = run_fab("create-admin", "--cluster", "local", "--email", "a@example.org", "--name", "Ada",
                   input=password + "\n")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "admin a@example.org created"
    stored = on(local, local.machines[0], f"cat {ADMINS}").stdout
    assert "a@example.org\tAda\t" in stored
    assert password not in stored
    for run in OUTPUTS:
        assert password not in run.stdout + run.stderr


@pytest.mark.parametrize("args, expected", [
    (("setup-cluster", "--cluster", "nosuch"), "error: unknown cluster 'nosuch'"),
    (("setup-cluster", "--cluster", "local", "--machines", f"{MACHINE_ADDRESSES[0]},{NOBODY}00"),
     f"error: command line: --machines[1]: expected an IPv4 or IPv6 address, got '{NOBODY}00'"),
    (("setup-cluster", "--cluster", "local", "--machines", f"{SPARE},{SPARE}"),
     "error: command line: --machines: expected a non-empty list of distinct IPv4 or IPv6 addresses"),
    (("setup-cluster",), "error: --cluster is required"),
    (("create-admin", "--cluster", "local", "--email", "nobody", "--name", "Ada"),
     "error: --email (an address) and --name are required"),
    (("create-admin", "--cluster", "nosuch", "--email", "a@example.org", "--name", "Ada"),
     "error: unknown cluster 'nosuch'"),
], ids=["unknown-cluster", "bad-ip", "repeated-ip", "no-cluster", "bad-email", "admin-unknown-cluster"])
def test_bad_input_is_one_line_and_changes_nothing(setup_run, local, args, expected):
    proc = run_fab(*args, runner=fab_here, input="secret-never-read\n")  # refused before any host is contacted
    assert error_line(proc).startswith(expected)
    assert proc.stdout == ""


def test_no_secret_in_any_output(setup_run, local):
    username, password = load_credentials(local.registry.credentials)
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    local_secrets = [p.read_text().strip() for p in local.secrets.iterdir() if p.is_file()]
    assert len(OUTPUTS) >= 5
    for run in OUTPUTS:
        text = run.stdout + run.stderr
        assert password not in text and token not in text
        assert not any(s in text for s in local_secrets)


def test_the_cluster_is_left_installed_and_serving(setup_run, local):
    assert serving(local)

"""The application's configuration on the sandbox: settings in etcd (and its v2 store), secrets per
component rotated in place with secrets.apply, and maintenance mode, each checked from outside
(HTTP through the balancer, etcdctl and curl on the machines, container start times).

The tests change a copy of the local cluster file (and of its secrets folder), given to `fab`
through AIR_CLUSTERS_DIR; the module's fixture puts the real file's settings and secrets back.
"""
import hashlib
import http.client
import json
import secrets as tokens
import shutil
import threading
import time

import pytest
import yaml

from conftest import MACHINE_ADDRESSES, ROOT, error_line, etcdctl_each, fab, fab_here, on, on_each

from sandbox import testbed as sb
from tasks.model import cluster as cluster_config
from tasks.model import state

COMPONENTS = ("router", "air_frontend", "air_backend", "static_website")


class Copy:
    """A copy of clusters/local.yaml with its own secrets folder, for `fab` (``env``) and for reading back."""

    def __init__(self, folder):
        self.folder = folder
        self.secrets = folder / "secrets"
        shutil.copytree(sb.STATE / "secrets", self.secrets)
        self.data = yaml.safe_load((ROOT / "clusters" / "local.yaml").read_text())
        self.data["include"] = str(sb.STATE / "cluster.yaml")
        self.data["secrets"] = str(self.secrets)
        self.save()

    @property
    def env(self) -> dict:
        return {"AIR_CLUSTERS_DIR": str(self.folder)}

    def save(self):
        (self.folder / "local.yaml").write_text(yaml.safe_dump(self.data, sort_keys=False))

    def cluster(self):
        return cluster_config.load("local", self.folder)

    def secret_values(self) -> list:
        return [p.read_text().strip() for p in self.secrets.iterdir() if p.is_file()] + \
               [p.read_text().strip() for p in (sb.STATE / "secrets").iterdir() if p.is_file()]


@pytest.fixture(scope="module")
def copy(installed, tmp_path_factory):
    made = Copy(tmp_path_factory.mktemp("config-clusters"))
    yield made
    # Back to what the real cluster file says: its settings and its secrets.
    fab("settings.apply", "--cluster", "local", "--wait")
    fab("secrets.apply", "--cluster", "local", "--wait")
    fab("maintenance.off", "--cluster", "local", "--wait")


def get(cluster, path, accept=None, timeout=10):
    """(status, content type, body) of GET ``path`` through the balancer."""
    conn = http.client.HTTPConnection(cluster.balancer.host, cluster.balancer.http_port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Accept": accept} if accept else {})
        answer = conn.getresponse()
        return answer.status, answer.getheader("Content-Type"), answer.read().decode()
    finally:
        conn.close()


def etcd_get(cluster, key) -> dict:
    """machine -> the key's value as each member's etcdctl reads it ('' when absent)."""
    return etcdctl_each(cluster, f"get --print-value-only {key}")


def test_a_changed_setting_reaches_the_backend_and_a_removed_one_leaves_etcd(copy, local_serving):
    site = f"Air {tokens.token_hex(3)}"
    copy.data["settings"]["site/name"] = site
    copy.data["settings"]["feature/flag"] = "on"
    copy.save()
    diff = fab("settings.diff", "--cluster", "local", env=copy.env)
    assert "~ site/name: 'Air sandbox' -> " + repr(site) in diff.stdout and "+ feature/flag = 'on'" in diff.stdout
    deployed = fab("deploy", "--cluster", "local", env=copy.env)
    output = deployed.stdout + deployed.stderr
    assert f"deploy: settings: ~ site/name: 'Air sandbox' -> {site!r}" in output
    assert "deploy: settings: + feature/flag = 'on'" in output
    assert not any(value in output for value in copy.secret_values())
    status, _, body = get(local_serving, "/settings")
    assert status == 200 and json.loads(body)["site_name"] == site
    assert json.loads(body)["database_password"] == "present"
    key = state.setting_key(local_serving, "feature/flag")
    assert set(etcd_get(local_serving, key).values()) == {"on\n"}

    del copy.data["settings"]["feature/flag"]
    copy.save()
    applied = fab("settings.apply", "--cluster", "local", env=copy.env)
    assert "settings.apply: settings: - feature/flag" in applied.stderr
    assert set(etcd_get(local_serving, key).values()) == {""}
    shown = fab("settings.get", "--cluster", "local", env=copy.env).stdout
    assert "database/password = (secret)" in shown and f"site/name = {site!r}" in shown
    assert not any(value in shown for value in copy.secret_values())
    assert fab("settings.diff", "--cluster", "local", env=copy.env).stdout.strip() == "settings of local: unchanged"


def started_at(cluster) -> dict:
    """machine -> component -> its container's start time."""
    names = " ".join(f"air-{c}" for c in COMPONENTS)
    found = on_each(cluster, f"docker inspect -f '{{{{.Name}}}} {{{{.State.StartedAt}}}}' {names}")
    return {m: dict(line.lstrip("/").replace("air-", "", 1).split() for line in text.splitlines())
            for m, text in found.items()}


class SettingsProbe(threading.Thread):
    """GET /settings (router, then the backend on the same machine) through the balancer, until stopped."""

    def __init__(self, cluster):
        super().__init__(daemon=True)
        self.cluster, self.sent, self.failed, self.errors = cluster, 0, 0, []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.sent += 1
            try:
                status, _, body = get(self.cluster, "/settings")
                if status != 200 or json.loads(body)["database_password"] != "present":
                    raise AssertionError(f"HTTP {status}: {body[:80]}")
            except Exception as e:  # any failure is what is counted
                self.failed += 1
                self.errors.append(repr(e)[:120])
            self.stop.wait(0.03)


def test_rotating_a_secret_restarts_only_its_components_under_a_probe(copy, local_serving, figures):
    before = started_at(local_serving)
    rotated = "rotated-" + tokens.token_urlsafe(18)
    (copy.secrets / "session_key").write_text(rotated + "\n")
    probe = SettingsProbe(local_serving)
    probe.start()
    try:
        began = time.monotonic()
        applied = fab("secrets.apply", "--cluster", "local", env=copy.env)
        seconds = time.monotonic() - began
    finally:
        probe.stop.set()
        probe.join()
    figures(f"secrets.apply rotating one secret of air_backend on 3 machines: {seconds:.1f} s "
            f"(probe: {probe.sent} requests, {probe.failed} failed)")
    assert probe.failed == 0, probe.errors
    assert probe.sent >= 10, "too few requests to have crossed the three machines' restarts"
    output = applied.stdout + applied.stderr
    assert rotated not in output and not any(value in output for value in copy.secret_values())
    after = started_at(local_serving)
    for machine in MACHINE_ADDRESSES:
        assert after[machine]["air_backend"] != before[machine]["air_backend"], machine
        for other in ("router", "air_frontend", "static_website"):
            assert after[machine][other] == before[machine][other], (machine, other)
    # The new value is in place, owned by the backend's user, and no other container can read it.
    digest = hashlib.sha256((rotated + "\n").encode()).hexdigest()
    found = on_each(local_serving, "sha256sum /etc/air/secrets/air_backend/session_key; "
                                   "stat -c '%u %a' /etc/air/secrets/air_backend/session_key")
    assert all(text.split()[0] == digest and text.split()[2:] == ["10001", "400"] for text in found.values())
    machine = MACHINE_ADDRESSES[0]
    for container, user in (("air-air_frontend", ""), ("air-router", ""), ("air-air_backend", "-u 10002 ")):
        refused = on(local_serving, machine, f"docker exec {user}{container} cat /air/secrets/session_key", check=False)
        assert refused.exited != 0 and rotated not in refused.stdout, container
    assert "present" in get(local_serving, "/settings")[2]
    # A second run finds nothing to do and restarts nothing.
    again = fab("secrets.apply", "--cluster", "local", env=copy.env)
    assert "secrets of local: 0 machine(s) had components restarted" in again.stdout
    assert started_at(local_serving) == after


def test_maintenance_on_serves_the_page_within_2_s_and_off_serves_again(local_serving, figures):
    message = f"Back soon <{tokens.token_hex(3)}> & \"thanks\""
    assert get(local_serving, "/version")[0] == 200
    began = time.monotonic()
    fab("maintenance.on", "--cluster", "local", "--message", message)
    switched = time.monotonic()

    def answers(status, within):
        deadline = time.monotonic() + within
        seen = {}
        while time.monotonic() < deadline:
            # one request per router: each machine must have switched
            seen = {m: _direct(m) for m in MACHINE_ADDRESSES}
            if all(s == status for s, _, _ in seen.values()):
                return time.monotonic()
            time.sleep(0.1)
        raise AssertionError(f"not every router answers {status} within {within} s: {seen}")

    took = answers(503, 2.0) - switched
    figures(f"maintenance.on: every router answers 503 {took:.2f} s after the task ended "
            f"({switched - began:.1f} s for the task)")
    status, kind, page = get(local_serving, "/version")
    html = message.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    assert status == 503 and kind.startswith("text/html") and html in page
    status, kind, body = get(local_serving, "/", accept="application/json")
    assert status == 503 and kind.startswith("application/json") and json.loads(body) == \
        {"maintenance": True, "message": message}
    assert all(text.strip() == "200" for text in on_each(
        local_serving, "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1/health").values())
    assert fab("maintenance.status", "--cluster", "local").stdout.strip() == f"maintenance: ON ({message})"
    assert f"maintenance: ON ({message})" in fab("status", "--cluster", "local", check=False).stdout
    fab("maintenance.off", "--cluster", "local")
    off = time.monotonic()
    figures(f"maintenance.off: every router answers 200 again {answers(200, 2.0) - off:.2f} s after the task ended")
    assert get(local_serving, "/version")[0] == 200
    assert fab("maintenance.status", "--cluster", "local").stdout.strip() == "maintenance: off"


def _direct(machine):
    conn = http.client.HTTPConnection(machine, 80, timeout=5)
    try:
        conn.request("GET", "/version")
        answer = conn.getresponse()
        return answer.status, answer.getheader("Content-Type"), answer.read()
    finally:
        conn.close()


@pytest.mark.parametrize("args, expected, runner", [
    # refused before any host is contacted: run in this process
    (["maintenance.on", "--cluster", "local", "--message", "two\nlines"], "error: --message: expected one line", fab_here),
    (["settings.get", "--cluster", "local", "--key", "no/such/key"], "error: no setting 'no/such/key'", fab),
], ids=["two-line-message", "unknown-setting"])
def test_bad_input_is_one_error_line(installed, args, expected, runner):
    assert error_line(runner(*args, check=False)).startswith(expected)


def test_a_setting_naming_a_missing_secret_file_is_refused_before_anything(installed, tmp_path):
    data = yaml.safe_load((ROOT / "clusters" / "local.yaml").read_text())
    data["include"] = str(sb.STATE / "cluster.yaml")
    data["settings"]["database/password"] = {"secret": "no_such_file"}
    (tmp_path / "local.yaml").write_text(yaml.safe_dump(data))
    for task in ("settings.apply", "deploy", "secrets.apply"):
        line = error_line(fab_here(task, "--cluster", "local", env={"AIR_CLUSTERS_DIR": str(tmp_path)}, check=False))
        assert "settings.database/password: 'no_such_file' is not a file of the secrets folder" in line, task

"""etcd's authentication, from inside the containers: what each component may read, and that none may write.

`local` is installed with `etcd_auth` (its default): every check here runs in a component's own
container (`docker exec`, host network, as the application would), speaking etcd's JSON gateway
with busybox nc, logged in with the component's own login when it has one. `local2` is installed
open (`etcd_auth: false`, with etcd's v2 store): `fab etcd.auth` turns it over in place and back,
with a probe and a long request through the balancer meanwhile. Last, a release record planted
with air-deploy's own login stops the next deploy before anything runs.
"""
import json

import yaml

from conftest import BALANCER_ADDRESS, Probe, Slow, cluster_copy, error_line, etcd_of, etcdctl, fab, on, on_each
from tasks.model import etcd_access, state
from tasks.net.executor import Executor

# Run in a container (`sh -s KEY...`): logs in when the container has a login, then prints one
# line per read of each KEY and one for a write, each `<what> <etcd's answer, its last line>`.
IN_CONTAINER = r"""
# busybox nc stops at the end of its input: the request goes through `nc -e`, the answer on fd 3.
cat > /air/data/air-test-post <<'POST'
#!/bin/sh
if [ -n "$TOKEN" ]; then
  printf 'POST %s HTTP/1.0
Host: etcd
Authorization: %s
Content-Length: %s

%s' "$CALL" "$TOKEN" "${#BODY}" "$BODY"
else
  printf 'POST %s HTTP/1.0
Host: etcd
Content-Length: %s

%s' "$CALL" "${#BODY}" "$BODY"
fi
while IFS= read -r -t 2 line || [ -n "$line" ]; do printf '%s
' "$line"; line=""; done >&3
POST
chmod 0700 /air/data/air-test-post
post() { CALL=$1 BODY=$2 TOKEN=$3 nc -w 2 127.0.0.1 2379 -e /air/data/air-test-post 3>&1 >/dev/null 2>&1 | tail -n 1; }
b64() { printf %s "$1" | base64 | tr -d '\n'; }
token=""
if [ -n "$AIR_ETCD_USER" ]; then
  login="{\"name\":\"$AIR_ETCD_USER\",\"password\":\"$(cat "$AIR_ETCD_PASSWORD_FILE")\"}"
  token=$(post /v3/auth/authenticate "$login" | sed -n 's/.*"token":"\([^"]*\)".*/\1/p')
  echo "login ${token:+token}"
fi
for key in "$@"; do echo "read $key $(post /v3/kv/range "{\"key\":\"$(b64 "$key")\"}" "$token")"; done
echo "write $(post /v3/kv/put "{\"key\":\"$(b64 "${AIR_ETCD_PREFIX}planted")\",\"value\":\"eA==\"}" "$token")"
rm -f /air/data/air-test-post
"""

DENIED, NO_LOGIN = "etcdserver: permission denied", "etcdserver: user name is empty"


def in_container(cluster, address, component, keys) -> dict:
    """What ``component``'s container on ``address`` got: 'login' (when it has one), 'read KEY', 'write'."""
    words = " ".join(f"'{k}'" for k in keys)
    out = on(cluster, address, f"docker exec -i air-{component} sh -s {words}", stdin=IN_CONTAINER).stdout
    said = {}
    for line in out.splitlines():
        what, _, answer = line.partition(" ")
        if what == "read":
            key, _, answer = answer.partition(" ")
            what = f"read {key}"
        said[what] = answer
    return said


def answered(text) -> bool:
    return '"header"' in text and '"error"' not in text


def refused(text, why) -> bool:
    return why in text and '"header"' not in text


def test_each_component_reads_what_it_names_and_nothing_else_and_none_writes(installed):
    cluster = installed
    address = cluster.machines[0]
    setting = lambda key: state.setting_key(cluster, key)  # noqa: E731
    password, site, maintenance = setting("database/password"), setting("site/name"), state.maintenance_key(cluster)
    keys = [site, password, maintenance, state.release_key(cluster)]

    router = in_container(cluster, address, "router", keys)
    assert router["login"] == "token"
    assert answered(router[f"read {maintenance}"])
    assert all(refused(router[f"read {k}"], DENIED) for k in (site, password, state.release_key(cluster))), router
    assert refused(router["write"], DENIED)

    backend = in_container(cluster, address, "air_backend", keys)
    assert backend["login"] == "token"
    assert answered(backend[f"read {site}"]) and answered(backend[f"read {password}"])
    assert refused(backend[f"read {maintenance}"], DENIED) and refused(backend["write"], DENIED)

    for component in ("air_frontend", "static_website"):  # no reads: no login, nothing answered
        got = in_container(cluster, address, component, keys)
        assert "login" not in got
        assert all(refused(got[f"read {k}"], NO_LOGIN) for k in keys) and refused(got["write"], NO_LOGIN), got

    # Nothing was planted; the application reads its setting with its own login (bin/etcd).
    assert etcdctl(cluster, address, f"get --print-value-only {state.app_prefix(cluster)}planted").stdout == ""
    settings = json.loads(on(cluster, address, "curl -s http://127.0.0.1:8082/settings").stdout)
    assert settings["site_name"] == "Air sandbox"


def test_the_logins_files_are_the_components_own(installed):
    cluster = installed
    found = on(cluster, cluster.machines[1], "stat -c '%a %u %n' /etc/air/secrets/*/etcd-password").stdout
    assert found.split("\n")[:2] == ["400 10001 /etc/air/secrets/air_backend/etcd-password",
                                      "400 0 /etc/air/secrets/router/etcd-password"]
    with Executor(cluster) as ex:  # the password is never in a unit or a command line
        units = ex.run(cluster.machines[1], "cat /etc/systemd/system/air-*.service").stdout
    assert "AIR_ETCD_USER=air-router" in units and "AIR_ETCD_PASSWORD_FILE=/air/secrets/etcd-password" in units
    root = yaml.safe_load((cluster.secrets / "etcd-root.yaml").read_text())["password"]
    assert root not in units and (cluster.secrets / "etcd-root.yaml").stat().st_mode & 0o777 == 0o600


def test_an_open_cluster_turned_over_in_place_and_back_serving_throughout(local2, tmp_path, figures):
    cluster = local2
    address = cluster.machines[0]
    site = state.setting_key(cluster, "site/name")
    # Open, with the v2 store served and written too.
    v2 = json.loads(on(cluster, address, f"curl -s http://127.0.0.1:2379/v2/keys{site}").stdout)
    assert v2["node"]["value"] == "Air sandbox 2"
    assert answered(in_container(cluster, address, "air_frontend", [site])[f"read {site}"])

    env = cluster_copy("local2", tmp_path, etcd_auth=True, etcd_v2=False)
    port = cluster.balancer.http_port
    slow = Slow(cluster, 8)
    with Probe(BALANCER_ADDRESS, port) as probe:
        slow.start()
        slow.started_on.wait(10)
        turned = fab("etcd.auth", "--cluster", "local2", env=env)
        slow.join(30)
    assert "etcd authentication of local2: on" in turned.stdout
    figures(f"{turned.stdout.strip()}; {probe.report('meanwhile')}; an 8 s request through it: "
            f"{'complete' if slow.complete else 'cut'}")
    assert probe.failed == 0 and slow.complete, (probe.report("etcd.auth on"), slow.lines, slow.error)
    root = etcd_access.root_password(cluster)
    passwords = [root] + [etcd_access.password_of(root, etcd_access.user_of(c)) for c in ("router", "air_backend")]
    assert not any(p in turned.stdout + turned.stderr for p in passwords)
    got = in_container(cluster, address, "air_frontend", [site])
    assert refused(got[f"read {site}"], NO_LOGIN) and refused(got["write"], NO_LOGIN)
    assert answered(in_container(cluster, address, "air_backend", [site])[f"read {site}"])
    settings = json.loads(on(cluster, address, "curl -s http://127.0.0.1:8082/settings").stdout)
    assert settings["site_name"] == "Air sandbox 2"
    again = fab("etcd.auth", "--cluster", "local2", env=env)
    assert "(it was already)" in again.stdout and "restart" not in again.stderr

    with Probe(BALANCER_ADDRESS, port) as probe:
        back = fab("etcd.auth", "--cluster", "local2")
    assert "etcd authentication of local2: off" in back.stdout and probe.failed == 0, probe.report("etcd.auth off")
    figures(f"{back.stdout.strip()}; {probe.report('meanwhile')}")
    assert answered(in_container(cluster, address, "air_frontend", [site])[f"read {site}"])


def test_a_planted_history_record_stops_the_next_deploy_naming_its_key(installed):
    """A record written with air-deploy's own login but not by air-deploy (its digest a shell
    command): the deploy stops before its build with one line naming the key; nothing ran."""
    cluster = installed
    key = state.history_key(cluster, "9999-12-31T00:00:00.000000Z")
    digest = "sha256:'; touch /tmp/planted; '"
    planted = {"id": "0123456789ab", "outcome": "succeeded",
               "components": {"static_website": {"version": "1.0.0", "digest": digest}}}
    with etcd_of(cluster) as client:
        client.put(key, json.dumps(planted))
    try:
        proc = fab("deploy", "--cluster", "local", check=False)
    finally:
        with etcd_of(cluster) as client:
            client.delete(key)
    assert proc.returncode == 1
    assert error_line(proc).startswith(f"error: etcd key {key} is not a release record air-deploy wrote (")
    assert "nothing was run" in error_line(proc) and "build:" not in proc.stderr
    assert set(on_each(cluster, "test -e /tmp/planted && echo planted || echo clean").values()) == {"clean\n"}

"""The balancer: one cluster's haproxy files and commands rendered (pure), and what Routers runs.

``balancer_config`` is text in, text out: the files of a cluster's own
haproxy instance, the plan of a machine-list change and the one command
carrying it out (file checked and swapped, then haproxy's runtime API).
``balancer.Routers`` reads the file once and only runs that command when
the machine list changes, which is checked here on the recording executor.
"""
import pwd
import subprocess
from types import SimpleNamespace

import pytest

from tasks.commands import haproxy as bc
from tasks.model.cluster import load
from tasks.model.errors import LostLock
from tasks.runbooks import balancer

from .fakes import FakeExecutor, FakeFence

PROXIED = """\
namespace: aircloak
ssh: {key: id_ed25519, known_hosts: known_hosts}
build: {host: build.example.org, repository: git@example.org:air.git}
registry: {address: "registry.example.org:5000", credentials: registry.yaml}
balancer: {host: 10.0.0.100, bind: 10.0.0.101, http_port: 8080, https_port: 8443, component: router, tunnel: 600}
machines: [10.0.0.1, 10.0.0.2, 10.0.0.3]
components:
  - {name: web, port: 8081}
  - {name: router, port: 80, health: /ready, https_port: 443, proxy: {http: 8000, https: 8444, protocol: v1}}
secrets: secrets
"""


@pytest.fixture
def proxied(tmp_path):
    (tmp_path / "stage.yaml").write_text(PROXIED)
    return load("stage", directory=tmp_path)


ROUTERS = """\
# Written by air-deploy; do not edit by hand.
backend prod_http
    balance roundrobin
    option redispatch
    retries 3
    option httpchk GET /health
    http-check expect status 200
    default-server check port 8080 inter 500ms fall 2 rise 2
    server 10.0.0.1 10.0.0.1:8080
    server 10.0.0.2 10.0.0.2:8080
"""


# ---------------------------------------------------------------- the files

def test_routers_file_of_a_plain_component(cluster):
    # The unit tests' cluster: the balancer goes to its first component, plain HTTP, no HTTPS.
    assert bc.routers_file(cluster, ["10.0.0.1", "10.0.0.2"]) == ROUTERS


def test_routers_file_with_proxy_ports_sends_the_protocol_and_checks_the_plain_port(proxied):
    text = bc.routers_file(proxied, ["10.0.0.1"], drained=["10.0.0.2"])
    assert text == """\
# Written by air-deploy; do not edit by hand.
backend stage_http
    balance roundrobin
    option redispatch
    retries 3
    option httpchk GET /ready
    http-check expect status 200
    default-server check port 80 inter 500ms fall 2 rise 2
    server 10.0.0.1 10.0.0.1:8000 send-proxy
    server 10.0.0.2 10.0.0.2:8000 send-proxy disabled
backend stage_https
    balance roundrobin
    option redispatch
    retries 3
    option httpchk GET /ready
    http-check expect status 200
    default-server check port 80 inter 500ms fall 2 rise 2
    server 10.0.0.1 10.0.0.1:8444 send-proxy
    server 10.0.0.2 10.0.0.2:8444 send-proxy disabled
"""


def test_backends_follow_the_component(proxied):
    v2 = proxied.front.__class__(**{**proxied.front.__dict__,
                                    "proxy": proxied.front.proxy.__class__(8000, None, "v2")})
    two = SimpleNamespace(name="stage", front=v2)
    assert bc.backends(two) == [("stage_http", 8000, "send-proxy-v2"), ("stage_https", 443, None)]
    plain = SimpleNamespace(name="stage", front=proxied.component("web"))
    assert bc.backends(plain) == [("stage_http", 8081, None)]


def test_main_config_binds_the_clusters_own_address_and_ports(proxied):
    assert bc.main_config(proxied) == """\
# Written by air-deploy; do not edit by hand.
global
    maxconn 4096
    stats socket /run/air-balancer-stage/admin.sock mode 600 level admin
defaults
    mode tcp
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout tunnel 600s
    timeout check 2s
frontend stage_http
    bind 10.0.0.101:8080
    default_backend stage_http
frontend stage_https
    bind 10.0.0.101:8443
    default_backend stage_https
"""


def test_main_config_without_bind_listens_everywhere_with_an_hour_of_tunnel(cluster):
    text = bc.main_config(cluster)
    assert "    bind :80\n" in text and "    timeout tunnel 3600s\n" in text and "https" not in text


def test_two_clusters_share_no_file_socket_unit_or_backend(cluster, proxied):
    def names(c):
        return {c.balancer.config, c.balancer.routers_file, bc.unit_name(c), bc.unit_path(c), bc.admin_socket(c),
                *(b for b, _, _ in bc.backends(c))}
    assert not names(cluster) & names(proxied)
    assert cluster.balancer.config == "/etc/haproxy/air/prod/haproxy.cfg"
    assert cluster.balancer.routers_file == "/etc/haproxy/air/prod/routers.cfg"


def test_unit_file_runs_the_clusters_files_only(proxied):
    text = bc.unit_file(proxied)
    files = "-f /etc/haproxy/air/stage/haproxy.cfg -f /etc/haproxy/air/stage/routers.cfg"
    assert f"ExecStart=/usr/sbin/haproxy -Ws {files} -p /run/air-balancer-stage/haproxy.pid\n" in text
    assert f"ExecReload=/usr/sbin/haproxy -c -q {files}\nExecReload=/bin/kill -USR2 $MAINPID\n" in text
    assert "RuntimeDirectory=air-balancer-stage\n" in text and "Type=notify\n" in text


def test_unit_file_runs_haproxy_as_its_own_user_with_the_capability_to_bind_low_ports_alone(proxied):
    service = bc.unit_file(proxied).split("[Service]\n")[1].split("\n\n")[0].splitlines()
    settings = [line for line in service if not line.startswith("#")]
    assert settings[:5] == ["User=haproxy", "Group=haproxy", "AmbientCapabilities=CAP_NET_BIND_SERVICE",
                            "CapabilityBoundingSet=CAP_NET_BIND_SERVICE", "NoNewPrivileges=yes"]
    # Nothing else widens it: no other capability, user or privilege setting anywhere in the unit.
    assert [line for line in settings if line.split("=")[0] in
            ("User", "Group", "AmbientCapabilities", "CapabilityBoundingSet", "NoNewPrivileges",
             "PermissionsStartOnly", "SupplementaryGroups")] == settings[:5]
    assert not any(line.startswith("Exec") and line.split("=", 1)[1].startswith(("+", "!")) for line in settings)
    # Its runtime folder (the admin socket's) is that user's, entered by it alone.
    assert "RuntimeDirectoryMode=0700" in settings and "mode 600 level admin" in bc.main_config(proxied)


@pytest.mark.parametrize("enabled, disabled", [
    ([], []), (["10.0.0.1"], []), (["10.0.0.3", "10.0.0.1"], ["10.0.0.2"]), ([], ["fd00::1"]),
    (["fd00::1", "10.0.0.9"], ["2001:db8::a"]),
])
def test_servers_in_reads_back_routers_file(proxied, enabled, disabled):
    assert bc.servers_in(bc.routers_file(proxied, enabled, disabled)) == (enabled, disabled)


def test_ipv6_machines_are_bracketed_in_the_address_only(cluster):
    assert "    server fd00::1 [fd00::1]:8080\n" in bc.routers_file(cluster, ["fd00::1"])


def test_servers_in_ignores_comments_and_nothing():
    text = "# server 10.9.9.9 10.9.9.9:80\n" + ROUTERS + "    # server 10.8.8.8 10.8.8.8:80\n"
    assert bc.servers_in(text) == (["10.0.0.1", "10.0.0.2"], [])
    assert bc.machines_in("") == bc.machines_in(None) == []


# ---------------------------------------------------------------- a change of the list

def test_plan_drains_the_leaving_and_readies_the_returning():
    change = bc.plan(["a", "b"], ["c"], ["b", "c"])
    assert change == bc.Change(machines=["b", "c"], drained=["a"], ready=["c"], drain=["a"], reload=False,
                               check=False)


def test_plan_reloads_only_for_a_server_haproxy_does_not_know():
    assert bc.plan(["a"], ["b"], ["a", "b"]).reload is False
    assert bc.plan(["a"], ["b"], ["a", "b", "n"]) == bc.Change(["a", "b", "n"], [], ["b"], [], True, True)


def test_plan_with_reload_forgets_the_drained():
    assert bc.plan(["a", "b"], ["c"], ["a"], reload=True) == bc.Change(["a"], [], [], ["b"], True, True)


def test_plan_checks_the_file_only_when_it_names_other_servers():
    assert bc.plan(["a", "b"], [], ["b"]).check is False             # a out of rotation, still listed
    assert bc.plan(["b"], ["a"], ["a", "b"]).check is False          # a back
    assert bc.plan(["a", "b"], [], ["b"], forget=["a"]).check is True  # a no longer listed
    assert bc.plan(["a"], [], ["a", "n"]).check is True              # n new


def test_change_command_drains_waits_and_puts_in_maintenance_without_reload(proxied):
    change = bc.plan(["10.0.0.1", "10.0.0.2"], ["10.0.0.3"], ["10.0.0.1", "10.0.0.3"])
    command = bc.change_command(proxied, change, 30)
    sock = "UNIX-CONNECT:/run/air-balancer-stage/admin.sock"
    path = "/etc/haproxy/air/stage/routers.cfg"
    text = bc.routers_file(proxied, ["10.0.0.1", "10.0.0.3"], ["10.0.0.2"])
    # Only `disabled` words differ from the file haproxy runs with: no check of it.
    assert command.startswith(
        f"umask 022 && printf %s '{text}' > {path}.air-candidate && mv -f {path}.air-candidate {path} && ")
    # One exchange: the returning readied, the leaving drained, their connections counted.
    assert ("n=$(printf '%s\\n' 'set server stage_http/10.0.0.3 state ready;set server stage_https/10.0.0.3 state "
            "ready;set server stage_http/10.0.0.2 state drain;set server stage_https/10.0.0.2 state drain;"
            f"show stat -1 4 -1' | socat -t 5 stdio {sock} | awk ") in command
    ready, drain, maint = (command.index(f"state {s}") for s in ("ready", "drain", "maint"))
    assert ready < drain < command.index("air-drain:") < maint
    assert "reload" not in command and "haproxy -c" not in command


def test_change_command_checks_a_file_that_forgets_a_server(proxied):
    path = "/etc/haproxy/air/stage/routers.cfg"
    command = bc.change_command(proxied, bc.plan(["10.0.0.1", "10.0.0.2"], [], ["10.0.0.1"], forget=["10.0.0.2"]), 30)
    assert (f"/usr/sbin/haproxy -c -q -f /etc/haproxy/air/stage/haproxy.cfg -f {path}.air-candidate && "
            f"mv -f {path}.air-candidate {path} && ") in command


def test_change_command_for_a_new_machine_drains_then_reloads_its_own_unit_only(proxied):
    command = bc.change_command(proxied, bc.plan(["10.0.0.1"], [], ["10.0.0.2"]), 30)
    assert command.endswith(" && systemctl reload-or-restart air-balancer-stage.service")
    assert "/usr/sbin/haproxy -c -q" in command
    assert "state drain" in command and "state maint" not in command and "state ready" not in command


def test_api_command_fails_on_any_answer_from_haproxy(tmp_path):
    import subprocess
    fake = tmp_path / "socat"
    fake.write_text("#!/bin/sh\ncat >/dev/null; printf '%s\\n' \"$ANSWER\"\n")
    fake.chmod(0o755)
    command = bc.api_command(SimpleNamespace(name="x"), ["set server x_http/a state drain"])
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin"}
    assert subprocess.run(["sh", "-c", command], env={**env, "ANSWER": ""}).returncode == 0
    assert subprocess.run(["sh", "-c", command], env={**env, "ANSWER": " \n\t"}).returncode == 0  # blank lines only
    failed = subprocess.run(["sh", "-c", command], env={**env, "ANSWER": "No such server."},
                            capture_output=True, text=True)
    assert failed.returncode == 1 and "No such server." in failed.stderr


def fake_socat(folder, answer: str) -> dict:
    """A socat on PATH that answers every exchange with ``folder``/answer, kept in the file "sent"."""
    fake = folder / "socat"
    fake.write_text(f"#!/bin/sh\ncat >> {folder}/sent; cat {folder}/answer\n")
    fake.chmod(0o755)
    (folder / "answer").write_text(answer)
    return {"PATH": f"{folder}:/usr/bin:/bin"}


STAT = ("# pxname,svname,qcur,qmax,scur,smax\n"
        "x_http,10.0.0.1,0,0,2,3\nx_https,10.0.0.1,0,0,1,1\nx_http,10.0.0.11,0,0,5,5\nx_http,BACKEND,0,0,8,8\n")


def test_drain_command_counts_the_drained_servers_connections_only(tmp_path):
    import subprocess
    env = fake_socat(tmp_path, "\n" + STAT)  # the drain's empty answer, then the table
    command = bc.drain_command(SimpleNamespace(name="x"), ["set server x_http/10.0.0.1 state drain"], ["10.0.0.1"], 0)
    out = subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True).stdout
    assert bc.drain_left(out) == 3


def test_an_idle_machine_leaves_in_one_exchange_without_a_pause(tmp_path):
    import subprocess
    env = fake_socat(tmp_path, "\n" + STAT.replace(",2,3\n", ",0,3\n").replace(",1,1\n", ",0,1\n"))
    for tool in ("sleep", "date"):  # neither a pause nor the clock the wait would need
        (tmp_path / tool).write_text(f"#!/bin/sh\necho {tool} >> {tmp_path}/waited\n")
        (tmp_path / tool).chmod(0o755)
    command = bc.drain_command(SimpleNamespace(name="x"), ["set server x_http/10.0.0.1 state drain"], ["10.0.0.1"], 5)
    out = subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True).stdout
    assert out == "air-drain: 0\n"
    assert (tmp_path / "sent").read_text() == "set server x_http/10.0.0.1 state drain;show stat -1 4 -1\n"
    assert not (tmp_path / "waited").exists()


def test_connections_still_open_are_counted_again_until_they_end(tmp_path):
    import subprocess
    env = fake_socat(tmp_path, "\n" + STAT)
    # After the first count, the next ones see the connections gone.
    (tmp_path / "socat").write_text(f"#!/bin/sh\ncat >> {tmp_path}/sent; cat {tmp_path}/answer; "
                                    f"sed -i 's/,2,3$/,0,3/; s/,1,1$/,0,1/' {tmp_path}/answer\n")
    command = bc.drain_command(SimpleNamespace(name="x"), ["set server x_http/10.0.0.1 state drain"], ["10.0.0.1"], 5)
    out = subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True).stdout
    assert out == "air-drain: 0\n"
    assert (tmp_path / "sent").read_text().count("show stat") == 2


def test_a_drain_haproxy_refuses_fails_with_its_words(tmp_path):
    import subprocess
    env = fake_socat(tmp_path, "No such server.\n\n" + STAT)
    command = bc.drain_command(SimpleNamespace(name="x"), ["set server x_http/nope state drain"], ["nope"], 5)
    failed = subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True)
    assert failed.returncode != 0 or "air-drain" not in failed.stdout
    assert "haproxy: No such server." in failed.stderr


def test_drain_left_without_a_wait_is_zero():
    assert bc.drain_left("") == 0 and bc.drain_left("noise\nair-drain: 4\n") == 4


def test_parse_stat_reads_servers_status_and_sessions():
    text = ("# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,"
            "status,weight\n"
            "local_http,FRONTEND,,,0,1,4096,3,0,0,0,0,0,,,,,OPEN,\n"
            "local_http,10.0.0.1,0,0,1,2,,5,0,0,,0,,0,0,0,0,UP,1\n"
            "local_http,10.0.0.2,0,0,0,0,,0,0,0,,0,,0,0,0,0,MAINT,1\n"
            "local_http,BACKEND,0,0,1,2,410,5,0,0,0,0,,0,0,0,0,UP,1\n")
    assert bc.parse_stat(text) == [bc.Server("local_http", "10.0.0.1", "UP", 1),
                                   bc.Server("local_http", "10.0.0.2", "MAINT", 0)]


# ---------------------------------------------------------------- Routers, on the recording executor

BALANCER = "10.0.0.100"


@pytest.fixture
def ex(cluster):
    """An executor whose balancer's routers file lists 10.0.0.1 and 10.0.0.2."""
    fake = FakeExecutor(cluster)
    fake.files[(BALANCER, cluster.balancer.routers_file)] = (ROUTERS, 0o644)
    fake.answer("air-candidate", stdout="air-drain: 0\n")
    return fake


def test_set_with_nothing_to_change_runs_nothing(ex):
    assert balancer.Routers(ex).set(["10.0.0.1", "10.0.0.2"]) == ["10.0.0.1", "10.0.0.2"]
    assert ex.commands(changes_only=True) == []


def test_set_ignores_repeated_machines(ex):
    assert balancer.Routers(ex).set(["10.0.0.1", "10.0.0.2", "10.0.0.1"]) == ["10.0.0.1", "10.0.0.2"]
    assert ex.commands(changes_only=True) == []


def test_remove_is_one_command_carrying_the_new_file(ex, cluster):
    assert balancer.Routers(ex).remove("10.0.0.1") == ["10.0.0.2"]
    change = bc.plan(["10.0.0.1", "10.0.0.2"], [], ["10.0.0.2"], forget=["10.0.0.1"])
    assert change == bc.Change(["10.0.0.2"], [], [], ["10.0.0.1"], False, True)
    assert ex.commands(changes_only=True) == [bc.change_command(cluster, change, cluster.timeouts.drain, "run1")]
    assert f"printf %s '{bc.routers_file(cluster, ['10.0.0.2'])}' > " in ex.commands()[-1]
    assert "routers.cfg.air-candidate-run1" in ex.commands()[-1]  # a run's own candidate file


def test_remove_of_a_drained_machine_only_forgets_it(ex, cluster):
    ex.files[(BALANCER, cluster.balancer.routers_file)] = (bc.routers_file(cluster, ["10.0.0.1"], ["10.0.0.2"]), 0o644)
    assert balancer.Routers(ex).remove("10.0.0.2") == ["10.0.0.1"]
    command = ex.commands()[-1]
    assert f"printf %s '{bc.routers_file(cluster, ['10.0.0.1'])}' > " in command and "state" not in command


def test_set_keeps_a_leaving_machine_listed_but_disabled(ex, cluster):
    balancer.Routers(ex).set(["10.0.0.2"])
    assert f"printf %s '{bc.routers_file(cluster, ['10.0.0.2'], ['10.0.0.1'])}' > " in ex.commands()[-1]


def test_add_of_a_listed_machine_changes_nothing(ex):
    assert balancer.Routers(ex).add("10.0.0.2") == ["10.0.0.1", "10.0.0.2"]
    assert ex.commands(changes_only=True) == []


def test_remove_of_an_unlisted_machine_changes_nothing(ex):
    assert balancer.Routers(ex).remove("10.0.0.9") == ["10.0.0.1", "10.0.0.2"]
    assert ex.commands(changes_only=True) == []


def test_a_rolling_upgrade_drains_and_readies_reading_once_without_reload(ex, cluster):
    routers = balancer.Routers(ex)
    routers.set(["10.0.0.2"])
    routers.set(["10.0.0.1"])
    routers.set(["10.0.0.1", "10.0.0.2"])
    commands = ex.commands(changes_only=True)
    assert len(ex.commands()) == 3  # the file was read from the executor's files, once, without a command
    assert len(commands) == 3 and not any("systemctl reload" in c for c in commands)
    assert "prod_http/10.0.0.1 state ready" in commands[1] and "prod_http/10.0.0.2 state drain" in commands[1]
    assert f"printf %s '{bc.routers_file(cluster, ['10.0.0.1', '10.0.0.2'])}' > " in commands[2]


def test_set_with_reload_reloads_even_when_the_file_is_right(ex):
    # After setup-cluster the file may already be right while haproxy still counts the freshly
    # installed machines as down: the reload starts its checks afresh.
    assert balancer.Routers(ex).set(["10.0.0.1", "10.0.0.2"], reload=True) == ["10.0.0.1", "10.0.0.2"]
    assert ex.commands()[-1].endswith("&& systemctl reload-or-restart air-balancer-prod.service")


def test_connections_left_after_the_drain_timeout_are_said(ex, capsys):
    ex.answer("air-candidate", stdout="air-drain: 2\n", first=True)
    balancer.Routers(ex).remove("10.0.0.1")
    assert "2 connection(s) to 10.0.0.1 still open after 30 s" in capsys.readouterr().err


def test_a_lost_lock_stops_the_change_before_the_balancer_is_touched(ex):
    ex.fence = FakeFence()
    ex.fence.lose()
    with pytest.raises(LostLock):
        balancer.Routers(ex).remove("10.0.0.1")
    assert ex.commands(changes_only=True) == []


# ---------------------------------------------------------------- setup

def test_activate_command_restarts_for_a_new_unit_reloads_for_new_files_else_only_starts(cluster):
    check = ("/usr/sbin/haproxy -c -q -f /etc/haproxy/air/prod/haproxy.cfg -f /etc/haproxy/air/prod/routers.cfg"
             " && ")
    unit = "air-balancer-prod.service"
    assert balancer.activate_command(cluster, [bc.unit_path(cluster)]) == \
        check + f"systemctl daemon-reload && systemctl enable -q {unit} && systemctl restart {unit}"
    assert balancer.activate_command(cluster, [cluster.balancer.config]) == \
        check + f"systemctl enable -q {unit} && systemctl reload-or-restart {unit}"
    assert balancer.activate_command(cluster, []) == \
        check + f"systemctl enable -q {unit} && {{ systemctl is-active -q {unit} || systemctl start {unit}; }}"


def test_setup_keeps_the_machines_the_routers_file_lists(cluster):
    files = balancer.wanted_files(cluster, bc.routers_file(cluster, ["10.0.0.2"], ["10.0.0.3"]))
    assert files[cluster.balancer.routers_file] == bc.routers_file(cluster, ["10.0.0.2"], ["10.0.0.3"])
    assert files[bc.unit_path(cluster)] == bc.unit_file(cluster)
    assert files[cluster.balancer.config] == bc.main_config(cluster)


def test_setup_twice_writes_nothing_the_second_time(cluster):
    ex = FakeExecutor(cluster)
    ex.answer("command -v", stdout="/usr/sbin/haproxy\n/usr/bin/socat\n/usr/bin/systemctl\nuser:haproxy\n")
    assert sorted(balancer.setup(ex)) == sorted([bc.unit_path(cluster), cluster.balancer.config,
                                                 cluster.balancer.routers_file])
    writes = len(ex.commands(changes_only=True))
    assert balancer.setup(ex) == []
    assert len(ex.commands(changes_only=True)) == writes + 1  # only the start check, no file written


@pytest.mark.parametrize("found, missing", [
    ("/usr/sbin/haproxy\n/usr/bin/systemctl\nuser:haproxy\n", "needs socat"),
    ("/usr/sbin/haproxy\n/usr/bin/socat\n/usr/bin/systemctl\n", "needs the user haproxy"),
])
def test_setup_refuses_a_host_without_socat_or_haproxys_user(cluster, found, missing):
    ex = FakeExecutor(cluster)
    ex.answer("command -v", stdout=found)
    with pytest.raises(balancer.RemoteError, match=missing):
        balancer.setup(ex)
    assert ex.commands(changes_only=True) == []


def test_the_requirements_command_says_what_is_there():
    found = subprocess.run(["sh", "-c", bc.requirements_command()], capture_output=True, text=True).stdout
    users = {u.pw_name for u in pwd.getpwall()}
    assert ("user:haproxy" in found.split()) == ("haproxy" in users)
    assert bc.missing_requirements("/usr/sbin/haproxy /usr/bin/socat /bin/systemctl user:haproxy") == []
    assert bc.missing_requirements("/usr/bin/socat") == ["haproxy", "systemctl", "the user haproxy"]

"""Machines as they really are: `core` with sudo, the administrator's own cloud config, OS updates paused.

The sandbox's hosts refuse root over SSH, as CoreOS and Flatcar do; every
test of the suite logs in as `core`. Machines are prepared with a base cloud
config an administrator extended (a monitoring unit, a file, another SSH key)
at Flatcar's path on every second machine and CoreOS's on the others;
installing must extend it, never replace it, and a wipe must put it back
byte for byte. Checks are made on the machines (systemctl, the cloud config
files) and through the balancer.
"""
import dataclasses
import time

import pytest
import yaml

import cloudconfig
from sandbox import testbed as sb
from tasks.net.executor import Executor

from conftest import (BALANCER_ADDRESS, BUILD_ADDRESS, MACHINE_ADDRESSES, SHORT_HEALTH, SPARE_ADDRESSES, Probe, Running,
                      USER_DATA, error_line, etcd_of, fab, get_version, local_copy, make_fresh, on, routed_in, serving,
                      wait_serving)
from tasks.runbooks import records

OS_UPDATES = "update-engine.service locksmithd.service"


def release_of(cluster) -> str:
    """The release the cluster's etcd records."""
    with etcd_of(cluster) as client:
        release, _ = records.read_release(client, cluster)
    return release.id


@pytest.mark.parametrize("host", [MACHINE_ADDRESSES[0], BALANCER_ADDRESS, BUILD_ADDRESS],
                         ids=["machine", "balancer", "build-server"])
def test_root_may_not_log_in_and_core_has_passwordless_sudo(local, host):
    as_root = dataclasses.replace(local, ssh=dataclasses.replace(local.ssh, user="root"))
    with Executor(as_root) as ex:
        assert "Authentication failed" in (ex.reachable(host) or "")
    assert on(local, host, "id -un").stdout.strip() == "root"  # core's commands run through sudo -n
    with Executor(local) as ex:
        assert ex.conn(host).user == "core"


def test_the_administrators_base_is_extended_on_every_machine(local_serving):
    cluster = local_serving
    base = cloudconfig.render(sb.base_document())
    admin_key = (sb.STATE / "admin_ed25519.pub").read_text().strip()
    for address in cluster.machines:
        path = USER_DATA[address]
        assert on(cluster, address, f"cat {path}.air-base").stdout == base  # kept byte for byte
        final = yaml.safe_load(on(cluster, address, f"cat {path}").stdout)
        assert admin_key in final["ssh_authorized_keys"]
        assert sb.ADMIN_FILE in [f["path"] for f in final["write_files"]]
        units = [u["name"] for u in final["coreos"]["units"]]
        assert units[0] == sb.ADMIN_UNIT and "etcd-member.service" in units
        assert final["coreos"]["update"] == {"reboot_strategy": "off"}
        assert on(cluster, address, f"systemctl is-active {sb.ADMIN_UNIT}").stdout.strip() == "active"


def test_a_rebooted_machine_keeps_the_administrators_unit_and_serves_again(sandbox, local_serving, figures):
    cluster = local_serving
    address = cluster.machines[1]
    name = next(m["name"] for m in sandbox["machines"] if m["address"] == address)
    with Probe(BALANCER_ADDRESS, 80) as probe:
        sb.docker("restart", "-t", "5", name)
        rebooted = time.monotonic()
        deadline = rebooted + 120
        while True:
            try:
                if get_version(address, 80, timeout=2).get("machine") == address:
                    break
            except Exception:  # still booting
                pass
            assert time.monotonic() < deadline, f"{address} did not serve again after its reboot"
            time.sleep(1)
        back = time.monotonic() - rebooted
    figures(f"reboot of {address}: serving again {back:.1f} s after `docker restart`; {probe.report('meanwhile')}")
    assert on(cluster, address, f"systemctl is-active {sb.ADMIN_UNIT}").stdout.strip() == "active"
    assert wait_serving(cluster)


def test_os_updates_are_paused_during_an_upgrade_and_put_back_after(local_serving, figures):
    cluster = local_serving
    sb.commit_change(sb.Change("router"))
    running = Running("deploy", "--cluster", "local")
    line = running.wait_for("balancer: routes to")
    in_hand = next(m for m in cluster.machines if m not in routed_in(line))
    during = on(cluster, in_hand, f"systemctl is-active {OS_UPDATES}", check=False).stdout.split()
    finished = running.finish()
    assert finished.returncode == 0, finished.stderr
    figures(f"OS update units on {in_hand} mid-upgrade: {during}")
    assert during == ["inactive", "inactive"]
    for address in cluster.machines:
        assert on(cluster, address, f"systemctl is-active {OS_UPDATES}").stdout.split() == ["active", "active"]


def test_os_updates_are_put_back_after_a_failed_upgrade_too(local_serving, tmp_path):
    cluster = local_serving
    sb.commit_change(sb.Change("air_frontend", "broken"))
    hasty = local_copy(tmp_path, timeouts={"healthy": SHORT_HEALTH})  # the health timeout is waited out
    failed = fab("deploy", "--cluster", "local", check=False, env=hasty)
    assert failed.returncode == 1 and "not healthy" in failed.stderr
    for address in cluster.machines:
        assert on(cluster, address, f"systemctl is-active {OS_UPDATES}").stdout.split() == ["active", "active"]
    sb.commit_change(sb.Change("air_frontend", "fix"))
    fab("deploy", "--cluster", "local")
    assert serving(cluster)


def test_a_cloud_config_changed_by_hand_is_not_written_over_and_the_base_is_where_changes_go(local_serving):
    """An administrator edits a machine's cloud config by hand: the next deploy refuses before
    anything changes and says where such a change belongs; made in the kept base instead, the
    change is in the machine's next cloud config and its file on the machine."""
    cluster = local_serving
    address = cluster.machines[0]
    path = USER_DATA[address]
    with Executor(cluster) as ex:
        written, base = ex.read_file(address, path), ex.read_file(address, path + ".air-base")
    assert on(cluster, address, f"sha256sum < {path} | cut -d' ' -f1").stdout == \
        on(cluster, address, f"cat {path}.air-written").stdout  # as the install or last deploy wrote it
    note = "/etc/monitoring/by-hand.conf"
    try:
        on(cluster, address, f"printf '# the administrator was here\\n' >> {path}")
        status = fab("status", "--cluster", "local", check=False)
        assert status.returncode == 1 and \
            f"warning: {path} on {address} was changed by hand since air-deploy wrote it" in status.stdout
        recorded = release_of(cluster)
        sb.commit_change(sb.Change("static_website"))
        refused = fab("deploy", "--cluster", "local", check=False)
        assert error_line(refused).startswith(f"error: {address}: {path} was changed since air-deploy wrote it, "
                                              f"and writing the new release would lose that change: make it in "
                                              f"{path}.air-base")
        assert error_line(refused).endswith("; nothing was changed")
        assert release_of(cluster) == recorded and serving(cluster)
        assert on(cluster, address, f"tail -n 1 {path}").stdout == "# the administrator was here\n"

        # The same kind of change made where it belongs: the base, with the cloud config put back.
        doc = yaml.safe_load(base)
        doc["write_files"].append({"path": note, "permissions": "0644", "content": "server=extra.invalid\n"})
        with Executor(cluster) as ex:
            ex.write_files(address, [(path + ".air-base", cloudconfig.render(doc), 0o600), (path, written, 0o600)])
        fab("deploy", "--cluster", "local")
        assert release_of(cluster) != recorded
        final = yaml.safe_load(on(cluster, address, f"cat {path}").stdout)
        assert note in [f["path"] for f in final["write_files"]]
        assert on(cluster, address, f"cat {note}").stdout == "server=extra.invalid\n"
    finally:
        with Executor(cluster) as ex:
            ex.write_file(address, path + ".air-base", base, 0o600)
        on(cluster, address, f"rm -f {note}; if tail -n 1 {path} | grep -q 'administrator was here'; then "
                             f"sed -i '$d' {path}; fi")
    assert serving(cluster)


def test_an_addition_that_would_replace_the_administrators_unit_is_refused_before_anything(
        local_serving, tmp_path):
    cluster = local_serving
    spare = SPARE_ADDRESSES[1]
    make_fresh(cluster, [spare])
    text = (sb.ROOT / "clusters" / "local.yaml").read_text().replace(
        "include: ../.sandbox/cluster.yaml", f"include: {sb.STATE / 'cluster.yaml'}")
    text += ("additions:\n  units:\n    - name: admin-monitor.service\n"
             "      content: \"[Service]\\nExecStart=/bin/true\\n\"\n")
    (tmp_path / "local.yaml").write_text(text)
    before = on(cluster, spare, f"cat {USER_DATA[spare]}").stdout
    refused = fab("add-machine", "--cluster", "local", "--via", cluster.machines[0], "--machine", spare,
                  env={"AIR_CLUSTERS_DIR": str(tmp_path)}, check=False)
    assert error_line(refused) == (f"error: {spare}: unit admin-monitor.service: the base cloud config has it, "
                                   f"and so would the install; nothing was changed")
    assert on(cluster, spare, f"cat {USER_DATA[spare]}").stdout == before
    assert on(cluster, spare, "systemctl is-active etcd-member.service", check=False).stdout.strip() == "inactive"
    assert serving(cluster)

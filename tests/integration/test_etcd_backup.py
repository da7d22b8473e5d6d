"""etcd backups, a lost quorum recovered, every member's data restored: on the installed `local` cluster.

Tests run in file order and share the cluster's state, which each one says: backups are taken,
checked and pruned into a folder of the module's own (a copy of the cluster file names it); a
settings.apply and a deploy take one first, and none while the newest is young. Then two of the
three machines are killed (`docker kill`: no data left, the "disks gone" case): `fab status`
says so within seconds, `etcd.recover` makes the survivor a one-member cluster, the two come back
fresh and are added again, a deploy works. Then every member's etcd data is lost (two wiped, the
third made afresh): `etcd.restore` from the newest automatic backup, then a deploy. Outcomes are
read from outside: etcdctl on the machines (and on this host, for the files), the records read
back, requests through the balancer with a probe and a long request in flight. The module
leaves the cluster serving on its three machines, as the next module expects.
"""
import hashlib
import json
import stat
import subprocess
import time
from datetime import datetime, timezone

import pytest

from sandbox import testbed as sb
from tasks.model import backup, cluster as cluster_config, state
from tasks.runbooks import balancer, records, settings

from conftest import (BALANCER_ADDRESS, MACHINE_ADDRESSES, Probe, Slow, error_line, etcd_of, etcdctl, executor, fab,
                      fab_here, listed, local_copy, on, on_each, serving, wait_serving)

M1, M2, M3 = MACHINE_ADDRESSES
PORT = 80


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("etcd-backups")


@pytest.fixture(scope="module")
def young(installed, folder, tmp_path_factory):
    """The environment of a copy of the cluster file whose backups go to the module's folder, 3 kept,
    a task taking none while the newest is younger than an hour."""
    return local_copy(tmp_path_factory.mktemp("young"), backups={"folder": str(folder), "keep": 3, "max_age": 3600})


EAGER_AGE = 1  # seconds: the backups.max_age of ``eager``


@pytest.fixture(scope="module")
def eager(installed, folder, tmp_path_factory):
    """The same, but every task takes one first once the newest is EAGER_AGE s old (``out_of_youth``)."""
    return local_copy(tmp_path_factory.mktemp("eager"),
                      backups={"folder": str(folder), "keep": 3, "max_age": EAGER_AGE})


def snapshots(folder) -> list:
    return sorted(p for p in folder.iterdir() if p.suffix == ".db")


def out_of_youth(folder) -> None:
    """Waits until the newest backup in ``folder`` is EAGER_AGE s old (as ``backup.age`` counts): a
    task run with ``eager`` takes one then (a test just before may have taken one a moment ago)."""
    found = snapshots(folder)
    seconds = backup.age(found[-1].name, datetime.now(timezone.utc)) if found else None
    if seconds is not None and seconds < EAGER_AGE:
        time.sleep(EAGER_AGE - seconds + 0.05)


def record_of(path) -> dict:
    return json.loads(path.with_suffix(".json").read_text())


def etcd_keys(cluster, via=M1) -> int:
    """How many keys etcd holds, as etcdctl on a member counts them."""
    return len(etcdctl(cluster, via, "get '' --prefix --keys-only").stdout.split())


def member_names(cluster, via=M1) -> list:
    listed_ = json.loads(etcdctl(cluster, via, "member list -w json").stdout)["members"]
    assert all(m.get("name") and not m.get("isLearner") for m in listed_), listed_
    return sorted(m["name"] for m in listed_)


def recorded(cluster) -> tuple:
    """(the recorded release's id, the history's ids and outcomes, the settings) read back from etcd;
    the settings as every key below their prefix with its value, a secret's by its SHA-256 (a
    failed comparison prints no secret)."""
    with etcd_of(cluster) as client:
        release, _ = records.read_release(client, cluster)
        history = [(r["id"], r["outcome"]) for r in records.history(client, cluster)]
        found = client.get_prefix(state.settings_prefix(cluster))
    secrets = settings.secrets_of(cluster)
    shown = {k: "sha256 " + hashlib.sha256(v.encode()).hexdigest() if secrets.hides(k, v) else v
             for k, v in found.items()}
    assert shown, "no settings in etcd"
    return release.id, history, shown


def wait_until_down(cluster, address, within) -> bool:
    """True once haproxy's checks take ``address`` out (every backend says DOWN), as haproxy's admin
    socket on the balancer tells (what `fab balancer.status` shows)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        servers = balancer.Routers(executor(cluster)).servers()
        if all(s.status.startswith("DOWN") for s in servers if s.machine == address):
            return True
        time.sleep(0.25)
    return False


def documents(text) -> list:
    """The JSON documents printed one after another (a `fab` run of several tasks, each with --json)."""
    found, at, decoder, text = [], 0, json.JSONDecoder(), text.strip()
    while at < len(text):
        document, at = decoder.raw_decode(text, at)
        found.append(document)
        at += len(text[at:]) - len(text[at:].lstrip())
    return found


def name_of(sandbox, address) -> str:
    return next(m["name"] for m in sandbox["machines"] if m["address"] == address)


# ---------------------------------------------------------------- backups

def test_restore_and_recover_refuse_while_etcd_has_quorum(installed, young, folder):
    # One `fab`: a backup (the snapshot etcd.restore is given below), then etcd.recover, refused.
    recover = fab("etcd.backup", "--cluster", "local", "etcd.recover", "--cluster", "local", "--machine", M1,
                  check=False, env=young)
    assert recover.stdout.startswith("etcd backup: ") and recover.stdout.strip().endswith(str(snapshots(folder)[-1]))
    restore = fab("etcd.restore", "--cluster", "local", "--snapshot", str(snapshots(folder)[-1]), check=False, env=young)
    for task, proc in (("etcd.recover", recover), ("etcd.restore", restore)):
        assert error_line(proc) == (f"error: etcd of local still has quorum (3 of 3 members answer healthy): {task} "
                                    f"is for a cluster that lost it; nothing was changed")
    assert member_names(installed) == sorted(installed.machines)


def test_backups_are_checked_private_and_pruned(installed, young, folder, clock):
    with clock("4 backups"):  # one `fab` running the task 4 times (--no-dedupe: the same arguments each time)
        made = documents(fab("--no-dedupe", *["etcd.backup", "--cluster", "local", "--json"] * 4, env=young).stdout)
    assert len(made) == 4 and len({m["file"] for m in made}) == 4, made
    kept = snapshots(folder)
    assert [p.name for p in kept] == [m["file"] for m in made[-3:]]  # the newest 3
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {0o600}
    assert sorted(p.name for p in folder.iterdir()) == sorted(n for p in kept for n in (p.name, p.stem + ".json"))
    newest = record_of(kept[-1])
    # Checked from outside: etcdctl on this host reads the file, etcdctl on a member counts the keys.
    status = json.loads(subprocess.run(["etcdctl", "snapshot", "status", str(kept[-1]), "-w", "json"],
                                       capture_output=True, text=True, check=True,
                                       env={"ETCDCTL_API": "3"}).stdout)
    assert status["revision"] == newest["revision"]
    assert newest["keys"] == etcd_keys(installed)
    assert newest["size"] == kept[-1].stat().st_size and newest["member"] in installed.machines
    assert newest["release"] == recorded(installed)[0]
    damaged = folder.parent / "damaged.db"
    data = bytearray(kept[-1].read_bytes())
    data[4096] ^= 0xFF  # a byte of its database
    damaged.write_bytes(bytes(data))
    assert "its SHA-256 trailer does not match" in error_line(
        fab_here("etcd.restore", "--cluster", "local", "--snapshot", str(damaged), check=False))  # refused before any host


def test_defrag_goes_member_by_member_leader_last(installed):
    done = fab("etcd.defrag", "--cluster", "local")
    lines = [line for line in done.stderr.splitlines() if line.startswith("etcd defrag: ")]
    assert len(lines) == 3 and "(leader)" in lines[-1], done.stderr
    assert sorted(line.split()[2].rstrip(":") for line in lines) == sorted(installed.machines)


def test_settings_apply_takes_a_backup_first_and_none_while_it_is_young(installed, young, eager, folder):
    out_of_youth(folder)
    before = snapshots(folder)
    applied = fab("settings.apply", "--cluster", "local", env=eager)
    line = next(x for x in applied.stderr.splitlines() if x.startswith("etcd backup: "))
    after = snapshots(folder)
    assert after[-1] not in before and line.endswith(f" -> {after[-1]}")
    meta = record_of(after[-1])
    assert line == backup.backup_line(meta, str(after[-1]))
    again = fab("settings.apply", "--cluster", "local", env=young)
    assert "etcd backup: none taken, the newest is " in again.stderr
    assert snapshots(folder) == after


# ---------------------------------------------------------------- a lost quorum, recovered

def test_two_of_three_killed_status_says_so_in_seconds_and_recover_brings_the_cluster_back(
        sandbox, installed, young, eager, folder, clock, figures):
    cluster = installed
    before = recorded(cluster)
    with clock("kill m2 and m3, until haproxy's checks take them out"):
        for address in (M2, M3):
            sb.docker("kill", name_of(sandbox, address))
        assert wait_until_down(cluster, M2, 30) and wait_until_down(cluster, M3, 30)
    # From now on the survivor alone serves: a request that fails failed there.
    with Probe(BALANCER_ADDRESS, PORT) as probe:
        started = time.monotonic()
        status = fab("status", "--cluster", "local", "--json", check=False, env=young)
        took = time.monotonic() - started
        view = json.loads(status.stdout)
        figures(f"fab status with 2 of 3 machines killed: {took:.1f} s wall, read in {view['seconds']} s")
        assert status.returncode == 1 and view["seconds"] < 2.5
        assert view["etcd"]["quorum"] is False and view["etcd"]["said"] == "no quorum: 1 of 3 members answer"
        assert [m["etcd"]["role"] for m in view["machines"] if m["address"] == M1] == \
            ["no quorum: 1 of 3 members answer"]
        assert any(f"fab etcd.recover --cluster local --machine {M1}" in w["fix"] for w in view["warnings"])

        with clock("etcd.recover from the survivor"):
            recovered = fab("etcd.recover", "--cluster", "local", "--machine", M1, env=young)
        assert f"etcd.recover: {M1} is the one member of local's etcd" in recovered.stderr
        assert member_names(cluster) == [M1]
        dropin = on(cluster, M1, "cat /etc/systemd/system/etcd-member.service.d/20-air.conf").stdout
        assert f"ETCD_INITIAL_CLUSTER={M1}=https://{M1}:2380\n" in dropin
        assert "ETCD_INITIAL_CLUSTER_STATE=existing" in dropin
        assert on(cluster, M1, "ls /etc/systemd/system/etcd-member.service.d/").stdout.split() == ["20-air.conf"]
        assert listed(cluster) == [M1]
        assert recorded(cluster) == before
    figures(probe.report("the survivor during fab status and etcd.recover"))
    assert probe.failed == 0, probe.errors

    with clock("m2 and m3 back fresh"):
        sb.reset_machines([M2, M3])
    with clock("add-machine of m2, then of m3 (one fab)"):
        fab(*(arg for address in (M2, M3) for arg in ("add-machine", "--cluster", "local", "--via", M1,
                                                       "--machine", address)), env=young)  # one after the other
    assert member_names(cluster) == sorted(cluster.machines)
    assert sorted(listed(cluster)) == sorted(cluster.machines)
    assert recorded(cluster) == before
    with clock("a deploy of a change after the recovery"):
        sb.commit_change(sb.Change("static_website"))
        deployed = fab("deploy", "--cluster", "local", env=eager)
    assert any(line.startswith("etcd backup: ") and "keys, rev" in line for line in deployed.stderr.splitlines())
    assert wait_serving(cluster, 60)


# ---------------------------------------------------------------- every member's data lost, restored

def test_every_members_data_lost_restore_from_the_newest_automatic_backup_then_deploy(
        sandbox, installed, young, eager, folder, clock, figures):
    cluster = installed
    newest = snapshots(folder)[-1]  # taken by the deploy above, before it recorded its release
    meta = record_of(newest)
    with clock("m3 made afresh (its data and units gone)"):
        sb.reset_machines([M3])
        assert wait_until_down(cluster, M3, 30), "haproxy still sends to the machine made afresh"
    slow = Slow(cluster, 12)
    with Probe(BALANCER_ADDRESS, PORT) as probe:
        slow.start()
        assert slow.started_on.wait(10), slow.error
        on_each(cluster, "systemctl stop etcd-member.service && rm -rf /var/lib/etcd/member", [M1, M2])
        with clock("etcd.restore"):
            restored = fab("etcd.restore", "--cluster", "local", "--snapshot", str(newest), env=young)
        slow.join(30)
    figures(probe.report("every member's etcd data lost, etcd.restore"))
    assert f"etcd.restore: installing release {meta['release']} on {M3}" in restored.stderr
    assert member_names(cluster) == sorted(cluster.machines)
    assert recorded(cluster)[0] == meta["release"]
    # The deploy's lock was held when the backup was taken: restored with it, then released.
    assert "etcd.restore: released the lock etcd came back with (who=" in restored.stderr
    assert etcd_keys(cluster, M3) == meta["keys"] - 1
    assert probe.failed == 0, probe.errors
    assert slow.complete and slow.machine in (M1, M2), (slow.lines, slow.error)
    with clock("a deploy after the restore"):
        fab("deploy", "--cluster", "local", env=young)
    assert wait_serving(cluster, 60) and serving(cluster)
    assert cluster_config.load("local").machines == cluster.machines

"""The cluster's lock fences what etcd cannot hold in one transaction with it: a membership change
asked by a task whose lock was taken away (`etcdctl del` of its key) is refused, through the
session's own etcd client and through a tunnel to another member alike, and etcd's members are
as they were (etcdctl). A v2 write is refused the same way, before it is sent."""
import json

import pytest

from cloudconfig.units import peer_url
from tasks.model import state
from tasks.model.errors import LostLock
from tasks.net import etcd as etcd_api
from tasks.net.session import session

from conftest import SPARE_ADDRESSES, etcdctl, serving


def members(cluster) -> list:
    listed = json.loads(etcdctl(cluster, cluster.machines[0], "member list -w json").stdout)["members"]
    return sorted((m.get("name", ""), m.get("peerURLs", [""])[0], bool(m.get("isLearner"))) for m in listed)


def test_a_membership_change_after_the_lock_was_taken_away_is_refused_and_changes_nothing(installed):
    cluster = installed
    before = members(cluster)
    with session(cluster, "test: a membership change without the lock") as s:
        voter = next(m for m in s.etcd.members() if state.member_address(m) == cluster.machines[1])
        etcdctl(cluster, cluster.machines[0], f"del {state.lock_key(cluster)}")  # behind the holder's back
        with pytest.raises(LostLock, match=r"/lock is no longer ours: add learner .* was not done"):
            s.etcd.add_member(peer_url(SPARE_ADDRESSES[0]), learner=True)
        # Asked of another member through a tunnel of its own (as a promotion is asked of the leader).
        with etcd_api.tunnel(s.ex, cluster.machines[2]) as other:
            with pytest.raises(LostLock, match=f"no longer ours: remove member {voter.id} was not done"):
                other.remove_member(voter.id)
            with pytest.raises(LostLock, match=f"no longer ours: promote {voter.id} was not done"):
                other.promote(voter.id, timeout=1)
        # Refused before it is sent: `local` does not serve the v2 API, which would be the error otherwise.
        with pytest.raises(LostLock, match=r"no longer ours: put /air-test/fencing \(v2\) was not done"):
            s.etcd.v2_put("/air-test/fencing", "written by a task that lost its lock")
    assert members(cluster) == before
    assert etcdctl(cluster, cluster.machines[0], f"get {state.lock_key(cluster)}").stdout == ""
    assert serving(cluster)

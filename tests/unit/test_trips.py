"""The round-trip counter: per host and kind, from any thread, and as requests' response hook."""
import threading

from tasks.net.trips import RoundTrips


def test_counts_per_host_and_kind_from_many_threads():
    trips = RoundTrips()
    threads = [threading.Thread(target=lambda: [trips.count("m1", "command") for _ in range(100)]) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    trips.count("m2", "login")
    trips.count("m2", "etcd", 3)
    assert trips.of("m1") == 800 and trips.of("m2") == 4 and trips.of("m2", kinds=("etcd",)) == 3
    assert trips.total() == 804 and trips.total(kinds=("login",)) == 1
    assert trips.summary() == {"hosts": {"m1": {"command": 800}, "m2": {"etcd": 3, "login": 1}}, "total": 804}


def test_the_hook_counts_each_answer_and_passes_it_on():
    trips = RoundTrips()
    hook = trips.hook("registry:5000", "registry")
    answer = object()
    assert hook(answer) is answer and hook(answer, timeout=3) is answer
    assert trips.summary() == {"hosts": {"registry:5000": {"registry": 2}}, "total": 2}


def test_the_timeline_lists_each_round_trip_in_order_with_what_and_how_long():
    from types import SimpleNamespace
    from datetime import timedelta
    trips = RoundTrips()
    trips.count("m1", "command", what="read the release facts", took=0.05)
    answer = SimpleNamespace(request=SimpleNamespace(method="POST", path_url="/v3/kv/txn"),
                             elapsed=timedelta(milliseconds=20))
    trips.hook("m1", "etcd")(answer)
    trips.count("m2", "login", 2)
    listed = trips.timeline()
    assert [(t.host, t.kind, t.what, t.took) for t in listed] == [
        ("m1", "command", "read the release facts", 0.05), ("m1", "etcd", "POST /v3/kv/txn", 0.02),
        ("m2", "login", "", 0.0), ("m2", "login", "", 0.0)]
    assert listed[0].at <= listed[1].at <= listed[2].at


def test_trips_that_overlap_cost_one_wait_and_the_rest_one_each():
    from tasks.net.trips import Trip, waits
    members = Trip(0.108, "m1", "etcd", "POST /v3/cluster/member/list", 0.107)
    read = Trip(0.057, "m1", "etcd", "POST /v3/kv/range", 0.054)
    facts = [Trip(0.224 + i / 1000, f"m{i}", "command", "read the release facts", 0.11) for i in (1, 2, 3)]
    txn = Trip(0.297, "m1", "etcd", "POST /v3/kv/txn", 0.058)
    login = Trip(0.4, "m1", "login", "SSH login")  # no duration known: sent when answered
    restart = Trip(1.0, "m2", "command", "restart", 0.5)
    ahead = Trip(0.9, "m1", "etcd", "POST /v3/kv/range", 0.05)  # sent while the restart ran
    assert waits([restart, txn, facts[2], members, login, read, facts[0], facts[1], ahead]) == [
        [members, read], facts, [txn], [login], [restart, ahead]]
    assert waits([]) == []

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

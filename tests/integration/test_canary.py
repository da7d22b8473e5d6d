"""A canary judged by the cluster's own numbers, on the sandbox: failed and rolled back by itself
(errors, latency), passed and rolled to every machine, held when traffic is too thin.

Each deploy runs with traffic the test makes itself (steady GET / through the balancer: the probe,
so the volume is known), a long request in flight, and a short window set in the test's copy of
the cluster file. The module leaves every machine on one release and no candidate.
"""
import http.client
import json
import signal
import threading
import time

import pytest
import yaml

from sandbox import testbed as sb
from tasks.commands import haproxy as haproxy_commands
from tasks.net.executor import Executor
from tasks.runbooks import records

from conftest import Running, Slow, etcd_of, fab, local_copy, serving
from integration.test_operator import machine_releases, recorded

WINDOW = 4           # s: the judging window of the module's cluster copy
WEIGHT = 25          # percent of new connections the canary gets (--weight)
ERRORS, LATENCY = 30, 300  # the bad releases: percent answered 500; ms slower
LONG = 3             # s: the long request in flight during each deploy
CANARY = {"window": WINDOW, "min_requests": 15, "min_latency": 100, "max_latency_ratio": 2}


class Traffic:
    """GET / through the balancer from a few threads, about ``rate`` a second, each answer kept with
    its time: the probe, and the known volume the canary is judged on."""

    def __init__(self, cluster, rate=40, threads=4):
        self.host, self.port = cluster.balancer.host, cluster.balancer.http_port
        self.pause = threads / rate
        self.answers = []  # (monotonic time, status or the exception's name)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join()

    def _run(self):
        while not self._stop.is_set():
            try:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
                conn.request("GET", "/")
                status = conn.getresponse().status
                conn.close()
            except Exception as e:  # a failed request is what is counted
                status = type(e).__name__
            self.answers.append((time.monotonic(), status))
            self._stop.wait(self.pause)

    def between(self, start=0.0, end=float("inf")) -> list:
        return [status for t, status in self.answers if start <= t < end]

    def failed(self, start=0.0, end=float("inf")) -> int:
        return sum(1 for status in self.between(start, end) if status != 200)


class Timed(Running):
    """A `fab` run whose progress lines are kept with the time each came."""

    def _read(self):
        self.times = []
        for line in self.proc.stderr:
            self.times.append((time.monotonic(), line.rstrip("\n")))
            self.lines.append(line.rstrip("\n"))
            self._queue.put(line.rstrip("\n"))

    def when(self, prefix: str) -> float:
        return next(t for t, line in self.times if line.startswith(prefix))


@pytest.fixture(scope="module")
def judged(installed, tmp_path_factory):
    """The environment of `fab` with the module's cluster copy (short window), and the canary machine."""
    env = local_copy(tmp_path_factory.mktemp("canary"), canary=CANARY)
    yield env, installed.machines[2]
    # Whatever a failed test left: a candidate rolled back, every machine on one release.
    with etcd_of(installed) as client:
        candidate, _ = records.read_candidate(client, installed)
    if candidate is not None:
        fab("rollback", "--cluster", "local", env=env, check=False)


def deploy_judged(cluster, env, canary, *flags, traffic_rate=40):
    """`fab deploy --canary --judge` with the probe and a long request in flight: (CompletedProcess,
    Traffic, Timed, Slow)."""
    slow = Slow(cluster, LONG)
    slow.start()
    slow.started_on.wait(10)
    with Traffic(cluster, traffic_rate) as traffic:
        run = Timed("deploy", "--cluster", "local", "--canary", canary, *flags, env=env)
        proc = run.finish(300)
    slow.join(LONG + 30)
    return proc, traffic, run, slow




def balancer_weights(cluster) -> dict:
    """(backend, machine) -> the weight haproxy gives the server now."""
    with Executor(cluster) as ex:
        text = ex.read(cluster.balancer.host, haproxy_commands.stat_command(cluster)).stdout
    lines = text.splitlines()
    header = lines[0].lstrip("# ").split(",")
    rows = [dict(zip(header, line.split(","))) for line in lines[1:] if line]
    return {(r["pxname"], r["svname"]): int(r["weight"]) for r in rows if r["svname"] not in ("FRONTEND", "BACKEND")}


def check(judged_record: dict, name: str) -> dict:
    return next(c for c in judged_record["checks"] if c["check"].startswith(name))


def describe(what: str, judged_record: dict) -> str:
    volume = check(judged_record, "requests")
    figures = "; ".join(f"{c['check']}: canary {c['canary']}, baseline {c['baseline']}, limit {c['limit']}, "
                        f"{c['outcome']}" for c in judged_record["checks"][1:])
    return (f"{what}: window {judged_record['window']} s at {judged_record['weight']}%, requests canary "
            f"{volume['canary_requests']}, baseline {volume['baseline_requests']}; {figures}; "
            f"verdict {judged_record['verdict']}")


def test_a_release_answering_500_is_failed_and_rolled_back_by_itself(judged, local_serving, figures):
    env, canary = judged
    cluster = local_serving
    before, _, _ = recorded(cluster)
    sb.commit_change(sb.change_of("router", errors=str(ERRORS)))
    proc, traffic, run, slow = deploy_judged(cluster, env, canary, "--judge", "--weight", str(WEIGHT))
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: canary on {canary} failed (fail: 5xx (router)")
    assert "Traceback" not in proc.stderr
    # Rolled back by itself: every machine on the cluster's release, no candidate, weights even again.
    assert machine_releases(cluster) == {m: before["id"] for m in cluster.machines}
    current, candidate, history = recorded(cluster)
    assert current["id"] == before["id"] and candidate is None
    assert history[-1]["outcome"].startswith(f"aborted: canary on {canary}: fail: 5xx (router)")
    verdict = history[-1]["judged"]
    assert verdict["verdict"] == "fail" and check(verdict, "5xx (router)")["outcome"] == "FAIL"
    errors = check(verdict, "5xx (router)")
    assert 10 <= 100 * errors["canary_errors"] / errors["canary_count"] <= 60, errors  # about the 30 % shipped
    assert errors["baseline_errors"] == 0
    assert len(set(balancer_weights(cluster).values())) == 1
    # The failures the clients saw: only the canary's share, while it ran the release. Before the
    # judging it had at most an even share (1/3; less while drained and upgraded), from then until
    # its rollback drained it, WEIGHT %; of those, ERRORS % failed. Allowed: 1.5 times that, plus 5.
    judging = run.when("canary: judging")
    share_before = traffic.between(end=judging)
    share_after = traffic.between(start=judging)
    bound = ERRORS / 100 * (len(share_before) / len(cluster.machines) + len(share_after) * WEIGHT / 100)
    failed = traffic.failed()
    figures(describe("500 on 30 %", verdict))
    figures(f"500 on 30 %: the probe sent {len(traffic.answers)} requests ({len(share_before)} before the "
            f"judging, {len(share_after)} from it on), {failed} failed; bound {bound:.1f} (x1.5 + 5 allowed)")
    assert 0 < failed <= 1.5 * bound + 5, (failed, bound)
    assert slow.complete, (slow.error, slow.lines[-3:])


def test_a_release_300_ms_slower_is_failed_on_latency_and_rolled_back(judged, local_serving, figures):
    env, canary = judged
    cluster = local_serving
    before, _, _ = recorded(cluster)
    sb.commit_change(sb.change_of("router", fix=True))  # no more errors: only slower
    sb.commit_change(sb.change_of("router", latency_ms=str(LATENCY)))
    proc, traffic, run, slow = deploy_judged(cluster, env, canary, "--judge", str(WINDOW), "--weight", str(WEIGHT))
    assert proc.returncode == 1, proc.stderr
    assert "p95 request time (router)" in proc.stderr.strip().splitlines()[-1]
    assert machine_releases(cluster) == {m: before["id"] for m in cluster.machines}
    current, candidate, history = recorded(cluster)
    assert current["id"] == before["id"] and candidate is None
    verdict = history[-1]["judged"]
    latency = check(verdict, "p95")
    assert latency["outcome"] == "FAIL" and latency["canary_ms"] >= LATENCY and latency["baseline_ms"] < LATENCY
    assert check(verdict, "5xx (router)")["outcome"] == "ok"
    assert traffic.failed() == 0, traffic.answers[-5:]
    assert slow.complete, (slow.error, slow.lines[-3:])
    figures(describe("300 ms slower", verdict))


def test_a_good_release_is_passed_and_rolled_to_every_machine(judged, local_serving, figures):
    env, canary = judged
    cluster = local_serving
    sb.commit_change(sb.change_of("router", fix=True))  # neither errors nor slower
    proc, traffic, run, slow = deploy_judged(cluster, env, canary, "--judge", "--weight", str(WEIGHT), "--json")
    assert proc.returncode == 0, proc.stderr
    outcome = json.loads(proc.stdout)
    release = outcome["release"]
    assert outcome["candidate"] is False and outcome["judged"]["verdict"] == "pass"
    assert machine_releases(cluster) == {m: release for m in cluster.machines}
    current, candidate, history = recorded(cluster)
    assert current["id"] == release and candidate is None
    assert (history[-1]["id"], history[-1]["outcome"], history[-1]["canary"]) == (release, "succeeded", [canary])
    assert history[-1]["judged"] == outcome["judged"]
    assert all(c["outcome"] in ("ok", "shown") for c in outcome["judged"]["checks"])
    assert traffic.failed() == 0, [a for a in traffic.answers if a[1] != 200][:5]
    assert slow.complete, (slow.error, slow.lines[-3:])
    assert len(set(balancer_weights(cluster).values())) == 1
    figures(describe("good release", outcome["judged"]))
    figures(f"good release: the probe sent {len(traffic.answers)} requests, 0 failed")


def test_too_little_traffic_is_inconclusive_and_holds_the_candidate(judged, local_serving, figures):
    env, canary = judged
    cluster = local_serving
    before, _, history_before = recorded(cluster)
    weights_before = balancer_weights(cluster)
    sb.commit_change(sb.change_of("router"))
    proc, traffic, run, slow = deploy_judged(cluster, env, canary, "--judge", "--weight", str(WEIGHT), traffic_rate=1)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: canary on {canary} not judged (inconclusive:")
    # The candidate held on the canary; nothing else changed.
    current, candidate, history = recorded(cluster)
    releases = machine_releases(cluster)
    assert current == before and history == history_before
    assert candidate["machines"] == [canary] and releases[canary] == candidate["id"] != before["id"]
    assert all(releases[m] == before["id"] for m in cluster.machines if m != canary)
    assert balancer_weights(cluster) == weights_before
    verdict = candidate["judged"]
    volume = check(verdict, "requests")
    assert verdict["verdict"] == "inconclusive" and volume["outcome"] == "too few"
    assert volume["canary_requests"] < CANARY["min_requests"]
    assert traffic.failed() == 0 and slow.complete
    assert f"candidate on {canary}, inconclusive" in fab("releases", "--cluster", "local", env=env).stdout
    figures(describe("too little traffic", verdict))

    # Judged again and Ctrl-C during the window: the canary is rolled back (the same candidate: no build,
    # no push, its machine already runs it).
    started = time.monotonic()
    run = Timed("deploy", "--cluster", "local", "--canary", canary, "--judge", "60", env=env)
    run.wait_for("canary: judging", 120)
    run.proc.send_signal(signal.SIGINT)
    proc = run.finish(120)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == \
        f"interrupted: while judging the canary on {canary}: rolled back, it runs the cluster's release again"
    assert time.monotonic() - started < 60
    current, candidate, history = recorded(cluster)
    assert current == before and candidate is None
    assert history[-1]["outcome"] == f"interrupted: canary on {canary} judged, rolled back"
    assert machine_releases(cluster) == {m: before["id"] for m in cluster.machines}
    assert balancer_weights(cluster) == weights_before
    assert serving(cluster)


def test_judge_flags_are_refused_before_anything_is_contacted(tmp_path):
    from conftest import error_line, fab_here
    env = local_copy(tmp_path)

    def refused(*flags) -> str:
        return error_line(fab_here("deploy", "--cluster", "local", *flags, env=env, check=False))
    assert "--judge needs --canary" in refused("--judge", "5")
    assert "--weight goes with --judge" in refused("--canary", "10.0.0.1", "--weight", "5")
    assert "--weight: '0' is not a percentage" in refused("--canary", "10.0.0.1", "--judge", "--weight", "0")
    assert "--judge: 'soon' is not whole seconds" in refused("--canary", "10.0.0.1", "--judge", "soon")
    bad = dict(yaml.safe_load((tmp_path / "local.yaml").read_text()), canary={"weight": 0})
    (tmp_path / "local.yaml").write_text(yaml.safe_dump(bad))
    assert "canary.weight" in refused()

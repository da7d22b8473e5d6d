"""The canary's judge on recorded counters (tasks.model.canary), the parsers of what it reads
(tasks.commands.counters, haproxy's show stat), the weights it sets, its flags and its section of
the cluster file. Pure: counters in, verdict and table out."""
import math

import pytest

from tasks.commands import counters, haproxy
from tasks.model import canary as judge
from tasks.model import cluster
from tasks.model.canary import BalancerCounters, Reading, RouterCounters
from tasks.model.errors import ConfigError
from tasks.runbooks import canary as judging

from .test_cluster import VALID, error_of, variant, write

# What the sample router answered on /air-counters (a reading taken on the sandbox).
ANSWER = """\
air_requests_total 42
air_responses_5xx_total 12
air_request_seconds_bucket{le="0.005"} 0
air_request_seconds_bucket{le="0.01"} 3
air_request_seconds_bucket{le="0.025"} 30
air_request_seconds_bucket{le="0.05"} 40
air_request_seconds_bucket{le="0.1"} 42
air_request_seconds_bucket{le="0.25"} 42
air_request_seconds_bucket{le="0.5"} 42
air_request_seconds_bucket{le="1"} 42
air_request_seconds_bucket{le="2.5"} 42
air_request_seconds_bucket{le="5"} 42
air_request_seconds_bucket{le="10"} 42
air_request_seconds_bucket{le="+Inf"} 42
air_request_seconds_sum 0.904
air_request_seconds_count 42
"""
BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, math.inf)
# haproxy 2.6's show stat header, as the sandbox's balancer printed it.
HEADER = ("# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,"
          "status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,"
          "type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,"
          "hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,"
          "comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status,"
          "agent_code,agent_duration,check_desc,agent_desc,check_rise,check_fall,check_health,agent_rise,"
          "agent_fall,agent_health,addr,cookie,mode,algo,conn_rate,conn_rate_max,conn_tot,intercepted,dcon,"
          "dses,wrew,connect,reuse,cache_lookups,cache_hits,srv_icur,src_ilim,qtime_max,ctime_max,rtime_max,"
          "ttime_max,eint,idle_conn_cur,safe_conn_cur,used_conn_cur,need_conn_est,uweight,agg_server_status,"
          "agg_server_check_status,agg_check_status,-,ssl_sess,ssl_reused_sess,ssl_failed_handshake,"
          "h2_headers_rcvd,h2_data_rcvd,h2_settings_rcvd,h2_rst_stream_rcvd,h2_goaway_rcvd,"
          "h2_detected_conn_protocol_errors,h2_detected_strm_protocol_errors,h2_rst_stream_resp,h2_goaway_resp,"
          "h2_open_connections,h2_backend_open_streams,h2_total_connections,h2_backend_total_streams,"
          "h1_open_connections,h1_open_streams,h1_total_connections,h1_total_streams,h1_bytes_in,h1_bytes_out,"
          "h1_spliced_bytes_in,h1_spliced_bytes_out,,")
CANARY, BASE = "10.0.0.3", ("10.0.0.1", "10.0.0.2")
THRESHOLDS = cluster.Canary(window=6, weight=25, min_requests=20, min_latency=100, max_latency_ratio=2)


def histogram(*seconds) -> tuple:
    """A cumulative histogram of requests that took seconds each."""
    return tuple((le, sum(1 for s in seconds if s <= le)) for le in BOUNDS)


def reading(requests=0, errors=0, seconds=(), sessions=0, failed=0, checks=0, session_time=10) -> Reading:
    return Reading(RouterCounters(requests, errors, histogram(*seconds)),
                   BalancerCounters(sessions, failed, 0, 0, checks, session_time))


def start() -> dict:
    return {m: reading() for m in (*BASE, CANARY)}


def end(canary: Reading, baseline: Reading = None) -> dict:
    baseline = baseline or reading(100, 0, [0.02] * 100, 100)
    return {BASE[0]: baseline, BASE[1]: baseline, CANARY: canary}


def verdict_of(canary: Reading, baseline: Reading = None, thresholds=THRESHOLDS):
    return judge.judge(thresholds, CANARY, start(), end(canary, baseline), 6.04, 25)


def outcomes(verdict) -> dict:
    return {c.name: c.outcome for c in verdict.checks}


# ---------------------------------------------------------------- the verdicts

def test_a_canary_answering_500_fails_on_its_5xx_alone():
    verdict = verdict_of(reading(40, 12, [0.02] * 40, 40))
    assert verdict.outcome == judge.FAIL
    assert [c.name for c in verdict.failed] == ["5xx (router)"]
    assert verdict.summary() == "fail: 5xx (router) 12/40 (30.0%), limit <= 1.0%"
    assert verdict.to_dict()["checks"][1] == {
        "check": "5xx (router)", "canary": "12/40 (30.0%)", "baseline": "0/200 (0.0%)", "limit": "<= 1.0%",
        "outcome": "FAIL", "canary_errors": 12, "canary_count": 40, "baseline_errors": 0, "baseline_count": 200,
        "limit_percent": 1.0}


def test_the_table_shows_every_check_its_figures_limit_and_outcome():
    assert judge.table(verdict_of(reading(40, 12, [0.02] * 40, 40))) == """\
canary 10.0.0.3 (25% of new connections) vs baseline 10.0.0.1, 10.0.0.2, over 6.0 s
check                      canary         baseline      limit                         outcome
requests (router)          40             200           >= 20 each                    ok
5xx (router)               12/40 (30.0%)  0/200 (0.0%)  <= 1.0%                       FAIL
errors (balancer)          0/40 (0.0%)    0/200 (0.0%)  <= 1.0%                       ok
failed checks (balancer)   0              0             <= 0                          ok
p95 request time (router)  24 ms          24 ms         <= 200 ms                     ok
session time (balancer)    10 ms          10 ms         (haproxy's mean: not judged)  shown
verdict: fail: 5xx (router) 12/40 (30.0%), limit <= 1.0%"""


def test_a_slower_canary_fails_on_its_request_time():
    verdict = verdict_of(reading(30, 0, [0.32] * 30, 30))
    assert outcomes(verdict)["p95 request time (router)"] == judge.FAILED
    assert verdict.outcome == judge.FAIL and len(verdict.failed) == 1
    latency = verdict.to_dict()["checks"][4]
    assert (latency["canary_ms"], latency["baseline_ms"], latency["limit_ms"]) == (487.5, 24.2, 200.0)


def test_a_baseline_slower_than_min_latency_sets_the_limit_by_its_ratio():
    slow_base = reading(100, 0, [0.2] * 100, 100)
    # the baseline's p95 is 242.5 ms (interpolated in its bucket): the canary's may be 485 ms
    assert verdict_of(reading(30, 0, [0.24] * 30, 30), slow_base).outcome == judge.PASS
    assert verdict_of(reading(30, 0, [0.45] * 30, 30), slow_base).outcome == judge.FAIL


def test_a_good_canary_passes():
    verdict = verdict_of(reading(40, 0, [0.02] * 40, 40))
    assert verdict.outcome == judge.PASS and verdict.failed == []
    assert set(outcomes(verdict).values()) == {judge.OK, judge.SHOWN}
    assert verdict.summary().startswith("pass: requests (router) 40, 5xx (router) 0/40 (0.0%)")


def test_too_few_requests_is_inconclusive_on_either_side():
    verdict = verdict_of(reading(3, 0, [0.02] * 3, 3))
    assert verdict.outcome == judge.INCONCLUSIVE
    assert verdict.summary() == "inconclusive: requests (router): canary 3, baseline 200, >= 20 each needed"
    assert verdict_of(reading(40, 0, [0.02] * 40, 40), reading(5, 0, [0.02] * 5, 5)).outcome == judge.INCONCLUSIVE


def test_short_of_volume_a_slow_canary_is_inconclusive_but_errors_no_success_could_clear_fail_it():
    assert verdict_of(reading(5, 0, [0.9] * 5, 5)).outcome == judge.INCONCLUSIVE
    assert verdict_of(reading(5, 1, [0.02] * 5, 5)).outcome == judge.FAIL      # 1 in 20 already > 1 %
    assert verdict_of(reading(5, 1, [0.02] * 5, 5), thresholds=cluster.Canary(min_requests=200)).outcome == \
        judge.INCONCLUSIVE                                                       # 1 in 200: not yet


def test_a_baseline_failing_too_raises_the_limit_by_the_ratio():
    failing = reading(100, 10, [0.02] * 100, 100)                            # 10 %: the canary may have 20 %
    assert verdict_of(reading(40, 6, [0.02] * 40, 40), failing).outcome == judge.PASS
    assert verdict_of(reading(40, 9, [0.02] * 40, 40), failing).outcome == judge.FAIL


def test_balancer_errors_and_failed_checks_fail_the_canary():
    assert [c.name for c in verdict_of(reading(40, 0, [0.02] * 40, 40, failed=4)).failed] == ["errors (balancer)"]
    assert [c.name for c in verdict_of(reading(40, 0, [0.02] * 40, 40, checks=1)).failed] == \
        ["failed checks (balancer)"]


def test_only_the_window_counts_and_a_restarted_router_counts_from_zero():
    before = {**start(), CANARY: reading(1000, 500, [0.02] * 1000, 1000)}      # an earlier bad release's errors
    after = {**end(reading(1040, 500, [0.02] * 1040, 1040)), CANARY: reading(1040, 500, [0.02] * 1040, 1040)}
    assert judge.judge(THRESHOLDS, CANARY, before, after, 6, 25).outcome == judge.PASS
    restarted = {**after, CANARY: reading(40, 0, [0.02] * 40, 1040)}          # the router began again
    window = judge.window_of(before, restarted)[CANARY]
    assert (window.router.requests, window.balancer.sessions) == (40, 40)


# ---------------------------------------------------------------- figures

def test_quantile_interpolates_within_its_bucket_and_stops_at_the_last_bound():
    assert judge.quantile(histogram(*[0.02] * 100)) == pytest.approx(0.02425)
    assert judge.quantile(histogram(*[0.3] * 10), 0.5) == pytest.approx(0.375)
    assert judge.quantile(histogram(*[60] * 10)) == 10
    assert judge.quantile(histogram()) is None


@pytest.mark.parametrize("percent, machines, wanted", [(10, 3, (56, 252)), (25, 3, (170, 255)), (50, 2, (256, 256)),
                                                       (100, 3, (1, 0)), (10, 1, (1, 1))])
def test_weights_give_the_canary_its_share_within_haproxys_range(percent, machines, wanted):
    mine, theirs = judge.weights(percent, machines)
    assert (mine, theirs) == wanted
    if machines > 1 and theirs:
        assert abs(100 * mine / (mine + (machines - 1) * theirs) - percent) < 0.2


# ---------------------------------------------------------------- what is read, and its parsers

def test_the_routers_counters_are_read_on_the_machine_and_parsed(tmp_path):
    write(tmp_path, "stage", variant(canary={"counters": "/metrics"}))
    assert counters.counters_command(cluster.load("stage", tmp_path)) == "curl -fsS -m 5 http://127.0.0.1:80/metrics"
    got = counters.parse_counters(ANSWER)
    assert (got.requests, got.errors) == (42, 12)
    assert got.buckets[:3] == ((0.005, 0), (0.01, 3), (0.025, 30)) and got.buckets[-1] == (math.inf, 42)
    with pytest.raises(ValueError):
        counters.parse_counters("<html>not found</html>")


def stat_row(backend, machine, **fields) -> str:
    names = HEADER.lstrip("# ").split(",")
    values = {"pxname": backend, "svname": machine, "status": "UP", **{k: str(v) for k, v in fields.items()}}
    return ",".join(values.get(name, "") for name in names)


def test_haproxys_counters_are_summed_over_backends_per_machine():
    text = "\n".join([HEADER,
                      stat_row("prod_http", "FRONTEND", stot=9),
                      stat_row("prod_http", "10.0.0.1", stot=30, econ=1, eresp=2, srv_abrt=3, chkfail=4, ttime=10),
                      stat_row("prod_https", "10.0.0.1", stot=10, econ=1, ttime=50),
                      stat_row("prod_http", "10.0.0.2", stot=0, ttime=7),
                      stat_row("prod_http", "BACKEND", stot=40)]) + "\n"
    assert haproxy.parse_counters(text) == {
        "10.0.0.1": BalancerCounters(40, 2, 2, 3, 4, 20),
        "10.0.0.2": BalancerCounters(0, 0, 0, 0, 0, 7)}
    with pytest.raises(ValueError):
        haproxy.parse_counters("# pxname,svname,status\n")


def test_weights_are_set_in_every_backend(tmp_path):
    write(tmp_path, "stage", variant(components=[{"name": "router", "port": 80, "https_port": 443}]))
    stage = cluster.load("stage", tmp_path)
    assert haproxy.set_weights(stage, {"10.0.0.3": 56, "10.0.0.1": "100%"}) == [
        "set weight stage_http/10.0.0.3 56", "set weight stage_https/10.0.0.3 56",
        "set weight stage_http/10.0.0.1 100%", "set weight stage_https/10.0.0.1 100%"]


# ---------------------------------------------------------------- the flags and the cluster file

def test_the_canary_section_has_defaults_for_a_small_web_application(tmp_path):
    write(tmp_path, "stage", VALID)
    assert cluster.load("stage", tmp_path).canary == cluster.Canary(
        window=300, weight=10.0, min_requests=100, max_error_rate=1.0, max_error_ratio=2.0, max_latency_ratio=1.5,
        min_latency=50, counters="/air-counters")
    write(tmp_path, "prod", variant(canary={"window": 60, "weight": 2.5}))
    assert (cluster.load("prod", tmp_path).canary.window, cluster.load("prod", tmp_path).canary.weight) == (60, 2.5)


@pytest.mark.parametrize("field, value", [("weight", 0), ("weight", 101), ("max_error_ratio", 0.5),
                                          ("max_error_rate", True), ("min_latency", 0), ("window", 1.5),
                                          ("counters", "metrics")])
def test_a_wrong_canary_field_is_one_line_naming_it(tmp_path, field, value):
    assert f": canary.{field}: expected " in error_of(tmp_path, "stage", variant(canary={field: value}))


def test_judge_flags(tmp_path):
    write(tmp_path, "stage", variant(canary={"window": 60, "weight": 5}))
    stage = cluster.load("stage", tmp_path)
    assert judging.check_options(stage, None, None, None) == (None, None)
    assert judging.check_options(stage, "10.0.0.3", True, None) == (60, 5)
    assert judging.check_options(stage, "10.0.0.3", "8", "25") == (8, 25.0)
    for canary, judge_, weight, message in [(None, "8", None, "--judge needs --canary MACHINE"),
                                            ("10.0.0.3", None, "5", "--weight goes with --judge"),
                                            ("10.0.0.3", "0", None, "--judge: '0' is not whole seconds from 1 to 86400"),
                                            ("10.0.0.3", "8", "100.5", "--weight: '100.5' is not a percentage from 0 "
                                                                       "to 100")]:
        with pytest.raises(ConfigError) as refused:
            judging.check_options(stage, canary, judge_, weight)
        assert str(refused.value) == message


# ---------------------------------------------------------------- the runbook, on the recording fake

def counted(requests: int, errors: int) -> str:
    """A router's counters answer: ``requests`` of 20 ms, ``errors`` of them 5xx."""
    buckets = "".join(f'air_request_seconds_bucket{{le="{le}"}} {requests if le >= 0.025 else 0}\n'
                      for le in BOUNDS[:-1])
    return (f"air_requests_total {requests}\nair_responses_5xx_total {errors}\n{buckets}"
            f'air_request_seconds_bucket{{le="+Inf"}} {requests}\n')


@pytest.fixture
def on_fake(tmp_path):
    """(session stand-in on a FakeExecutor, canary machine): 3 machines in the balancer, each router
    answering its counters, haproxy its stat; after the first reading (the balancer's stat read
    once) the canary has answered 40 requests, 12 of them 5xx, the others 100 each."""
    from types import SimpleNamespace

    from .fakes import FakeExecutor
    write(tmp_path, "stage", variant(canary={"min_requests": 20}))
    stage = cluster.load("stage", tmp_path)
    ex = FakeExecutor(stage)
    machines = list(stage.machines)
    ex.files[(stage.balancer.host, stage.balancer.routers_file)] = (haproxy.routers_file(stage, machines), 0o644)
    ex.answer("show stat", stdout="\n".join([HEADER] + [stat_row("stage_http", m) for m in machines]) + "\n")
    for m in machines:
        ex.answer("/air-counters", stdout=counted(0, 0), host=m)

    def later(host, command):
        if "show stat" in command and not any("show stat" in c for c in ex.commands()[:-1]):
            for m in machines:
                ex.answer("/air-counters", stdout=counted(40, 12) if m == machines[2] else counted(100, 0), host=m,
                          first=True)
    ex.on_run = later
    return SimpleNamespace(ex=ex, cluster=stage), machines[2]


def balancer_messages(s) -> list:
    return [c for c in s.ex.commands(s.cluster.balancer.host, changes_only=True) if "set weight" in c]


def test_judge_weights_the_canary_reads_twice_and_keeps_its_share_when_it_fails(on_fake):
    s, machine = on_fake
    verdict = judging.judge(s, machine, 0, 10)
    assert verdict.outcome == judge.FAIL and [c.name for c in verdict.failed] == ["5xx (router)"]
    assert verdict.to_dict()["checks"][0]["canary_requests"] == 40
    sent = balancer_messages(s)
    assert len(sent) == 1 and "set weight stage_http/192.0.2.13 56;set weight stage_http/192.0.2.11 252" in sent[0]
    judging.even_out(s, (machine, *verdict.baseline))   # what act does after the rollback
    assert "set weight stage_http/192.0.2.13 100%;" in balancer_messages(s)[-1]


def test_judge_puts_the_weights_back_after_any_other_verdict_or_an_interrupt(on_fake):
    s, machine = on_fake
    s.ex.on_run = None  # no traffic at all
    assert judging.judge(s, machine, 0, 10).outcome == judge.INCONCLUSIVE
    assert len(balancer_messages(s)) == 2 and "100%" in balancer_messages(s)[-1]
    from .fakes import interrupted_at
    with interrupted_at(s.ex, "show stat"), pytest.raises(judging.Interrupted):  # Ctrl-C in the window
        judging.judge(s, machine, 60, 10)
    assert len(balancer_messages(s)) == 4 and "100%" in balancer_messages(s)[-1]  # under finishing()
    with pytest.raises(judging.Interrupted):  # before it began: nothing is changed
        judging.judge(s, machine, 60, 10)
    assert len(balancer_messages(s)) == 4


def test_judge_refuses_a_canary_out_of_the_balancer_and_says_what_stays_when_counters_are_missing(on_fake):
    s, machine = on_fake
    with pytest.raises(judging.AirError, match="must be in the balancer"):
        judging.judge(s, "192.0.2.99", 0, 10)
    s.ex.answer("/air-counters", stdout="<html>404</html>", host=machine, first=True)
    with pytest.raises(judging.RemoteError) as failed:
        judging.judge(s, machine, 0, 10)
    assert "answered no counters" in str(failed.value) and f"the candidate stays on {machine}" in str(failed.value)
    assert "100%" in balancer_messages(s)[-1]

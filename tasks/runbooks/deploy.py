"""Deploy, history and rollback: the replacement of `cap <stage> deploy`.

``deploy`` is the whole runbook under the cluster's lock: build on the build
server, push what changed, record the release in etcd, roll the cluster to
it, record the outcome. The rollout's plan tells whether anything is to be
done: a deploy whose release is already serving everywhere (release file,
units active, in the balancer) ends early and restarts nothing. The lock is a
key in the cluster's etcd held by a lease (``tasks.net.session``), so a killed
deploy's lock expires by itself.

``deploy --canary M`` stops after machine M: the new release runs there only
and is recorded as the cluster's *candidate* (``state.candidate_key``); a
plain ``deploy`` of the same release continues it to the other machines, and
``rollback`` puts M back on the cluster's release. With ``--judge`` the
cluster's own figures decide (``tasks.runbooks.canary``): continued, rolled
back, or held.

Settings belong to a release (``tasks.runbooks.release_settings``): its record keeps those it
was deployed with; a deploy or rollback that fails puts the settings it found back, and a
rollback restores those its release kept, before its rollout.
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Optional

from tasks.commands.build_scripts import parse_branches, without_credentials
from tasks.model import release_settings as kept
from tasks.model import state
from tasks.model.status_view import printable
from tasks.model.cluster import check_address
from tasks.model.errors import AirError, ConfigError, Halt, Interrupted, LostLock, failure_kind
from tasks.model.hooks import Facts, check_message
from tasks.model.release import Release
from tasks.net import etcd as etcd_api
from tasks.net.progress import say
from tasks.net.session import Session, session
from tasks.runbooks import canary as judging
from tasks.runbooks import etcd_backup, hooks, records, release_command, release_settings, settings, steps, upgrade
from tasks.runbooks.cli import air_task, build_host, cluster_of, report
from tasks.runbooks.publish import publish, unchanged
from tasks.runbooks.push import print_report
from tasks.runbooks.settings import apply as apply_settings


def deploy_release(s: Session, host, branch, limits=None, dry=False, canary=None, rebuild=False,
                   facts: Facts = None, judge=None) -> Release:
    """The deploy runbook in a session holding the cluster's lock: build, push what changed,
    record the release, roll the cluster to it. ``branch``: the main repository's branch, or
    Branches (components' own branches too). ``dry``: build, then print what push and the
    rollout would do, pushing and changing nothing. ``canary``: a member machine that alone gets
    the new release, recorded as the cluster's candidate (``deploy_canary``); a deploy after it
    continues to the others. A plain deploy whose checkouts and build inputs are those of the
    cluster's release builds nothing (``publish``), unless ``rebuild``. ``facts``: what the hooks
    are told, filled in as the deploy goes (its pre_deploy hook runs before the push; None: no
    hooks, no message). ``judge``: (seconds, weight percent): the canary judged, then acted on
    (``judged_canary``). ``limits``: the rollout's (default: the cluster file's)."""
    started = time.monotonic()
    branch = parse_branches(s.cluster, branch)
    s.etcd.members_ahead()  # for the rollout's plan, while the build server is asked
    if canary is not None:
        check_canary(s, canary)
    # A malformed record stops the deploy here, before the build; read with the lock when it was.
    found = records.check_all(s.etcd, s.cluster, s.lock.take_read() if s.lock is not None else None)
    if not dry:
        etcd_backup.before_change(s, "deploy")
    recorded = None if dry or canary is not None or rebuild else found.current[1]
    published = published_for(s, host, branch, recorded, dry, facts, found)
    current = rollback_base(found)  # nothing wrote the records since they were read
    if canary is not None:
        canary_release(s, published, current, canary, dry, judge, limits, started, found)
    elif dry:
        print_push_plan(s, published, current)
        upgrade.print_plan(cluster_rollout(s, published.release, current, limits, found)[0])
    else:
        roll_cluster(s, published, current, limits, started, recorded, found)
    return published.release


def published_for(s: Session, host, branch, recorded: Optional[dict], dry: bool, facts: Optional[Facts],
                  found: records.Snapshot):
    """A deploy's build and push (nothing built when ``recorded``, the cluster's release record, was
    built from the same; see ``publish``), its pre_deploy hook run before the push, its message kept."""
    hook = hooks.before_push(s, host, facts, found.current[0]) if facts is not None and not dry else None
    published = publish(s.ex, host, branch, dry=dry, recorded=recorded, before_push=hook)
    return replace(published, extra={"message": facts.message}) if facts is not None and facts.message else published


def canary_release(s: Session, published, current: Optional[Release], canary: str, dry: bool, judge, limits,
                   started: float, found: records.Snapshot) -> None:
    """The published release on machine ``canary`` only (``deploy_canary``), with the settings and
    release command it needs; then, with ``judge``, judged and acted on (``judged_canary``)."""
    meta, before = published.meta, None
    if dry:
        print_push_plan(s, published, current)
    else:
        before, _ = applied_settings(s, meta, found)
    with release_settings.put_back_on_failure(s, "deploy", before, release_settings.record_of(s, current, found)):
        if not dry:
            release_command.before_rollout(s, published.release, current, meta, canary=True)
        deploy_canary(s, published.release, current, canary, dry, **meta)
    if judge and not dry and records.read_candidate(s.etcd, s.cluster)[0] == published.release:
        judged_canary(s, published, current, canary, judge, limits, started)


def check_canary(s: Session, canary: str) -> None:
    members = sorted(upgrade.member_machines(s.etcd))
    if canary not in members:
        raise ConfigError(f"--canary: {canary} is not an etcd member of {s.cluster.name} "
                          f"(members: {', '.join(members)})")


def rollback_base(found: records.Snapshot) -> Optional[Release]:
    """The release a failure goes back to: the recorded one, or, when a deploy was killed midway
    (outcome ``upgrading``: its release never proved itself), the last release that did."""
    current, record = found.current
    if record and record.get("outcome") == "upgrading":
        current = last_good(found.history) or current
    return current


def print_push_plan(s: Session, published, current: Optional[Release] = None) -> None:
    print_report(published.release, published.steps, False)
    print_settings_plan(s)
    release_command.print_plan(s, published.release, current)


def cluster_rollout(s: Session, release: Release, current: Optional[Release], limits,
                    found: records.Snapshot) -> tuple:
    """(the Rollout of every machine to ``release``, the candidate Release or None, its record)."""
    candidate, record = found.candidate
    canary = {m: candidate.id for m in record["machines"]} if candidate else None
    return upgrade.Rollout(s, release, current, limits=limits, canary=canary), candidate, record


def roll_cluster(s: Session, published, current: Optional[Release], limits, started: float,
                 recorded: Optional[dict] = None, found: records.Snapshot = None, **extra) -> None:
    """Settings, then every machine to the published release (a candidate's machines included),
    recorded (with ``extra``, a judged canary's figures); a release already serving everywhere
    restarts nothing. ``recorded``: the cluster's release record, as read before the build;
    ``found``: the records as the deploy read them (None: read them now)."""
    cluster, release, meta = s.cluster, published.release, {**published.meta, **extra}
    say(f"deploy: release {release.id} is in the registry; reading the machines")
    found = found or records.check_all(s.etcd, cluster)
    rollout, candidate, record = cluster_rollout(s, release, current, limits, found)
    base = release_settings.record_of(s, current, found)
    before, changed = applied_settings(s, meta, found)
    if current is not None and current.id == release.id and rollout.nothing_to_do:
        if candidate is not None:
            records.clear_candidate(s.etcd, cluster)
        if changed:  # the release runs on with other settings: recorded again, with them (a rollback's target)
            records.add_history(s.etcd, cluster, records.write_release(s.etcd, cluster, release, outcome="succeeded",
                                                                       **meta))
        elif recorded is not None and not unchanged(recorded, meta):
            # Built again from other commits or inputs into the same images: the record keeps what the
            # checkouts are now, so the next deploy of them builds nothing.
            records.write_release(s.etcd, cluster, release, **{**recorded, **meta})
        say(f"deploy: {cluster.name} already runs release {release.id}; nothing to do "
            f"({time.monotonic() - started:.1f} s)")
        return
    if candidate is not None:
        meta.update(continued_canary(candidate, record, release))
    partly = None
    with release_settings.put_back_on_failure(s, "deploy", before, base):
        release_command.before_rollout(s, release, current, meta)  # the migrations, before the first drain
        try:
            rollout.apply_recorded(previous_meta=kept.of_record(base), **meta)
        except upgrade.PartlyUpgraded as failed:
            partly = failed  # the release is the cluster's, on most machines: its settings stay
    if candidate is not None:
        records.clear_candidate(s.etcd, cluster)
    if partly is not None:
        raise partly
    say(f"deploy: {cluster.name} runs release {release.id} ({time.monotonic() - started:.1f} s)")
    clean_up(s, release)


def applied_settings(s: Session, meta: dict, found: records.Snapshot) -> tuple:
    """(the settings etcd held, the Changes): the cluster file's settings written, and what the
    release record keeps of them added to ``meta``. ``found``: etcd as the deploy read it."""
    before = found.settings
    changes = apply_settings(s, "deploy", found)
    meta.update(release_settings.deployed(s.cluster))
    return before, changes


def continued_canary(candidate: Release, record: dict, release: Release) -> dict:
    """What the release record keeps of a candidate this deploy takes over: its machines, when the
    deploy continues it (same release); nothing when it replaces it."""
    on = ", ".join(record["machines"])
    if candidate.id == release.id:
        say(f"deploy: continuing the canary of {release.id} (on {on}) to the other machines")
        return {"canary": record["machines"]}
    say(f"deploy: release {release.id} replaces the candidate {candidate.id} (on {on})")
    return {}


def print_settings_plan(s: Session) -> None:
    """What the deploy would change in the settings (``--plan``); secrets masked."""
    changes, have = settings.plan(s)
    prefix = state.settings_prefix(s.cluster)
    for line in settings.describe(changes, have, settings.secrets_of(s.cluster), prefix) or ["unchanged"]:
        print(f"settings: {line}")


def deploy_canary(s: Session, release: Release, current: Optional[Release], address: str, dry: bool = False, **meta) -> None:
    """Put ``release`` on machine ``address`` only, through the same gated rollout (drained,
    upgraded, health-checked, back in the balancer), and record it as the cluster's candidate.
    The cluster's recorded release stays; a failure puts the machine back on it."""
    cluster = s.cluster
    candidate, record = records.read_candidate(s.etcd, cluster)
    if candidate is not None and candidate.id != release.id:
        raise ConfigError(f"candidate {candidate.id} already runs on {', '.join(record['machines'])}: "
                          f"`fab deploy --cluster {cluster.name}` continues it to every machine, "
                          f"`fab rollback --cluster {cluster.name}` puts it back; then try the new one")
    if current is not None and current.id == release.id:
        say(f"deploy: release {release.id} is already the cluster's release: no candidate to try")
        return
    machines = sorted(set(record["machines"] if record else []) | {address})
    rollout = upgrade.Rollout(s, release, current, only=[address])
    if dry:
        upgrade.print_plan(rollout)
        return
    records.write_candidate(s.etcd, cluster, release, machines, outcome="upgrading", **meta)
    try:
        rollout.apply()
    except AirError as failure:
        if isinstance(failure, LostLock):
            raise  # its records are not ours to write any more
        kind = failure_kind(failure)
        others = [m for m in machines if m != address]
        outcome = f"{kind}: canary on {address}: {str(failure).splitlines()[0]}"

        def write():
            if others:
                records.write_candidate(s.etcd, cluster, release, others, outcome="running", **meta)
            else:
                records.clear_candidate(s.etcd, cluster)
            records.add_history(s.etcd, cluster, {**release.to_dict(), **meta, "who": state.operator(),
                                                "when": state.now(), "outcome": outcome})
        raise records.after_failure(failure, write) from None
    records.write_candidate(s.etcd, cluster, release, machines, outcome="running", **meta)
    say(f"deploy: candidate {release.id} runs on {', '.join(machines)}; the others run {current and current.id}. "
        f"`fab deploy --cluster {cluster.name}` continues, `fab rollback --cluster {cluster.name}` puts it back")


def judged_canary(s: Session, published, current: Optional[Release], machine: str, judge: tuple, limits,
                  started: float) -> None:
    """The candidate on ``machine`` judged over ``judge`` (seconds, weight percent), then continued to
    every machine (pass), rolled back and recorded ``aborted`` (fail; an interrupt rolls it back too),
    or held (inconclusive)."""
    def roll_back(outcome: str, judged: Optional[dict] = None) -> None:
        current_now, current_record = records.read_release(s.etcd, s.cluster)
        candidate, record = records.read_candidate(s.etcd, s.cluster)
        with s.ex.finishing():  # also after an interrupt: the canary goes back
            rollback_canary(s, current_now, candidate, record, current_record=current_record, outcome=outcome,
                            judged=judged)

    def carry_on(judged: dict) -> None:
        roll_cluster(s, published, current, limits, started, judged=judged)

    try:
        verdict = judging.judge(s, machine, *judge)
    except Interrupted:
        # The Ctrl-C asked for this rollback: it is the step in hand now, and a rollout that sees an
        # interrupt would put the candidate back. Another Ctrl-C stops the rollback in order.
        s.ex.interrupted.clear()
        roll_back(f"interrupted: canary on {machine} judged, rolled back")
        raise Interrupted(f"while judging the canary on {machine}: rolled back, it runs the cluster's release "
                          f"again") from None
    judging.act(s, verdict, published.release, carry_on, roll_back)


@air_task(help={"cluster": "target cluster", "branch": "branch to deploy (default: the cluster's build.branch); "
                "COMPONENT=B for a component with its own repository (repeatable)",
                "via": "member to reach etcd through", "wait": "wait for another task's lock instead of failing",
                **upgrade.LIMITS_HELP,
                "canary": "put the new release on this machine only, as the cluster's candidate",
                "judge": "with --canary: judge it over SECONDS (default: the cluster file's canary.window), "
                         "then continue, roll back or hold it",
                "weight": "with --judge: percent of new connections the canary gets (default: canary.weight)",
                "plan": "build, then print what push and the rollout would do; push and change nothing",
                "rebuild": "build even when the sources and build inputs are the cluster's release's "
                           "(base images changed under the same tag)",
                "message": "what the release history keeps of this deploy (default: the commit's subject)",
                "json": "print the outcome as JSON"}, iterable=["branch"], optional=["judge"])
def deploy(c, cluster=None, branch=None, via=None, wait=False, max_unavailable=None, max_failures=None, parallel=None,
           canary=None, judge=None, weight=None, plan_=False, rebuild=False, json_=False, message=None):
    """Build, push what changed and roll the cluster to it, under the cluster's lock (--canary: one machine)."""
    target = cluster_of(cluster)
    branch = parse_branches(target, branch)
    via = check_address(via, "--via") if via else None
    canary = check_address(canary, "--canary") if canary else None
    seconds, percent = judging.check_options(target, canary, judge, weight)
    limits = upgrade.limits_of(target, max_unavailable=max_unavailable, max_failures=max_failures, parallel=parallel)
    facts = Facts(target.name, performer=state.operator(), message=check_message(message) if message is not None else "")
    host = build_host(c, target)
    with upgrade.reported(json_), hooks.around(target, facts, enabled=not plan_), \
            session(target, f"deploy {branch}" + (f" --canary {canary}" if canary else ""), via, wait,
                    ahead=[host], reads=records.snapshot_reads(target), registry=not (plan_ or rebuild or canary)) as s:
        release = deploy_release(s, host, branch, limits, dry=plan_, canary=canary, rebuild=rebuild, facts=facts,
                                 judge=(seconds, percent) if seconds else None)
        candidate = records.read_candidate(s.etcd, target)[0] if canary and not plan_ else None
        judged = (records.read_release(s.etcd, target)[1] or {}).get("judged") if seconds and not plan_ else None
    if not plan_:
        print_deployed(target, release, candidate == release, canary, judged, s.ex.trips, json_)


def print_deployed(cluster, release: Release, is_candidate: bool, canary, judged, trips, json_: bool) -> None:
    """A deploy's last line: the release (or candidate) it leaves; with ``json_``, one JSON object."""
    if json_:
        print(json.dumps({"release": release.id, "candidate": is_candidate,
                          "machines": [canary] if is_candidate else list(cluster.machines),
                          "round_trips": trips.summary(), **({"judged": judged} if judged else {})}))
    else:
        print(f"{'candidate' if is_candidate else 'release'} {release.id}")


@air_task(help={"cluster": "target cluster", "via": "member to reach etcd through", "json": "print JSON"})
def releases(c, cluster=None, via=None, json_=False):
    """List the cluster's releases, oldest first, with their outcome, then the candidate, if any."""
    target = cluster_of(cluster)
    with session(target, via=via and check_address(via, "--via")) as s:
        past = records.history(s.etcd, target)
        current, _ = records.read_release(s.etcd, target)
        _, candidate = records.read_candidate(s.etcd, target)
        settings_now = release_settings.digest_now(s)
    if json_:
        listed = past + ([{**candidate, "candidate": True}] if candidate else [])
        print(json.dumps([kept.shown(r) for r in listed], indent=1))
        return
    for r in past:
        mark = "*" if current and r["id"] == current.id else " "
        print(printable(release_line(mark, r, r.get("outcome", "?"), settings_now)))
    if candidate:
        held = f", {candidate['judged']['verdict']}" if candidate.get("judged") else ""
        print(printable(release_line("c", candidate, f"candidate on {', '.join(candidate['machines'])}{held}",
                                     settings_now)))


def release_line(mark: str, record: dict, outcome: str, settings_now: str = None) -> str:
    """One release of ``fab releases``; its settings' short digest, and whether they are the ones etcd
    holds (``settings_now``, their digest) or differ; who deployed it and their message. Pure."""
    versions = " ".join(f"{k}={v['version']}" for k, v in sorted(record["components"].items()))
    # every repository that went into it: URL (a record written before they were left out may hold
    # credentials), branch and commit
    sources = "".join(f"  {without_credentials(s['repository'])} {s['branch']}@{s['commit'][:10]}"
                      for s in record.get("sources", []))
    same = "unknown" if kept.SETTINGS not in record else \
        "same" if record[kept.SETTINGS]["digest"] == settings_now else "differs"
    said = (f"  by {record['who']}" if record.get("who") else "") + \
        (f"  {json.dumps(record['message'], ensure_ascii=False)}" if record.get("message") else "")
    return (f"{mark} {record['when']}  {record['id']}  {outcome:10.40}  settings {kept.short(record):8} {same:7}  "
            f"{record.get('branch', '-')}  {versions}{sources}{said}")


GOOD_OUTCOMES = ("succeeded", "installed")


def releases_kept(records: list, current: Release, keep: int) -> list:
    """The releases whose images stay on the machines: ``current`` and the ``keep`` newest other
    successful ones of ``records`` (oldest first), the rollbacks' targets. Pure."""
    kept, seen = [current], {current.id}
    for record in reversed(records):
        if len(kept) > keep:
            break
        if record.get("outcome") in GOOD_OUTCOMES and record["id"] not in seen:
            kept.append(Release.from_dict(record))
            seen.add(record["id"])
    return kept


def clean_up(s: Session, current: Release) -> None:
    """After a successful roll: every member keeps the images of the releases kept
    (``releases_kept``, ``registry.keep``) and loses the cluster's other images. A machine where
    that fails is named in a warning: the roll stands and the next one tries again."""
    cluster = s.cluster
    past = records.history(s.etcd, cluster)
    kept = releases_kept(past, current, cluster.registry.keep)
    components = set(cluster.component_names).union(*(r["components"] for r in past), current.components())
    members = sorted(upgrade.serving_machines(cluster, upgrade.member_machines(s.etcd)))
    try:
        removed = s.ex.parallel(lambda a: steps.clean_images(s.ex, a, components, kept), members)
    except Halt:
        raise
    except AirError as failure:
        say(f"warning: old images stay on some machines: {failure}")
        return
    say(f"cleanup: {sum(removed)} old images removed on {len(members)} machines; kept releases "
        f"{', '.join(r.id for r in kept)}")


def last_good(records: list):
    """The newest release in ``records`` (oldest first) whose rollout succeeded, or None."""
    good = [r for r in records if r.get("outcome") in GOOD_OUTCOMES]
    return Release.from_dict(good[-1]) if good else None


def rollback_target(records: list, current_id: str = None, to: str = None, cluster_name: str = "the cluster") -> dict:
    """The history record a rollback goes to: release ``to``, else the newest successful one that is
    not ``current_id``. ``records`` oldest first, as ``records.history`` gives them."""
    good = [r for r in records if r.get("outcome") in GOOD_OUTCOMES]
    if to:
        chosen = next((r for r in reversed(good) if r["id"] == to), None)
        if chosen is None:
            raise ConfigError(f"no successful release {to!r} in the history of {cluster_name}")
        return chosen
    chosen = next((r for r in reversed(good) if r["id"] != current_id), None)
    if chosen is None:
        raise ConfigError(f"no earlier successful release of {cluster_name} to roll back to")
    return chosen


@air_task(help={"cluster": "target cluster", "to": "release id (default: the previous successful one)",
                "via": "member to reach etcd through", "plan": "print what each machine needs and change nothing",
                "json": "print the outcome as JSON"})
def rollback(c, cluster=None, to=None, via=None, plan_=False, json_=False):
    """Roll the cluster back to an earlier release, through the same gated rolling upgrade
    (a canary's candidate: its machines back on the cluster's release)."""
    target = cluster_of(cluster)
    via = via and check_address(via, "--via")
    facts = Facts(target.name, action="rollback", performer=state.operator())
    with hooks.around(target, facts, enabled=not plan_), session(target, None if plan_ else "rollback", via) as s:
        # Read under the lock: a deploy that just ended may have changed both.
        current, current_record = records.read_release(s.etcd, target)
        candidate, candidate_record = records.read_candidate(s.etcd, target)
        if not plan_:
            release_command.not_run_by_rollback(target)
        if candidate is not None and to is None:
            hooks.rolling_back(facts, current_record, candidate)
            rollback_canary(s, current, candidate, candidate_record, plan_, current_record)
            wanted, undone, machines = current, candidate.id, candidate_record["machines"]
        else:
            chosen = rollback_target(records.history(s.etcd, target), current and current.id, to, target.name)
            hooks.rolling_back(facts, chosen, current)
            wanted, undone, machines = Release.from_dict(chosen), None, list(target.machines)
            if not roll_back_to(s, chosen, current_record, plan_):
                return
            if candidate is not None:
                records.clear_candidate(s.etcd, target)
            clean_up(s, wanted)
    if plan_:
        return
    if json_:
        print(json.dumps({"release": wanted.id, "candidate_rolled_back": undone, "machines": machines,
                          "round_trips": s.ex.trips.summary()}))
    else:
        print(f"release {wanted.id}" + (f" (candidate {undone} rolled back on {', '.join(machines)})" if undone else ""))


def roll_back_to(s: Session, chosen: dict, current_record: Optional[dict], plan_: bool = False) -> bool:
    """The cluster back on the release of history record ``chosen`` with the settings it kept, through
    the gated rollout; a failure puts the settings found back. ``plan_``: print both, change nothing
    (returns False)."""
    current = Release.from_dict(current_record) if current_record else None
    rollout = upgrade.Rollout(s, Release.from_dict(chosen), current)
    restoring = release_settings.restoring(s, chosen, current_record)
    if plan_:
        upgrade.print_plan(rollout)
        print_restoring(restoring)
        return False
    etcd_backup.before_change(s, "rollback")
    with release_settings.put_back_on_failure(s, "rollback", restoring.before, current_record):
        restoring.apply(s, "rollback")
        rollout.apply_recorded(previous_meta=kept.of_record(current_record), rollback_from=current and current.id,
                               **restoring.fields)
    return True


def print_restoring(restoring: release_settings.Restoring) -> None:
    for line in restoring.lines():
        print(f"settings: {line}")


def rollback_canary(s: Session, current: Release, candidate: Release, record: dict, plan_: bool = False,
                    current_record: dict = None, outcome: str = None, judged: dict = None) -> None:
    """The candidate's machines back on the cluster's release, one at a time through the gated
    rollout, with the settings that release kept (``current_record``); then the candidate is
    forgotten and the history says so (``outcome``, with the figures of a ``judged`` canary)."""
    cluster = s.cluster
    if current is None:
        raise ConfigError(f"cluster {cluster.name} has no release recorded to put {', '.join(record['machines'])} back on")
    members = upgrade.member_machines(s.etcd)
    machines = [m for m in record["machines"] if m in members]
    rollout = upgrade.Rollout(s, current, candidate, only=machines)
    restoring = release_settings.restoring(s, current_record, record)
    if plan_:
        upgrade.print_plan(rollout)
        print_restoring(restoring)
        return
    etcd_backup.before_change(s, "rollback")
    with release_settings.put_back_on_failure(s, "rollback", restoring.before, record):
        restoring.apply(s, "rollback")
        rollout.apply()
    records.clear_candidate(s.etcd, cluster)
    records.add_history(s.etcd, cluster, {**candidate.to_dict(), "who": state.operator(), "when": state.now(),
                                        **{k: record[k] for k in ("branch", "commit") if k in record},
                                        **({"judged": judged} if judged else {}),
                                        "outcome": outcome or f"rolled back: canary on {', '.join(record['machines'])}"})


@air_task(name="status", help={"cluster": "target cluster", "via": "member to reach etcd through",
                               "json": "print JSON (null when free)"})
def lock_status(c, cluster=None, via=None, json_=False):
    """Show who holds the cluster's lock."""
    target = cluster_of(cluster)
    with session(target, via=via and check_address(via, "--via")) as s:
        holder = s.connect_etcd().holder(state.lock_key(target))
    if json_:
        print(json.dumps(holder))
        return
    print("free" if holder is None else etcd_api.describe_holder(holder))


@air_task(name="release", help={"cluster": "target cluster", "via": "member to reach etcd through",
                                "json": "print the holder it had as JSON"})
def lock_release(c, cluster=None, via=None, json_=False):
    """Release the cluster's lock by force (when its holder is known to be gone)."""
    target = cluster_of(cluster)
    with session(target, via=via and check_address(via, "--via")) as s:
        holder = s.connect_etcd().force_release(state.lock_key(target))
    report({"released": holder}, json_,
           "was free" if holder is None else "released the lock of " + etcd_api.describe_holder(holder))

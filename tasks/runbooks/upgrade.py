"""Bringing machines to a release without downtime: the one rollout behind every upgrade.

deploy, rolling-upgrade, upgrade-machine and rollback all use ``Rollout``:
it reads the facts of every machine once (its release file, components, unit
states, whether the balancer routes to it) together with the balancer's
routers file, warns about drift (a member out of the balancer, a machine on
another release than the recorded one), and makes a pure ``plan`` (``tasks.model.rollout_plan``): a machine
already serving the release is left alone, one that runs it but is out of
the balancer (a deploy killed after its start) is only checked and put back,
the others restart just the components whose version changes. ``--plan``
prints that and changes nothing. Applying it, every machine to upgrade pulls
the images, has its files staged and its OS updates paused, all at once, while
still serving (``--parallel`` of them at once); then group by group (the
planner's ``groups``: as many machines as ``--max-unavailable`` allows, never
so many that most of the cluster is out of the balancer, never more than one
etcd member, the leader last) the group leaves the balancer in the same change
that puts the previous group back, one command restarts what changes on the
staged files, and the health check must pass. OS updates resume on every
machine prepared when the rollout ends, whatever its end (but a lost lock:
then nothing more is ours to change).

A machine that fails, or is in hand at an interrupt, is put back on the
release it ran before and into the balancer; the error names the machine, the
failed check and the journal's last lines. The rollout goes on while no more
than ``--max-failures`` machines failed (0 by default: the first failure
stops it), each restored; then it ends with an error naming the machines that
failed and what each machine runs (``PartlyUpgraded``). A task that lost the
cluster's lock changes nothing at all: it says which machine it left out of
the balancer.
"""
from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from typing import Callable, Optional

import cloudconfig
from tasks.commands import machine
from tasks.model import release_settings as kept
from tasks.model import roles, rollout_plan, state
from tasks.model.cluster import RolloutLimits, check_address, check_option
from tasks.model.os_upgrade_plan import BOOTING
from tasks.model.errors import (AirError, ConfigError, Halt, HealthError, Interrupted, LostLock, PreflightError,
                                RemoteError, failure_kind)
from tasks.model.frozen import frozen
from tasks.model.release import Release
from tasks.model.rollout_plan import (NOTHING, UPGRADE, Extra, Step, _machine, changes, describe, drift, groups, plan,
                                      routed, stops)
from tasks.net.progress import say
from tasks.net.session import Session, session
from tasks.runbooks import balancer, records, steps
from tasks.runbooks.cli import air_task, cluster_of, report


@frozen
class Outcome:
    """What became of one machine of a rollout: no failure, or the failure and what was done about
    it (``said``), ``restored`` when it is back on the previous release."""
    failure: Optional[AirError] = None
    said: str = ""
    restored: bool = False


class UpgradeFailed(AirError):
    """An upgrade stopped; the message names the machines and the state each was left in. ``result``:
    the rollout's end as data (``Rollout.result``), when machines failed."""

    def __init__(self, message: str, result: Optional[dict] = None):
        super().__init__(message)
        self.result = result


class PartlyUpgraded(UpgradeFailed):
    """A rollout that went through every machine with failures within its budget: those that failed
    are back on the previous release, the others run the new one."""


def member_machines(client) -> list:
    return [state.member_address(m) for m in client.members() if not m.learner]


def serving_machines(cluster, members) -> list:
    """Every machine that runs the cluster's release: the etcd ``members`` and the cluster file's
    other machines, its workers (``tasks.model.roles``)."""
    return list(roles.roles(cluster.machines, members))


class Rollout:
    """Bringing the member machines (or ``only`` those) of a session's cluster to ``release``.

    Built from one read of the facts; ``steps`` is the plan, ``apply()`` carries it out.
    ``previous``: the release a failed or interrupted machine is put back on. ``canary``:
    machine -> candidate release id, machines a canary deploy put on it (not drift). ``limits``:
    how many machines may be out at once, may fail, are worked on at once (default: the cluster
    file's ``rollout``, with no failure allowed).
    """

    def __init__(self, s, release: Release, previous: Optional[Release], only=None, limits: RolloutLimits = None,
                 canary: dict = None, extras: dict = None,
                 done_hint: str = "(fab rolling-upgrade puts them back on the cluster's release)"):
        self.s, self.ex, self.cluster = s, s.ex, s.cluster
        self.done_hint = done_hint  # what a failure says of the machines already done
        self.release, self.previous = release, previous
        self.extras: dict = extras or {}  # address -> Extra
        # A failure budget is for the tasks that take one (deploy, rolling-upgrade): rollbacks and secrets stop at the first.
        self.limits = limits or replace(self.cluster.rollout, max_failures=0)
        self.ex.fan_out = self.limits.parallel
        found = [m for m in s.etcd.members() if not m.learner]
        self.etcd_members = sorted(state.member_address(m) for m in found)  # a machine's cloud config says whether it is one
        self.all_machines = sorted(serving_machines(self.cluster, self.etcd_members))  # members and workers
        self.machines = sorted(only or self.all_machines)
        self.routers = balancer.Routers(self.ex)
        if len(self.machines) > 1:  # the leader goes last: asked while the facts are read
            s.etcd.status_ahead()
        self.down, self.facts = self._read()
        self.steps = plan(self.cluster, release, self.facts, self.routers.listed(), self.extras) \
            if not self.down else []
        self._refuse_hand_edited()
        self.warning = drift(self.cluster, self.all_machines, self.facts, self.routers.listed(), previous, canary) \
            if not self.down and only is None else None
        # An etcd member is a machine of etcd's member list; every other machine is a worker.
        self.groups = groups(self.steps, set(self.etcd_members), len(set(self.all_machines) | set(self.machines)),
                             self.limits.max_unavailable, self._leader(found) if len(self.steps) > 1 else None)
        self.failed: list = []     # (Step, Outcome) of every machine that failed so far
        self.restored: list = []   # those of them back on the previous release and in the balancer
        self._bases: dict = {}
        # Every machine's documents (units, cloud config), built before the caller writes a record or
        # a setting: a builder that fails stops the task with etcd and every machine untouched.
        self.documents = {st.machine: machine.document_files(self._document(st.machine, release),
                                                             self._user_data(st.machine))
                          for st in self.steps if st.action == UPGRADE}

    def _refuse_hand_edited(self) -> None:
        """PreflightError, before anything changes, when a machine to upgrade has a cloud config
        changed by hand since air-deploy wrote it (writing the release would lose that change)."""
        edited = [machine.changed_by_hand(st.machine, self.facts[st.machine]) for st in self.steps if st.action == UPGRADE]
        if any(edited):
            raise PreflightError("; ".join(filter(None, edited)) + "; nothing was changed")

    def _leader(self, members) -> Optional[str]:
        """The address of etcd's leader (its group goes last), or None when no member names one."""
        leader = self.s.etcd.status()["leader"]
        return next((state.member_address(m) for m in members if m.id == leader), None)

    def _read(self) -> tuple:
        """(machines that cannot be logged in to, with why; facts of the others), with the
        balancer read at the same time: neither waits for the other. A rollout that may change
        things (its task holds the cluster's lock; a plan does not) starts the new images'
        download with the same command (``prefetch_command``)."""
        prefetch = machine.prefetch_command(self.cluster, self.release, self.previous) \
            if self.ex.fence is not None else ""

        def one(address):
            why = self.ex.reachable(address)
            if why:
                return why, None
            try:
                facts = steps.release_facts(self.ex, address, prefetch)
            except RemoteError as e:  # its open connection died (a hung host): as unreachable
                return str(e).removeprefix(f"{address}: "), None
            if facts["system"] in BOOTING:  # a reboot under way: it will be down for a while
                return f"rebooting: systemd is {facts['system']}", None
            return None, facts
        with ThreadPoolExecutor(max_workers=1) as pool:
            reading = pool.submit(self.routers.listed)
            found = dict(zip(self.machines, self.ex.parallel(one, self.machines)))
            reading.result()
        down = [f"{a} ({why})" for a, (why, _) in found.items() if why]
        return down, {a: facts for a, (why, facts) in found.items() if not why}

    @property
    def nothing_to_do(self) -> bool:
        return not self.down and not self.steps

    def describe(self) -> list:
        order = "; then ".join(", ".join(s.machine for s in group) for group in self.groups)
        return describe(self.steps, self.machines, self.release) + ([f"order: {order}"] if len(self.groups) > 1 else [])

    # ------------------------------------------------------------ applying

    def apply(self, prepared: Callable[[], object] = None) -> list:
        """Carry out the plan; returns the machines done. Refuses at once, changing nothing, when a
        machine did not answer: one found down halfway would leave the cluster on two releases.
        ``prepared``, when given, is called once every machine is prepared, before the first leaves
        the balancer; what it raises ends the rollout there, as a failed preparation does."""
        self._announce()
        staged = self._prepare_all()
        paused = list(staged)  # their OS updates stay paused until the rollout ends, whatever its end
        serving = self.routers.listed()
        done: list = []
        try:
            if prepared is not None:
                prepared()
            for group in self.groups:
                self._upgrade_group(group, staged, serving, done)
            with ThreadPoolExecutor(max_workers=1) as pool:  # OS updates resume while the last one goes back in
                resuming = pool.submit(self._end_pause, paused, staged)
                self._route(serving, done, [])
            for line in resuming.result():
                say(f"warning: {line}")
        except LostLock:
            raise  # nothing is ours to change any more
        except AirError:
            self._end_pause(paused, staged)
            raise
        if self.failed:  # each restored, within the budget
            raise (PartlyUpgraded if done else UpgradeFailed)(self._failures(self.failed, done), self.result(done))
        return done

    def result(self, done) -> dict:
        """The rollout's end as data: the machines upgraded, those that failed (with the first line of
        why) and the release each machine runs (None: out of the balancer, in an unknown state)."""
        runs = {m: self.facts[m]["release"] for m in self.machines if m in self.facts}
        runs.update(dict.fromkeys(done, self.release.id))
        runs.update({s.machine: self.previous.id if o.restored and self.previous else None for s, o in self.failed})
        return {"release": self.release.id, "upgraded": list(done), "runs": runs,
                "failed": {s.machine: str(o.failure).splitlines()[0] for s, o in self.failed}}

    def _announce(self) -> None:
        if self.down:
            raise UpgradeFailed(f"not upgrading {self.cluster.name} to {self.release.id}: unreachable: "
                                f"{'; '.join(self.down)}. No machine was changed.")
        if self.warning:
            say(self.warning)
        for address in sorted(set(self.machines) - {s.machine for s in self.steps}):
            say(f"upgrade: {address} already runs {self.release.id}; left alone")

    def _prepare_all(self) -> dict:
        try:
            return self._prepare()
        except UpgradeFailed as failure:
            raise UpgradeFailed(f"not upgrading {self.cluster.name} to {self.release.id}: {failure}. "
                                f"No machine was changed.") from None

    def _upgrade_group(self, group: list, staged: dict, serving: list, done: list) -> None:
        """One group: out of the balancer (the group before back in), upgraded side by side; the
        machines that made it join ``done``, those restored after a failure ``restored``; failures
        beyond the budget, one not restored, an interrupt or a lost lock end the rollout (``_stop_after``)."""
        names = [s.machine for s in group]
        self._route(serving, done, names, check=f"the upgrade of {', '.join(names)}")
        outcomes = self.ex.parallel(lambda s: self._carry_out(s, staged.pop(s.machine, None)), group,
                                    describe=_machine)
        done += [s.machine for s, outcome in zip(group, outcomes) if outcome.failure is None]
        failed = [(s, outcome) for s, outcome in zip(group, outcomes) if outcome.failure is not None]
        if not failed:
            return
        self.failed += failed
        self.restored += [s.machine for s, outcome in failed if outcome.restored]
        halted = any(isinstance(outcome.failure, Halt) for _, outcome in failed)
        if halted or stops(len(self.failed), len(self.failed) - len(self.restored), self.limits.max_failures):
            self._stop_after(failed, serving, done)
        for s, outcome in failed:
            say(f"upgrade: {s.machine} failed ({str(outcome.failure).splitlines()[0]}); {outcome.said} "
                f"{len(self.failed)} failure(s) of {self.limits.max_failures} allowed: going on")

    def _route(self, serving: list, done: list, out: list, check: str = None) -> None:
        """The balancer routes to the members serving before, and those ``done``, but not ``out``.
        A halt (interrupt, lost lock) between machines, or a balancer that fails, ends the rollout."""
        try:
            if check:
                self.ex.check(check)
            self.routers.set(routed(self.all_machines, serving, done + self.restored, out))
        except Halt as halt:
            self._halt_between(halt, serving, done)
        except AirError as failure:
            raise UpgradeFailed(self._balancer_failed(failure, done)) from None

    def _balancer_failed(self, failure, done) -> str:
        out = [m for m in self.all_machines if m not in self.routers.listed()]
        return (f"the balancer could not be changed: {failure}; " + self._left(done, "no other machine was touched")
                + (f"; out of the balancer: {', '.join(out)} (`fab rolling-upgrade --cluster {self.cluster.name}` "
                   f"puts it back once the balancer answers)" if out else ""))

    def _halt_between(self, halt, serving, done) -> None:
        """Stopped between machines, none in hand: when interrupted the machines done go back in;
        when the lock is lost nothing more changes, and the error says who is out of the balancer."""
        if isinstance(halt, LostLock):
            out = [m for m in self.all_machines if m not in self.routers.listed()]
            raise LostLock(f"{halt}; " + self._left(done, "nothing else was changed") +
                           (f"; out of the balancer: {', '.join(out)}" if out else "")) from None
        with self.ex.finishing():
            self.routers.set(routed(self.all_machines, serving, done + self.restored, []))
        raise Interrupted(self._left(done, "every machine is in the balancer")) from None

    def _stop_after(self, failed: list, serving: list, done: list) -> None:
        """The end of a rollout at a group with failures ((step, Outcome) pairs): those restored go
        back in, then raise."""
        lost = [outcome.failure for _, outcome in failed if isinstance(outcome.failure, LostLock)]
        if lost:
            # Not ours to change any more: say what is where and stop.
            out = ", ".join(s.machine for s, _ in failed)
            raise LostLock(f"{lost[0]}; left out of the balancer mid-upgrade: {out}; "
                           + self._left(done, "nothing else was changed"))
        still_out = [s.machine for s, outcome in failed if not outcome.restored]
        with self.ex.finishing():
            self.routers.set(routed(self.all_machines, serving, done + self.restored, still_out))
        if any(isinstance(outcome.failure, Interrupted) for _, outcome in failed):
            raise Interrupted(f"{'; '.join(outcome.said for _, outcome in failed)}; " +
                              self._left(done, "no other machine was touched"))
        raise UpgradeFailed(self._failures(self.failed, done, stopped=True), self.result(done))

    def _failures(self, failed: list, done: list, stopped: bool = False) -> str:
        """The machines that failed, each with why and what became of it, then those upgraded."""
        message = "\n".join(f"upgrade of {s.machine} to {self.release.id} failed: {outcome.failure}\n{outcome.said}"
                            for s, outcome in failed)
        if self.limits.max_failures:
            message += (f"\n{len(failed)} machine(s) failed, {self.limits.max_failures} allowed: "
                        + ("the rollout stopped there" if stopped else "every other machine was upgraded"))
        if done and stopped:
            message += f"\nalready upgraded to {self.release.id}: {', '.join(done)} {self.done_hint}"
        elif done:
            message += (f"\nupgraded to {self.release.id}: {', '.join(done)} (`fab rolling-upgrade --cluster "
                        f"{self.cluster.name}` tries the others again)")
        return message

    def _left(self, done, rest: str) -> str:
        upgraded = f"upgraded to {self.release.id}: {', '.join(done)}; " if done else ""
        return f"{upgraded}{rest}"

    def _end_pause(self, paused, staged) -> list:
        """The end of a rollout on the machines it prepared (``paused``), all at once: files still
        ``staged`` (machines never reached) are discarded, OS updates resume. Returns what could not
        be done (a machine gone meanwhile), one line each."""
        def one(address):
            files = staged.get(address)
            command = f"{files.discard}; " if files else ""
            try:
                with self.ex.finishing():  # putting back, also after an interrupt (on a thread of its own)
                    self.ex.run(address, command + machine.resume_os_updates_command(), check=False,
                                what=steps.RESUME_OS_UPDATES + (", discard the staged files" if files else ""))
            except RemoteError as e:
                return f"{e} (its OS updates stay paused: `fab rolling-upgrade` resumes them)"
            return None
        return [line for line in self.ex.parallel(one, paused) if line]

    def _prepare(self) -> dict:
        """Pull the release, stage its files and pause OS updates on every machine to upgrade, all at
        once and one command each (serving is not disturbed): nothing stops before every one has its
        images. Returns address -> ``remote.Staged``. When one fails (a flaky registry), the others'
        staged files are discarded and their OS updates resumed, and UpgradeFailed says why."""
        staged: dict = {}

        def one(step):
            staged[step.machine] = self.ex.stage_files(
                step.machine, list(self._extra(step.machine).files) + self.documents[step.machine],
                before=machine.paused_while(machine.pull_command(self.cluster, self.release, step.restart)),
                undo=machine.resume_os_updates_command(), deadline=self.cluster.timeouts.pull,
                what=f"pull release {self.release.id}, stage its files, pause OS updates")
        try:
            self.ex.parallel(one, [s for s in self.steps if s.action == UPGRADE], describe=_machine)
        except LostLock:
            raise  # nothing is ours to change any more
        except AirError as failure:
            left = self._end_pause(list(staged), staged)
            if isinstance(failure, Halt):
                raise
            raise UpgradeFailed(f"{failure}" + "".join(f"\n{line}" for line in left)) from None
        return staged

    def _user_data(self, address) -> str:
        return self.facts[address]["user_data"]

    def _extra(self, address) -> Extra:
        return self.extras.get(address) or Extra()

    def _document(self, address, release) -> dict:
        """The machine's final cloud config at ``release``: its administrator's base (read with
        its facts), extended."""
        if address not in self._bases:
            installed = cloudconfig.install_part(self.cluster, address, self.etcd_members, "existing", release)
            self._bases[address] = machine.parse_base(address, self._user_data(address),
                                                      self.facts[address]["base"], installed)
        return machine.final_document(self.cluster, address, self.etcd_members, "existing", release,
                                      self._bases[address])

    def _carry_out(self, step: Step, staged) -> Outcome:
        """One machine, out of the balancer: restart what changes on the staged files, then its health
        check; on a failure, the machine put back on the previous release where it can be."""
        started = time.monotonic()
        try:
            if step.action == UPGRADE:
                extra = self._extra(step.machine)
                swap = staged._replace(swap=" && ".join(filter(None, [extra.before, staged.swap, extra.after])))
                steps.upgrade(self.ex, step.machine, step.restart, swap,
                                f"{changes(step)} on release {self.release.id}",
                                step.remove, rollout_plan.running_components(self.cluster, self.release))
                if self.ex.interrupted.is_set():
                    raise Interrupted(f"interrupted during the upgrade of {step.machine}")
            else:
                steps.wait_healthy(self.ex, step.machine)
        except LostLock as lost:
            return Outcome(lost, "left as it was")
        except (HealthError, RemoteError, Interrupted) as failure:
            with self.ex.finishing():
                return self._restore(step.machine, failure)
        took = f"{time.monotonic() - started:.1f} s"
        say(f"upgrade: {step.machine} runs {self.release.id}, restarted {', '.join(step.restart) or 'nothing'} ({took})"
            if step.action == UPGRADE else
            f"upgrade: {step.machine} already ran {self.release.id}; healthy, back in the balancer ({took})")
        return Outcome()

    def _restore(self, address, failure: AirError) -> Outcome:
        """Put ``address`` back on the previous release after ``failure``; says how that went."""
        if self.previous is None:
            return Outcome(failure, f"{address} is out of the balancer; no earlier release to restore.")
        back = rollout_plan.running_components(self.cluster, self.previous)
        # Whatever may be installed now: what ran before, and what the new release brought.
        gone = sorted({*self.facts[address]["components"], *rollout_plan.running_components(self.cluster, self.release)}
                      - set(back))
        try:
            # The upgrade's own two commands, towards the previous release; the undo goes before the swap.
            staged = self.ex.stage_files(address, machine.document_files(self._document(address, self.previous),
                                                                         self._user_data(address)))
            swap = staged._replace(swap=" && ".join(filter(None, [self._extra(address).undo, staged.swap])))
            steps.upgrade(self.ex, address, back, swap, f"put release {self.previous.id} back", gone, back)
            return Outcome(failure, f"restored: {address} is back on release {self.previous.id} and in the balancer.",
                           restored=True)
        except LostLock:
            raise
        except AirError as e:
            return Outcome(failure, f"restoring {address} to {self.previous.id} failed too ({e}); "
                                    f"it is out of the balancer.")

    def apply_recorded(self, previous_meta: dict = None, **meta) -> list:
        """``apply`` with the cluster's current release and history kept right in etcd; after a
        failure the previous release is the current one again, with ``previous_meta``. The release is
        recorded ``upgrading`` while the machines prepare (which changes nothing they serve), and that
        write is done before the first machine leaves the balancer."""
        record = records.release_entry(self.release, outcome="upgrading", **meta)
        try:
            changed = self._apply_writing(record)
        except LostLock:
            raise  # its records are not ours to write any more
        except PartlyUpgraded as partly:
            # Most machines run the new release: it stays the cluster's, and a rolling upgrade retries the others.
            result = partly.result or {}
            record.update(outcome=f"partly upgraded: failed on {', '.join(result['failed'])}",
                          failed=result["failed"], runs=result["runs"])

            def write_partly():
                records.put_release(self.s.etcd, self.cluster, record)
                records.add_history(self.s.etcd, self.cluster, record)
            raise records.after_failure(partly, write_partly) from None
        except AirError as failure:
            kind = failure_kind(failure)
            record["outcome"] = f"{kind}: {str(failure).splitlines()[0]}"
            if isinstance(failure, UpgradeFailed) and failure.result:
                record.update(failed=failure.result["failed"], runs=failure.result["runs"])

            restored = f"restored after {'an interrupted' if kind == 'interrupted' else 'a failed'} upgrade"

            def write():
                records.add_history(self.s.etcd, self.cluster, record)
                if self.previous is not None:
                    records.write_release(self.s.etcd, self.cluster, self.previous, **(previous_meta or {}),
                                          outcome=restored)
            raise records.after_failure(failure, write) from None
        record["outcome"] = "succeeded"
        records.write_outcome(self.s.etcd, self.cluster, self.release, record)
        return changed

    def _apply_writing(self, record: dict) -> list:
        """``apply``, with ``record`` written as the cluster's release while the machines prepare;
        that write has ended, done or failed, when this returns or raises."""
        with ThreadPoolExecutor(max_workers=1) as pool:
            recording = pool.submit(records.put_release, self.s.etcd, self.cluster, record)
            return self.apply(prepared=recording.result)


def apply_recorded_release(rollout: Rollout) -> list:
    """``rolling-upgrade --release R``: the cluster's release changes, so it is recorded as a deploy's
    is (``apply_recorded``), with the settings etcd holds (a rolling upgrade leaves them as they are)."""
    settings = kept.of_record(records.read_release(rollout.s.etcd, rollout.cluster)[1])
    return rollout.apply_recorded(previous_meta=settings, task="rolling-upgrade", **settings)


def apply_kept(rollout: Rollout, address: str) -> list:
    """``upgrade-machine --release R``: ``rollout`` (of ``address`` alone) applied, and what it did kept
    in the release history; the cluster's release stays the recorded one (an outcome naming the
    machine is never a rollback's target)."""
    s = rollout.s
    record = {**rollout.release.to_dict(), "who": state.operator(), "when": state.now(), "task": "upgrade-machine"}
    try:
        changed = rollout.apply()
    except LostLock:
        raise  # its records are not ours to write any more
    except AirError as failure:
        kind = failure_kind(failure)
        record["outcome"] = f"{kind}: on {address} only: {str(failure).splitlines()[0]}"
        raise records.after_failure(failure, lambda: records.add_history(s.etcd, s.cluster, record)) from None
    record["outcome"] = f"on {address} only"
    records.add_history(s.etcd, s.cluster, record)
    return changed


def plan_data(rollout: Rollout) -> dict:
    """The plan as data (``--plan --json``): what each machine needs, what stops the rollout."""
    planned = {s.machine: s for s in rollout.steps}
    return {"release": rollout.release.id, "unreachable": rollout.down, "warning": rollout.warning,
            "groups": [[s.machine for s in group] for group in rollout.groups],
            "machines": {m: {"action": planned[m].action if m in planned else NOTHING,
                             "restart": list(planned[m].restart) if m in planned else [],
                             "remove": list(planned[m].remove) if m in planned else []}
                         for m in rollout.machines}}


def print_plan(rollout: Rollout, as_json: bool = False) -> None:
    if as_json:
        print(json.dumps(plan_data(rollout), indent=1, sort_keys=True))
        return
    if rollout.down:
        print(f"unreachable: {'; '.join(rollout.down)}: the rollout would refuse to start")
    if rollout.warning:
        print(rollout.warning)
    for line in rollout.describe():
        print(line)


def target_release(s: Session, release_id=None) -> tuple:
    """(release wanted, release the cluster is recorded at) from etcd; ``release_id`` picks one from history."""
    current, _ = records.read_release(s.etcd, s.cluster)
    if release_id is None:
        if current is None:
            raise ConfigError(f"cluster {s.cluster.name} has no release recorded in etcd: run setup-cluster")
        return current, current
    for record in reversed(records.history(s.etcd, s.cluster)):
        if record["id"] == release_id:
            return Release.from_dict(record), current
    raise ConfigError(f"no release {release_id!r} in the history of {s.cluster.name} (see fab releases)")


# The options of the tasks that roll the cluster (deploy, rolling-upgrade): one home for their help and checks.
LIMITS_HELP = {
    "max_unavailable": "machines out of the balancer at once: N, or P% of the machines (default: the cluster "
                       "file's rollout.max_unavailable); never more than one etcd member, never most machines",
    "max_failures": "machines that may fail, each put back on its previous release, before the rollout stops "
                    "(default: rollout.max_failures)",
    "parallel": "machines whose facts are read and release pulled and staged at once (default: rollout.parallel)",
}
LIMITS_KIND = {"max_unavailable": "unavailable", "max_failures": "budget", "parallel": "count"}


def limits_of(cluster, **given) -> RolloutLimits:
    """The cluster file's rollout limits, overridden by those ``given`` on the command line (None: not
    given), each checked: a bad one is a one-line ConfigError before anything is touched."""
    return replace(cluster.rollout, **{name: check_option(value, LIMITS_KIND[name], "--" + name.replace("_", "-"))
                                       for name, value in given.items() if value is not None})


@contextmanager
def reported(as_json: bool):
    """With ``--json``, a rollout that ended with failed machines prints its result (``Rollout.result``)
    on standard output before its error line."""
    try:
        yield
    except UpgradeFailed as failed:
        if as_json and failed.result:
            print(json.dumps({**failed.result, "error": str(failed).splitlines()[0]}, indent=1, sort_keys=True))
        raise


@air_task(name="upgrade-machine", help={"cluster": "target cluster", "machine": "machine address",
                                        "release": "release id (default: the cluster's current release)",
                                        "via": "member to reach etcd through",
                                        "plan": "print what the machine needs and change nothing",
                                        "json": "print the plan or the outcome as JSON"})
def upgrade_machine_task(c, cluster=None, machine_=None, release=None, via=None, plan_=False, json_=False):
    """Upgrade one machine to the cluster's release (drain, stop politely, install, start, check, re-add)."""
    target = cluster_of(cluster)
    address = check_address(machine_, "--machine")
    via = check_address(via, "--via") if via else None
    with session(target, None if plan_ else f"upgrade-machine {address}", via) as s:
        wanted, current = target_release(s, release)
        members = sorted(member_machines(s.etcd))
        if address not in members:
            raise ConfigError(f"{address} is not an etcd member of {target.name} (members: {', '.join(members)})")
        rollout = Rollout(s, wanted, current, only=[address])
        if plan_:
            print_plan(rollout, json_)
            return
        changed, trips = (rollout.apply() if release is None else apply_kept(rollout, address)), s.ex.trips
    report({"machine": address, "release": wanted.id, "upgraded": bool(changed), "round_trips": trips.summary()}, json_,
           f"{address}: {'upgraded to' if changed else 'already runs'} release {wanted.id}")


@air_task(name="rolling-upgrade", help={"cluster": "target cluster", "via": "member to reach etcd through",
                                        **LIMITS_HELP,
                                        "release": "release id (default: the cluster's current release)",
                                        "plan": "print what each machine needs and change nothing",
                                        "json": "print the plan or the outcome as JSON"})
def rolling_upgrade(c, cluster=None, via=None, max_unavailable=None, max_failures=None, parallel=None, release=None,
                    plan_=False, json_=False):
    """Upgrade every machine to the cluster's release, as many at once as --max-unavailable allows."""
    target = cluster_of(cluster)
    via = check_address(via, "--via") if via else None
    limits = limits_of(target, max_unavailable=max_unavailable, max_failures=max_failures, parallel=parallel)
    with reported(json_), session(target, None if plan_ else "rolling-upgrade", via) as s:
        if not plan_:
            s.etcd.members_ahead()  # for the rollout's plan, while the records are read
        wanted, current = target_release(s, release)
        rollout = Rollout(s, wanted, current, limits=limits)
        if plan_:
            print_plan(rollout, json_)
            return
        changed, trips = (rollout.apply() if release is None else apply_recorded_release(rollout)), s.ex.trips
    report({**rollout.result(changed), "round_trips": trips.summary()}, json_,
           f"release {wanted.id}: {len(changed)} machine(s) upgraded")

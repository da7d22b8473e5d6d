"""OS updates activated by reboots we coordinate: `fab os-upgrade`, one machine at a time, drained.

Flatcar's update-engine downloads and stages OS updates; the final cloud config sets the reboot
strategy `off`, so no machine reboots by itself and the reboots are this task's. ``OsUpgrade``
reads every member's OS (version, update-engine's state, Docker, its boot; ``tasks.commands.os_update``),
etcd's health through each member and the balancer, all at once, and plans
(``tasks.model.os_upgrade_plan``): the machines with an update staged (``--reboot-all``: all),
followers first, etcd's leader last. ``--plan`` prints that and changes nothing. It refuses,
changing nothing, when a member is unreachable, rebooting or unhealthy: a reboot takes one member
down, and quorum is never risked.

Each machine then goes through the gate of a rolling upgrade: the lock confirmed, etcd's leadership
handed away when it leads (and this task's own way into etcd moved off it), out of the balancer
(its connections may finish within ``timeouts.drain``); it reboots, and must be back within
``timeouts.reboot``: SSH answers on a new boot, systemd done starting, the OS version the staged
one, its etcd member healthy and caught up (a quorum read through it), every Air unit healthy.
Then it goes back into the balancer, every member is asked again, and only then does the next
machine start. A machine not back in time stops the task with one line naming it and its state,
out of the balancer; the others were untouched and serve. An interrupt stops between machines:
the machine in hand is waited for and put back first.
"""
from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Optional

from tasks.commands.os_update import os_facts_command, parse_os_facts, reboot_command
from tasks.commands.shell import tail
from tasks.model.cluster import check_address
from tasks.model.errors import AirError, ConfigError, Halt, LostLock, PreflightError, RemoteError
from tasks.model.os_upgrade_plan import Reboot, describe, plan, quorum_problem, unexpected_version
from tasks.model.rollout_plan import routed
from tasks.net.progress import say
from tasks.net.session import Session, session
from tasks.runbooks import balancer, etcd_members, membership, steps
from tasks.runbooks.cli import air_task, cluster_of, report
from tasks.runbooks.upgrade import member_machines

TASK = "os-upgrade"
POLL = 1.0  # s between two looks at a rebooting machine


class OsUpgradeFailed(AirError):
    """An OS upgrade stopped; the message names the machine and the state it was left in."""


class OsUpgrade:
    """Rebooting the member machines (or ``only`` those) of a session's cluster into their staged OS.

    Built from one read of the facts; ``steps`` is the plan (``Reboot``s), ``problem`` why none may
    start, ``apply()`` carries it out and returns, per machine rebooted, what it took.
    """

    def __init__(self, s: Session, only=None, reboot_all: bool = False):
        self.s, self.ex, self.cluster = s, s.ex, s.cluster
        self.members = sorted(member_machines(s.etcd))
        self.machines = sorted(only or self.members)
        self.routers = balancer.Routers(self.ex)
        self.down, self.facts = self._read()
        health = self._etcd_health()
        self.leader = health.leader
        self.problem = self._problem(health)
        self.steps = plan([m for m in self.machines if m in self.facts], self.facts, self.leader, reboot_all)

    def _read(self) -> tuple:
        """(member -> why it cannot be reached, member -> OsFacts), with the balancer read meanwhile."""
        def one(address):
            why = self.ex.reachable(address)
            if why:
                return why, None
            try:
                return None, self._os(address)
            except RemoteError as e:
                return str(e).removeprefix(f"{address}: "), None
        with ThreadPoolExecutor(max_workers=1) as pool:
            reading = pool.submit(self.routers.listed)
            found = dict(zip(self.members, self.ex.parallel(one, self.members)))
            reading.result()
        return ({a: why for a, (why, _) in found.items() if why},
                {a: facts for a, (why, facts) in found.items() if not why})

    def _os(self, address: str):
        return parse_os_facts(self.ex.read(address, os_facts_command(), what="read the OS facts").stdout)

    def _etcd_health(self) -> etcd_members.Quorum:
        """Every member asked at once, with the patience of a check that must not be wrong."""
        answers = etcd_members.ask_all(self.ex, self.members, etcd_members.SURE_WITHIN, etcd_members.SURE_TIMEOUT)
        return etcd_members.quorum_of(answers)

    def _problem(self, health: etcd_members.Quorum, down: dict = None) -> Optional[str]:
        rebooting = [m for m, f in self.facts.items() if f.rebooting]
        unhealthy = [m for m in self.members if m not in health.healthy]
        return quorum_problem(self.members, self.down if down is None else down, unhealthy, rebooting)

    def describe(self) -> list:
        lines = describe(self.steps, self.machines)
        if self.problem:
            lines.append(f"os-upgrade would refuse to start: {self.problem}")
        return lines

    # ------------------------------------------------------------ applying

    def apply(self) -> list:
        """Reboot the planned machines, one at a time; returns {machine, from, to, seconds} of each."""
        if self.problem:
            raise PreflightError(f"refusing to reboot any machine of {self.cluster.name}: {self.problem}; "
                                 f"nothing was changed")
        serving = self.routers.listed()
        done: list = []
        for i, step in enumerate(self.steps):
            machines = [d["machine"] for d in done]
            try:
                if i:
                    self._gate(step, machines)
                done.append(self._reboot(step, serving, machines))
            except Halt as halt:  # before a machine's reboot, or (a lost lock) once it is back
                raise type(halt)(f"{halt}; " + _left(machines)) from None
        return done

    def _gate(self, step: Reboot, done: list) -> None:
        """Between two machines: every member answers and is healthy again, or the task stops here."""
        down = {m: why for m in self.members if (why := self.ex.reachable(m))}
        problem = self._problem(self._etcd_health(), down)
        if problem:
            raise OsUpgradeFailed(f"stopped before rebooting {step.machine}: {problem}; " + _left(done))

    def _reboot(self, step: Reboot, serving: list, done: list) -> dict:
        """One machine: leadership and our etcd way off it, drained, rebooted, waited for, back in."""
        address = step.machine
        started = time.monotonic()
        self.ex.check(f"the reboot of {address}")
        now = self._os(address)
        step = replace(step, to=now.staged)  # what it boots into: update-engine may have staged a newer one since
        other = next(m for m in self.members if m != address)
        membership.hand_over_leadership(self.s, address, other, TASK)
        self.s.move_etcd(address, other)
        self.routers.set(routed(self.members, serving, done, [address]))
        with self.ex.finishing():  # a reboot cannot be taken back: the machine in hand is waited for
            say(f"{TASK}: rebooting {address}" + (f" into OS {step.to}" if step.to else ""))
            self._send_reboot(address, serving, done)
            version = self._wait_back(step, now.boot, started + self.cluster.timeouts.reboot, done)
            try:
                self.routers.set(routed(self.members, serving, [*done, address], []))
            except LostLock as lost:
                raise LostLock(f"{lost}; {address} rebooted and is healthy but out of the balancer") from None
        took = time.monotonic() - started
        say(f"{TASK}: {address} runs OS {version}, healthy, back in the balancer ({took:.1f} s)")
        wrong = unexpected_version(step, version)
        if wrong:
            raise OsUpgradeFailed(f"{wrong}; it serves again; " + _left(done))
        return {"machine": address, "from": step.version, "to": version, "seconds": round(took, 1)}

    def _send_reboot(self, address: str, serving: list, done: list) -> None:
        """``reboot_command`` on ``address``; when it ran and failed, the machine goes back in and the task stops."""
        try:
            result = self.ex.run(address, reboot_command(), what="reboot", check=False)
        except RemoteError:
            result = None  # the connection dropped before the answer: the new boot, or none, tells
        self.ex.forget(address)
        if result is not None and result.exited != 0:
            self.routers.set(routed(self.members, serving, [*done, address], []))
            raise OsUpgradeFailed(f"{address}: reboot failed (exit {result.exited}): "
                                  f"{tail(result.stderr or result.stdout)}; it is back in the balancer; "
                                  + _left(done))

    def _wait_back(self, step: Reboot, boot: str, deadline: float, done: list) -> Optional[str]:
        """Wait until ``step``'s machine runs a new boot, healthy; its OS version. OsUpgradeFailed,
        naming the state it was last seen in, when that is not so by ``deadline``."""
        address = step.machine
        for wait in (self._booted, self._etcd_back, self._units_back):
            state = wait(address, boot, deadline)
            if state is not None:
                raise OsUpgradeFailed(f"{address} did not come back within {self.cluster.timeouts.reboot} s of its "
                                      f"reboot ({state}); it is out of the balancer; " + _left(done))
        return self._os(address).version

    def _booted(self, address: str, boot: str, deadline: float) -> Optional[str]:
        """None once the machine answers on a new boot with systemd done starting; else its last state."""
        state = "its reboot did not start"
        while time.monotonic() < deadline:
            why = self.ex.reachable(address)
            if why:
                state = f"no SSH: {why}"
            else:
                try:
                    now = self._os(address)
                    if now.boot == boot:
                        state = "its reboot did not start"
                    elif now.rebooting:
                        state = f"booting: systemd is {now.system}"
                    else:
                        return None
                except RemoteError as e:
                    state = f"no answer: {e}"
                    self.ex.forget(address)
            time.sleep(POLL)
        return state

    def _etcd_back(self, address: str, boot: str, deadline: float) -> Optional[str]:
        """None once its etcd member answers a quorum read (it has caught up with the leader)."""
        state = "its etcd member does not answer"
        while time.monotonic() < deadline:
            answer = etcd_members.ask_all(self.ex, [address], etcd_members.SURE_WITHIN,
                                          etcd_members.SURE_TIMEOUT)[address]
            if answer.healthy:
                return None
            state = f"its etcd member is not healthy ({answer.error or 'no quorum read'})"
            time.sleep(POLL)
        return state

    def _units_back(self, address: str, boot: str, deadline: float) -> Optional[str]:
        left = int(deadline - time.monotonic())
        if left < 1:
            return "its Air units were not checked"
        try:
            steps.wait_healthy(self.ex, address, timeout=left)
        except AirError as e:
            return f"its Air units are not healthy: {str(e).splitlines()[0]}"
        return None


def _left(done: list) -> str:
    return (f"rebooted before it: {', '.join(done)}; " if done else "") + "the other machines were not touched"


def plan_data(upgrade: OsUpgrade) -> dict:
    """The plan as data (``--plan --json``)."""
    return {"unreachable": upgrade.down, "problem": upgrade.problem, "leader": upgrade.leader,
            "machines": {m: {"os": f.version, "update": f.update, "staged": f.staged, "docker": f.docker}
                         for m, f in upgrade.facts.items() if m in upgrade.machines},
            "reboots": [{"machine": s.machine, "from": s.version, "to": s.to} for s in upgrade.steps]}


@air_task(name="os-upgrade", help={"cluster": "target cluster", "machine": "only this machine",
                                   "via": "member to reach etcd through",
                                   "reboot-all": "reboot every machine, with an update staged or not",
                                   "plan": "print which machines would reboot and change nothing",
                                   "json": "print the plan or the outcome as JSON"})
def os_upgrade(c, cluster=None, machine_=None, via=None, reboot_all=False, plan_=False, json_=False):
    """Reboot the machines with an OS update staged, one at a time, drained and waited for."""
    target = cluster_of(cluster)
    only = [check_address(machine_, "--machine")] if machine_ else None
    via = check_address(via, "--via") if via else None
    with session(target, None if plan_ else TASK, via) as s:
        members = member_machines(s.etcd)
        if only and only[0] not in members:
            raise ConfigError(f"{only[0]} is not an etcd member of {target.name} (members: {', '.join(sorted(members))})")
        upgrade = OsUpgrade(s, only, bool(reboot_all))
        if plan_:
            print(json.dumps(plan_data(upgrade), indent=1, sort_keys=True) if json_ else "\n".join(upgrade.describe()))
            return
        done = upgrade.apply()
    report({"rebooted": done}, json_,
           f"{TASK}: {len(done)} machine(s) rebooted" + "".join(f"\n{d['machine']}: OS {d['from']} -> {d['to']} "
                                                               f"in {d['seconds']} s" for d in done))

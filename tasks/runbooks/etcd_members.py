"""Every etcd member asked at once, each with a short deadline: who answers, whether there is quorum.

`fab status` must answer within seconds when members are down, and restore and recover must
know for certain that the cluster has lost its quorum before they touch anything. Asking one
member after another costs a connect timeout per machine that is gone and an etcd timeout per
member without quorum (a quorum read waits for one): 12 s with 2 of 3 machines down. Here each
member is asked in its own thread, through its own tunnel, for its own view (answered without
quorum), its member list and one quorum read, and whatever has not answered by the deadline is
reported as such. The threads are daemons: one stuck on a dead host never delays the task's end.
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Callable, NamedTuple, Optional

from tasks.model import state
from tasks.model.errors import AirError, PreflightError
from tasks.net import etcd as etcd_api

ASK_TIMEOUT = 1.0   # s: one etcd request of a probe (a quorum read without quorum waits this long)
WITHIN = 1.8        # s: the whole probe of every member
# Before restore or recover change anything, "no quorum" must be certain, not a slow answer on a
# busy machine: their probe waits longer, and so does `status` when members name a leader (``led``).
SURE_TIMEOUT, SURE_WITHIN = 5.0, 8.0


class Answer(NamedTuple):
    """What one member said: nothing (``error`` says why), or its view."""
    address: str
    error: Optional[str] = None
    healthy: bool = False        # a quorum read answered
    figures: dict = {}           # ``Etcd.member_status``
    members: tuple = ()          # (address, id, learner, started) of each member, as it lists them
    values: dict = {}            # key -> value (or None) of the keys asked for, read by the quorum read
    auth: Optional[bool] = None  # whether etcd asked for a login (known when keys were asked for)

    @property
    def answers(self) -> bool:
        return self.error is None


def within(work: Callable, items, seconds: float, longer: Optional[dict] = None) -> dict:
    """item -> (result, error text) of ``work(item)`` run for every item at once, each in a daemon
    thread; an item not done after ``seconds`` (those of ``longer``: its own seconds) gets
    (None, "no answer within N s")."""
    longer = longer or {}
    results: dict = {}

    def one(item):
        try:
            results[item] = (work(item), None)
        except (AirError, OSError) as e:
            results[item] = (None, str(e) or type(e).__name__)
    threads = [threading.Thread(target=one, args=(i,), name=f"ask {i}", daemon=True) for i in items]
    for t in threads:
        t.start()
    started = time.monotonic()
    for item, t in zip(items, threads):
        t.join(max(0.0, started + longer.get(item, seconds) - time.monotonic()))
    return {i: results.get(i, (None, f"no answer within {longer.get(i, seconds):g} s")) for i in items}


def ask(ex, address: str, timeout: float = ASK_TIMEOUT, partial: dict = None, reads=()) -> Answer:
    """The member on ``address``: its own figures and member list, then one quorum read (of the
    keys ``reads``, when given: their values come with the answer, and no other read is needed).
    What it said before the quorum read is put in ``partial`` meanwhile (a member that answers but
    waits for a quorum it lacks is then known to answer when the deadline comes)."""
    with etcd_api.tunnel(ex, address, timeout=timeout) as client:
        figures = client.member_status()
        members = tuple((state.member_address(m), m.id, m.learner, m.started) for m in client.members())
        if partial is not None:
            partial[address] = Answer(address, None, False, figures, members)
        if not reads:
            return Answer(address, None, client.healthy(), figures, members)
        try:
            values, _ = client.read_many(reads)
        except AirError:  # no quorum, or no login without one
            return Answer(address, None, False, figures, members)
        return Answer(address, None, True, figures, members, values, client.auth_enabled)


def ask_all(ex, addresses, seconds: float = WITHIN, timeout: float = ASK_TIMEOUT, reads=()) -> dict:
    """address -> Answer of every member on ``addresses``, asked side by side within ``seconds``
    (``reads``: keys each reads with its quorum read)."""
    partial: dict = {}
    found = within(lambda a: ask(ex, a, timeout, partial, reads), list(dict.fromkeys(addresses)), seconds)
    return {a: result or partial.get(a) or Answer(a, error) for a, (result, error) in found.items()}


def ask_members(ex, first, seconds: float = WITHIN, timeout: float = ASK_TIMEOUT, reads=()) -> dict:
    """address -> Answer of every etcd member: those of ``first`` (the machines taken for members)
    asked side by side, then the voting members their answers list that were not asked, in what is
    left of ``seconds``. Workers are not asked: their etcd proxy speaks gRPC only, and a member's
    answer says all that is known of them."""
    deadline = time.monotonic() + seconds
    answers = ask_all(ex, first, seconds, timeout, reads)
    more = not_asked(answers)
    left = deadline - time.monotonic()
    if more and left > 0:
        answers.update(ask_all(ex, more, left, timeout, reads))
    found = quorum_of(answers)
    if not found.has_quorum and led(answers, found):  # busy, not without quorum: asked again, with time
        answers.update(ask_all(ex, found.answering, SURE_WITHIN, SURE_TIMEOUT, reads))
    return answers


def led(answers: dict, found: Quorum) -> bool:
    """Whether most voting members the ``answers`` list (``found``: their Quorum) answered and name
    one leader: etcd has a quorum that quorum reads too slow for the deadline (a busy machine, a
    slow login) did not show. Pure."""
    leaders = Counter(answers[a].figures.get("leader") for a in found.answering)
    leader, naming = leaders.most_common(1)[0] if leaders else (None, 0)
    return leader not in (None, "", "0") and naming > len(found.members) // 2


def not_asked(answers: dict) -> list:
    """The voting members the ``answers`` (address -> Answer) list that are not among them, in
    address order. Pure."""
    listed = {address for answer in answers.values() for address, _, learner, _ in answer.members if not learner}
    return sorted(listed - set(answers))


class Quorum(NamedTuple):
    """The cluster's etcd as its members' answers show it."""
    members: tuple     # addresses of the voting members, as the answering members list them
    answering: tuple   # addresses of the members that answered
    healthy: tuple     # those that answered a quorum read
    leader: Optional[str]

    @property
    def has_quorum(self) -> bool:
        return bool(self.healthy)

    def describe(self) -> str:
        if self.has_quorum:
            return f"quorum: {len(self.answering)} of {len(self.members)} members answer"
        return f"no quorum: {len(self.answering)} of {len(self.members) or '?'} members answer"


def quorum_of(answers: dict) -> Quorum:
    """The Quorum the ``answers`` (address -> Answer) show. Pure."""
    listed: dict = {}
    for answer in answers.values():
        for address, member_id, learner, _ in answer.members:
            if not learner:
                listed[member_id] = address
    answering = tuple(sorted(a for a, x in answers.items() if x.answers and a in listed.values()))
    healthy = tuple(sorted(a for a in answering if answers[a].healthy))
    leaders = {answers[a].figures.get("leader") for a in healthy}
    leader = next((listed[i] for i in leaders if i in listed), None)
    return Quorum(tuple(sorted(listed.values())), answering, healthy, leader)


def refuse_with_quorum(ex, cluster, task: str) -> dict:
    """The answers of the cluster file's machines; PreflightError (nothing changed) when etcd still
    has quorum: restore and recover are for a cluster that lost it."""
    answers = ask_all(ex, cluster.machines, SURE_WITHIN, SURE_TIMEOUT)
    found = quorum_of(answers)
    if found.has_quorum:
        raise PreflightError(f"etcd of {cluster.name} still has quorum ({len(found.healthy)} of "
                             f"{len(found.members)} members answer healthy): {task} is for a cluster that lost "
                             f"it; nothing was changed")
    return answers

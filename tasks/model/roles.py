"""Which machines of a cluster are etcd members and which are workers.

A cluster's etcd has a few members (``Cluster.etcd_members`` caps them: etcd advises 3 or 5);
every other machine of the cluster is a *worker*: it runs the Air units as a member does, and
reaches etcd through a local proxy instead of a member of its own. The one rule, shared by every
task: **a machine is a member iff its address is in etcd's member list (by peer URL)**; the
cluster file's number only says how many members setup-cluster makes and add-machine or a
member's removal keeps. So a cluster installed before workers existed, all its machines
members, stays as it is. Pure: addresses in, roles out.
"""
from __future__ import annotations

from typing import Iterable, Optional

MEMBER, WORKER = "member", "worker"


def roles(machines: Iterable[str], member_addresses: Iterable[str]) -> dict:
    """address -> MEMBER or WORKER for each of ``machines`` (in their order), and MEMBER for a member
    the list lacks (etcd's member list decides, not the cluster file)."""
    members = list(member_addresses)
    result = {address: (MEMBER if address in members else WORKER) for address in machines}
    result.update({address: MEMBER for address in members if address not in result})
    return result


def workers(machines: Iterable[str], member_addresses: Iterable[str]) -> list:
    """The machines that are not etcd members, in their order."""
    return [a for a, role in roles(machines, member_addresses).items() if role == WORKER]


def first_members(machines: list, cap: int) -> list:
    """The members setup-cluster makes: the first ``cap`` machines given (at least one)."""
    if cap < 1:
        raise ValueError(f"an etcd cluster needs at least one member, not {cap}")
    return list(machines[:cap])


def joins_as(member_count: int, cap: int) -> str:
    """The role add-machine gives a new machine when etcd has ``member_count`` members (learners
    counted: one in flight fills a place)."""
    return MEMBER if member_count < cap else WORKER


def to_promote(candidates: Iterable[str], answering: Iterable[str]) -> Optional[str]:
    """The worker a member's removal promotes: the first of ``candidates`` (workers, in the cluster
    file's order) that answers; None when none does."""
    up = set(answering)
    return next((a for a in candidates if a in up), None)

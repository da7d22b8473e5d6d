"""Talking to the cluster's etcd: the one module that knows which client library is used.

It owns keys and values, the deploy lock (a key held by a lease that expires
by itself when its holder dies), cluster membership (learners added, promoted
and removed) and a quorum health check, and it turns every failure into one
``RemoteError`` line. etcd is reached through SSH channels to a member's
127.0.0.1:2379 (``tunnel``): its client port listens on loopback only, and
nothing listens for it on this machine either. The library is ``etcd3gw``, which speaks etcd's JSON gateway over
plain HTTP: python-etcd3 is unmaintained, needs protobuf<4 (clashing with
anything else installed) and cannot add learners. etcd3gw has no membership
methods, so those are gateway calls through its ``post()``.

With etcd's authentication on, a client made with a ``login`` (user, password) logs in at its
first request and sends the token with every request of every HTTP session it makes (the
lock's too); a token left unused long enough to expire, or refused as expired, is renewed.
Against an etcd with authentication off the same client goes on without one.

Leader changes are routine: idempotent calls retry with backoff through an
election (``RETRY_FOR``). A client may be *fenced* by a held lock: then its
every write is a transaction that only applies while the lock key is still
the one this task created, and raises LostLock otherwise. A change that
cannot be one transaction with that comparison (membership, leadership, the
v2 store) is preceded by the comparison alone (``confirm_fence``), in the
client itself, so no caller can forget it.
"""
from __future__ import annotations

import base64
import json
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator, Optional
from urllib.parse import quote as urlquote

import paramiko

from cloudconfig.units import ETCD_CLIENT_PORT as CLIENT_PORT
from tasks.model import etcd_access
from tasks.model.errors import HealthError, LockedError, LostLock, RemoteError
from tasks.model.frozen import frozen
from tasks.net import deferred
from tasks.net.tunnel import bridged
from tasks.net.trips import request_of, took_by

if TYPE_CHECKING:
    import requests
    import etcd3gw.client as gw_client
    from etcd3gw import exceptions as gw_errors
    import etcd3gw.lease as gw_lease

    from tasks.net import http
else:
    requests, http = deferred("requests"), deferred("tasks.net.http")
    gw_client, gw_errors, gw_lease = (deferred(f"etcd3gw.{name}") for name in ("client", "exceptions", "lease"))
HTTP_STACK = ("requests", "tasks.net.http", "etcd3gw.client", "etcd3gw.exceptions", "etcd3gw.lease")
"""What the client imports at its first use (``tasks.net.warm`` loads it ahead)."""

API_PATH = "/v3/"  # etcd 3.4 and later; fixed, so no version request precedes every client
HOLDER_FIELDS = ("who", "since", "why")  # shown first when a lock is refused
_NOT_IN_SYNC = "in sync with leader"
_NOT_A_LEARNER = "can only promote a learner member"
# etcd's answers that mean "not done, try again": no leader (an election runs), a request dropped
# by a leader or membership change, an overloaded member. A request that got no answer at all
# (a timeout) is retried too, by the idempotent calls only.
TRANSIENT = ("no leader", "leader changed", "request timed out", "too many requests",
             "not capable", "server stopped", "unhealthy cluster")
RETRY_FOR = 15  # seconds an idempotent call keeps retrying through a leader change
# etcd forgets a simple token unused for --auth-token-ttl (300 s by default): one unused for this
# long is renewed before use rather than refused.
TOKEN_FRESH = 240
LOGIN_PAUSE = 3  # s: after a login etcd could not answer (no quorum), requests go without one meanwhile
_TOKEN_REFUSED = "invalid auth token"
HEALTH_PATH = "/health"  # the member's own health (beside the gateway, not under API_PATH)
# Answered without a login: a member's status, the member list, its health, and a lease's grant
# (a lease is no key: etcd checks the login of what is put with it, not of the grant).
NO_LOGIN_NEEDED = {API_PATH + "maintenance/status", API_PATH + "cluster/member/list", API_PATH + "lease/grant",
                   HEALTH_PATH}
_AUTH_OFF = "authentication is not enabled"
_NO_LOGIN = "user name is empty"


@frozen
class Member:
    id: str
    name: str
    peer_urls: tuple
    client_urls: tuple
    learner: bool

    @property
    def started(self) -> bool:
        # A member that was added but has not yet joined has no name.
        return bool(self.name)


def _member(data: dict) -> Member:
    # The gateway leaves out empty fields: no name, no client URLs, isLearner false.
    return Member(id=str(data["ID"]), name=data.get("name", ""),
                  peer_urls=tuple(data.get("peerURLs", ())),
                  client_urls=tuple(data.get("clientURLs", ())),
                  learner=bool(data.get("isLearner", False)))


class Etcd:
    """A client of one etcd member at ``host:port`` (over a tunnel, see ``tunnel``)."""

    def __init__(self, host: str, port: int, timeout: float = 5, *, label: str = None, connect=None,
                 login: Optional[tuple] = None, counted=None):
        self.host, self.port, self.timeout = host, int(port), timeout
        self._counted = counted  # a requests response hook counting round trips (``tasks.net.trips``)
        self.label = label or f"{host}:{port}"
        self._connect = connect  # opens each HTTP connection (see ``tunnel``); None: a plain TCP connection
        self._clients: list = []
        self._login = login      # (user, password), or None: requests go without a token
        self._token: Optional[str] = None  # None: not logged in yet; "": etcd's authentication is off
        self._token_used = 0.0
        self._no_login_until = 0.0  # after a login etcd could not answer, none is tried before then
        self._token_lock = threading.Lock()
        self._lease_ahead: Optional[tuple] = None  # (ttl, Future of the lease id) asked by ``grant_ahead``
        self._members_ahead: Optional[Future] = None  # the member list asked by ``members_ahead``
        self._status_ahead: Optional[Future] = None   # the member's status asked by ``status_ahead``
        self._client = self._new_client(timeout)
        self.fence: Optional[tuple] = None  # (lock key, its create revision): writes apply only while it stands
        # Told when a fenced transaction that applied was sent: the lock was ours then (``Lock.confirmed_by``).
        self.fence_held: Optional[Callable[[float], None]] = None
        # Sends the connections opened from then on to the member on another host (``tunnel``'s).
        self.move_to: Optional[Callable[[str], None]] = None

    def __repr__(self) -> str:
        return f"Etcd({self.label})"

    def _new_client(self, timeout: float) -> gw_client.Etcd3Client:
        session = requests.Session()
        if self._counted is not None:
            session.hooks["response"].append(self._counted)
        # Each connection through the tunnel when there is one; each request in one write either way.
        session.mount("http://", http.ConnectingAdapter(self._connect, plain=http.OneWriteConnection)
                      if self._connect is not None else http.OneWriteAdapter())
        if self._login is not None:
            session.auth = self._with_token
        client = gw_client.Etcd3Client(host=self.host, port=self.port, timeout=timeout, api_path=API_PATH, session=session)
        self._clients.append(client)
        return client

    # The login.

    def _with_token(self, request):
        """requests' auth hook: the token on every request of this client's sessions but those etcd
        answers without one (a member's status and the member list): a member probed while the
        cluster has no quorum answers them at once, not after a login that cannot be done."""
        if request.path_url in NO_LOGIN_NEEDED:
            return request
        token = self.token()
        if token:
            request.headers["Authorization"] = token
        return request

    def token(self) -> str:
        """The login's token, logging in first when there is none or it may have expired; "" when
        etcd's authentication is off, or while it cannot log anyone in (no quorum: a login is a
        write). Then requests go without one: a member's status and member list need none, and
        what needs one is refused ("user name is empty")."""
        with self._token_lock:
            return self._current_token(self._client)

    def _current_token(self, client) -> str:
        """``token``'s answer, the token lock held; a login goes over ``client``'s connection."""
        now = boottime()
        if self._token is None or (self._token and now - self._token_used > TOKEN_FRESH):
            if now < self._no_login_until:
                return ""
            self._token = self._log_in(client) if client is not self._client else self._log_in()
            if self._token is None:
                self._no_login_until = now + LOGIN_PAUSE
                return ""
        self._token_used = now
        return self._token

    def log_in_ahead(self) -> None:
        """Log in now, on a connection of its own, while this client's first requests go (a health
        check, a lease grant: neither needs the token): the first request that needs it waits for
        this login rather than making its own, a round trip later. A login that fails here is
        tried again, and reported, by that request."""
        if self._login is None or self._token is not None:
            return
        client, holding = self._new_client(self.timeout), threading.Event()

        def log_in() -> None:
            with self._token_lock:
                holding.set()
                try:
                    self._current_token(client)
                except RemoteError:
                    pass  # said again by the first request that needs the token
        threading.Thread(target=log_in, name="etcd login", daemon=True).start()
        holding.wait()  # a request made from now on waits for this login

    @property
    def auth_enabled(self) -> bool:
        """Whether etcd asks for a login (known once this client, made with one, has logged in)."""
        return bool(self._login is not None and self.token())

    def _log_in(self, client=None) -> Optional[str]:
        """One try: the token, "" when authentication is off, None when etcd cannot answer a login
        now (without quorum it cannot: said at once, not retried); a refused login raises."""
        assert self._login is not None
        user, password = self._login
        # ``client``'s connection (default: this client's), without the token this gets (the auth
        # given here replaces it).
        client = client or self._client
        try:
            answer = client.post(client.get_url("/auth/authenticate"), json={"name": user, "password": password},
                                 auth=_without_token)
        except gw_errors.Etcd3Exception as e:
            if _AUTH_OFF in _etcd_message(e):
                return ""
            if _transient(e, True):
                return None
            raise self._error(f"log in as {user}", e) from None
        except requests.Timeout:
            return None
        except requests.RequestException as e:
            raise self._error(f"log in as {user}", e) from None
        return str(answer.get("token", ""))

    def _forget_token(self) -> None:
        with self._token_lock:
            self._token = None

    def log_in_again(self) -> None:
        """Log in at the next request (etcd's authentication was just turned on)."""
        self._forget_token()

    def auth(self, path: str, payload: dict, what: str) -> dict:
        """One call of etcd's auth API (``/v3/auth/<path>``); ``what`` says it (never the payload)."""
        return self._post(what, f"/auth/{path}", payload, retry=False)

    def drop_connections(self) -> None:
        """Close the connections kept open for the next requests (the lock's too): the next
        request of each opens a new one, wherever connections go now."""
        for client in self._clients:
            client.session.close()

    def close(self) -> None:
        """Close this client's HTTP connections (and so their SSH channels)."""
        for client in self._clients:
            client.session.close()

    def _error(self, what: str, error: Exception) -> RemoteError:
        if isinstance(error, gw_errors.Etcd3Exception):
            reason = _reason(error, self.timeout)
            if _NO_LOGIN in reason and self._login is None:
                reason += " (its authentication is on: set etcd_auth: true in the cluster file)"
            return RemoteError(f"etcd at {self.label}: {what}: {reason}")
        return RemoteError(f"etcd at {self.label}: {what}: {_first_line(error) or type(error).__name__}")

    def _call(self, what: str, function, *args, retry: bool = True, **kwargs):
        """``function(*args, **kwargs)``; etcd's transient refusals are retried with backoff for
        ``RETRY_FOR`` s, and, when ``retry`` (the call is idempotent), so are unanswered requests."""
        give_up, pause = time.monotonic() + RETRY_FOR, 0.1
        renewed = False
        while True:
            try:
                return function(*args, **kwargs)
            except (gw_errors.Etcd3Exception, requests.RequestException) as e:
                if not renewed and self._login is not None and _token_refused(e):
                    self._forget_token()  # expired: log in again, once
                    renewed = True
                    continue
                if not _transient(e, retry) or time.monotonic() + pause > give_up:
                    raise self._error(what, e) from None
            time.sleep(pause)
            pause = min(pause * 2, 1.0)

    def _post(self, what: str, path: str, payload: dict, retry: bool = True) -> dict:
        return self._call(what, self._client.post, self._client.get_url(path), json=payload, retry=retry)

    # Keys and values: text in, text out (UTF-8).

    def get(self, key: str) -> Optional[str]:
        values = self._call(f"get {key}", self._client.get, _bytes(key))
        return values[0].decode() if values else None

    def put(self, key: str, value: str) -> None:
        self._write(f"put {key}", {"request_put": {"key": _b64(_bytes(key)), "value": _b64(_bytes(value))}},
                    lambda: self._client.put(_bytes(key), _bytes(value)))

    def get_prefix(self, prefix: str) -> dict:
        items = self._call(f"get {prefix}*", self._client.get, _bytes(prefix) or b"\0",
                           metadata=True, range_end=_prefix_end(prefix))
        return {meta["key"].decode(): value.decode() for value, meta in items}

    def read_many(self, keys=(), prefixes=()) -> tuple:
        """({key: value or None}, {prefix: {key: value}}): several keys and prefixes read in one
        request (a transaction of reads: one round trip, one revision)."""
        keys, prefixes = list(keys), list(prefixes)
        result = self._call(f"read {len(keys)} key(s) and {len(prefixes)} prefix(es)", self._client.transaction,
                            {"compare": [], "success": _ranges(keys, prefixes), "failure": []})
        return _read_of(result.get("responses", []), keys, prefixes)

    def delete(self, key: str) -> None:
        self._write(f"delete {key}", {"request_delete_range": {"key": _b64(_bytes(key))}},
                    lambda: self._client.delete(_bytes(key)))

    def delete_prefix(self, prefix: str) -> None:
        if not prefix:
            raise ValueError("delete_prefix needs a prefix: refusing to delete every key")
        self._write(f"delete {prefix}*",
                    {"request_delete_range": {"key": _b64(_bytes(prefix)), "range_end": _b64(_prefix_end(prefix))}},
                    lambda: self._client.delete(_bytes(prefix), range_end=_prefix_end(prefix)))  # type: ignore[arg-type]

    def write_many(self, puts: dict, deletes=()) -> None:
        """``puts`` (key -> value) and ``deletes`` (keys) in one transaction: all apply or none
        (fenced, like every write, on a fenced client)."""
        requests_ = [{"request_put": {"key": _b64(_bytes(k)), "value": _b64(_bytes(v))}} for k, v in puts.items()]
        requests_ += [{"request_delete_range": {"key": _b64(_bytes(k))}} for k in deletes]
        if not requests_:
            return
        what = f"write {len(puts)} and delete {len(deletes)} key(s)"
        if self.fence is None:
            self._call(what, self._client.transaction, {"compare": [], "success": requests_, "failure": []})
        elif not self._fenced(what, *requests_):
            raise LostLock(f"{self.fence[0]} is no longer ours: {what} was not written")

    # etcd's v2 API, for applications that read /v2/keys/... (members started with ETCD_ENABLE_V2).
    # Its keys are a store of their own: nothing written through v3 shows there, and no v3
    # transaction covers a v2 write: on a fenced client each is preceded by ``confirm_fence``.

    def _v2(self, what: str, method: str, key: str, **kwargs) -> dict:
        url = f"{self._client.base_url}/v2/keys{urlquote(key)}"

        def call():
            answer = self._client.session.request(method, url, timeout=self.timeout, **kwargs)
            if answer.status_code == 404 and '"errorCode":100' in answer.text.replace(" ", ""):
                return {}  # key not found
            if answer.status_code == 404:
                raise gw_errors.Etcd3Exception("etcd's v2 API is not served (is etcd_v2 set and etcd restarted?)",
                                               "Not Found")
            if answer.status_code >= 400:
                raise gw_errors.Etcd3Exception(answer.text, answer.reason)
            return answer.json()
        return self._call(what, call)

    def v2_put(self, key: str, value: str) -> None:
        self.confirm_fence(f"put {key} (v2)")
        self._v2(f"put {key} (v2)", "PUT", key, data={"value": value})

    def v2_delete(self, key: str) -> None:
        self.confirm_fence(f"delete {key} (v2)")
        self._v2(f"delete {key} (v2)", "DELETE", key)

    def v2_get_prefix(self, prefix: str) -> dict:
        """key -> value of every key under the v2 directory ``prefix``."""
        found = self._v2(f"get {prefix}* (v2)", "GET", prefix.rstrip("/"), params={"recursive": "true"})
        items: dict = {}
        stack = [found.get("node", {})]
        while stack:
            node = stack.pop()
            if node.get("dir"):
                stack += node.get("nodes", [])
            elif "key" in node and node["key"].startswith(prefix):
                items[node["key"]] = node.get("value", "")
        return items

    def _write(self, what: str, request: dict, unfenced) -> None:
        """One write: as it is, or, on a fenced client, a transaction that applies it only while
        the lock key is still the one this task created (etcd's fencing)."""
        if self.fence is None:
            self._call(what, unfenced)
        elif not self._fenced(what, request):
            raise LostLock(f"{self.fence[0]} is no longer ours: {what} was not written")

    def _fenced(self, what: str, *requests_: dict) -> bool:
        """``requests_`` in one transaction that applies them only while the fence stands (none: it
        only tells whether it stands); True when it did, and ``fence_held`` is told when it was sent."""
        assert self.fence is not None
        sent = boottime()
        result = self._call(what, self._client.transaction, fenced_txn(*self.fence, *requests_))
        if result.get("succeeded") and self.fence_held is not None:
            self.fence_held(sent)
        return bool(result.get("succeeded"))

    def confirm_fence(self, what: str) -> None:
        """On a fenced client, right before a change no transaction can hold to the fence (a
        membership change, a leadership transfer, a v2 write): LostLock unless the lock key is
        still the one this task created. One round trip: a transaction of the comparison alone
        (a linearizable read), retried through an election like any read."""
        self._members_ahead = None  # the member list asked ahead may be changed by this
        self._status_ahead = None   # and so may the leadership
        if self.fence is not None and not self._fenced(f"confirm the lock before: {what}"):
            raise LostLock(f"{self.fence[0]} is no longer ours: {what} was not done")

    # Status and leadership.

    def status(self) -> dict:
        """This member's view: its id (``member``), the ``leader``'s id, ``raft_term``; the one
        ``status_ahead`` asked for when there is one (used once)."""
        ahead, self._status_ahead = self._status_ahead, None
        return _ahead_or(ahead, lambda: self._status_of(self._client))

    def status_ahead(self) -> None:
        """Ask for the member's status now, on a connection of its own, for the next ``status`` (a
        rollout's order, leader last, read while the machines' facts are: leadership moves under
        the cluster's lock only, ``hand_over_leadership``)."""
        client = self._new_client(self.timeout)
        self._status_ahead = _started(lambda: self._status_of(client))

    def _status_of(self, client) -> dict:
        data = self._call("read the member status", client.post, client.get_url("/maintenance/status"), json={})
        header = data.get("header", {})
        return {"member": str(header.get("member_id", "")), "leader": str(data.get("leader", "")),
                "raft_term": int(header.get("raft_term", 0) or 0)}

    def move_leader(self, target_id: str) -> None:
        """Hand leadership to member ``target_id``; asked of the leader itself."""
        self.confirm_fence(f"move leadership to {target_id}")
        self._post(f"move leadership to {target_id}", "/maintenance/transfer-leadership",
                   {"targetID": target_id}, retry=False)

    # Membership.

    def members(self) -> list:
        """The cluster's members; the list ``members_ahead`` asked for when there is one (used once)."""
        ahead, self._members_ahead = self._members_ahead, None
        return _ahead_or(ahead, lambda: self._members_of(self._client))

    def _members_of(self, client) -> list:
        return [_member(m) for m in self._call("list members", client.members)]

    def members_ahead(self) -> None:
        """Ask for the member list now, on a connection of its own, for the next ``members`` (a task
        holding the cluster's lock that reads it later: membership changes under that lock only, and
        this client's own changes drop the answer, ``confirm_fence``)."""
        client = self._new_client(self.timeout)
        self._members_ahead = _started(lambda: self._members_of(client))

    def add_member(self, peer_url: str, learner: bool = True) -> Member:
        """Announce a member before it starts; a learner does not count for quorum until promoted."""
        kind = "learner" if learner else "voting member"
        self.confirm_fence(f"add {kind} {peer_url}")
        # Not idempotent: an add that got no answer is not sent again (the caller sees the members).
        result = self._post(f"add {kind} {peer_url}", "/cluster/member/add",
                            {"peerURLs": [peer_url], "isLearner": learner}, retry=False)
        return _member(result["member"])

    def promote(self, member_id: str, timeout: float = 60, interval: float = 1) -> None:
        """Make learner ``member_id`` a voting member, waiting up to ``timeout`` s for it to catch up.

        Promoting a member that already votes changes nothing.
        """
        deadline = time.monotonic() + timeout
        while True:
            self.confirm_fence(f"promote {member_id}")  # before every try: catching up may take a while
            try:
                self._client.post(self._client.get_url("/cluster/member/promote"), json={"ID": member_id})
                return
            except gw_errors.Etcd3Exception as e:
                text = _reason(e, self.timeout)
                if _NOT_IN_SYNC in text:
                    if time.monotonic() + interval > deadline:
                        raise HealthError(f"etcd at {self.label}: learner {member_id} did not catch up "
                                          f"with the leader within {timeout:g} s, not promoted") from None
                    time.sleep(interval)
                    continue
                if _NOT_A_LEARNER in text:
                    return
                raise self._error(f"promote {member_id}", e) from None
            except requests.RequestException as e:
                raise self._error(f"promote {member_id}", e) from None

    def update_member(self, member_id: str, peer_url: str) -> None:
        """Set member ``member_id``'s peer URL (its peers dial it there from now on)."""
        self.confirm_fence(f"update member {member_id} to {peer_url}")
        self._post(f"update member {member_id} to {peer_url}", "/cluster/member/update",
                   {"ID": member_id, "peerURLs": [peer_url]})

    def remove_member(self, member_id: str) -> None:
        """Remove ``member_id``; a member already gone (an earlier try that got no answer) is fine."""
        self.confirm_fence(f"remove member {member_id}")
        try:
            self._post(f"remove member {member_id}", "/cluster/member/remove", {"ID": member_id})
        except RemoteError as e:
            if "member not found" not in str(e):
                raise

    def healthy(self) -> bool:
        """True when the cluster has quorum and a leader, as this member sees it. First its own health
        (``HEALTH_PATH``: a leader, and a quorum read through raft answered within a second), which
        needs no login; when that says no, a linearizable read, which may take the client's timeout
        (a loaded member, an election under way)."""
        client = self._client
        try:
            answer = client.session.get(client.base_url + HEALTH_PATH, timeout=self.timeout)
            if answer.status_code == 200 and answer.json().get("health") == "true":
                return True
        except (requests.RequestException, ValueError):  # ValueError: not JSON
            pass
        try:
            client.get(b"health", serializable=False)
            return True
        except (gw_errors.Etcd3Exception, requests.RequestException, RemoteError):  # RemoteError: no login
            return False

    # The lock.

    def acquire(self, key: str, holder: dict, ttl: int = 30, reads: tuple = ((), ())) -> "Lock":
        """Take the lock ``key`` at once or raise LockedError naming its holder; never waits.

        ``holder`` (who, since, why, ...) is stored as JSON under ``key``,
        attached to a lease of ``ttl`` s kept alive until ``release()``: if this
        process dies the lock goes away by itself within ``ttl`` s. ``reads``:
        (keys, prefixes) read in the transaction that takes it, so at the
        revision the lock was taken at and in the same round trip
        (``Lock.take_read``; as ``read_many`` answers).
        """
        ttl = max(2, int(ttl))
        lease_id = self._lease(ttl)
        encoded = _bytes(key)
        keys, prefixes = reads
        txn = {
            "compare": [{"key": _b64(encoded), "result": "EQUAL", "target": "CREATE", "create_revision": 0}],
            "success": [{"request_put": {"key": _b64(encoded), "value": _b64(_bytes(json.dumps(holder))),
                                         "lease": lease_id}}, *_ranges(keys, prefixes)],
            "failure": [{"request_range": {"key": _b64(encoded)}}],
        }
        sent = boottime()  # the lock is ours as of then when this transaction takes it: a confirmation
        try:
            # Retried when unanswered: a try that did apply is then found holding our own lease.
            result = self._call(f"take lock {key}", self._client.transaction, txn)
        except RemoteError:
            self._drop(lease_id)
            raise
        if result.get("succeeded"):
            read = _read_of(result.get("responses", [])[1:], keys, prefixes) if keys or prefixes else None
            return Lock(self, key, dict(holder), ttl, lease_id, int(result["header"]["revision"]), confirmed=sent,
                        read=read)
        mine = _range_kv(result)
        if mine is not None and int(mine.get("lease", 0)) == int(lease_id):
            # An unanswered try that did apply: taken, but what it read is lost with its answer.
            return Lock(self, key, dict(holder), ttl, lease_id, int(mine["create_revision"]), confirmed=sent)
        self._drop(lease_id)
        current = _range_kv(result)
        if current is None:  # not expected: the same transaction found the key
            raise LockedError(f"{key} was held a moment ago; try again")
        raise LockedError(self._locked_message(key, current))

    def grant_ahead(self, ttl: int) -> None:
        """Ask for the lease of the lock about to be taken (``acquire`` with the same ``ttl``) now, on
        a connection of its own, while the health check and the login go: a grant needs no login."""
        ttl = max(2, int(ttl))
        client = self._new_client(self.timeout)
        # One try, not retried: a member without quorum is left at once, and the lease is asked then.
        self._lease_ahead = (ttl, _started(lambda: client.lease(ttl).id))

    def _lease(self, ttl: int) -> int:
        """The id of a new lease of ``ttl`` s: the one asked ahead when there is one, else granted now."""
        ahead, self._lease_ahead = self._lease_ahead, None
        if ahead is not None and ahead[0] == ttl:
            try:
                return int(ahead[1].result())
            except Exception:  # noqa: BLE001 - any failure of the try ahead: granted now, retried and said as ever
                pass
        return int(self._call(f"grant a {ttl} s lease", self._client.lease, ttl).id)

    def holder(self, key: str) -> Optional[dict]:
        return holder_of(self.get(key))

    def force_release(self, key: str) -> Optional[dict]:
        """Remove lock ``key`` whoever holds it; return the holder it had, if any.

        Its lease is revoked too, so a still-running holder sees the lock lost.
        """
        items = self._call(f"get {key}", self._client.get, _bytes(key), metadata=True)
        if not items:
            return None
        value, meta = items[0]
        if meta.get("lease"):
            self._revoke(int(meta["lease"]))
        self.delete(key)
        return _parse_holder(value.decode())

    def _locked_message(self, key: str, kv: dict) -> str:
        held_by = describe_holder(_parse_holder(_unb64(kv.get("value", "")).decode()))
        message = f"{key} is held by {held_by}"
        lease_id = int(kv.get("lease", 0))
        if lease_id:
            try:
                left = int(self._post("lease time to live", "/kv/lease/timetolive", {"ID": lease_id}).get("TTL", 0))
                message += f" (if its holder is gone, it expires within {max(left, 0)} s)"
            except RemoteError:
                pass  # the message is complete without it
        return message

    def _drop(self, lease_id: int) -> None:
        try:
            self._revoke(lease_id)
        except RemoteError:
            pass  # an unused lease expires by itself; the caller's error matters more

    def _revoke(self, lease_id: int) -> None:
        try:
            self._client.post(self._client.get_url("/kv/lease/revoke"), json={"ID": lease_id})
        except gw_errors.Etcd3Exception as e:
            if "lease not found" not in _reason(e, self.timeout):  # expired already: nothing to undo
                raise self._error(f"revoke lease {lease_id}", e) from None
        except requests.RequestException as e:
            raise self._error(f"revoke lease {lease_id}", e) from None

    # Maintenance: snapshots, the member's own figures, defragmentation (etcd-backup).

    def snapshot(self) -> bytes:
        """This member's snapshot (its database and, last, the SHA-256 trailer), as the gateway streams
        it: one JSON object per line, each a base64 piece. Read, never retried (a second snapshot is
        the caller's choice)."""
        url = self._client.get_url("/maintenance/snapshot")
        pieces = []
        try:
            with self._client.session.post(url, json={}, stream=True, timeout=self.timeout) as answer:
                if answer.status_code != 200:
                    raise gw_errors.Etcd3Exception(answer.text, answer.reason)
                for line in answer.iter_lines():
                    pieces.append(_snapshot_piece(line))
        except (gw_errors.Etcd3Exception, requests.RequestException) as e:
            raise self._error("take a snapshot", e) from None
        return b"".join(pieces)

    def member_status(self) -> dict:
        """This member's own view, answered without quorum: ``member`` and ``leader`` ids (leader "0"
        or "" when it knows none), ``db_size`` and ``db_size_in_use`` (bytes), ``revision``,
        ``raft_index``, ``version``. Asked once (no retries): a caller probing members wants a quick answer."""
        data = self._post("read the member status", "/maintenance/status", {}, retry=False)
        return member_figures(data)

    def count_keys(self, revision: int = 0) -> int:
        """How many keys there are (at ``revision``, when given), counted by etcd (a quorum read)."""
        payload = {"key": _b64(b"\0"), "range_end": _b64(b"\0"), "count_only": True}
        if revision:
            payload["revision"] = int(revision)
        return int(self._post(f"count the keys at revision {revision or 'now'}", "/kv/range", payload).get("count", 0))

    def defragment(self, timeout: float = 60) -> None:
        """Defragment this member's database (it answers nothing else meanwhile); not retried."""
        client = self._new_client(timeout)
        self._call("defragment", client.post, client.get_url("/maintenance/defragment"), json={}, retry=False)


def member_figures(data: dict) -> dict:
    """The fields of a gateway ``/maintenance/status`` answer a caller uses, typed. Pure."""
    header = data.get("header", {})
    return {"member": str(header.get("member_id", "")), "leader": str(data.get("leader", "")),
            "db_size": int(data.get("dbSize", 0) or 0), "db_size_in_use": int(data.get("dbSizeInUse", 0) or 0),
            "revision": int(header.get("revision", 0) or 0), "raft_index": int(data.get("raftIndex", 0) or 0),
            "version": str(data.get("version", ""))}


def _snapshot_piece(line: bytes) -> bytes:
    """The bytes of one line of the gateway's snapshot stream; an error line raises."""
    if not line.strip():
        return b""
    message = json.loads(line)
    if "error" in message:
        error = message["error"]
        raise gw_errors.Etcd3Exception(json.dumps(error), str(error.get("message", "snapshot failed")))
    return _unb64(message.get("result", {}).get("blob", ""))


CANNOT_CONFIRM = "cannot confirm it"  # a lock's key went unanswered
READ_AHEAD_AFTER = 0.05  # of a confirmation's freshness: younger, it sends no read ahead (``Lock.confirm``)


def boottime() -> float:
    """Seconds on a clock that keeps counting while this process is stopped or the laptop sleeps
    (a lease expires on the server all the same)."""
    return time.clock_gettime(getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC))


class Lock:
    """A held lock: the key lives while a daemon thread keeps its lease alive, until ``release()``.

    ``confirm()`` tells, before a change, whether the lock is still certainly ours: the lease
    was renewed recently enough that it cannot have expired, and the key is still the one this
    lock created (not deleted, not taken over). The key's read costs a round trip: ``confirm(fresh=s)``
    takes a read sent less than ``s`` seconds ago for one of its own (a rollout's commands come
    faster than that). A watchdog (``stuck``, a callable naming a step past its deadline) stops the
    renewals when the task hangs, so the lock expires by itself.
    """

    def __init__(self, etcd: Etcd, key: str, holder: dict, ttl: int, lease_id: int, revision: int = 0,
                 confirmed: Optional[float] = None, read: Optional[tuple] = None):
        self.etcd, self.key, self.holder, self.ttl, self.lease_id = etcd, key, holder, ttl, lease_id
        self.revision = revision
        self._read = read  # what the taking read (``Etcd.acquire``'s ``reads``), until taken
        self.stuck: Callable[[], Optional[str]] = lambda: None
        self._stop = threading.Event()
        self._lost: Optional[str] = None
        self._released = False
        self._renewed = boottime()  # when the last renewal that succeeded was sent
        self._confirmed = confirmed  # when the last read that found the key ours (or the taking) was sent
        # Their own HTTP sessions (requests sessions are not meant to be shared between
        # threads) and a timeout short enough that one stuck request cannot outlast the lease.
        self._lease = gw_lease.Lease(lease_id, client=etcd._new_client(timeout=max(1.0, ttl / 3)))
        self._checker = etcd._new_client(timeout=max(1.0, ttl / 3))
        self._check_lock = threading.Lock()
        self._ahead: Optional[threading.Thread] = None  # a confirmation's read sent ahead (``_read_ahead``)
        self._ahead_lock = threading.Lock()
        self._thread = threading.Thread(target=self._keep_alive, name=f"etcd lock {key}", daemon=True)
        self._thread.start()

    def __enter__(self) -> "Lock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    @property
    def fence(self) -> tuple:
        """(key, create revision): what the changes of a client fenced by this lock compare (``Etcd.fence``)."""
        return self.key, self.revision

    def take_read(self) -> Optional[tuple]:
        """What the transaction that took the lock read (as ``Etcd.read_many`` answers), once: None
        when it read nothing, or when that was taken already (it is as old as the lock then)."""
        read, self._read = self._read, None
        return read

    @property
    def held(self) -> bool:
        """False once released, or once found lost (the lock may be someone else's now)."""
        return not self._released and self._lost is None

    def confirm(self, fresh: float = 0) -> None:
        """Raise LostLock unless the lock is certainly still ours: one linearizable read of its key,
        unless one sent less than ``fresh`` s ago found it ours (the lease's own state is looked at
        every time: it costs nothing). A confirmation found fresh, unless brand new
        (``READ_AHEAD_AFTER``), sends the next read at once, in the background: the change that
        follows (a machine's restart, say) runs meanwhile, and the next confirmation finds that read
        done instead of waiting on one."""
        if self._released:
            raise LostLock(f"{self.key} was released")
        if self._lost is None:
            quiet = boottime() - self._renewed
            if quiet > self.ttl * 2 / 3:
                self._lost = f"its lease was not renewed for {quiet:.0f} s (this process was stopped or cut off)"
        if self._lost is None:
            confirmed = self._confirmed
            if confirmed is not None and boottime() - confirmed < fresh:  # stands: nothing waited for
                if boottime() - confirmed >= fresh * READ_AHEAD_AFTER:
                    self._read_ahead()
            else:
                with self._check_lock:  # threads confirming at once (and a read ahead) share one read
                    confirmed = self._confirmed
                    if confirmed is None or boottime() - confirmed >= fresh:
                        self._read_key()
        if self._lost is not None:
            raise LostLock(f"{self.key}: {self._lost}")

    def confirmed_by(self, sent: float) -> None:
        """A transaction fenced by this lock, sent at ``sent`` (``boottime``), applied: it stands for a
        confirmation sent then (``Etcd.fence_held``)."""
        if self._confirmed is None or sent > self._confirmed:
            self._confirmed = sent

    def _read_key(self, ahead: bool = False) -> None:
        """One read of the key (under ``_check_lock``): the lock is found ours as of the read's
        sending, or lost. Read ahead, it is tried once, and no answer leaves the lock's state as it
        was (the next confirmation reads again)."""
        sent = boottime()
        lost = self._check_key(patience=0 if ahead else None)
        if lost is None:
            self._confirmed = sent
        elif not (ahead and lost.startswith(CANNOT_CONFIRM)):
            self._lost = lost

    def _read_ahead(self) -> None:
        """``_read_key`` in a thread of its own, unless one is under way; a confirmation that needs
        a read meanwhile waits for it (it holds ``_check_lock``)."""
        with self._ahead_lock:
            if self._ahead is not None and self._ahead.is_alive():
                return

            def read():
                with self._check_lock:
                    if not self._released and self._lost is None:
                        self._read_key(ahead=True)
            self._ahead = threading.Thread(target=read, name=f"etcd lock {self.key}: confirmation", daemon=True)
            self._ahead.start()

    def _check_key(self, patience: Optional[float] = None) -> Optional[str]:
        """Why the lock is not ours (None: it is), from one linearizable read of its key, tried
        again for ``patience`` s (a third of the TTL unless given) before "cannot confirm it"."""
        give_up, pause = time.monotonic() + (self.ttl / 3 if patience is None else patience), 0.1
        while True:
            try:
                items = self._checker.get(_bytes(self.key), metadata=True, serializable=False)
                break
            except (gw_errors.Etcd3Exception, requests.RequestException) as e:
                if _token_refused(e):
                    self.etcd._forget_token()
                if time.monotonic() + pause > give_up:
                    return f"{CANNOT_CONFIRM} ({_first_line(e) or type(e).__name__})"
                time.sleep(pause)
                pause = min(pause * 2, 1.0)
        if not items:
            return "the key is gone (deleted or expired)"
        value, meta = items[0]
        if int(meta.get("lease", 0)) != int(self.lease_id) or int(meta.get("create_revision", 0)) != self.revision:
            return f"the key is now held by {describe_holder(_parse_holder(value.decode()))}"
        return None

    def release(self) -> None:
        """Stop the keepalive and revoke the lease, which deletes the key (if it is still ours). Safe to call twice."""
        if self._released:
            return
        self._stop.set()
        self._thread.join()
        self._released = True
        if self._ahead is not None:
            self._ahead.join()  # a read sent ahead: its session is closed next
        for client in (self._lease.client, self._checker):
            client.session.close()
        try:
            self.etcd._revoke(self.lease_id)
        except RemoteError:
            pass  # unreachable now: the lease expires by itself within its TTL

    def _keep_alive(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            stuck = self.stuck()
            if stuck:
                # A hung step must not hold the cluster forever: let the lease run out.
                self._lost = f"stopped renewing it: {stuck} is past its deadline"
                return
            sent = boottime()
            try:
                left = self._lease.refresh()
            except Exception:
                # A blip (tunnel, leader election) is survivable: the lease outlasts
                # two missed refreshes, and the next tick tries again.
                continue
            if left <= 0:
                self._lost = "its lease expired"
                return
            self._renewed = sent


def _ranges(keys, prefixes) -> list:
    """The range requests of a transaction reading ``keys`` and ``prefixes``, in that order."""
    return ([{"request_range": {"key": _b64(_bytes(k))}} for k in keys] +
            [{"request_range": {"key": _b64(_bytes(p) or b"\0"), "range_end": _b64(_prefix_end(p))}} for p in prefixes])


def _read_of(responses: list, keys, prefixes) -> tuple:
    """``read_many``'s answer from the responses of ``_ranges(keys, prefixes)``."""
    keys, prefixes = list(keys), list(prefixes)
    answers = [r.get("response_range", {}).get("kvs", []) for r in responses]
    text = lambda kv: _unb64(kv.get("value", "")).decode()  # the gateway leaves an empty value out
    values = {k: text(kvs[0]) if kvs else None for k, kvs in zip(keys, answers)}
    found = {p: {_unb64(kv["key"]).decode(): text(kv) for kv in kvs} for p, kvs in zip(prefixes, answers[len(keys):])}
    return values, found


def _ahead_or(ahead: Optional[Future], ask: Callable):
    """The answer ``ahead`` brought, when it was asked ahead and answered; else ``ask()`` now (a
    failure ahead is asked again, and said if it fails again)."""
    if ahead is not None:
        try:
            return ahead.result()
        except RemoteError:
            pass
    return ask()


def _started(work: Callable) -> Future:
    """``work()`` run in a thread of its own from now on; its Future."""
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(work())
        except BaseException as e:  # noqa: B036 - handed to whoever asks for the result
            future.set_exception(e)
    threading.Thread(target=run, name="etcd ahead", daemon=True).start()
    return future


def fenced_txn(lock_key: str, revision: int, *requests: dict) -> dict:
    """A transaction applying ``requests`` (none: it only tells whether it would) only while
    ``lock_key`` is the key created at ``revision``. Pure."""
    return {"compare": [{"key": _b64(_bytes(lock_key)), "result": "EQUAL", "target": "CREATE",
                         "create_revision": revision}],
            "success": list(requests), "failure": []}


def _without_token(request):
    """A request's auth that adds nothing: the login's own request."""
    return request


def _token_refused(error: Exception) -> bool:
    return isinstance(error, gw_errors.Etcd3Exception) and _TOKEN_REFUSED in _etcd_message(error)


def _transient(error: Exception, unanswered_too: bool) -> bool:
    if isinstance(error, (gw_errors.ConnectionTimeoutError, requests.Timeout)) and \
            not (isinstance(error, gw_errors.Etcd3Exception) and _etcd_message(error)):
        return unanswered_too
    text = _etcd_message(error) if isinstance(error, gw_errors.Etcd3Exception) else ""
    return any(marker in text for marker in TRANSIENT)


@contextmanager
def tunnel(ex, host: str, remote_port: int = CLIENT_PORT, timeout: float = 5, channels: int = 1) -> Iterator[Etcd]:
    """An ``Etcd`` client of the member on ``host``, through SSH (over the executor's connection)
    to its 127.0.0.1:``remote_port``, logged in as the cluster's root when it has ``etcd_auth``, and
    fenced by the lock the executor's task holds, if any (a promotion asked of the leader, say).

    Nothing listens on this machine: each HTTP connection of the client is its own SSH channel,
    handed to the client as one end of an unnamed socket pair, so no other local user (nor any
    other process) can reach etcd through us, and there is no port or socket file to guard.
    ``channels``: how many are opened at once at the start, for as many connections the client's
    first requests make side by side (``Etcd.log_in_ahead``, say): one round trip for all."""
    def where(at: str) -> str:
        return f"{at} (SSH tunnel to its 127.0.0.1:{remote_port})"
    label = where(host)
    login = etcd_access.root_login(ex.cluster)  # a missing credentials file is said before anything is contacted
    why_not = ex.reachable(host)
    if why_not:
        raise RemoteError(f"etcd at {label}: cannot reach over SSH ({why_not})")
    route = [host]  # where the connections go: ``move`` changes it

    def channel(to: str = None):
        transport = ex.conn(to or route[0]).transport
        return transport.open_channel("direct-tcpip", ("127.0.0.1", remote_port), ("127.0.0.1", 0), timeout=timeout)

    # The channels opened first, kept for the client's first connections (one round trip less each).
    # Opened before anything is sent: "nothing listens there" is then said at once, not after a timeout.
    opening = [_started(channel) for _ in range(max(1, channels))]
    spare, failures = [], []
    for future in opening:
        try:
            spare.append(future.result())
        except (paramiko.SSHException, OSError, EOFError) as e:  # ChannelException is an SSHException
            failures.append(e)
    if failures:
        _close_all(spare)
        # paramiko keeps one refusal per connection, not per channel: of channels refused together,
        # one may say why (ChannelException) and the others only that they did not open.
        first = next((e for e in failures if isinstance(e, paramiko.ChannelException)), failures[0])
        if isinstance(first, paramiko.ChannelException):
            raise RemoteError(f"etcd at {label}: cannot connect there ({first.text}): is etcd running?") from None
        raise RemoteError(f"etcd at {label}: cannot open the tunnel "
                          f"({_first_line(first) or type(first).__name__})") from None

    def opened():
        try:
            return spare.pop()
        except IndexError:
            return channel()

    def connect(_host, _port):
        try:
            return bridged(opened(), timeout)
        except paramiko.ChannelException as e:
            # requests reports an OSError as a failed connection, with this text.
            raise OSError(f"the SSH channel to {where(route[0])} failed ({e.text})") from None
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise OSError(f"the SSH channel to {where(route[0])} failed ({_first_line(e) or type(e).__name__})") from None

    def counted(response, *args, **kwargs):  # a round trip to the member the connections go to now
        ex.trips.count(route[0], "etcd", what=request_of(response), took=took_by(response))
        return response

    client = Etcd("127.0.0.1", remote_port, timeout=timeout, label=label, connect=connect, login=login,
                  counted=counted)
    if ex.fence is not None:  # opened by a task holding the cluster's lock: its changes are fenced by it too
        client.fence, client.fence_held = ex.fence.fence, ex.fence.confirmed_by

    def move(other: str) -> None:
        """From now on, through the member on ``other`` (the one on ``host`` is about to go down):
        the same cluster, the same leases and lock, another way in."""
        try:
            channel(other).close()
        except paramiko.ChannelException as e:
            raise RemoteError(f"etcd at {where(other)}: cannot connect there ({e.text}): is etcd running?") from None
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise RemoteError(f"etcd at {where(other)}: cannot open the tunnel "
                              f"({_first_line(e) or type(e).__name__})") from None
        route[0] = other
        client.label = where(other)
        client.drop_connections()
        _close_all(spare)
    client.move_to = move
    try:
        yield client
    finally:
        client.close()
        _close_all(spare)


def _close_all(channels: list) -> None:
    while channels:
        channels.pop().close()


def _reason(error: gw_errors.Etcd3Exception, timeout: float) -> str:
    """One line from an etcd3gw error: etcd's own message when it sent one."""
    if isinstance(error, gw_errors.ConnectionTimeoutError) and not _etcd_message(error):
        return f"no answer within {timeout:g} s"
    message = _etcd_message(error)
    if message:
        return message
    text = error.detail_text or ""
    if "Connection refused" in text:
        return "connection refused"
    if isinstance(error, gw_errors.ConnectionFailedError):
        return f"cannot connect ({_first_line(text) or 'no detail'})"
    status = " ".join(str(a) for a in error.args) or type(error).__name__
    return f"HTTP {status}: {_first_line(text)}" if text else f"HTTP {status}"


def _etcd_message(error: gw_errors.Etcd3Exception) -> str:
    try:
        body = json.loads(error.detail_text or "")
    except ValueError:
        return ""
    return str(body.get("message") or body.get("error") or "") if isinstance(body, dict) else ""


def _first_line(value) -> str:
    lines = str(value).strip().splitlines()
    return lines[0][:300] if lines else ""


def _bytes(text: str) -> bytes:
    # etcd3gw encodes str as latin-1; bytes pass through, so UTF-8 is chosen here.
    return text.encode() if isinstance(text, str) else bytes(text)


def _prefix_end(prefix: str) -> bytes:
    """The range end covering every key that starts with ``prefix`` (etcd's convention)."""
    data = bytearray(_bytes(prefix))
    while data and data[-1] == 0xFF:
        data.pop()
    if not data:
        return b"\0"  # from the prefix to the end of the key space
    data[-1] += 1
    return bytes(data)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def _range_kv(txn_result: dict) -> Optional[dict]:
    for response in txn_result.get("responses", ()):
        kvs = response.get("response_range", {}).get("kvs")
        if kvs:
            return kvs[0]
    return None


def holder_of(value: Optional[str]) -> Optional[dict]:
    """The holder a lock's key holds (its value read, or None when there is no lock)."""
    return None if value is None else _parse_holder(value)


def _parse_holder(value: str) -> dict:
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = None
    return parsed if isinstance(parsed, dict) else {"value": value}


def describe_holder(holder: dict) -> str:
    """The lock's holder in words, on one line: whatever its record holds (it is read from etcd),
    control characters shown as ``?`` and each field cut at 100 characters."""
    keys = [k for k in HOLDER_FIELDS if k in holder] + sorted(k for k in holder if k not in HOLDER_FIELDS)
    return ", ".join(f"{_printable(k)}={_printable(holder[k])}" for k in keys) or "(no details)"


def _printable(value) -> str:
    text = "".join(ch if ch.isprintable() else "?" for ch in str(value))
    return text if len(text) <= 100 else text[:99] + "…"

"""One client's conversation with the database, free of I/O: the handshake, the principal, its
listeners, and the one router from a JSON-RPC request to a database call and back.

The transport hands a session the frames it reads and sends what the session returns (websockets'
sans-I/O protocol is the model); the embedded backend calls the same session directly, as the
admin, so embedded and served databases check, limit and answer alike (httpx's ASGITransport).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from itertools import islice
from typing import Any

from .accounts import SESSIONS, Accounts, token_key
from .channel import CLOSE_AUTH_FAILED, Records, ServerHandshake
from .config import Limits
from .database import Database
from .errors import (
    InvalidArgumentError, InvalidRequestError, LimitExceededError, MethodNotFoundError, MontybaseError, PermissionDeniedError,
    UnauthenticatedError, UnavailableError,
)
from .logs import Throttle, clip
from .rpc import Call, Rpc, dumps, internal, loads
from .paths import check_key, check_path
from .rules import Principal, dry_run
from .tree import Change
from .watch import Sink, nothing_readable

__all__ = ["CLOSE_SIGNED_OUT", "METHODS", "Reply", "Service", "Session", "Work"]

log = logging.getLogger("montybase.session")

HANDSHAKE = ("hello", "auth")
CLOSE_SIGNED_OUT = 4003  # another connection signed this one's session out; the client resumes, fails, and is signed out


@dataclass(frozen=True, slots=True)
class Reply:
    """What to send for one frame: `text` (None: nothing) once `sync` has returned (a write's
    fsync, which blocks: run it off the event loop); then close with `close` (code, reason)."""

    text: str | None = None
    sync: Callable[[], None] | None = None
    close: tuple[int, str] | None = None


@dataclass(frozen=True, slots=True)
class Work:
    """The requests of one frame: `run()` answers them; `blocking` says that it may take long
    (hashing a password) and belongs off the event loop."""

    run: Callable[[], Reply]
    blocking: bool = False


class Service:
    """What the sessions of one database share: the database, its accounts, the compiled request
    validators, the keys and the limits; `previous` holds old keys a handshake still accepts until
    their time ((kid, key, until epoch seconds): a rotation's grace); `observe`, when set, is told
    of every answered request (server/monitor.py); `throttle` bounds the lines clients cause; and
    which sessions are signed in with which session token."""

    def __init__(
        self, database: Database, *, limits: Limits | None = None, keys: dict[str, str] | None = None,
        server_key: str | None = None,
    ):
        self.database = database
        self.limits = limits or Limits()
        self.keys = {kid: key for kid, key in (keys or {}).items() if key}
        self.server_key = server_key
        self.previous: tuple[tuple[str, str, float], ...] = ()
        self.accounts = Accounts(database, self.limits)
        self.rpc = Rpc((*HANDSHAKE, *METHODS), max_batch=self.limits.maxBatch)
        self.observe: Callable[[Session, Any, dict[str, Any] | None, float], None] | None = None
        self.throttle = Throttle(logging.getLogger("montybase.clients"))
        # A served database's admin views: `status()` its numbers and recent warnings (set by
        # server/monitor.py); `settings` its config file, with `rules()` and `apply_rules(rules)`
        # (set by `montybase serve`). None: an embedded database, which has neither.
        self.status: Callable[[], dict[str, Any]] | None = None
        self.settings: Any = None
        self.sessions: set[Session] = set()  # open network sessions, whose listeners a rules reload re-checks
        self._holders: dict[str, set[Session]] = {}  # a session token's hash → the sessions signed in with it
        self._holding = threading.Lock()  # sign-ins are answered on executor threads
        database.elsewhere.append(self._ended_elsewhere)

    def handshake_keys(self) -> dict[str, tuple[str, ...]]:
        """Each kid's keys a handshake accepts now: its key, then the old ones whose grace lasts."""
        now = time.time()
        keys = {kid: (key,) for kid, key in self.keys.items()}
        for kid, key, until in self.previous:
            if kid in keys and until > now:
                keys[kid] += (key,)
        return keys

    def recheck(self) -> None:
        """After the rules changed: every listener of every client shows what the new rules let it
        read (a fresh full snapshot, or nothing at all), as after a sign-in."""
        for session in list(self.sessions):
            session._rewatch()

    def session(self, deliver: Sink, *, number: int = 0, address: str = "",
                end: Callable[[int, str], None] | None = None) -> Session:
        """A network client's session: anonymous until its handshake proves a key. `end(code,
        reason)` closes its connection."""
        session = Session(self, deliver, None, number=number, address=address, end=end)
        self.sessions.add(session)
        return session

    def admin(self, deliver: Sink) -> Session:
        """The session of the program that owns the database (the embedded backend)."""
        return Session(self, deliver, Principal("admin"))

    def hold(self, session: Session, token: str | None) -> None:
        """Note that `session` is signed in with the session token of hash `token` (None: with none)."""
        with self._holding:
            if session.token is not None:
                holders = self._holders[session.token]
                holders.discard(session)
                if not holders:
                    del self._holders[session.token]
            session.token = token
            if token is not None:
                self._holders.setdefault(token, set()).add(session)

    def holders(self, token: str) -> list[Session]:
        """The sessions signed in with the session token of hash `token`."""
        with self._holding:
            return list(self._holders.get(token, ()))

    def _ended_elsewhere(self, changes: list[Change]) -> None:
        """Another node of a shared storage ended sessions (a sign-out, an account signed out
        everywhere, disabled or deleted): the connections here signed in with them are signed
        out as on that node (CLOSE_SIGNED_OUT). Expired sessions swept there are left alone,
        as that node leaves them."""
        if not self._holders:
            return
        now = time.time()
        for change in changes:
            if change.collection == (SESSIONS,) and change.new is None and change.old is not None and (
                    change.old.get("expires", 0) >= now):
                for holder in self.holders(change.id):
                    holder.signed_out()


class Session:
    """One client: `handshake` frames until `records` is set, then `receive` (remote), or `call`
    (embedded); `notification` builds the frames of its listeners; `close` stops them."""

    def __init__(self, service: Service, deliver: Sink, principal: Principal | None, *, number: int = 0, address: str = "",
                 end: Callable[[int, str], None] | None = None):
        self.service, self.database, self.deliver, self._end = service, service.database, deliver, end
        self.principal = principal
        self._key_role = principal.role if principal is not None else "client"  # the role its key gives (an admin account's sign-in lifts it)
        self.number, self.address = number, address
        self.token: str | None = None  # the hash of the session token signed in with (Service.hold)
        self.records: Records | None = None  # the record keys, once the handshake is done
        self._handshake = ServerHandshake(service.handshake_keys(), service.server_key) if principal is None else None
        self._said_hello = False
        # a listener's tag (the client's id for it) → (the database's subscription, or None while
        # nothing there may be read; its target)
        self._listeners: dict[Any, tuple[int | None, dict[str, Any]]] = {}
        self._subs_text: dict[tuple[Any, ...], str] = {}

    # The handshake (MBSC1, server/channel.py)

    def handshake(self, frame: str | bytes) -> Reply:
        """Answer one handshake frame: `hello`, then `auth`. A refusal says only "authentication
        failed" and closes; the log says why."""
        answered = None
        try:
            if not isinstance(frame, str):
                raise UnauthenticatedError("handshake frames are text")
            messages, batch = self.service.rpc.parse(frame)
            answered = Rpc.request_id(messages[0])
            call = self.service.rpc.call(messages[0])
            expected = "auth" if self._said_hello else "hello"
            if batch or call.method != expected or call.notification:
                raise UnauthenticatedError(f"expected the {expected!r} handshake request, got {call.method[:64]!r}")
            if expected == "hello":
                self._said_hello = True
                return Reply(dumps(Rpc.result(call.id, self._handshake.hello(call.params))))
            result, records = self._handshake.auth(call.params)
        except MontybaseError as exc:  # the reason names no key: only which check failed
            self.service.throttle.log(logging.WARNING, "failed handshake", self.address,
                                      "connection %d from %s refused: %s", self.number, self.address, clip(exc, 200))
            refusal = UnauthenticatedError("authentication failed")
            return Reply(dumps(Rpc.error(answered, refusal)), close=(CLOSE_AUTH_FAILED, "authentication failed"))
        self.records, self.principal = records, Principal(records.role, None, self.number, self.address)
        self._key_role = records.role
        return Reply(dumps(Rpc.result(call.id, result)))

    # Requests

    def receive(self, text: bytes) -> Work:
        """The work one decrypted frame asks for (a request or a batch of them)."""
        limit = self.service.limits.maxMessageBytes
        if len(text) > limit:
            error = LimitExceededError(f"the message is {len(text)} bytes; at most {limit} are allowed",
                                       {"limit": limit, "actual": len(text)})
            return _answered(Rpc.error(_readable_id(text), error))
        try:
            messages, batch = self.service.rpc.parse(text)
        except MontybaseError as exc:
            return _answered(Rpc.error(None, exc))
        blocking = False
        shared = self.database.storage.shared
        for message in messages:
            method = message.get("method") if isinstance(message, dict) else None
            route = METHODS.get(method) if type(method) is str else None  # a list or an object is no key
            blocking = blocking or (route is not None and (route[1] or (shared and method in SHARED_BLOCKING)))
        return Work(partial(self._answer_all, messages, batch), blocking)

    def _answer_all(self, messages: list[Any], batch: bool) -> Reply:
        answers, durable = [], 0
        for message in messages:
            answer, seq = self._answer(message)
            durable = max(durable, seq)
            if answer is not None:
                answers.append(answer)
        text = (f"[{','.join(map(_dumps, answers))}]" if batch else _dumps(answers[0])) if answers else None
        return Reply(text, partial(self.database.wait_durable, durable) if durable else None)

    def _answer(self, message: Any) -> tuple[dict[str, Any] | None, int]:
        if self.service.observe is None:
            return self._run(message)
        started = time.perf_counter()
        answer, seq = self._run(message)
        self.service.observe(self, message, answer, time.perf_counter() - started)
        return answer, seq

    def _run(self, message: Any) -> tuple[dict[str, Any] | None, int]:
        try:
            call: Call = self.service.rpc.call(message)
        except MontybaseError as exc:
            return Rpc.error(Rpc.request_id(message), exc), 0
        if call.notification:  # JSON-RPC: never answered; a write could not be acknowledged
            return None, 0
        try:
            result, seq = _route(call.method)[0](self, call.params)
            return Rpc.result(call.id, result), seq
        except Exception as exc:  # Rpc.error turns anything unexpected into INTERNAL with a log id
            return Rpc.error(call.id, exc), 0

    def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Run one request in this thread (the embedded backend): its result, once durable, or
        the MontybaseError a remote caller would get."""
        route = _route(method)
        self.service.rpc.check(method, params)
        try:
            result, seq = route[0](self, params)
        except MontybaseError:
            raise
        except Exception as exc:  # INTERNAL with a log id, as a remote caller would see it
            raise internal(exc) from None
        if seq:
            self.database.wait_durable(seq)
        return result

    # Methods: each takes the params and returns the result and the journal record to wait for

    def _get(self, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        return self.database.get(params, self.principal)

    def _query(self, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        return self.database.query(params, self.principal)

    def _aggregate(self, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        return self.database.aggregate(params, self.principal)

    def _collections(self, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        return self.database.collections(params, self.principal)

    def _rules_test(self, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """A dry run of the running rules (`montybase rules test`), for an admin."""
        if not self.principal.admin:
            raise PermissionDeniedError("only an admin may test the rules", {"document": []})
        who = params["as"]
        if who == "anonymous" or who == "admin":
            principal = Principal("admin" if who == "admin" else "client")
        elif who.startswith("user:") and len(who) > len("user:"):
            principal = Principal("client", check_key(who[len("user:"):], "/as"))
        else:
            raise InvalidArgumentError(f"/as: anonymous, user:UID or admin, got {who[:64]!r}", {"path": "/as"})
        path = check_path(params["path"])
        database = self.database
        allowed, said = dry_run(database.rules, principal, params["op"], tuple(path), params.get("value"),
                                lambda rule, op, at, value: (database.document(at), len(database.documents(at[:-1]))))
        return {"allow": allowed, "said": said}, 0

    # Admin views: the console's Accounts, Rules and Server

    def _admin_only(self, what: str) -> None:
        if not self.principal.admin:
            raise PermissionDeniedError(f"only an admin may {what}", {"document": []})

    def _accounts_list(self, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        self._admin_only("list accounts")
        return self.service.accounts.find(params.get("search", ""), params.get("after"), params.get("limit", 50)), 0

    def _accounts_sign_out(self, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """End every session of an account, as its own sign-out would: their connections close."""
        return self._change_account(params["email"], "signed out", self.service.accounts.end_sessions), 0

    def _accounts_disable(self, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        return self._change_account(params["email"], "disabled", partial(self.service.accounts.set_disabled, disabled=True)), 0

    def _accounts_enable(self, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        self._change_account(params["email"], "enabled", partial(self.service.accounts.set_disabled, disabled=False))
        return {}, 0

    def _accounts_delete(self, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        return self._change_account(params["email"], "deleted", self.service.accounts.delete), 0

    def _change_account(self, email: str, what: str, change: Callable[[str], list[str]]) -> dict[str, Any]:
        """An admin's change to an account: the connections of the sessions it ended close, and
        a line says who did what to which account. {sessions: how many ended}."""
        self._admin_only("change accounts")
        sessions = self._end_sessions(change(email))
        log.info("connection %d from %s: admin %s account %s (%d sessions ended)", self.number, self.address, what,
                 clip(email, 254), sessions)
        return {"sessions": sessions}

    def _end_sessions(self, tokens: list[str]) -> int:
        """Close the connections signed in with these (ended) sessions; how many sessions they were."""
        for token in tokens:
            for holder in self.service.holders(token):
                if holder is self:
                    self.service.hold(self, None)
                    self._become(None, self._key_role)
                else:
                    holder.signed_out()
        return len(tokens)

    def _served(self, what: str) -> Any:
        settings = self.service.settings
        if settings is None:
            raise UnavailableError(f"{what}: only a served database (montybase serve) has a config file")
        return settings

    def _rules_get(self, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """The rules of the running config, as its file has them."""
        self._admin_only("read the rules")
        return self._served("rulesGet").rules(), 0

    def _rules_apply(self, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """Write new rules to the config file and reload it, as SIGHUP does; bad rules are
        refused (INVALID_ARGUMENT at their field) and the running ones stay."""
        self._admin_only("change the rules")
        result = self._served("rulesApply").apply_rules(params["rules"])
        log.info("connection %d from %s: admin applied new rules (%s kept as %s)", self.number, self.address,
                 result["file"], result["previous"])
        return result, 0

    def _server_status(self, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        self._admin_only("read the server's status")
        if self.service.status is None:
            raise UnavailableError("serverStatus: only a served database has a server")
        return self.service.status(), 0

    def _write(self, params: dict[str, Any], *, op: str) -> tuple[dict[str, Any], int]:
        return self.database.write(op, params, self.principal)

    def _commit(self, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        return self.database.transact(params, self.principal)

    def _subscribe(self, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        self.subscribe({key: params[key] for key in ("path", "query") if key in params}, params["sub"])
        return {"sub": params["sub"]}, 0

    def _unsubscribe(self, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        return {"found": self.unsubscribe(params["sub"])}, 0

    def _key(self) -> Principal:
        """Who the connection's key alone makes it (an admin account's sign-in lifts no limit
        on sign-ups or on guessing other accounts' passwords)."""
        return Principal(self._key_role, None, self.number, self.address)

    def _sign_up(self, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        result = self.service.accounts.sign_up(params, self._key())
        return self._signed_in(result, result["token"]), 0

    def _sign_in(self, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        try:
            result = self.service.accounts.sign_in(params, self._key())
        except MontybaseError as exc:
            self.service.throttle.log(logging.WARNING, "failed sign-in", self.address,
                                      "connection %d from %s: sign-in refused (%s)", self.number, self.address, exc.reason)
            raise
        if result.get("admin"):
            log.info("connection %d from %s signed in as admin %s", self.number, self.address, clip(result["email"], 254))
        return self._signed_in(result, result["token"]), 0

    def _resume(self, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        return self._signed_in(self.service.accounts.resume(params), params["token"]), 0

    def _sign_out(self, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """End the session of `token` everywhere: every other connection that resumed it is
        closed (CLOSE_SIGNED_OUT), so its client learns at once, on resuming, that it is signed out."""
        result = self.service.accounts.sign_out(params)
        if params.get("token") is not None:
            for other in self.service.holders(token_key(params["token"])):
                if other is not self:
                    other.signed_out()
        self.service.hold(self, None)
        self._become(None, self._key_role)
        return result, 0

    def _signed_in(self, result: dict[str, Any], token: str) -> dict[str, Any]:
        self.service.hold(self, token_key(token))
        self._become(result["uid"], "admin" if result.get("admin") else self._key_role)
        return result

    def signed_out(self) -> None:
        """Another session ended this one's session token: no request from here on is the
        user's; the connection closes (one without a connection shows what anyone may read)."""
        self.service.hold(self, None)
        if self._end is None:
            self._become(None, self._key_role)
            return
        self.principal.uid, self.principal.role = None, self._key_role
        self._end(CLOSE_SIGNED_OUT, "signed out")

    # Listeners

    def subscribe(self, target: dict[str, Any], tag: Any) -> None:
        """Listen to {"path": …} or {"query": …}; the session's sink gets its snapshots with `tag`.
        A client key holds at most `limits.maxListeners` on one connection (every listener makes
        every write cost more)."""
        if tag in self._listeners:
            raise InvalidArgumentError(f"/sub: listener {tag} is already in use on this connection", {"path": "/sub"})
        limit = self.service.limits.maxListeners
        if len(self._listeners) >= limit and not self.principal.admin:
            raise LimitExceededError(f"/sub: a connection holds at most {limit} listeners; unsubscribe one first",
                                     {"path": "/sub", "limit": limit, "actual": len(self._listeners) + 1})
        subscription = self.database.watch(target, self.deliver, tag, self.principal)
        self._listeners[tag] = (subscription, target)

    def unsubscribe(self, tag: Any) -> bool:
        """Stop the listener `tag`; False if there was none."""
        found = self._listeners.pop(tag, None)
        return found is not None and (found[0] is None or self.database.unwatch(found[0]))

    def _become(self, uid: str | None, role: str) -> None:
        """After a sign-in or sign-out, every listener shows what the new principal may read."""
        if uid == self.principal.uid and role == self.principal.role:
            return
        self.principal.uid, self.principal.role = uid, role
        self._rewatch()

    def _rewatch(self) -> None:
        """Every listener starts again as the principal may now read: a fresh full snapshot, or
        nothing at all if it may read nothing there."""
        for tag, (subscription, target) in list(self._listeners.items()):
            if subscription is not None:
                self.database.unwatch(subscription)
            try:
                subscription = self.database.watch(target, self.deliver, tag, self.principal)
            except MontybaseError:
                subscription = None
                self.deliver((tag,), nothing_readable(target))
            self._listeners[tag] = (subscription, target)

    def notification(self, pending: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> str:
        """The frame for messages delivered to this session's sink, in order: one notification per
        distinct message, naming every listener it is for (listeners of one query share one)."""
        listeners: dict[int, tuple[dict[str, Any], tuple[Any, ...]]] = {}
        for tags, message in pending:
            found = listeners.get(id(message))
            listeners[id(message)] = (message, tags if found is None else found[1] + tags)
        notifications = [
            f'{{"jsonrpc":"2.0","method":"snapshot","params":{{"subs":{self._subs(tags)},"snapshot":{_encoded(message)}}}}}'
            for message, tags in listeners.values()
        ]
        return notifications[0] if len(notifications) == 1 else "[" + ",".join(notifications) + "]"

    def _subs(self, tags: tuple[Any, ...]) -> str:
        """The JSON of a list of listener ids, kept for the lists this session sends again."""
        text = self._subs_text.get(tags)
        if text is None:
            if len(self._subs_text) >= 64:
                self._subs_text.clear()
            text = self._subs_text[tags] = dumps(tags)
        return text

    def close(self) -> None:
        """Stop every listener of this session."""
        self.service.sessions.discard(self)
        self.service.hold(self, None)
        for subscription, _ in self._listeners.values():
            if subscription is not None:
                self.database.unwatch(subscription)
        self._listeners.clear()


# The one routing table: method → (handler, whether it blocks: password hashing runs off the loop)
METHODS: dict[str, tuple[Callable[[Session, dict[str, Any]], tuple[dict[str, Any], int]], bool]] = {
    "get": (Session._get, False),
    "query": (Session._query, True),  # a scan or an index build takes long: off the loop
    "aggregate": (Session._aggregate, True),
    "collections": (Session._collections, False),
    "rulesTest": (Session._rules_test, False),
    **{op: (partial(Session._write, op=op), False) for op in ("add", "set", "update", "delete")},
    "commit": (Session._commit, False),
    "subscribe": (Session._subscribe, False),
    "unsubscribe": (Session._unsubscribe, False),
    "signUp": (Session._sign_up, True),
    "signIn": (Session._sign_in, True),
    "resume": (Session._resume, False),
    "signOut": (Session._sign_out, False),
    # Admin only: the console's views. What ends sessions runs on the loop, which owns the connections.
    "accountsList": (Session._accounts_list, True),
    "accountsSignOut": (Session._accounts_sign_out, False),
    "accountsDisable": (Session._accounts_disable, False),
    "accountsEnable": (Session._accounts_enable, False),
    "accountsDelete": (Session._accounts_delete, False),
    "rulesGet": (Session._rules_get, False),
    "rulesApply": (Session._rules_apply, False),  # on the loop, as SIGHUP's reload
    "serverStatus": (Session._server_status, False),
}


# On a shared storage (PostgreSQL) these wait for its round trips: off the loop too.
SHARED_BLOCKING = frozenset(("add", "set", "update", "delete", "commit", "resume", "signOut"))


def _route(method: str) -> tuple[Callable[[Session, dict[str, Any]], tuple[dict[str, Any], int]], bool]:
    route = METHODS.get(method)
    if route is None:
        if method in HANDSHAKE:
            raise InvalidRequestError("the handshake is already done")
        raise MethodNotFoundError(f"unknown method {method[:64]!r}")
    return route


# A result's documents beyond this many are encoded this many per call: one dumps of 100,000
# documents holds the GIL, so every other connection, for about 100 ms.
ENCODE_STEP = 500


def _dumps(answer: dict[str, Any]) -> str:
    """dumps(answer), the documents of a large result (a query's docs, a collection's value)
    encoded a slice at a time: the same text."""
    result = answer.get("result")
    if type(result) is dict and len(result) == 1:
        (key, part), = result.items()
        if (type(part) is list or type(part) is dict) and len(part) > ENCODE_STEP:
            shell = dumps({**answer, "result": None})
            if shell.endswith(',"result":null}'):  # the result comes last (Rpc.result)
                return f"{shell[:-5]}{{{dumps(key)}:{_in_steps(part)}}}}}"
    return dumps(answer)


def _in_steps(part: list[Any] | dict[str, Any]) -> str:
    if type(part) is list:
        pieces = (dumps(part[low:low + ENCODE_STEP])[1:-1] for low in range(0, len(part), ENCODE_STEP))
        return f"[{','.join(pieces)}]"
    items = iter(part.items())
    pieces = (dumps(dict(chunk))[1:-1] for chunk in iter(lambda: list(islice(items, ENCODE_STEP)), []))
    return f"{{{','.join(pieces)}}}"


def _answered(answer: dict[str, Any]) -> Work:
    reply = Reply(dumps(answer))
    return Work(lambda: reply)


_recent: dict[int, tuple[dict[str, Any], str]] = {}  # id(message) → (message, its JSON), newest last
_RECENT = 64
_RECENT_CHARS = 16 * 1024 * 1024  # and no more JSON than this: big messages would hold gigabytes
_recent_chars = 0


def _encoded(message: dict[str, Any]) -> str:
    """A message's JSON, encoded once however many sessions it goes to (they flush one after
    another on the loop thread, within a few messages). Holding the message keeps its id unique."""
    global _recent_chars
    found = _recent.get(id(message))
    if found is not None:
        return found[1]
    text = dumps(message)
    _recent[id(message)] = (message, text)
    _recent_chars += len(text)
    while len(_recent) > _RECENT or (_recent_chars > _RECENT_CHARS and len(_recent) > 1):
        _recent_chars -= len(_recent.pop(next(iter(_recent)))[1])
    return text


def _readable_id(text: bytes) -> Any:
    """The id of a refused request, so its caller gets the answer (null if it cannot be read)."""
    try:
        return Rpc.request_id(loads(text))
    except (ValueError, RecursionError):
        return None

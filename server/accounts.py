"""User accounts: sign-up, sign-in, sessions, kept in a store no rule or client path can open.

Accounts live in the tree under reserved collection names (`__accounts__`, `__sessions__`),
which every client-supplied path is refused, and go through the same journaled write path.
Passwords are kept only as scrypt hashes; sessions only as hashes of their tokens. An account
marked `"admin": true` (by `montybase admins add`, never by a client call) gives its sessions the
admin role: the console signs in with it, and never holds the admin key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
import unicodedata
from typing import Any

from .config import Limits
from .database import Database
from .errors import (AlreadyExistsError, InvalidArgumentError, NotFoundError, RateLimitedError, UnauthenticatedError,
                     UnavailableError)
from .paths import check_key, generate_id, lone_surrogate
from .rules import Principal, RateLimiter, parse_rate

__all__ = ["ACCOUNTS", "SESSIONS", "Accounts", "token_key"]

ACCOUNTS = "__accounts__"
SESSIONS = "__sessions__"
SESSION_SECONDS = 30 * 24 * 3600
SWEEP_SECONDS = 3600  # expired sessions are deleted at most this often, with a new session
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
# Failed sign-ins past their allowance space out the next attempts: 1 s, then twice as long
# after each further failure, up to 15 min; failures are forgotten an hour after the last attempt.
DELAY_FIRST, DELAY_MAX, FORGET_SECONDS = 1.0, 900.0, 3600.0


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${_b64(salt)}${_b64(digest)}"


def _verify(password: str, stored: str) -> bool:
    _, n, r, p, salt, digest = stored.split("$")
    salt_bytes = base64.urlsafe_b64decode(salt + "=" * (-len(salt) % 4))
    expected = base64.urlsafe_b64decode(digest + "=" * (-len(digest) % 4))
    actual = hashlib.scrypt(password.encode(), salt=salt_bytes, dklen=len(expected), n=int(n), r=int(r), p=int(p))
    return hmac.compare_digest(actual, expected)


_DUMMY_HASH = hash_password("montybase: no such account")  # unknown emails cost the same time


def _email_key(email: str) -> str:
    """One account per address however it is typed: NFKC folds full-width look-alikes and
    composed/decomposed spellings together, case folding folds case (Unicode's NFKC_Casefold)."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", email).casefold()).strip()


def _credentials(params: dict[str, Any]) -> tuple[str, str]:
    email, password = params.get("email"), params.get("password")
    if isinstance(email, str):
        email = _email_key(email)
    if not isinstance(email, str) or "@" not in email or len(email) > 254:
        raise InvalidArgumentError("/email: not an email address", {"path": "/email"})
    if not isinstance(password, str) or not 8 <= len(password) <= 1024:
        raise InvalidArgumentError("/password: a password has 8 to 1024 characters", {"path": "/password"})
    if lone_surrogate(password):  # hashed as UTF-8, which cannot hold one
        raise InvalidArgumentError("/password: a password holds a lone surrogate, which is not text",
                                   {"path": "/password"})
    return check_key(email, "/email"), password


def token_key(token: Any) -> str:
    """What the store keeps of a session token: its hash."""
    if not isinstance(token, str) or not token:
        raise InvalidArgumentError("/token: a token is a string", {"path": "/token"})
    if lone_surrogate(token):  # hashed as UTF-8, which cannot hold one
        raise InvalidArgumentError("/token: a token holds a lone surrogate, which is not text", {"path": "/token"})
    return hashlib.sha256(token.encode()).hexdigest()


class Accounts:
    """Accounts and sessions of one database, kept through its public write path; sign-ups and
    failed sign-ins with client keys are limited per address (`limits`)."""

    def __init__(self, database: Database, limits: Limits | None = None):
        self.database = database
        self.limits = limits = limits or Limits()
        self._sign_up_rates = (parse_rate(limits.signUps, "/limits/signUps"),
                               parse_rate(limits.signUpsPerAddress, "/limits/signUpsPerAddress"))
        self._sign_ups = RateLimiter()
        # ("account", email, address) or ("address", address) → (failures, monotonic time of the last
        # attempt); an attempt counts as a failure from its start until it succeeds, so concurrent
        # guesses (checked on executor threads) never pass the allowance together.
        self._failures: dict[tuple[str, ...], tuple[int, float]] = {}
        self._lock = threading.Lock()
        self._swept = float("-inf")  # monotonic time of the last sweep of expired sessions

    def _session(self, account: dict[str, Any]) -> dict[str, Any]:
        """A new session of `account`, its sign-in time noted on the account in the same record
        (an update of that one field: an admin's disable meanwhile is kept)."""
        token = secrets.token_urlsafe(32)
        now = time.time()
        session = {"uid": account["uid"], "email": account["email"], "expires": int(now) + SESSION_SECONDS}
        writes = [{"op": "set", "path": [SESSIONS, token_key(token)], "value": session},
                  {"op": "update", "path": [ACCOUNTS, account["email"]], "fields": [["lastSignIn", int(now * 1000)]]},
                  *self._expired(now)]
        self.database.commit(writes, private=True)
        return {**_user(account), "token": token}

    def _expired(self, now: float) -> list[dict[str, Any]]:
        """Deletes of sessions past their expiry, to commit with a new session: once every
        SWEEP_SECONDS, or again at once while more are left than one batch holds."""
        if time.monotonic() - self._swept < SWEEP_SECONDS:
            return []
        room = self.database.max_batch - 2  # beside the new session and its account's sign-in time
        sessions = self.database.documents((SESSIONS,))
        expired = [key for key, session in sessions.items() if session["expires"] < now]
        self._swept = time.monotonic() if len(expired) <= room else float("-inf")
        return [{"op": "delete", "path": [SESSIONS, key]} for key in expired[:room]]

    def sign_up(self, params: dict[str, Any], principal: Principal | None = None) -> dict[str, Any]:
        """A new account, signed in: {uid, email, token}. `principal` None: the database's owner."""
        email, password = _credentials(params)
        if principal is not None and not principal.admin:  # counted before the costly hashing
            (count, seconds), (per_address, per_seconds) = self._sign_up_rates
            buckets = [(("all",), count, seconds), (("address", principal.address), per_address, per_seconds)]
            self._sign_ups.spend(buckets, "sign-ups")
        account = {"uid": generate_id(), "email": email, "hash": hash_password(password), "created": int(time.time() * 1000)}
        try:
            self.database.commit([{"op": "add", "path": [ACCOUNTS, email], "value": account}], private=True)
        except AlreadyExistsError:
            raise AlreadyExistsError("/email: an account with this email exists", {"path": "/email"}) from None
        return self._session(account)

    def sign_in(self, params: dict[str, Any], principal: Principal | None = None) -> dict[str, Any]:
        """A new session of an account: {uid, email, token}. With a client key, failures are
        counted per account and address, and per address: past `limits.signInFailures` (or
        `signInFailuresPerAddress`) each attempt from there waits a growing delay. The owner
        signing in from elsewhere is never delayed by someone else's guesses."""
        email, password = _credentials(params)
        address = None if principal is None or principal.admin else principal.address
        keys = [] if address is None else [("account", email, address), ("address", address)]
        self._attempt(keys)
        account = self._stored((ACCOUNTS, email))
        # The same work and the same answer whether or not the email has an account.
        if not _verify(password, account["hash"] if account else _DUMMY_HASH) or account is None:
            raise UnauthenticatedError("wrong email or password")
        self._succeeded(keys)
        if account.get("disabled"):  # said only to who knows the password
            raise UnauthenticatedError("this account is disabled")
        return self._session(account)

    def _stored(self, path: tuple[str, str]) -> dict[str, Any] | None:
        """A document of the store; on a shared storage, one missing here is looked for again
        after catching up with the other nodes (signed up on another node a moment ago)."""
        found = self.database.document(path)
        if found is None and self.database.storage.shared:
            self.database.refresh()
            found = self.database.document(path)
        return found

    def _attempt(self, keys: list[tuple[str, ...]]) -> None:
        """Count a sign-in attempt as a failure of each key, or raise RATE_LIMITED while one of
        them must still wait; checked and counted under one lock."""
        allowances = {"account": self.limits.signInFailures, "address": self.limits.signInFailuresPerAddress}
        with self._lock:
            now = time.monotonic()
            counts = []
            for key in keys:
                failures, last = self._failures.get(key, (0, now))
                if now - last > FORGET_SECONDS:
                    failures = 0
                over = failures - allowances[key[0]]
                wait = min(DELAY_FIRST * 2 ** min(over, 30), DELAY_MAX) - (now - last) if over >= 0 else 0
                if wait > 0:
                    wait_ms = int(wait * 1000) + 1
                    raise RateLimitedError(f"too many failed sign-ins; retry in {wait_ms} ms", {"retryAfterMs": wait_ms})
                counts.append((key, failures))
            for key, failures in counts:
                self._failures[key] = (failures + 1, now)
            if len(self._failures) > 100_000:
                self._failures = {k: v for k, v in self._failures.items() if v[0] and now - v[1] <= FORGET_SECONDS}

    def _succeeded(self, keys: list[tuple[str, ...]]) -> None:
        """A sign-in succeeded: its account starts afresh from that address; its address gets
        back the failure its attempt was counted as."""
        with self._lock:
            for key in keys:
                if key[0] == "account":
                    self._failures.pop(key, None)
                elif key in self._failures:
                    failures, last = self._failures[key]
                    self._failures[key] = (max(failures - 1, 0), last)

    def resume(self, params: dict[str, Any]) -> dict[str, Any]:
        """The account of a session token: {uid, email}."""
        key = token_key(params.get("token"))
        try:  # on a shared storage: a session ended on another node a moment ago is over here too
            self.database.refresh()
        except UnavailableError:
            pass  # PostgreSQL is down: sessions resume as this node knows them, as reads go on from memory
        session = self.database.document((SESSIONS, key))
        if session is None or session["expires"] < time.time():
            raise UnauthenticatedError("the session is over; sign in again")
        account = self.database.document((ACCOUNTS, session["email"]))
        if account is None or account["uid"] != session["uid"]:  # the account was removed since
            raise UnauthenticatedError("the session is over; sign in again")
        if account.get("disabled"):
            raise UnauthenticatedError("this account is disabled")
        return _user(account)

    # Admin accounts: the operator's commands (server/commands/admins.py), on the storage offline

    def add_admin(self, email: str, password: str) -> tuple[dict[str, Any], bool]:
        """Make `email` an admin account with this password: a new account, or an existing one
        marked admin (its password replaced). The account and whether it was new."""
        email, password = _credentials({"email": email, "password": password})
        account = self.database.document((ACCOUNTS, email))
        created = account is None
        if created:
            account = {"uid": generate_id(), "email": email, "created": int(time.time() * 1000)}
        account = {**account, "hash": hash_password(password), "admin": True}
        self.database.commit([{"op": "set", "path": [ACCOUNTS, email], "value": account}], private=True)
        return _user(account), created

    def admins(self) -> list[dict[str, Any]]:
        """The admin accounts, by email."""
        return [_user(account) for _, account in sorted(self.database.documents((ACCOUNTS,)).items())
                if account.get("admin")]

    def remove_admin(self, email: str) -> bool:
        """`email` is no longer an admin (its account stays, as a user's); False if it was not one."""
        email = _email_key(email)
        account = self.database.document((ACCOUNTS, email))
        if account is None or not account.get("admin"):
            return False
        account = {key: value for key, value in account.items() if key != "admin"}
        self.database.commit([{"op": "set", "path": [ACCOUNTS, email], "value": account}], private=True)
        return True

    # Any account, for an admin (the console's Accounts view, through the session's admin methods)

    def find(self, search: str = "", after: str | None = None, limit: int = 50) -> dict[str, Any]:
        """Accounts whose email holds `search`, in email order after `after`, at most `limit`:
        {accounts: [{uid, email, created, lastSignIn, disabled, admin, sessions}], next}; `next`
        is the email to go on after, or None on the last page."""
        search = _email_key(search)
        accounts = self.database.documents((ACCOUNTS,))
        emails = sorted(email for email in accounts if search in email and (after is None or email > after))
        now = time.time()
        sessions: dict[str, int] = {}
        for session in self.database.documents((SESSIONS,)).values():
            if session["expires"] >= now:
                sessions[session["email"]] = sessions.get(session["email"], 0) + 1
        page = emails[:limit]
        found = [{**_user(accounts[email]), "created": accounts[email].get("created"),
                  "lastSignIn": accounts[email].get("lastSignIn"), "disabled": bool(accounts[email].get("disabled")),
                  "admin": bool(accounts[email].get("admin")), "sessions": sessions.get(email, 0)} for email in page]
        return {"accounts": found, "next": page[-1] if len(emails) > limit else None}

    def _account(self, email: Any) -> tuple[str, dict[str, Any]]:
        """The stored account of `email` (params' /email), or NOT_FOUND."""
        key = _email_key(email) if isinstance(email, str) else ""
        account = self.database.document((ACCOUNTS, key)) if key else None
        if account is None:
            raise NotFoundError(f"/email: no account {str(email)[:254]!r}", {"path": "/email"})
        return key, account

    def _session_deletes(self, email: str) -> list[dict[str, Any]]:
        return [{"op": "delete", "path": [SESSIONS, key]}
                for key, session in self.database.documents((SESSIONS,)).items() if session["email"] == email]

    def _commit_with(self, write: dict[str, Any], deletes: list[dict[str, Any]]) -> None:
        """`write` and the first `deletes` as one record, the rest in records of one batch each
        (an account may hold more sessions than a batch)."""
        room = self.database.max_batch
        self.database.commit([write, *deletes[:room - 1]], private=True)
        for start in range(room - 1, len(deletes), room):
            self.database.commit(deletes[start:start + room], private=True)

    def end_sessions(self, email: Any) -> list[str]:
        """Delete every session of the account of `email`: the hashes of their tokens (whose
        connections the caller closes)."""
        key, _ = self._account(email)
        deletes = self._session_deletes(key)
        if deletes:
            self._commit_with(deletes[0], deletes[1:])
        return [write["path"][1] for write in deletes]

    def set_disabled(self, email: Any, disabled: bool) -> list[str]:
        """Disable an account (it can no longer sign in or resume; its sessions end) or enable it:
        the hashes of the sessions ended. An admin account is refused: `montybase admins remove` first."""
        key, account = self._account(email)
        if disabled and account.get("admin"):
            raise InvalidArgumentError(f"/email: {key} is an admin account; `montybase admins remove` it first",
                                       {"path": "/email"})
        deletes = self._session_deletes(key) if disabled else []
        self._commit_with({"op": "update", "path": [ACCOUNTS, key], "fields": [["disabled", disabled]]}, deletes)
        return [write["path"][1] for write in deletes]

    def delete(self, email: Any) -> list[str]:
        """Delete an account and its sessions: the hashes of the sessions ended. An admin account
        is refused: `montybase admins remove` first."""
        key, account = self._account(email)
        if account.get("admin"):
            raise InvalidArgumentError(f"/email: {key} is an admin account; `montybase admins remove` it first",
                                       {"path": "/email"})
        deletes = self._session_deletes(key)
        self._commit_with({"op": "delete", "path": [ACCOUNTS, key]}, deletes)
        return [write["path"][1] for write in deletes]

    def sign_out(self, params: dict[str, Any]) -> dict[str, Any]:
        """End the session of `token`, if one is given."""
        if params.get("token") is not None:
            self.database.commit([{"op": "delete", "path": [SESSIONS, token_key(params["token"])]}], private=True)
        return {}


def _user(account: dict[str, Any]) -> dict[str, Any]:
    """What a client is told of an account: {uid, email}, and `admin: true` for an admin account."""
    user = {"uid": account["uid"], "email": account["email"]}
    if account.get("admin"):
        user["admin"] = True
    return user

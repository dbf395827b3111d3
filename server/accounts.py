"""User accounts: sign-up, sign-in, sessions, kept in a store no rule or client path can open.

Accounts live in the tree under reserved collection names (`__accounts__`, `__sessions__`),
which every client-supplied path is refused, and go through the same journaled write path.
Passwords are kept only as scrypt hashes; sessions only as hashes of their tokens.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
import unicodedata
from typing import Any

from .database import Database
from .errors import AlreadyExistsError, InvalidArgumentError, RateLimitedError, UnauthenticatedError
from .paths import check_key, generate_id

__all__ = ["ACCOUNTS", "SESSIONS", "Accounts"]

ACCOUNTS = "__accounts__"
SESSIONS = "__sessions__"
SESSION_SECONDS = 30 * 24 * 3600
SWEEP_SECONDS = 3600  # expired sessions are deleted at most this often, with a new session
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
_FAILURES_PER_MINUTE = 10


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
    return check_key(email, "/email"), password


def _token_key(token: Any) -> str:
    if not isinstance(token, str) or not token:
        raise InvalidArgumentError("/token: a token is a string", {"path": "/token"})
    return hashlib.sha256(token.encode()).hexdigest()


class Accounts:
    """Accounts and sessions of one database, kept through its public write path."""

    def __init__(self, database: Database):
        self.database = database
        self._failures: dict[str, list[float]] = {}
        self._swept = float("-inf")  # monotonic time of the last sweep of expired sessions

    def _session(self, account: dict[str, Any]) -> dict[str, Any]:
        token = secrets.token_urlsafe(32)
        now = time.time()
        session = {"uid": account["uid"], "email": account["email"], "expires": int(now) + SESSION_SECONDS}
        writes = [{"op": "set", "path": [SESSIONS, _token_key(token)], "value": session}, *self._expired(now)]
        self.database.commit(writes, private=True)
        return {"uid": account["uid"], "email": account["email"], "token": token}

    def _expired(self, now: float) -> list[dict[str, Any]]:
        """Deletes of sessions past their expiry, to commit with a new session: once every
        SWEEP_SECONDS, or again at once while more are left than one batch holds."""
        if time.monotonic() - self._swept < SWEEP_SECONDS:
            return []
        room = self.database.max_batch - 1
        sessions = self.database.documents((SESSIONS,))
        expired = [key for key, session in sessions.items() if session["expires"] < now]
        self._swept = time.monotonic() if len(expired) <= room else float("-inf")
        return [{"op": "delete", "path": [SESSIONS, key]} for key in expired[:room]]

    def _throttle(self, keys: list[str]) -> None:
        now = time.monotonic()
        for key in keys:
            recent = [t for t in self._failures.get(key, ()) if now - t < 60]
            self._failures[key] = recent
            if len(recent) >= _FAILURES_PER_MINUTE:
                wait_ms = int((60 - (now - recent[0])) * 1000) + 1
                raise RateLimitedError(f"too many failed sign-ins; retry in {wait_ms} ms", {"retryAfterMs": wait_ms})

    def sign_up(self, params: dict[str, Any]) -> dict[str, Any]:
        """A new account, signed in: {uid, email, token}."""
        email, password = _credentials(params)
        account = {"uid": generate_id(), "email": email, "hash": hash_password(password), "created": int(time.time() * 1000)}
        try:
            self.database.commit([{"op": "add", "path": [ACCOUNTS, email], "value": account}], private=True)
        except AlreadyExistsError:
            raise AlreadyExistsError("/email: an account with this email exists", {"path": "/email"}) from None
        return self._session(account)

    def sign_in(self, params: dict[str, Any], address: str) -> dict[str, Any]:
        """A new session of an account: {uid, email, token}; failures are counted per email and address."""
        email, password = _credentials(params)
        keys = [f"email:{email}", f"address:{address}"]
        self._throttle(keys)
        account = self.database.document((ACCOUNTS, email))
        # The same work and the same answer whether or not the email has an account.
        if not _verify(password, account["hash"] if account else _DUMMY_HASH) or account is None:
            now = time.monotonic()
            for key in keys:
                self._failures.setdefault(key, []).append(now)
            if len(self._failures) > 100_000:
                self._failures = {k: v for k, v in self._failures.items() if v and now - v[-1] < 60}
            raise UnauthenticatedError("wrong email or password")
        return self._session(account)

    def resume(self, params: dict[str, Any]) -> dict[str, Any]:
        """The account of a session token: {uid, email}."""
        key = _token_key(params.get("token"))
        session = self.database.document((SESSIONS, key))
        if session is None or session["expires"] < time.time():
            raise UnauthenticatedError("the session is over; sign in again")
        return {"uid": session["uid"], "email": session["email"]}

    def sign_out(self, params: dict[str, Any]) -> dict[str, Any]:
        """End the session of `token`, if one is given."""
        if params.get("token") is not None:
            self.database.commit([{"op": "delete", "path": [SESSIONS, _token_key(params["token"])]}], private=True)
        return {}

"""The MBSC1 secure channel: handshake messages, key schedule and AES-256-GCM records, over bytes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import struct
from collections.abc import Collection, Mapping, Sequence
from functools import lru_cache
from typing import Any, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import UnauthenticatedError

__all__ = [
    "CLOSE_AUTH_FAILED",
    "CLOSE_BAD_RECORD",
    "CLOSE_LIMIT",
    "MAX_BYTES",
    "MAX_RECORDS",
    "SERVER_KEY_MISMATCH",
    "SERVER_KEY_MISMATCH_MESSAGE",
    "ChannelError",
    "ClientHandshake",
    "Keys",
    "ServerHandshake",
    "Records",
    "derive_psk",
    "key_hint",
    "key_schedule",
]

VERSION = 1
MODES = ("psk", "nk")
NONCE_BYTES = 32
POINT_BYTES = 65
MAC_BYTES = 32
HINT_BYTES = 8
TAG_BYTES = 16
C2S, S2C = 0x01, 0x02

CLOSE_AUTH_FAILED = 1008  # failed handshake (after one UNAUTHENTICATED error)
CLOSE_LIMIT = 4000  # record or byte limit reached: reconnect for fresh keys
CLOSE_BAD_RECORD = 4002  # a record failed to open
# The reason of the close a client sends when the server's answer to its hello does not prove the
# key pinned as serverKey: the server logs it (nothing else would tell its operator).
SERVER_KEY_MISMATCH = "serverKey does not match"
SERVER_KEY_MISMATCH_MESSAGE = ("the server's key does not match serverKey: check serverKey in client-config.json "
                               "(the server's montybase.json makes it), and that this is your server's address")

MAX_RECORDS = 2**24  # per direction and session
MAX_BYTES = 2**36  # plaintext bytes per direction and session

_B64URL = re.compile(r"[A-Za-z0-9_-]*")


class ChannelError(UnauthenticatedError):
    """A channel failure. On the wire it is a bare UNAUTHENTICATED (`to_error()` says nothing
    more); `str(exc)` names the failed check for logs; `close_code` is the WebSocket close code."""

    def __init__(self, detail: str, close_code: int = CLOSE_AUTH_FAILED):
        super().__init__("unauthenticated")
        self.detail = detail
        self.close_code = close_code

    def __str__(self) -> str:
        return self.detail


class Keys(NamedTuple):
    """The output of the key schedule."""

    th: bytes
    c2s: bytes
    s2c: bytes
    cfin: bytes
    sfin: bytes


# --- encoding --------------------------------------------------------------------------------


def _b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _b64d(value: Any, length: int, field: str) -> bytes:
    """Strict base64url without padding, of exactly `length` bytes, in its one canonical form."""
    if not isinstance(value, str) or len(value) != (4 * length + 2) // 3 or not _B64URL.fullmatch(value):
        raise ChannelError(f"{field}: not {length} bytes of unpadded base64url")
    raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    if len(raw) != length or _b64e(raw) != value:
        raise ChannelError(f"{field}: not canonical base64url")
    return raw


def _lp(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ChannelError("a transcript field is too long")
    return struct.pack(">H", len(data)) + data


def _fields(params: Any, required: set[str], optional: set[str], what: str) -> Mapping[str, Any]:
    if not isinstance(params, Mapping):
        raise ChannelError(f"{what}: not an object")
    keys = set(params)
    if not required <= keys or not keys <= required | optional:
        raise ChannelError(f"{what}: fields {_shown(sorted(keys))}, expected {sorted(required)} + optional {sorted(optional)}")
    return params


def _shown(value: Any) -> str:
    """A value the peer sent, as a failure names it: its repr, at most 64 characters."""
    text = repr(value)
    return text if len(text) <= 64 else text[:63] + "…"


# --- primitives ------------------------------------------------------------------------------


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def derive_psk(key: str) -> bytes:
    """psk = HKDF-SHA256(IKM = the key string in UTF-8, salt = "", info = "MBSC1 psk", L = 32)."""
    return _hkdf(key.encode("utf-8"), b"", b"MBSC1 psk")


def key_hint(psk: bytes) -> bytes:
    """kh = HMAC-SHA256(psk, "MBSC1 key hint")[0:8]: which of a kid's keys the client holds (the
    old and the new client key while a rotation's grace lasts), without revealing the key."""
    return _mac(psk, b"MBSC1 key hint")[:HINT_BYTES]


def key_schedule(
    mode: str, kid: str, nc: bytes, ns: bytes, ikm: bytes, e_c: bytes = b"", e_s: bytes = b"", s_pub: bytes = b""
) -> Keys:
    """th and the four keys. `ikm` is psk (mode psk) or es ‖ ee ‖ psk (mode nk); the points are
    the 65-byte uncompressed encodings, empty in mode psk."""
    th = hashlib.sha256(
        b"MBSC1"
        + _lp(mode.encode("utf-8"))
        + _lp(kid.encode("utf-8"))
        + _lp(nc)
        + _lp(ns)
        + _lp(e_c)
        + _lp(e_s)
        + _lp(s_pub)
    ).digest()
    salt = nc + ns
    return Keys(
        th,
        _hkdf(ikm, salt, b"MBSC1 c2s key " + th),
        _hkdf(ikm, salt, b"MBSC1 s2c key " + th),
        _hkdf(ikm, salt, b"MBSC1 c finished " + th),
        _hkdf(ikm, salt, b"MBSC1 s finished " + th),
    )


def _mac(key: bytes, th: bytes) -> bytes:
    return hmac.new(key, th, hashlib.sha256).digest()


def _point(private_or_public: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> bytes:
    public = private_or_public.public_key() if isinstance(private_or_public, ec.EllipticCurvePrivateKey) else private_or_public
    return public.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def _load_point(value: Any, field: str) -> tuple[ec.EllipticCurvePublicKey, bytes]:
    raw = _b64d(value, POINT_BYTES, field)
    if raw[0] != 0x04:
        raise ChannelError(f"{field}: not an uncompressed point")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw), raw
    except ValueError:
        raise ChannelError(f"{field}: not a point on P-256") from None


@lru_cache(maxsize=8)
def _load_server_key(server_key: str) -> ec.EllipticCurvePrivateKey:
    try:
        der = base64.urlsafe_b64decode(server_key + "=" * (-len(server_key) % 4))
        private = serialization.load_der_private_key(der, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"serverKey is not a base64url PKCS#8 private key: {exc}") from None
    if not isinstance(private, ec.EllipticCurvePrivateKey) or not isinstance(private.curve, ec.SECP256R1):
        raise ValueError("serverKey is not a P-256 key")
    return private


def _check_ephemeral(ephemeral: ec.EllipticCurvePrivateKey | None) -> ec.EllipticCurvePrivateKey:
    if ephemeral is None:
        return ec.generate_private_key(ec.SECP256R1())
    if not isinstance(ephemeral, ec.EllipticCurvePrivateKey) or not isinstance(ephemeral.curve, ec.SECP256R1):
        raise ValueError("ephemeral must be a P-256 private key")
    return ephemeral


def _check_nonce(nonce: bytes | None) -> bytes:
    if nonce is None:
        return secrets.token_bytes(NONCE_BYTES)
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
        raise ValueError(f"nonce must be {NONCE_BYTES} bytes")
    return nonce


# --- records ---------------------------------------------------------------------------------


class Records:
    """The record layer of one connection: `seal` what you send, `open` what you receive.
    Sequence numbers are implicit and per direction; after any failure every call raises."""

    def __init__(self, *, role: str, th: bytes, send_key: bytes, recv_key: bytes, send_dir: int):
        self.role = role
        self.id = th[:8].hex()
        self._send = AESGCM(send_key)
        self._recv = AESGCM(recv_key)
        self._send_dir = send_dir
        self._recv_dir = S2C if send_dir == C2S else C2S
        self._send_seq = self._recv_seq = 0
        self._send_bytes = self._recv_bytes = 0
        self.max_records = MAX_RECORDS
        self.max_bytes = MAX_BYTES
        self._failed: ChannelError | None = None

    @property
    def closed(self) -> bool:
        return self._failed is not None

    def _fail(self, detail: str, close_code: int) -> ChannelError:
        self._failed = ChannelError(detail, close_code)
        self._send = self._recv = None  # type: ignore[assignment]
        return self._failed

    def _check(self, seq: int, total: int, size: int, direction: str) -> None:
        if self._failed is not None:
            raise ChannelError(f"session is dead after: {self._failed.detail}", self._failed.close_code)
        if seq >= self.max_records:
            raise self._fail(f"{direction}: {self.max_records} records sent in one session", CLOSE_LIMIT)
        if total + size > self.max_bytes:
            raise self._fail(f"{direction}: {self.max_bytes} bytes sent in one session", CLOSE_LIMIT)

    @staticmethod
    def _nonce_aad(direction: int, seq: int) -> tuple[bytes, bytes]:
        counter = struct.pack(">Q", seq)
        return b"\x00\x00\x00\x00" + counter, b"MBSC1 rec" + bytes([direction]) + counter

    def seal(self, plaintext: bytes) -> bytes:
        """The next outgoing record: AES-256-GCM ciphertext ‖ 16-byte tag."""
        plaintext = bytes(plaintext)
        self._check(self._send_seq, self._send_bytes, len(plaintext), "seal")
        nonce, aad = self._nonce_aad(self._send_dir, self._send_seq)
        record = self._send.encrypt(nonce, plaintext, aad)
        self._send_seq += 1
        self._send_bytes += len(plaintext)
        return record

    def open(self, record: bytes) -> bytes:
        """The plaintext of the next incoming record; a record that is altered, replayed,
        reordered, dropped before, or from the other direction raises (close code 4002)."""
        record = bytes(record)
        size = max(len(record) - TAG_BYTES, 0)
        self._check(self._recv_seq, self._recv_bytes, size, "open")
        if len(record) < TAG_BYTES:
            raise self._fail(f"record {self._recv_seq}: shorter than a tag", CLOSE_BAD_RECORD)
        nonce, aad = self._nonce_aad(self._recv_dir, self._recv_seq)
        try:
            plaintext = self._recv.decrypt(nonce, record, aad)
        except InvalidTag:
            raise self._fail(f"record {self._recv_seq}: tag check failed", CLOSE_BAD_RECORD) from None
        self._recv_seq += 1
        self._recv_bytes += size
        return plaintext


# --- handshake -------------------------------------------------------------------------------


class ServerHandshake:
    """One connection's server side: `hello(params)` then `auth(params)`. `keys` maps kid to key
    string, or to a sequence of them (the current key first, then those still accepted; the
    hello's key hint picks one); the role is the kid. `server_key` is the config's base64url
    PKCS#8 P-256 key, needed for mode nk. `nonce` and `ephemeral` are for test vectors only."""

    def __init__(
        self,
        keys: Mapping[str, str | Sequence[str]],
        server_key: str | None = None,
        *,
        modes: Collection[str] = MODES,
        nonce: bytes | None = None,
        ephemeral: ec.EllipticCurvePrivateKey | None = None,
    ):
        listed = {kid: (key,) if isinstance(key, str) or key is None else tuple(key) for kid, key in keys.items()}
        self._keys = {kid: found for kid, found in ((kid, tuple(k for k in ks if k)) for kid, ks in listed.items()) if found}
        self._static = _load_server_key(server_key) if server_key else None
        self._modes = frozenset(modes)
        self._nonce = nonce
        self._ephemeral = ephemeral
        self._state = "hello"
        self._pending: tuple[str, Keys] | None = None

    def _fail(self, detail: str) -> ChannelError:
        self._state = "failed"
        self._pending = None
        return ChannelError(detail)

    def hello(self, params: Any) -> dict[str, Any]:
        """Check the client's hello and answer {ns, [e], smac}."""
        if self._state != "hello":
            raise self._fail(f"hello in state {self._state}")
        self._state = "failed"  # until this step succeeds
        try:
            fields = _fields(params, {"v", "mode", "kid", "nc"}, {"e", "kh"}, "hello")
            version, mode, kid = fields["v"], fields["mode"], fields["kid"]
            if type(version) is not int or version != VERSION:
                raise ChannelError(f"hello: version {_shown(version)}")
            if mode not in MODES or mode not in self._modes:
                raise ChannelError(f"hello: mode {_shown(mode)} not allowed")
            if not isinstance(kid, str) or kid not in self._keys:
                raise ChannelError(f"hello: unknown kid {_shown(kid)}")
            nc = _b64d(fields["nc"], NONCE_BYTES, "hello.nc")
            psk = self._psk(kid, fields.get("kh"))
            ns = _check_nonce(self._nonce)
            result: dict[str, Any] = {"ns": _b64e(ns)}
            if mode == "psk":
                if "e" in fields:
                    raise ChannelError("hello: mode psk with an ephemeral key")
                keys = key_schedule(mode, kid, nc, ns, psk)
            else:
                if self._static is None:
                    raise ChannelError("hello: mode nk but the server has no serverKey")
                if "e" not in fields:
                    raise ChannelError("hello: mode nk without an ephemeral key")
                client_e, e_c = _load_point(fields["e"], "hello.e")
                ephemeral = _check_ephemeral(self._ephemeral)
                self._ephemeral = None
                e_s = _point(ephemeral)
                ikm = self._static.exchange(ec.ECDH(), client_e) + ephemeral.exchange(ec.ECDH(), client_e) + psk
                del ephemeral
                keys = key_schedule(mode, kid, nc, ns, ikm, e_c, e_s, _point(self._static))
                result["e"] = _b64e(e_s)
        except ChannelError as exc:
            raise self._fail(exc.detail) from None
        result["smac"] = _b64e(_mac(keys.sfin, keys.th))
        self._pending = (kid, keys)
        self._state = "auth"
        return result

    def _psk(self, kid: str, hint: Any) -> bytes:
        """The psk of the kid's key the hint names (a client without a hint: the current key)."""
        keys = self._keys[kid]
        if hint is None:
            return derive_psk(keys[0])
        hint = _b64d(hint, HINT_BYTES, "hello.kh")
        for key in keys:
            psk = derive_psk(key)
            if hmac.compare_digest(key_hint(psk), hint):
                return psk
        raise ChannelError(f"hello: the key hint matches no {kid} key (an old key past its grace, or a wrong one)")

    def auth(self, params: Any) -> tuple[dict[str, Any], Records]:
        """Check the client's cmac (constant time); answer {role, session} and the connection's Records."""
        if self._state != "auth" or self._pending is None:
            raise self._fail(f"auth in state {self._state}")
        kid, keys = self._pending
        try:
            fields = _fields(params, {"cmac"}, set(), "auth")
            cmac = _b64d(fields["cmac"], MAC_BYTES, "auth.cmac")
        except ChannelError as exc:
            raise self._fail(exc.detail) from None
        if not hmac.compare_digest(cmac, _mac(keys.cfin, keys.th)):
            raise self._fail(f"auth: cmac does not verify for kid {kid!r}")
        self._state = "done"
        self._pending = None
        session = Records(role=kid, th=keys.th, send_key=keys.s2c, recv_key=keys.c2s, send_dir=S2C)
        return {"role": kid, "session": session.id}, session


class ClientHandshake:
    """One connection's client side: `hello()`, then `finish(result)`, then `confirm(result)`.
    Mode nk iff `server_public` (the pinned base64url 65-byte point) is given; such a client
    accepts nothing else. `nonce` and `ephemeral` are for test vectors only."""

    def __init__(
        self,
        kid: str,
        key: str,
        server_public: str | None = None,
        *,
        nonce: bytes | None = None,
        ephemeral: ec.EllipticCurvePrivateKey | None = None,
    ):
        if not isinstance(kid, str) or not kid or not isinstance(key, str) or not key:
            raise ValueError("kid and key must be non-empty strings")
        self.kid = kid
        self.mode = "nk" if server_public else "psk"
        self._psk = derive_psk(key)
        self._static: ec.EllipticCurvePublicKey | None = None
        self._s_pub = b""
        if server_public:
            try:
                self._static, self._s_pub = _load_point(server_public, "serverKey")
            except ChannelError as exc:
                raise ValueError(f"the pinned serverKey is invalid: {exc.detail}") from None
        self._nc = _check_nonce(nonce)
        self._ephemeral = _check_ephemeral(ephemeral) if self.mode == "nk" else None
        self._state = "hello"
        self._session: Records | None = None

    def _fail(self, detail: str) -> ChannelError:
        self._state = "failed"
        self._ephemeral = None
        self._session = None
        return ChannelError(detail)

    def hello(self) -> dict[str, Any]:
        """The hello params."""
        if self._state != "hello":
            raise self._fail(f"hello in state {self._state}")
        params: dict[str, Any] = {"v": VERSION, "mode": self.mode, "kid": self.kid, "nc": _b64e(self._nc),
                                  "kh": _b64e(key_hint(self._psk))}
        if self._ephemeral is not None:
            params["e"] = _b64e(_point(self._ephemeral))
        self._state = "finish"
        return params

    def finish(self, result: Any) -> tuple[dict[str, Any], Records]:
        """Check the hello result and its smac (constant time); the auth params and the connection's Records."""
        if self._state != "finish":
            raise self._fail(f"finish in state {self._state}")
        try:
            if self.mode == "nk":
                fields = _fields(result, {"ns", "e", "smac"}, set(), "hello result (mode nk)")
            else:
                fields = _fields(result, {"ns", "smac"}, set(), "hello result (mode psk)")
            ns = _b64d(fields["ns"], NONCE_BYTES, "result.ns")
            smac = _b64d(fields["smac"], MAC_BYTES, "result.smac")
            if self.mode == "nk":
                ephemeral, static = self._ephemeral, self._static
                if ephemeral is None or static is None:
                    raise ChannelError("finish: mode nk without keys")
                server_e, e_s = _load_point(fields["e"], "result.e")
                ikm = ephemeral.exchange(ec.ECDH(), static) + ephemeral.exchange(ec.ECDH(), server_e) + self._psk
                e_c = _point(ephemeral)
                self._ephemeral = ephemeral = None
                keys = key_schedule("nk", self.kid, self._nc, ns, ikm, e_c, e_s, self._s_pub)
            else:
                keys = key_schedule("psk", self.kid, self._nc, ns, self._psk)
        except ChannelError as exc:
            raise self._fail(exc.detail) from None
        if not hmac.compare_digest(smac, _mac(keys.sfin, keys.th)):
            raise self._fail(SERVER_KEY_MISMATCH_MESSAGE if self.mode == "nk" else
                             "hello result: smac does not verify (wrong key, or not our server)")
        self._state = "confirm"
        self._session = Records(role=self.kid, th=keys.th, send_key=keys.c2s, recv_key=keys.s2c, send_dir=C2S)
        return {"cmac": _b64e(_mac(keys.cfin, keys.th))}, self._session

    def confirm(self, result: Any) -> None:
        """Check the auth result: our role and our session id."""
        if self._state != "confirm" or self._session is None:
            raise self._fail(f"confirm in state {self._state}")
        try:
            fields = _fields(result, {"role", "session"}, set(), "auth result")
        except ChannelError as exc:
            raise self._fail(exc.detail) from None
        if fields["role"] != self._session.role or fields["session"] != self._session.id:
            raise self._fail(f"auth result: {dict(fields)!r} does not match this session")
        self._state = "done"

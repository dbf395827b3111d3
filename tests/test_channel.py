"""The MBSC1 channel (server/channel.py): every shared vector in tests/cases/channel.json, and
the handshake and record failures the design must refuse."""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from server import channel
from server.channel import ChannelError, ClientHandshake, ServerHandshake, Records, derive_psk, key_hint, key_schedule
from server.config import fresh_keys, public_key
from server.errors import MontybaseError, UnauthenticatedError

CASES_FILE = Path(__file__).parent / "cases" / "channel.json"
VECTORS = json.loads(CASES_FILE.read_text(encoding="utf-8"))
CASES = VECTORS["cases"]
SERVER = VECTORS["server"]


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def load_private(formats: dict | None) -> ec.EllipticCurvePrivateKey | None:
    if formats is None:
        return None
    key = serialization.load_der_private_key(b64d(formats["pkcs8"]), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def vector_handshakes(case: dict) -> tuple[ClientHandshake, ServerHandshake]:
    nk = case["mode"] == "nk"
    client = ClientHandshake(
        case["kid"],
        case["key"],
        SERVER["serverKey"]["public"] if nk else None,
        nonce=bytes.fromhex(case["nc"]),
        ephemeral=load_private(case["clientEphemeral"]),
    )
    server = ServerHandshake(
        SERVER["keys"],
        SERVER["serverKey"]["pkcs8"],
        nonce=bytes.fromhex(case["ns"]),
        ephemeral=load_private(case["serverEphemeral"]),
    )
    return client, server


def vector_sessions(case: dict) -> dict[str, Records]:
    """The two ends of a vector connection, named by the direction they receive."""
    client, server = vector_handshakes(case)
    auth, client_session = client.finish(server.hello(client.hello()))
    _, server_session = server.auth(auth)
    return {"c2s": server_session, "s2c": client_session}


def handshake(kid="client", key="mb-test", *, server_key=None, pin=True, keys=None):
    """A full handshake with fresh randomness; returns (client session, server session, auth result)."""
    keys = keys if keys is not None else {"client": key, "admin": "mba-test"}
    client = ClientHandshake(kid, key, public_key(server_key) if server_key and pin else None)
    server = ServerHandshake(keys, server_key)
    auth, client_session = client.finish(server.hello(client.hello()))
    welcome, server_session = server.auth(auth)
    client.confirm(welcome)
    return client_session, server_session, welcome


@pytest.fixture(scope="module")
def server_key() -> str:
    return fresh_keys()["serverKey"]


# --- the shared vectors ----------------------------------------------------------------------


def test_vector_file_is_what_the_generator_writes():
    spec = importlib.util.spec_from_file_location("make_channel_vectors", Path(__file__).parent / "make_channel_vectors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.render() == CASES_FILE.read_text(encoding="utf-8"), "run python tests/make_channel_vectors.py"


def test_vector_key_formats_agree():
    formats = [SERVER["serverKey"]] + [c[k] for c in CASES for k in ("clientEphemeral", "serverEphemeral") if c[k]]
    assert formats and SERVER["serverKey"]["public"] == public_key(SERVER["serverKey"]["pkcs8"])
    for entry in formats:
        key = load_private(entry)
        jwk = entry["jwk"]
        point = b64d(entry["public"])
        assert (jwk["kty"], jwk["crv"]) == ("EC", "P-256")
        assert b64d(jwk["d"]) == bytes.fromhex(entry["d"]) == key.private_numbers().private_value.to_bytes(32, "big")
        assert point == b"\x04" + b64d(jwk["x"]) + b64d(jwk["y"])
        assert point == key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_vector_key_schedule(case):
    expected = {k: bytes.fromhex(v) if v is not None and k != "session" else v for k, v in case["expected"].items()}
    nc, ns = bytes.fromhex(case["nc"]), bytes.fromhex(case["ns"])
    psk = derive_psk(case["key"])
    assert psk == expected["psk"]
    points: tuple[bytes, ...] = ()
    if case["mode"] == "nk":
        e_c, e_s = load_private(case["clientEphemeral"]), load_private(case["serverEphemeral"])
        static = load_private(SERVER["serverKey"])
        assert e_c.exchange(ec.ECDH(), static.public_key()) == expected["es"]
        assert e_c.exchange(ec.ECDH(), e_s.public_key()) == expected["ee"]
        points = tuple(b64d(k["public"]) for k in (case["clientEphemeral"], case["serverEphemeral"], SERVER["serverKey"]))
    else:
        assert expected["es"] is None and expected["ee"] is None
        assert expected["ikm"] == psk
    keys = key_schedule(case["mode"], case["kid"], nc, ns, expected["ikm"], *points)
    assert hashlib.sha256(expected["transcript"]).digest() == keys.th == expected["th"]
    assert list(keys[1:]) == [expected[name] for name in ("k_c2s", "k_s2c", "k_cfin", "k_sfin")]
    assert hmac.new(keys.sfin, keys.th, "sha256").digest() == expected["smac"]
    assert hmac.new(keys.cfin, keys.th, "sha256").digest() == expected["cmac"]
    assert keys.th[:8].hex() == expected["session"]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_vector_handshake_messages(case):
    client, server = vector_handshakes(case)
    hello = client.hello()
    assert hello == case["hello"]
    result = server.hello(hello)
    assert result == case["helloResult"]
    auth, client_session = client.finish(result)
    assert auth == case["auth"]
    welcome, server_session = server.auth(auth)
    assert welcome == case["authResult"]
    client.confirm(welcome)
    assert client_session.id == server_session.id == case["expected"]["session"]
    assert client_session.role == server_session.role == case["kid"]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_vector_records(case):
    ends = vector_sessions(case)
    sender = {"c2s": ends["s2c"], "s2c": ends["c2s"]}  # the client sends c2s, the server s2c
    for direction in ("c2s", "s2c"):
        for entry in case["records"][direction]:
            plaintext, record = bytes.fromhex(entry["plaintext"]), bytes.fromhex(entry["record"])
            assert sender[direction].seal(plaintext) == record
            assert ends[direction].open(record) == plaintext


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_vector_bad_streams(case):
    for bad in case["badStreams"]:
        receiver = vector_sessions(case)[bad["receiver"]]
        for index, hex_record in enumerate(bad["stream"]):
            record = bytes.fromhex(hex_record)
            if index < bad["failsAt"]:
                receiver.open(record)
                continue
            with pytest.raises(ChannelError) as caught:
                receiver.open(record)
            assert caught.value.close_code == channel.CLOSE_BAD_RECORD, bad["name"]
        assert receiver.closed, bad["name"]
        with pytest.raises(ChannelError):
            receiver.seal(b"{}")


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_vector_bad_results_are_refused_by_the_client(case):
    for bad in case["badResults"]:
        client, _ = vector_handshakes(case)
        client.hello()
        with pytest.raises(ChannelError) as caught:
            client.finish(bad["result"])
        assert caught.value.close_code == channel.CLOSE_AUTH_FAILED, bad["name"]
        with pytest.raises(ChannelError):  # and the handshake stays failed
            client.finish(case["helloResult"])


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_vector_bad_auths_are_refused_by_the_server(case):
    for bad in case["badAuths"]:
        _, server = vector_handshakes(case)
        server.hello(case["hello"])
        with pytest.raises(ChannelError):
            server.auth(bad["params"])
        with pytest.raises(ChannelError):  # no second try on the same connection
            server.auth(case["auth"])


@pytest.mark.parametrize("bad", VECTORS["badHellos"], ids=[b["name"] for b in VECTORS["badHellos"]])
def test_vector_bad_hellos_are_refused_by_the_server(bad):
    server = ServerHandshake(SERVER["keys"], SERVER["serverKey"]["pkcs8"])
    with pytest.raises(ChannelError):
        server.hello(bad["params"])
    with pytest.raises(ChannelError):
        server.auth({"cmac": b64e(bytes(32))})


def test_vector_limits_match_the_module():
    assert VECTORS["limits"] == {"records": channel.MAX_RECORDS, "bytes": channel.MAX_BYTES}


# --- handshake -------------------------------------------------------------------------------


@pytest.mark.parametrize("kid", ["client", "admin"])
@pytest.mark.parametrize("mode", ["psk", "nk"])
def test_round_trip(server_key, mode, kid):
    keys = {"client": "mb-" + "x" * 32, "admin": "mba-" + "y" * 43}
    client_session, server_session, welcome = handshake(
        kid, keys[kid], server_key=server_key, pin=mode == "nk", keys=keys
    )
    assert welcome == {"role": kid, "session": server_session.id}
    assert client_session.role == server_session.role == kid
    for text in (b'{"jsonrpc":"2.0","id":1,"method":"get"}', b"", "Grüße".encode() * 1000):
        assert server_session.open(client_session.seal(text)) == text
        assert client_session.open(server_session.seal(text)) == text


def test_fresh_keys_per_connection(server_key):
    a_client, a_server, _ = handshake(server_key=server_key)
    b_client, b_server, _ = handshake(server_key=server_key)
    assert a_client.id != b_client.id
    with pytest.raises(ChannelError):
        b_server.open(a_client.seal(b"{}"))


def test_hello_shapes(server_key):
    psk = ClientHandshake("client", "mb-k").hello()
    assert set(psk) == {"v", "mode", "kid", "nc", "kh"} and psk["mode"] == "psk" and len(b64d(psk["nc"])) == 32
    assert b64d(psk["kh"]) == key_hint(derive_psk("mb-k"))
    nk = ClientHandshake("client", "mb-k", public_key(server_key)).hello()
    assert nk["mode"] == "nk" and b64d(nk["e"])[0] == 4 and len(b64d(nk["e"])) == 65
    result = ServerHandshake({"client": "mb-k"}, server_key).hello(nk)
    assert set(result) == {"ns", "e", "smac"}
    assert set(ServerHandshake({"client": "mb-k"}, server_key).hello(psk)) == {"ns", "smac"}


def without_hint(hello: dict) -> dict:
    """A hello as a client without key hints sends it: the server answers with its current key."""
    return {k: v for k, v in hello.items() if k != "kh"}


def test_wrong_key_is_refused_at_hello_by_its_key_hint():
    with pytest.raises(ChannelError, match="key hint matches no client key"):
        ServerHandshake({"client": "mb-right"}).hello(ClientHandshake("client", "mb-wrong").hello())


def test_a_key_hint_picks_the_listed_key_the_client_holds():
    server_keys = {"client": ["mb-new", "mb-old"], "admin": "mba-admin"}
    for key in ("mb-new", "mb-old"):
        client_side, server_side, _ = handshake("client", key, keys=server_keys)
        assert server_side.open(client_side.seal(b"{}")) == b"{}"
    with pytest.raises(ChannelError, match="key hint"):
        ServerHandshake({"client": ["mb-new"]}).hello(ClientHandshake("client", "mb-old").hello())


def test_a_hello_without_a_key_hint_uses_the_current_key():
    client = ClientHandshake("client", "mb-old")
    result = ServerHandshake({"client": ["mb-new", "mb-old"]}).hello(without_hint(client.hello()))
    with pytest.raises(ChannelError, match="smac"):
        client.finish(result)


def test_a_key_hint_of_the_wrong_length_is_refused():
    hello = ClientHandshake("client", "mb-k").hello()
    with pytest.raises(ChannelError, match="kh"):
        ServerHandshake({"client": "mb-k"}).hello({**hello, "kh": b64e(bytes(7))})


def test_wrong_key_client_refuses_the_smac():
    client = ClientHandshake("client", "mb-wrong")
    server = ServerHandshake({"client": "mb-right"})
    result = server.hello(without_hint(client.hello()))
    with pytest.raises(ChannelError, match="smac"):
        client.finish(result)


@pytest.mark.parametrize("mode", ["psk", "nk"])
def test_wrong_key_server_refuses_the_cmac(server_key, mode):
    """A client holding the wrong key that ignores the bad smac and sends its cmac anyway."""
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    server_public = public_key(server_key) if mode == "nk" else None
    hello = without_hint(ClientHandshake("client", "mb-wrong", server_public, ephemeral=ephemeral).hello())
    server = ServerHandshake({"client": "mb-right"}, server_key)
    result = server.hello(hello)
    ikm = derive_psk("mb-wrong")
    points: tuple[bytes, ...] = ()
    if mode == "nk":
        static = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b64d(server_public))
        server_e = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b64d(result["e"]))
        ikm = ephemeral.exchange(ec.ECDH(), static) + ephemeral.exchange(ec.ECDH(), server_e) + ikm
        points = (b64d(hello["e"]), b64d(result["e"]), b64d(server_public))
    keys = key_schedule(mode, "client", b64d(hello["nc"]), b64d(result["ns"]), ikm, *points)
    assert hmac.new(keys.sfin, keys.th, "sha256").digest() != b64d(result["smac"])
    with pytest.raises(ChannelError, match="cmac"):
        server.auth({"cmac": b64e(hmac.new(keys.cfin, keys.th, "sha256").digest())})


def test_unknown_or_unconfigured_kid_is_refused():
    with pytest.raises(ChannelError, match="kid"):
        ServerHandshake({"client": "mb-k"}).hello(ClientHandshake("admin", "mba-k").hello())
    with pytest.raises(ChannelError, match="kid"):
        ServerHandshake({"client": "mb-k", "admin": None}).hello(ClientHandshake("admin", "mba-k").hello())
    with pytest.raises(ChannelError, match="kid"):
        ServerHandshake({"client": "mb-k"}).hello({"v": 1, "mode": "psk", "kid": 7, "nc": b64e(bytes(32))})


def test_nk_without_a_server_key_is_refused(server_key):
    hello = ClientHandshake("client", "mb-k", public_key(server_key)).hello()
    with pytest.raises(ChannelError, match="serverKey"):
        ServerHandshake({"client": "mb-k"}, None).hello(hello)


def test_server_can_require_nk(server_key):
    server = ServerHandshake({"client": "mb-k"}, server_key, modes=("nk",))
    with pytest.raises(ChannelError, match="mode"):
        server.hello(ClientHandshake("client", "mb-k").hello())


def test_downgrade_to_psk_is_refused(server_key):
    """An attacker who knows the (public) client key answers an nk hello as a psk server would."""
    pinned = ClientHandshake("client", "mb-k", public_key(server_key))
    hello = pinned.hello()
    psk_hello = {k: v for k, v in hello.items() if k != "e"} | {"mode": "psk"}
    psk_result = ServerHandshake({"client": "mb-k"}).hello(psk_hello)
    with pytest.raises(ChannelError, match="mode nk"):
        pinned.finish(psk_result)


def test_psk_client_refuses_an_nk_result(server_key):
    nk_result = ServerHandshake({"client": "mb-k"}, server_key).hello(
        ClientHandshake("client", "mb-k", public_key(server_key)).hello()
    )
    client = ClientHandshake("client", "mb-k")
    client.hello()
    with pytest.raises(ChannelError, match="mode psk"):
        client.finish(nk_result)


def test_mitm_with_its_own_static_key_is_refused(server_key):
    """A server without the pinned static key cannot produce a valid smac, even knowing the psk."""
    pinned = ClientHandshake("client", "mb-k", public_key(server_key))
    impostor = ServerHandshake({"client": "mb-k"}, fresh_keys()["serverKey"])
    with pytest.raises(ChannelError, match="the server.s key does not match serverKey"):
        pinned.finish(impostor.hello(pinned.hello()))


def test_bad_ephemeral_keys_are_refused(server_key):
    server_public = public_key(server_key)
    good = ClientHandshake("client", "mb-k", server_public).hello()
    point = b64d(good["e"])
    off_curve = point[:-1] + bytes([point[-1] ^ 1])
    for e in (b64e(off_curve), b64e(point[:64]), b64e(point + b"\0"), b64e(b"\x05" + point[1:]), 42, None):
        with pytest.raises(ChannelError):
            ServerHandshake({"client": "mb-k"}, server_key).hello({**good, "e": e})
    # and a pinned server key that is not a valid point is a configuration error
    with pytest.raises(ValueError):
        ClientHandshake("client", "mb-k", b64e(off_curve))


def test_handshake_order_is_enforced(server_key):
    server = ServerHandshake({"client": "mb-k"})
    with pytest.raises(ChannelError):
        server.auth({"cmac": b64e(bytes(32))})
    with pytest.raises(ChannelError):  # failed for good
        server.hello(ClientHandshake("client", "mb-k").hello())
    client = ClientHandshake("client", "mb-k")
    with pytest.raises(ChannelError):
        client.finish({"ns": b64e(bytes(32)), "smac": b64e(bytes(32))})
    server = ServerHandshake({"client": "mb-k"})
    client = ClientHandshake("client", "mb-k")
    hello = client.hello()
    server.hello(hello)
    with pytest.raises(ChannelError):
        server.hello(hello)


def test_confirm_checks_role_and_session():
    client = ClientHandshake("client", "mb-k")
    server = ServerHandshake({"client": "mb-k"})
    _, session = client.finish(server.hello(client.hello()))
    with pytest.raises(ChannelError):
        client.confirm({"role": "admin", "session": session.id})
    client = ClientHandshake("client", "mb-k")
    server = ServerHandshake({"client": "mb-k"})
    auth, session = client.finish(server.hello(client.hello()))
    welcome, _ = server.auth(auth)
    client.confirm(welcome)


def test_errors_say_nothing_on_the_wire_but_name_the_check_in_logs():
    server = ServerHandshake({"client": "mb-k"})
    with pytest.raises(UnauthenticatedError) as caught:
        server.hello({"v": 1, "mode": "psk", "kid": "nobody", "nc": b64e(bytes(32))})
    error = caught.value
    assert isinstance(error, MontybaseError) and error.close_code == 1008
    assert "kid" in str(error)
    assert error.to_error() == {"code": -32000, "message": "unauthenticated", "data": {"reason": "UNAUTHENTICATED"}}


def test_injected_values_are_checked():
    with pytest.raises(ValueError):
        ClientHandshake("client", "mb-k", nonce=bytes(31))
    with pytest.raises(ValueError):
        ClientHandshake("client", "", None)
    with pytest.raises(ValueError):
        ServerHandshake({"client": "mb-k"}, "not a key")


# --- records ---------------------------------------------------------------------------------


def test_replayed_altered_reordered_and_reflected_records_are_refused():
    def pair():
        client, server, _ = handshake()
        return client, server

    client, server = pair()
    first = client.seal(b"one")
    server.open(first)
    with pytest.raises(ChannelError):
        server.open(first)  # replay

    client, server = pair()
    first, second = client.seal(b"one"), client.seal(b"two")
    with pytest.raises(ChannelError):
        server.open(second)  # reordered

    client, server = pair()
    record = bytearray(client.seal(b"one"))
    record[0] ^= 0x80
    with pytest.raises(ChannelError):
        server.open(bytes(record))  # altered

    client, server = pair()
    with pytest.raises(ChannelError):
        client.open(client.seal(b"one"))  # reflected back to its sender

    client, server = pair()
    with pytest.raises(ChannelError):
        server.open(b"")


def test_session_is_dead_after_a_failure():
    client, server, _ = handshake()
    good = [client.seal(b"%d" % i) for i in range(3)]
    with pytest.raises(ChannelError) as caught:
        server.open(good[0][:-1] + bytes([good[0][-1] ^ 1]))
    assert caught.value.close_code == channel.CLOSE_BAD_RECORD
    for record in good:
        with pytest.raises(ChannelError) as again:
            server.open(record)
        assert again.value.close_code == channel.CLOSE_BAD_RECORD
    with pytest.raises(ChannelError):
        server.seal(b"{}")
    assert server.closed and not client.closed


def test_record_limit():
    client, server, _ = handshake()
    client.max_records = server.max_records = 2
    records = [client.seal(b"a"), client.seal(b"b")]
    with pytest.raises(ChannelError) as caught:
        client.seal(b"c")
    assert caught.value.close_code == channel.CLOSE_LIMIT
    with pytest.raises(ChannelError):
        client.seal(b"c")  # stays dead
    assert [server.open(r) for r in records] == [b"a", b"b"]
    with pytest.raises(ChannelError) as caught:
        server.open(records[0])
    assert caught.value.close_code == channel.CLOSE_LIMIT


def test_byte_limit():
    client, server, _ = handshake()
    client.max_bytes = server.max_bytes = 10
    first = client.seal(b"x" * 6)
    with pytest.raises(ChannelError) as caught:
        client.seal(b"x" * 5)
    assert caught.value.close_code == channel.CLOSE_LIMIT

    client2, server2, _ = handshake()
    server2.max_bytes = 10
    server2.open(client2.seal(b"x" * 10))
    with pytest.raises(ChannelError) as caught:
        server2.open(client2.seal(b"x"))
    assert caught.value.close_code == channel.CLOSE_LIMIT
    assert server.open(first) == b"x" * 6


"""montybase.json: defaults, first-run creation, validation (server/config.py)."""

from __future__ import annotations

import json
import stat
from dataclasses import fields
from pathlib import Path

import pytest

from server.config import Limits, client_config, client_endpoint, load_config, write_client_config
from server.errors import InvalidArgumentError
from server.schemas import load_schema


def test_first_use_creates_both_files_with_fresh_keys(tmp_path):
    config, created = load_config(tmp_path / "montybase.json")
    assert created and config["apiKey"].startswith("mb-") and config["adminKey"].startswith("mba-")
    client = json.loads((tmp_path / "client-config.json").read_text())
    assert client["apiKey"] == config["apiKey"] and client["endpoint"] == "ws://127.0.0.1:8765"
    assert "adminKey" not in client and client["serverKey"] != config["serverKey"]
    again, created = load_config(tmp_path / "montybase.json")
    assert not created and again == config
    other, _ = load_config(tmp_path / "other" / "montybase.json")
    assert other["apiKey"] != config["apiKey"]


def test_a_fresh_config_is_readable_by_its_owner_only(tmp_path):
    load_config(tmp_path / "montybase.json")
    assert stat.S_IMODE((tmp_path / "montybase.json").stat().st_mode) == 0o600  # the admin key, the private key
    assert stat.S_IMODE((tmp_path / "client-config.json").stat().st_mode) & 0o044  # public by design


def test_client_config_never_carries_secrets(tmp_path):
    config, _ = load_config(tmp_path / "montybase.json")
    client = client_config(config, "wss://example.org")
    assert set(client) == {"projectName", "apiKey", "endpoint", "serverKey"}
    assert config["adminKey"] not in json.dumps(client)


@pytest.mark.parametrize(
    "field,value",
    [("storageMinCount", 0), ("storageUpdate", "soon"), ("hot", "yes"), ("port", 70000), ("apiKey", "secret"), ("typo", 1)],
)
def test_a_bad_field_is_named_in_one_line(tmp_path, field, value):
    path = tmp_path / "montybase.json"
    path.write_text(json.dumps({field: value}))
    with pytest.raises(InvalidArgumentError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    assert field in message or repr(field) in message


def test_invalid_json_is_refused(tmp_path):
    path = tmp_path / "montybase.json"
    path.write_text("{not json")
    with pytest.raises(InvalidArgumentError, match="not valid JSON"):
        load_config(path)


@pytest.mark.parametrize("server_key", ["not base64 at all!", "AAAA", "MHcCAQEEIA"], ids=["garbage", "short", "cut"])
def test_a_bad_server_key_is_one_line_naming_the_field(tmp_path, server_key):
    config, _ = load_config(tmp_path / "montybase.json")
    path = tmp_path / "montybase.json"
    path.write_text(json.dumps({**config, "serverKey": server_key}))
    with pytest.raises(InvalidArgumentError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and "serverKey" in message
    assert caught.value.data["path"] == "/serverKey"


def test_a_server_key_on_another_curve_is_refused(tmp_path):
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    der = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    config, _ = load_config(tmp_path / "montybase.json")
    path = tmp_path / "montybase.json"
    path.write_text(json.dumps({**config, "serverKey": base64.urlsafe_b64encode(der).decode().rstrip("=")}))
    with pytest.raises(InvalidArgumentError, match="serverKey: not a P-256"):
        load_config(path)


def test_a_bad_field_names_a_json_pointer_in_data(tmp_path):
    path = tmp_path / "montybase.json"
    path.write_text(json.dumps({"limits": {"maxMessageBytes": "x"}}))
    with pytest.raises(InvalidArgumentError) as caught:
        load_config(path)
    assert caught.value.data["path"] == "/limits/maxMessageBytes"


def test_trusted_proxies_that_are_no_address_or_network_are_named_at_start(tmp_path):
    config, _ = load_config(tmp_path / "montybase.json")
    path = tmp_path / "montybase.json"
    path.write_text(json.dumps({**config, "trustedProxies": ["127.0.0.1", "10.0.0.0/8", "::1", "proxy.example"]}))
    with pytest.raises(InvalidArgumentError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and "'proxy.example'" in message
    assert caught.value.data["path"] == "/trustedProxies/3"


@pytest.mark.parametrize("field,value", [
    ("signUps", "0/min"), ("signUpsPerAddress", "10 per minute"), ("signInFailures", 0), ("maxListeners", 0),
    ("maxOutgoingBytes", 10), ("maxOutgoingBytesTotal", "1 GB"), ("maxUnauthenticatedPerAddress", 0),
])
def test_a_bad_limit_is_named_at_start(tmp_path, field, value):
    path = tmp_path / "montybase.json"
    path.write_text(json.dumps({"limits": {field: value}}))
    with pytest.raises(InvalidArgumentError) as caught:
        load_config(path)
    assert caught.value.data["path"] == f"/limits/{field}"


def test_every_limit_has_its_literal_default_in_the_schema_and_the_readme():
    """One place for the limits (Limits), described alike in schemas/config.json and the README."""
    schema = load_schema("config")["properties"]["limits"]["properties"]
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    for field in fields(Limits):
        default = field.default
        assert field.name in schema, field.name
        shown = json.dumps(default) if not isinstance(default, float) else f"{default:g}"
        assert f"(default {shown})" in schema[field.name]["description"], field.name
        assert f"| `{field.name}` | {shown} |" in readme, field.name


@pytest.mark.parametrize(
    "served,public,expected",
    [("ws://127.0.0.1:9000", None, "ws://127.0.0.1:9000"), ("ws://0.0.0.0:9000", None, "ws://127.0.0.1:9000"),
     ("wss://[::]:9000", None, "wss://[::1]:9000"), ("ws://example.org:9000", None, "ws://example.org:9000"),
     ("ws://0.0.0.0:9000", "wss://example.org", "wss://example.org")],
    ids=["loopback", "wildcard", "ipv6-wildcard", "named", "public-endpoint"],
)
def test_apps_get_an_endpoint_they_can_connect_to(served, public, expected):
    config = {"publicEndpoint": public} if public else {}
    assert client_endpoint(config, served) == expected


def test_the_client_config_follows_the_server_and_keeps_fields_of_your_own(tmp_path):
    config, _ = load_config(tmp_path / "montybase.json")
    path = tmp_path / "client-config.json"
    assert write_client_config(config, tmp_path / "montybase.json", "ws://127.0.0.1:8765") == (path, False)

    path.write_text(json.dumps({**json.loads(path.read_text()), "endpoint": "ws://127.0.0.1:1", "theme": "dark"}))
    assert write_client_config(config, tmp_path / "montybase.json", "ws://127.0.0.1:9000") == (path, True)
    assert json.loads(path.read_text()) == {**client_config(config, "ws://127.0.0.1:9000"), "theme": "dark"}
    assert write_client_config(config, tmp_path / "montybase.json", "ws://127.0.0.1:9000") == (path, False)

    path.unlink()
    assert write_client_config(config, tmp_path / "montybase.json", "ws://127.0.0.1:9000") == (path, True)
    assert json.loads(path.read_text()) == client_config(config, "ws://127.0.0.1:9000")

    without_key = {k: v for k, v in config.items() if k != "serverKey"}  # no key pair: nothing to pin
    write_client_config(without_key, tmp_path / "montybase.json", "ws://127.0.0.1:9000")
    assert "serverKey" not in json.loads(path.read_text())
    path.write_text("{broken")
    assert write_client_config(config, tmp_path / "montybase.json", "ws://127.0.0.1:9000") == (path, True)
    assert json.loads(path.read_text())["endpoint"] == "ws://127.0.0.1:9000"

"""montybase.json: defaults, first-run creation, validation (server/config.py)."""

from __future__ import annotations

import json

import pytest

from server.config import client_config, load_config
from server.errors import InvalidArgumentError


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

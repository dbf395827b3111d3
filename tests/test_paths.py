"""Segment rules and generated ids (server/paths.py)."""

from __future__ import annotations

import os
import time

import pytest

from server import paths
from server.errors import InvalidArgumentError, LimitExceededError
from server.paths import ID_ALPHABET, advance_id_clock, check_key, check_path, field_path, generate_id, pointer


@pytest.mark.parametrize("key", ["users", "amor.budiyanto@gmail.com", "a b", "ünïcødé", "x" * 128, "_x_", "__x", "constructor"])
def test_valid_keys_pass(key):
    assert check_key(key) == key


@pytest.mark.parametrize(
    "key,problem",
    [("", "empty"), (".", "'.'"), ("..", "'.'"), ("$x", "'$'"), ("__proto__", "__name__"), ("a/b", "'/'"),
     ("a\x7fb", "control"), ("a\x85b", "control"), (5, "must be a string")],
)
def test_invalid_keys_say_what_is_wrong(key, problem):
    with pytest.raises(InvalidArgumentError) as caught:
        check_key(key, "where")
    assert problem in str(caught.value) and caught.value.data == {"path": "where"}


def test_a_key_over_128_utf8_bytes_is_a_size_limit():
    with pytest.raises(LimitExceededError) as caught:
        check_key("é" * 65, "where")
    assert caught.value.data == {"path": "where", "limit": 128, "actual": 130} and "128 UTF-8 bytes" in str(caught.value)


def test_check_path_names_the_bad_segment():
    with pytest.raises(InvalidArgumentError) as caught:
        check_path(["users", "ok", "$bad"])
    assert caught.value.data["path"] == "/path/2" and str(caught.value).startswith("/path/2: ")
    assert check_path(["a", "b"]) == ("a", "b")


def test_a_pointer_escapes_tilde_and_slash_as_rfc_6901_says():
    assert pointer("", "value", "a~b", "c/d", 3) == "/value/a~0b/c~1d/3"
    assert pointer("/writes", 0, "path") == "/writes/0/path" and pointer("") == ""


def test_field_path_splits_dots_but_takes_lists_literally():
    assert field_path("a.b") == ("a", "b")
    assert field_path(["a.b"]) == ("a.b",)
    with pytest.raises(InvalidArgumentError):
        field_path("a..b")


def test_generated_ids_have_20_url_safe_characters_and_sort_by_creation():
    ids = [generate_id() for _ in range(20000)]
    assert all(len(i) == 20 and set(i) <= set(ID_ALPHABET) for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def id_millisecond(generated: str) -> int:
    value = 0
    for char in generated[:8]:
        value = value * 64 + ID_ALPHABET.index(char)
    return value


def test_generated_id_starts_with_the_time_in_milliseconds():
    before = int(time.time() * 1000)
    value = id_millisecond(generate_id())
    assert before <= value <= int(time.time() * 1000) + 1


def test_after_advance_id_clock_ids_sort_after_that_millisecond_though_the_clock_went_back(monkeypatch):
    """A reopened storage's ids go up to `floor`; this process's clock is an hour behind."""
    floor = time.time_ns() // 1_000_000
    highest = "".join(ID_ALPHABET[(floor >> 6 * (7 - i)) & 63] for i in range(8)) + ID_ALPHABET[-1] * 12
    monkeypatch.setattr(paths, "clock_ns", lambda: time.time_ns() - 3600 * 10**9)
    advance_id_clock(floor)
    ids = [generate_id() for _ in range(1000)]
    assert ids == sorted(ids) and ids[0] > highest
    assert {id_millisecond(i) for i in ids} == {floor + 1}, "the clock is behind: they share the next millisecond"


def test_alphabet_is_in_ascii_order():
    assert list(ID_ALPHABET) == sorted(ID_ALPHABET) and len(ID_ALPHABET) == 64


def test_a_forked_child_never_repeats_its_parents_ids():
    """Parent and child draw on the same random bytes and counter unless the child starts afresh:
    ids made by both in the same millisecond would then be equal."""
    generate_id()  # the parent's random bytes and counter are in use
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # the child: a burst of ids to the pipe, then out
        try:
            os.write(writer, "".join(generate_id() for _ in range(200)).encode())
        finally:
            os._exit(0)
    os.close(writer)
    parent_ids = {generate_id() for _ in range(200)}
    with os.fdopen(reader, "rb") as pipe:
        text = pipe.read().decode()
    os.waitpid(child, 0)
    child_ids = {text[i:i + 20] for i in range(0, len(text), 20)}
    assert len(child_ids) == 200
    assert not child_ids & parent_ids
    assert not {i[8:] for i in child_ids} & {i[8:] for i in parent_ids}, "shared random parts"

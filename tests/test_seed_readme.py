"""The original Montybase README's examples, as written (apart from DESIGN.md §3.6), embedded."""

from __future__ import annotations

import pytest

from montybase import *  # noqa: F403 - as the original README imports it
from montybase import AlreadyExistsError, Montybase, doc


def signup(db, email, password):
    ref = doc(db, "users")
    if ref.append(email).exists():
        raise ValueError("User already exists!")
    return ref.add({"password": password}, key=email)


def login(db, email, password):
    ref = doc(db, "users", email)
    if ref.exists():
        if ref.where("password", "==", password).exists():
            return ref.get()
        raise ValueError("Password is incorect!")
    raise ValueError("User doesn't exist!")


def test_signup_and_login(db):
    assert signup(db, "amor.budiyanto@gmail.com", "hunter2") == "amor.budiyanto@gmail.com"
    assert doc(db, "users").get() == {"amor.budiyanto@gmail.com": {"password": "hunter2"}}
    with pytest.raises(ValueError, match="already exists"):
        signup(db, "amor.budiyanto@gmail.com", "other")
    assert login(db, "amor.budiyanto@gmail.com", "hunter2") == {"password": "hunter2"}
    with pytest.raises(ValueError, match="incorect"):
        login(db, "amor.budiyanto@gmail.com", "wrong")
    with pytest.raises(ValueError, match="doesn't exist"):
        login(db, "nobody@example.com", "x")


def test_signup_race_is_already_exists_not_an_overwrite(db):
    doc(db, "users").add({"password": "first"}, key="a@b.c")
    with pytest.raises(AlreadyExistsError):
        doc(db, "users").add({"password": "second"}, key="a@b.c")
    assert doc(db, "users", "a@b.c").get() == {"password": "first"}


def test_references(db):
    ref = doc(db, "users", "amooo-ooo")
    new_ref = doc(db, "users").append("amooo-ooo")  # new_ref = doc(db, "users", "amooo-ooo")
    assert ref == new_ref and new_ref.path == "users/amooo-ooo"


def test_set_returns_the_id_to_append(db):
    ref = doc(db, "users")
    uid = ref.set({"name": "Amor"})
    new_ref = ref.append(uid)
    assert new_ref.get() == {"name": "Amor"}


def test_set_with_key(db):
    ref = doc(db, "users")
    uid = ref.set({"name": "Amor"}, key="amor.budiyanto@gmail.com")
    assert uid == "amor.budiyanto@gmail.com"


def test_add(db):
    ref = doc(db, "users")
    uid = ref.add({"name": "Amor"})
    assert ref.append(uid).get() == {"name": "Amor"}


def test_delete_returns_the_deleted_contents(db):
    ref = doc(db, "users")
    uid = ref.add({"name": "Amor"})
    assert ref.delete(key=uid) == {"name": "Amor"}  # §3.6: the original passed a dict


def test_update(db):
    ref = doc(db, "users")
    uid = ref.set({"name": "Amor", "score": 100})
    new_ref = ref.append(uid)
    uid = new_ref.update({"score": 120})  # §3.6: update the document reference
    assert new_ref.get() == {"name": "Amor", "score": 120}


def test_get_on_a_collection(db):
    ref = doc(db, "users")
    uid = ref.set({"name": "Amor", "score": 100})
    assert ref.get() == {uid: {"name": "Amor", "score": 100}}


def test_stream(db):
    ref = doc(db, "scores")
    uid = ref.set({"name": "Amor", "score": 100})
    uid = ref.add({"name": "Toriel", "score": 120})
    uid = ref.add({"name": "Isaac", "score": 130})
    docs = ref.stream()
    assert [d["value"] for d in docs] == [
        {"name": "Amor", "score": 100}, {"name": "Toriel", "score": 120}, {"name": "Isaac", "score": 130}
    ]
    assert all(set(d) == {"id", "value"} for d in docs)


def test_where_with_every_condition(db):
    ref = doc(db, "users")
    for score in (90, 100, 110):
        ref.add({"score": score})
    expected = {"==": [100], "!=": [90, 110], ">": [110], "<": [90], ">=": [100, 110], "<=": [90, 100]}
    for op, scores in expected.items():
        data = ref.where("score", op, 100)
        assert [d["value"]["score"] for d in data.stream()] == scores, op


def test_exist(db):
    ref = doc(db, "users")
    uid = ref.set({"name": "Amor", "score": 100}, key="amor.budiyanto@gmail.com")
    assert ref.append(uid).exist() is True


def test_default_montybase_creates_config_and_persistent_db(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mb = Montybase()
    doc(mb, "users").add({"name": "Amor"}, key="amor")
    mb.close()
    assert (tmp_path / "montybase.json").exists() and (tmp_path / "client-config.json").exists()
    with Montybase() as again:
        assert doc(again, "users", "amor").get() == {"name": "Amor"}


def test_hot_and_snapshot_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with Montybase(hot=True) as mb:
        doc(mb, "users").add({"name": "Amor"}, key="amor")
    with Montybase(updateTime=300, storeMin=1) as mb:
        assert doc(mb, "users", "amor").get() == {"name": "Amor"}


def test_original_config_file_works(tmp_path, monkeypatch):
    import json

    monkeypatch.chdir(tmp_path)
    config = {"projectName": "montybase", "apiKey": "mb-0123456789abcdefXYZ", "storageBucket": "data/db.json",
              "storageMinCount": 1, "storageUpdate": 300}
    (tmp_path / "montybase.json").write_text(json.dumps(config))
    with Montybase() as mb:
        doc(mb, "users").add({"name": "Amor"}, key="amor")
    assert (tmp_path / "data" / "db.json").exists()

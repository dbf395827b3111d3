"""The behaviour suite of the public Python API; runs on every backend (see conftest.py)."""

from __future__ import annotations

import threading

import pytest

from conftest import NO_SERVER, Served
from python_client import (
    AlreadyExistsError,
    LimitExceededError,
    Montybase,
    CollectionReference,
    ConflictError,
    DocumentReference,
    InvalidArgumentError,
    MontybaseError,
    NotFoundError,
    UnavailableError,
    array_remove,
    array_union,
    delete_field,
    doc,
    increment,
    maximum,
    minimum,
    server_timestamp,
)
from server.config import load_config, open_database, storage_path


# References


def test_doc_with_odd_segments_is_a_collection_and_even_a_document(db):
    assert isinstance(doc(db, "users"), CollectionReference)
    assert isinstance(doc(db, "users", "amor"), DocumentReference)
    assert isinstance(doc(db, "users", "amor", "posts"), CollectionReference)


def test_slash_in_a_segment_is_shorthand_for_a_path(db):
    assert doc(db, "users/amor") == doc(db, "users", "amor")


def test_append_returns_a_new_reference_and_leaves_the_original(db):
    ref = doc(db, "users")
    child = ref.append("amor")
    assert ref.path == "users" and child.path == "users/amor"
    assert child.id == "amor" and repr(child) == "DocumentReference('users/amor')"


def test_emails_are_fine_ids(db):
    ref = doc(db, "users")
    assert ref.add({"name": "Amor"}, key="amor.budiyanto@gmail.com") == "amor.budiyanto@gmail.com"
    assert doc(db, "users", "amor.budiyanto@gmail.com").get() == {"name": "Amor"}


# add / set / update / delete


def test_add_without_key_generates_a_time_sortable_id(db):
    ref = doc(db, "scores")
    ids = [ref.add({"n": i}) for i in range(50)]
    assert all(len(i) == 20 for i in ids)
    assert ids == sorted(ids)
    assert [d["value"]["n"] for d in ref.stream()] == list(range(50))


def test_add_with_taken_key_is_already_exists(db):
    ref = doc(db, "users")
    ref.add({"name": "Amor"}, key="amor")
    with pytest.raises(AlreadyExistsError) as caught:
        ref.add({"name": "Impostor"}, key="amor")
    assert caught.value.reason == "ALREADY_EXISTS" and caught.value.code == -32003
    assert ref.append("amor").get() == {"name": "Amor"}


def test_add_on_a_document_reference_creates_it_once(db):
    ref = doc(db, "users", "amor")
    assert ref.add({"a": 1}) == "amor"
    with pytest.raises(AlreadyExistsError):
        ref.add({"a": 2})


def test_set_replaces_the_whole_document(db):
    ref = doc(db, "users", "amor")
    ref.set({"name": "Amor", "score": 100})
    ref.set({"score": 5})
    assert ref.get() == {"score": 5}


def test_set_on_a_collection_without_key_creates_a_new_document(db):
    ref = doc(db, "users")
    uid = ref.set({"name": "Amor"})
    assert ref.append(uid).get() == {"name": "Amor"}
    assert ref.count() == 1


def test_update_merges_top_level_fields(db):
    ref = doc(db, "users", "amor")
    ref.set({"name": "Amor", "score": 100, "stats": {"wins": 1, "losses": 2}})
    assert ref.update({"score": 120, "stats": {"wins": 3}}) == "amor"
    assert ref.get() == {"name": "Amor", "score": 120, "stats": {"wins": 3}}


def test_update_with_dotted_key_sets_a_nested_field_creating_objects(db):
    ref = doc(db, "users", "amor")
    ref.set({"stats": {"wins": 1, "losses": 2}})
    ref.update({"stats.wins": 5, "profile.city.name": "Auckland"})
    assert ref.get() == {"stats": {"wins": 5, "losses": 2}, "profile": {"city": {"name": "Auckland"}}}


def test_update_with_tuple_key_names_a_field_containing_a_dot(db):
    ref = doc(db, "users", "amor")
    ref.set({"a": {"b": 1}})
    ref.update({("a.b",): 2})
    assert ref.get() == {"a": {"b": 1}, "a.b": 2}


def test_update_on_a_missing_document_is_not_found_and_creates_nothing(db):
    with pytest.raises(NotFoundError) as caught:
        doc(db, "users", "ghost").update({"a": 1})
    assert isinstance(caught.value, LookupError) and caught.value.reason == "NOT_FOUND"
    assert doc(db, "users", "ghost").get() is None
    assert not doc(db, "users").exists()


def test_update_on_a_collection_needs_key(db):
    ref = doc(db, "users")
    ref.add({"a": 1}, key="k")
    with pytest.raises(InvalidArgumentError):
        ref.update({"a": 2})
    ref.update({"a": 2}, key="k")
    assert ref.append("k").get() == {"a": 2}


def test_key_on_a_document_reference_is_invalid_argument(db):
    ref = doc(db, "users", "amor")
    for call in (lambda: ref.add({}, key="x"), lambda: ref.set({}, key="x"),
                 lambda: ref.update({}, key="x"), lambda: ref.delete(key="x")):
        with pytest.raises(InvalidArgumentError):
            call()
    assert doc(db, "users").get() == {}


def test_delete_returns_the_deleted_document(db):
    ref = doc(db, "users")
    ref.add({"name": "Amor"}, key="amor")
    assert ref.delete(key="amor") == {"name": "Amor"}
    assert ref.append("amor").get() is None
    assert ref.delete(key="amor") is None


def test_delete_on_a_collection_deletes_every_document(db):
    ref = doc(db, "scores")
    a = ref.add({"n": 1})
    b = ref.add({"n": 2})
    assert ref.delete() == {a: {"n": 1}, b: {"n": 2}}
    assert ref.get() == {} and ref.count() == 0


def test_deleting_a_document_deletes_its_subcollections(db):
    doc(db, "users", "amor").set({"name": "Amor"})
    doc(db, "users", "amor", "posts").add({"title": "hi"}, key="p1")
    doc(db, "users", "amor").delete()
    assert doc(db, "users", "amor", "posts").get() == {}
    assert doc(db, "users", "amor", "posts", "p1").get() is None


def test_empty_document_exists_and_can_be_deleted(db):
    ref = doc(db, "c", "empty")
    ref.set({})
    assert ref.exists() and ref.get() == {}
    assert ref.delete() == {}
    assert not ref.exists()


# Reads


def test_get_on_a_missing_document_is_none_and_on_an_empty_collection_is_empty(db):
    assert doc(db, "users", "nobody").get() is None
    assert doc(db, "users").get() == {}
    assert doc(db, "users").stream() == []
    assert doc(db, "users", "nobody").stream() == []


def test_collection_get_is_ordered_by_id(db):
    ref = doc(db, "c")
    for key in ("b", "c", "a"):
        ref.set({"k": key}, key=key)
    assert list(ref.get()) == ["a", "b", "c"]
    assert [d["id"] for d in ref.stream()] == ["a", "b", "c"]


def test_document_stream_is_a_one_element_list(db):
    doc(db, "c", "x").set({"a": 1})
    assert doc(db, "c", "x").stream() == [{"id": "x", "value": {"a": 1}}]


def test_a_path_into_a_document_reads_its_field(db):
    doc(db, "users", "amor").set({"stats": {"wins": 3}, "name": "Amor"})
    assert doc(db, "users", "amor", "stats").get() == {"wins": 3}
    assert doc(db, "users", "amor", "stats", "wins").get() == 3
    assert doc(db, "users", "amor", "nothing").get() == {}


def test_subcollections_are_not_fields_of_their_document(db):
    doc(db, "users", "amor").set({"name": "Amor"})
    doc(db, "users", "amor", "posts").add({"t": 1}, key="p")
    assert doc(db, "users", "amor").get() == {"name": "Amor"}
    assert doc(db, "users", "amor", "posts").get() == {"p": {"t": 1}}


def test_returned_values_are_copies(db):
    ref = doc(db, "c", "x")
    value = {"list": [1], "map": {"a": 1}}
    ref.set(value)
    value["list"].append(2)
    got = ref.get()
    got["map"]["a"] = 99
    doc(db, "c").get()["x"]["list"].append(3)
    doc(db, "c").stream()[0]["value"]["map"]["b"] = 2
    doc(db, "c").where("list", "array-contains", 1).stream()[0]["value"]["list"].clear()
    assert ref.get() == {"list": [1], "map": {"a": 1}}
    assert doc(db, "c").stream() == [{"id": "x", "value": {"list": [1], "map": {"a": 1}}}]


def test_exists_and_exist_alias(db):
    ref = doc(db, "users")
    assert not ref.exists()
    uid = ref.set({"name": "Amor"}, key="amor")
    assert ref.exists() and ref.append(uid).exist() and not ref.append("x").exists()


def test_count_on_collection_document_and_query(db):
    ref = doc(db, "c")
    for i in range(5):
        ref.add({"n": i})
    assert ref.count() == 5
    assert ref.where("n", ">=", 3).count() == 2
    assert doc(db, "c", "missing").count() == 0


# Queries


@pytest.fixture
def scores(db):
    ref = doc(db, "scores")
    for name, score in [("Amor", 100), ("Toriel", 120), ("Isaac", 130), ("Zed", 90), ("Nil", None)]:
        ref.add({"name": name, "score": score}, key=name.lower())
    return ref


def test_where_filters_and_several_wheres_are_anded(scores):
    assert list(scores.where("score", ">", 100).get()) == ["isaac", "toriel"]
    assert list(scores.where("score", ">", 95).where("score", "<", 125).get()) == ["amor", "toriel"]


def test_where_on_a_document_reference_matches_the_document_itself(scores):
    assert scores.append("amor").where("score", "==", 100).exists()
    assert not scores.append("amor").where("score", "==", 101).exists()


def test_order_by_desc_with_limit_is_a_leaderboard(scores):
    top = scores.order_by("score", "desc").limit(3).stream()
    assert [d["value"]["name"] for d in top] == ["Isaac", "Toriel", "Amor"]


def test_order_by_keeps_up_with_writes(scores):
    top = scores.order_by("score", "desc").limit(2)
    assert list(top.get()) == ["isaac", "toriel"]
    scores.update({"score": 200}, key="zed")
    scores.delete(key="isaac")
    scores.add({"name": "New", "score": 150}, key="new")
    assert list(top.get()) == ["zed", "new"]


def test_queries_are_immutable(scores):
    base = scores.where("score", ">", 0)
    limited = base.limit(1)
    assert base.count() == 4 and limited.count() == 1


def test_limit_to_last_start_after_and_end_at(scores):
    ordered = scores.order_by("score")
    assert list(ordered.get()) == ["nil", "zed", "amor", "toriel", "isaac"]
    assert list(ordered.limit_to_last(2).get()) == ["toriel", "isaac"]
    assert list(ordered.start_after(100).get()) == ["toriel", "isaac"]
    assert list(ordered.start_at(100).end_at(120).get()) == ["amor", "toriel"]
    assert list(ordered.end_before(100).offset(1).get()) == ["zed"]


def _page_through(first_page, size: int, pages: int = 1000) -> list[str]:
    """Every id a query returns, read page by page, each page starting after the last document."""
    ids, query = [], first_page
    for _ in range(pages):  # bounded: more pages than documents means paging is stuck
        page = query.limit(size).stream()
        ids += [d["id"] for d in page]
        if len(page) < size:
            return ids
        query = first_page.start_after(page[-1])
    raise AssertionError("paging never reached the end")


@pytest.fixture
def ties(db):
    """300 documents sharing 7 scores, in one batch (a later id is not a later score)."""
    batch = db.batch()
    for i in range(300):
        batch.add(doc(db, "ties"), {"score": (i * 5) % 7, "n": i}, key=f"d{(i * 37) % 300:03}")
    batch.commit()
    return doc(db, "ties")


def test_paging_with_a_document_cursor_returns_every_document_once(ties):
    ordered = ties.order_by("score", "desc")
    expected = [d["id"] for d in ordered.stream()]
    assert len(expected) == 300
    assert _page_through(ordered, 7) == expected
    assert _page_through(ties.query(), 7) == sorted(expected)


def test_a_cursor_of_order_values_and_an_id_breaks_ties(ties):
    ordered = ties.order_by("score")
    first = ordered.stream()[20]
    after = ordered.start_after(first["value"]["score"], first["id"]).limit(3).stream()
    assert after == ordered.start_after(first).limit(3).stream() == ordered.stream()[21:24]
    assert ordered.end_before(first).stream() == ordered.stream()[:20]
    assert ordered.start_at(first).end_at(first).stream() == [first]


def test_a_document_snapshot_is_a_cursor(ties):
    seen, ready = [], threading.Event()
    unsubscribe = ties.append("d005").on_snapshot(lambda snapshot: (seen.append(snapshot), ready.set()))
    assert ready.wait(10)
    unsubscribe()
    ordered = ties.order_by("score")
    everything = [d["id"] for d in ordered.stream()]
    position = everything.index("d005")
    assert [d["id"] for d in ordered.start_after(seen[0]).limit(2).stream()] == everything[position + 1 : position + 3]


def test_a_cursor_document_lacking_an_order_field_is_invalid_argument(ties):
    with pytest.raises(InvalidArgumentError) as caught:
        ties.order_by("rank").start_after({"id": "d001", "value": {"score": 1}})
    assert caught.value.data["path"] == "/query/startAfter"


def test_order_by_after_a_cursor_is_invalid_argument(ties):
    with pytest.raises(InvalidArgumentError):
        ties.start_after("d001").order_by("score")


def test_sum_and_avg_read_numbers(scores):
    assert scores.sum("score") == 440
    assert scores.avg("score") == 110
    assert scores.where("score", ">", 1000).avg("score") is None


def test_sum_past_safe_integers_is_a_float_and_past_the_largest_number_invalid_argument(db):
    ref = doc(db, "big")
    ref.add({"v": 2**53 - 1}, key="a")
    ref.add({"v": 2}, key="b")
    total = ref.sum("v")
    assert type(total) is float and total == float(2**53 + 1)
    ref.set({"v": 1.7e308}, key="a")
    ref.set({"v": 1.7e308}, key="b")
    with pytest.raises(InvalidArgumentError) as caught:
        ref.sum("v")
    assert caught.value.data["path"] == "/field"
    assert ref.avg("v") == 1.7e308 and ref.count() == 2  # the connection goes on


def test_bad_direction_is_invalid_argument(scores):
    with pytest.raises(InvalidArgumentError):
        scores.order_by("score", "sideways")


def test_unknown_operator_is_invalid_argument(scores):
    with pytest.raises(InvalidArgumentError) as caught:
        scores.where("score", "=>", 1).stream()
    assert "=>" in str(caught.value)


# Transforms


def test_increment_maximum_minimum(db):
    ref = doc(db, "players", "p")
    ref.set({"score": 10, "best": 10, "low": 10})
    ref.update({"score": increment(5), "best": maximum(7), "low": minimum(7)})
    assert ref.get() == {"score": 15, "best": 10, "low": 7}
    ref.update({"best": maximum(99), "visits": increment(1)})
    assert ref.get()["best"] == 99 and ref.get()["visits"] == 1


def test_array_union_and_remove(db):
    ref = doc(db, "c", "x")
    ref.set({"tags": ["a", "b"]})
    ref.update({"tags": array_union("b", "c", 1)})
    assert ref.get()["tags"] == ["a", "b", "c", 1]
    ref.update({"tags": array_remove("a", 1.0)})
    assert ref.get()["tags"] == ["b", "c"]


def test_server_timestamp_and_delete_field(db):
    import time

    before = int(time.time() * 1000)
    ref = doc(db, "c", "x")
    ref.set({"at": server_timestamp(), "gone": 1})
    ref.update({"gone": delete_field()})
    value = ref.get()
    assert set(value) == {"at"} and before <= value["at"] <= int(time.time() * 1000) + 1


def test_transforms_in_set_start_from_nothing_as_set_replaces_the_document(db):
    ref = doc(db, "c", "x")
    ref.set({"n": 5, "best": 10, "tags": ["a"], "deep": {"n": 5}})
    ref.set({"n": increment(1), "best": maximum(3), "tags": array_union("b"), "deep": {"n": increment(2)}})
    assert ref.get() == {"n": 1, "best": 3, "tags": ["b"], "deep": {"n": 2}}


def test_transforms_in_add_start_from_nothing(db):
    uid = doc(db, "c").add({"n": increment(3), "tags": array_union("x"), "nested": {"m": maximum(4)}})
    assert doc(db, "c", uid).get() == {"n": 3, "tags": ["x"], "nested": {"m": 4}}


def test_delete_field_outside_update_is_invalid_argument(db):
    with pytest.raises(InvalidArgumentError):
        doc(db, "c", "x").set({"a": delete_field()})
    assert doc(db, "c", "x").get() is None


def test_concurrent_increments_are_all_applied(db):
    ref = doc(db, "c", "counter")
    ref.set({"n": 0})

    def bump():
        for _ in range(200):
            ref.update({"n": increment(1)})

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert ref.get() == {"n": 800}


# Batches and transactions


def test_batch_applies_all_writes(db):
    batch = db.batch()
    batch.set(doc(db, "c", "a"), {"n": 1})
    batch.add(doc(db, "c"), {"n": 2}, key="b")
    batch.update(doc(db, "c", "a"), {"n": increment(10)})
    batch.delete(doc(db, "c", "gone"))
    assert batch.commit() == ["a", "b", "a", None]
    assert doc(db, "c").get() == {"a": {"n": 11}, "b": {"n": 2}}


def test_a_batch_that_writes_below_a_missing_document_then_deletes_it_leaves_nothing_below(db):
    batch = db.batch()
    batch.set(doc(db, "users", "ghost", "posts", "p1"), {"title": "hi"})
    batch.delete(doc(db, "users", "ghost"))
    assert batch.commit() == ["p1", None]
    assert doc(db, "users", "ghost", "posts").get() == {}


def test_batch_with_one_failing_write_applies_none(db):
    doc(db, "c", "taken").set({"n": 0})
    batch = db.batch()
    batch.set(doc(db, "c", "a"), {"n": 1})
    batch.add(doc(db, "c", "taken"), {"n": 2})
    with pytest.raises(AlreadyExistsError):
        batch.commit()
    assert doc(db, "c").get() == {"taken": {"n": 0}}


def test_transaction_reads_then_writes(db):
    doc(db, "accounts", "a").set({"balance": 100})
    doc(db, "accounts", "b").set({"balance": 0})

    def transfer(tx):
        a = tx.get(doc(db, "accounts", "a"))
        b = tx.get(doc(db, "accounts", "b"))
        tx.update(doc(db, "accounts", "a"), {"balance": a["balance"] - 30})
        tx.update(doc(db, "accounts", "b"), {"balance": b["balance"] + 30})
        return "done"

    assert db.transaction(transfer) == "done"
    assert doc(db, "accounts", "a").get() == {"balance": 70}
    assert doc(db, "accounts", "b").get() == {"balance": 30}


def test_transaction_retries_when_what_it_read_changed(db):
    ref = doc(db, "c", "x")
    ref.set({"n": 0})
    attempts = []

    def bump(tx):
        value = tx.get(ref)
        attempts.append(value["n"])
        if len(attempts) == 1:
            ref.set({"n": 10})  # another writer gets in between the read and the commit
        tx.set(ref, {"n": value["n"] + 1})

    db.transaction(bump)
    assert attempts == [0, 10] and ref.get() == {"n": 11}


def test_transaction_gives_up_with_conflict_after_max_attempts(db):
    ref = doc(db, "c", "x")
    ref.set({"n": 0})

    def always_raced(tx):
        value = tx.get(ref)
        ref.update({"n": increment(1)})
        tx.set(ref, {"n": -1, "seen": value["n"]})

    with pytest.raises(ConflictError):
        db.transaction(always_raced, max_attempts=3)
    assert ref.get() == {"n": 3}


def test_contended_transactions_all_commit_with_backoff(served):
    """8 clients, each 25 transactional increments of one counter: every one commits."""
    clients = [served.client() for _ in range(8)]
    counter = doc(clients[0], "c", "counter")
    counter.set({"n": 0})
    failures: list[BaseException] = []

    def bump(handle):
        ref = doc(handle, "c", "counter")

        def increment_once(tx):
            tx.set(ref, {"n": tx.get(ref)["n"] + 1})

        try:
            for _ in range(25):
                handle.transaction(increment_once)
        except MontybaseError as error:
            failures.append(error)

    threads = [threading.Thread(target=bump, args=(handle,)) for handle in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    try:
        assert not any(thread.is_alive() for thread in threads)
        assert failures == [] and counter.get() == {"n": 200}
    finally:
        for handle in clients:
            handle.close()


def test_transaction_that_raises_writes_nothing(db):
    ref = doc(db, "c", "x")

    def fails(tx):
        tx.get(ref)
        tx.set(ref, {"n": 1})
        raise RuntimeError("changed my mind")

    with pytest.raises(RuntimeError):
        db.transaction(fails)
    assert ref.get() is None


def test_reads_after_close_are_unavailable(db):
    ref = doc(db, "c")
    ref.add({"n": 1}, key="a")
    db.close()
    reads = [ref.get, ref.append("a").get, ref.stream, ref.exists, ref.count, lambda: ref.sum("n"),
             ref.order_by("n").limit(1).stream]
    for read in reads:
        with pytest.raises(UnavailableError):
            read()


def test_every_error_is_a_montybase_error_with_code_reason_data(db):
    with pytest.raises(MontybaseError) as caught:
        doc(db, "c", "x").update({"a": 1})
    error = caught.value
    assert (error.code, error.reason) == (-32002, "NOT_FOUND") and error.data["document"] == ["c", "x"]


# Limits: a program embedded gets those of a remote admin (the same session, only no socket)


def test_a_document_over_max_doc_bytes_is_limit_exceeded_and_not_written(db):
    with pytest.raises(LimitExceededError) as caught:
        doc(db, "c").add({"text": "x" * 65536}, key="big")
    assert (caught.value.data["limit"], caught.value.data["actual"]) == (65536, 65536 + len('{"text":""}'))
    assert doc(db, "c", "big").get() is None
    doc(db, "c", "fits").set({"text": "x" * 60000})
    with pytest.raises(LimitExceededError):
        doc(db, "c", "fits").update({"more": "x" * 6000})
    assert len(doc(db, "c", "fits").get()["text"]) == 60000


def test_a_batch_over_max_writes_is_limit_exceeded_and_writes_nothing(db):
    batch = db.batch()
    for i in range(501):
        batch.set(doc(db, "c", f"k{i}"), {"i": i})
    with pytest.raises(LimitExceededError) as caught:
        batch.commit()
    assert (caught.value.data["limit"], caught.value.data["actual"]) == (500, 501)
    assert doc(db, "c").count() == 0


@NO_SERVER
def test_what_embedded_accepts_a_server_on_the_same_files_serves_and_updates(loop_thread, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with Montybase() as embedded:
        doc(embedded, "c", "near").set({"text": "x" * 65000})
        with pytest.raises(LimitExceededError):
            doc(embedded, "c", "over").set({"text": "x" * 70000})
    config, _ = load_config(tmp_path / "montybase.json")
    served = Served(loop_thread, tmp_path / "server", database=open_database(config, storage_path(config, tmp_path / "montybase.json")))
    remote = served.client(admin=True)
    try:
        assert len(doc(remote, "c", "near").get()["text"]) == 65000
        doc(remote, "c", "near").update({"n": 1})
        assert doc(remote, "c", "near").get()["n"] == 1 and doc(remote, "c", "over").get() is None
    finally:
        remote.close()
        served.stop()

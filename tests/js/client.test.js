// The behaviour suite of the public JS API against a real server (tests/test_client.py's
// cases that make sense for a client key; the admin key where a client key may not).

import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import WebSocket from "ws";

import {
  AlreadyExistsError,
  CollectionReference,
  ConflictError,
  DocumentReference,
  InvalidArgumentError,
  Montybase,
  MontybaseError,
  NotFoundError,
  PermissionDeniedError,
  Query,
  arrayRemove,
  arrayUnion,
  deleteField,
  doc,
  increment,
  maximum,
  minimum,
  serverTimestamp,
} from "../../js_client/index.js";
import { closeServer, firstSnapshot, openServer, runPython, unique } from "./helpers.js";

let server;
let db; // the client key, as a web page has it
let admin; // the admin key, as a server-side Node program has it

before(async () => ({ server, db, admin } = await openServer()));
after(() => closeServer({ server, db, admin }));

async function rejects(promise, kind, reason) {
  await assert.rejects(promise, (error) => error instanceof kind && error instanceof MontybaseError && (!reason || error.reason === reason));
}

describe("references", () => {
  test("odd segments make a collection, even a document", () => {
    assert.ok(doc(db, "users") instanceof CollectionReference);
    assert.ok(doc(db, "users", "amor") instanceof DocumentReference);
    assert.ok(doc(db, "users", "amor", "posts") instanceof CollectionReference);
  });

  test("a slash in a segment is shorthand for a path", () => {
    assert.ok(doc(db, "users/amor").isEqual(doc(db, "users", "amor")));
    assert.ok(!doc(db, "users/amor").isEqual(doc(admin, "users", "amor")));
  });

  test("append returns a new reference and leaves the original", () => {
    const ref = doc(db, "users");
    const child = ref.append("amor");
    assert.equal(ref.path, "users");
    assert.equal(child.path, "users/amor");
    assert.equal(child.id, "amor");
    assert.equal(String(child), "DocumentReference('users/amor')");
    assert.equal(doc(db).id, null);
  });

  test("references and queries are immutable", () => {
    const ref = doc(db, "users");
    assert.throws(() => {
      ref.segments.push("x");
    }, TypeError);
    assert.throws(() => {
      "use strict";
      ref.segments = ["y"];
    }, TypeError);
    assert.equal(ref.path, "users");
    const query = ref.where("a", "==", 1);
    const wire = query.wire;
    wire.where.push(["b", "==", 2]);
    assert.equal(query.wire.where.length, 1);
    assert.ok(query instanceof Query);
  });

  test("emails are fine ids", async () => {
    const users = doc(db, unique("users"));
    assert.equal(await users.add({ name: "Amor" }, "amor.budiyanto@gmail.com"), "amor.budiyanto@gmail.com");
    assert.deepEqual(await users.append("amor.budiyanto@gmail.com").get(), { name: "Amor" });
  });
});

describe("add / set / update / delete", () => {
  test("add without key generates a time-sortable id", async () => {
    const ref = doc(db, unique("scores"));
    const ids = [];
    for (let i = 0; i < 30; i++) ids.push(await ref.add({ n: i }));
    assert.ok(ids.every((id) => id.length === 20 && /^[-0-9A-Z_a-z]+$/.test(id)));
    assert.deepEqual([...ids].sort(), ids);
    assert.deepEqual((await ref.stream()).map((d) => d.value.n), [...Array(30).keys()]);
  });

  test("add with a taken key is ALREADY_EXISTS", async () => {
    const ref = doc(db, unique("users"));
    await ref.add({ name: "Amor" }, "amor");
    await assert.rejects(ref.add({ name: "Impostor" }, "amor"), (error) => {
      assert.ok(error instanceof AlreadyExistsError);
      assert.equal(error.reason, "ALREADY_EXISTS");
      assert.equal(error.code, -32003);
      return true;
    });
    assert.deepEqual(await ref.append("amor").get(), { name: "Amor" });
  });

  test("add on a document reference creates it once", async () => {
    const ref = doc(db, unique("users"), "amor");
    assert.equal(await ref.add({ a: 1 }), "amor");
    await rejects(ref.add({ a: 2 }), AlreadyExistsError);
  });

  test("set replaces the whole document", async () => {
    const ref = doc(db, unique("users"), "amor");
    await ref.set({ name: "Amor", score: 100 });
    await ref.set({ score: 5 });
    assert.deepEqual(await ref.get(), { score: 5 });
  });

  test("set on a collection without key creates a new document", async () => {
    const ref = doc(db, unique("users"));
    const uid = await ref.set({ name: "Amor" });
    assert.deepEqual(await ref.append(uid).get(), { name: "Amor" });
    assert.equal(await ref.count(), 1);
  });

  test("update merges top-level fields", async () => {
    const ref = doc(db, unique("users"), "amor");
    await ref.set({ name: "Amor", score: 100, stats: { wins: 1, losses: 2 } });
    assert.equal(await ref.update({ score: 120, stats: { wins: 3 } }), "amor");
    assert.deepEqual(await ref.get(), { name: "Amor", score: 120, stats: { wins: 3 } });
  });

  test("update with a dotted key sets a nested field, creating objects", async () => {
    const ref = doc(db, unique("users"), "amor");
    await ref.set({ stats: { wins: 1, losses: 2 } });
    await ref.update({ "stats.wins": 5, "profile.city.name": "Auckland" });
    assert.deepEqual(await ref.get(), { stats: { wins: 5, losses: 2 }, profile: { city: { name: "Auckland" } } });
  });

  test("update with an array of keys names a field containing a dot", async () => {
    const ref = doc(db, unique("users"), "amor");
    await ref.set({ a: { b: 1 } });
    await ref.update([[["a.b"], 2]]);
    assert.deepEqual(await ref.get(), { a: { b: 1 }, "a.b": 2 });
  });

  test("update on a missing document is NOT_FOUND and creates nothing", async () => {
    const users = doc(db, unique("users"));
    await assert.rejects(users.append("ghost").update({ a: 1 }), (error) => {
      assert.ok(error instanceof NotFoundError);
      assert.equal(error.reason, "NOT_FOUND");
      assert.deepEqual(error.data.document, [users.id, "ghost"]);
      return true;
    });
    assert.equal(await users.append("ghost").get(), null);
    assert.equal(await users.exists(), false);
  });

  test("update on a collection needs a key", async () => {
    const ref = doc(db, unique("users"));
    await ref.add({ a: 1 }, "k");
    await rejects(ref.update({ a: 2 }), InvalidArgumentError);
    await ref.update({ a: 2 }, "k");
    assert.deepEqual(await ref.append("k").get(), { a: 2 });
  });

  test("a key on a document reference is INVALID_ARGUMENT, for every write", async () => {
    const users = doc(db, unique("users"));
    const ref = users.append("amor");
    await rejects(ref.add({}, "x"), InvalidArgumentError);
    await rejects(ref.set({}, "x"), InvalidArgumentError);
    await rejects(ref.update({}, "x"), InvalidArgumentError);
    await rejects(ref.delete("x"), InvalidArgumentError);
    assert.deepEqual(await users.get(), new Map());
  });

  test("delete returns the deleted document", async () => {
    const ref = doc(db, unique("users"));
    await ref.add({ name: "Amor" }, "amor");
    assert.deepEqual(await ref.delete("amor"), { name: "Amor" });
    assert.equal(await ref.append("amor").get(), null);
    assert.equal(await ref.delete("amor"), null);
  });

  test("the client key may not delete a whole collection; the admin key may", async () => {
    const name = unique("scores");
    const a = await doc(db, name).add({ n: 1 });
    const b = await doc(db, name).add({ n: 2 });
    await assert.rejects(doc(db, name).delete(), (error) => error instanceof PermissionDeniedError && error.code === -32001);
    assert.equal(await doc(db, name).count(), 2);
    assert.deepEqual(await doc(admin, name).delete(), { [a]: { n: 1 }, [b]: { n: 2 } });
    assert.deepEqual(await doc(db, name).get(), new Map());
    assert.equal(await doc(db, name).count(), 0);
  });

  test("deleting a document deletes its subcollections", async () => {
    const users = unique("users");
    await doc(db, users, "amor").set({ name: "Amor" });
    await doc(db, users, "amor", "posts").add({ title: "hi" }, "p1");
    await doc(db, users, "amor").delete();
    assert.deepEqual(await doc(db, users, "amor", "posts").get(), new Map());
    assert.equal(await doc(db, users, "amor", "posts", "p1").get(), null);
  });

  test("an empty document exists and can be deleted", async () => {
    const ref = doc(db, unique("c"), "empty");
    await ref.set({});
    assert.equal(await ref.exists(), true);
    assert.deepEqual(await ref.get(), {});
    assert.deepEqual(await ref.delete(), {});
    assert.equal(await ref.exists(), false);
  });
});

describe("reads", () => {
  test("a missing document is null and an empty collection is empty", async () => {
    const users = unique("users");
    assert.equal(await doc(db, users, "nobody").get(), null);
    assert.deepEqual(await doc(db, users).get(), new Map());
    assert.deepEqual(await doc(db, users).stream(), []);
    assert.deepEqual(await doc(db, users, "nobody").stream(), []);
  });

  test("a collection's get is ordered by id", async () => {
    const ref = doc(db, unique("c"));
    for (const key of ["b", "c", "a"]) await ref.set({ k: key }, key);
    assert.deepEqual([...(await ref.get()).keys()], ["a", "b", "c"]);
    assert.deepEqual((await ref.stream()).map((d) => d.id), ["a", "b", "c"]);
  });

  test("a collection's get is a Map in Python's id order, integer-like ids included: 10, 2, B", async () => {
    const c = unique("c");
    const ref = doc(db, c);
    // By code point, as Python sorts: "ｚ" (U+FF5A) before "😀" (U+1F600), which UTF-16 order reverses.
    for (const key of ["B", "2", "😀", "10", "ｚ"]) await ref.set({ k: key }, key);
    const got = await ref.get();
    assert.ok(got instanceof Map);
    const order = ["10", "2", "B", "ｚ", "😀"];
    assert.deepEqual([...got.keys()], order);
    assert.deepEqual(got.get("2"), { k: "2" });
    assert.deepEqual((await ref.stream()).map((d) => d.id), order);
    assert.deepEqual([...(await ref.query().get()).keys()], order);
    const python = await runPython(
      `import json\nfrom python_client import Montybase, doc\ndb = Montybase(api=${JSON.stringify(server.endpoint)}, config=${JSON.stringify(join(server.dir, "montybase.json"))})\nprint(json.dumps(list(doc(db, ${JSON.stringify(c)}).get())))\ndb.close()`,
    );
    assert.deepEqual(JSON.parse(python), order);
  });

  test("a query's get is a Map in the query's order (orderBy, limitToLast), integer-like ids included", async () => {
    const ref = doc(db, unique("c"));
    for (const [key, score] of [["2", 30], ["10", 10], ["B", 20], ["7", 40]]) await ref.set({ score }, key);
    const desc = await ref.orderBy("score", "desc").get();
    assert.ok(desc instanceof Map);
    assert.deepEqual([...desc.keys()], ["7", "2", "B", "10"]);
    assert.deepEqual([...desc.values()].map((value) => value.score), [40, 30, 20, 10]);
    assert.deepEqual([...(await ref.orderBy("score").limitToLast(2).get()).keys()], ["2", "7"]);
    assert.deepEqual([...(await ref.where("score", ">", 15).get()).keys()], ["2", "7", "B"]);
  });

  test("a transaction's read of a collection is a Map too, and its commit checks what was read", async () => {
    // The admin key: with the client key the server answers a commit whose reads name a
    // top-level collection with an internal error (the rules check that read as a document).
    const ref = doc(admin, unique("c"));
    await ref.set({ n: 1 }, "2");
    await ref.set({ n: 2 }, "10");
    const seen = await admin.transaction(async (tx) => {
      const docs = await tx.get(ref);
      tx.set(ref.append("sum"), { n: [...docs.values()].reduce((sum, value) => sum + value.n, 0) });
      return [...docs.keys()];
    });
    assert.deepEqual(seen, ["10", "2"]);
    assert.deepEqual(await ref.append("sum").get(), { n: 3 });
    await assert.rejects(
      admin.transaction(
        async (tx) => {
          await tx.get(ref);
          await ref.set({ n: 5 }, "2"); // changes what the transaction read
          tx.set(ref.append("sum"), { n: 0 });
        },
        { maxAttempts: 1 },
      ),
      ConflictError,
    );
  });

  test("a document's stream is a one-element list", async () => {
    const c = unique("c");
    await doc(db, c, "x").set({ a: 1 });
    assert.deepEqual(await doc(db, c, "x").stream(), [{ id: "x", value: { a: 1 } }]);
  });

  test("a path into a document reads its field", async () => {
    const users = unique("users");
    await doc(db, users, "amor").set({ stats: { wins: 3 }, name: "Amor" });
    assert.deepEqual(await doc(db, users, "amor", "stats").get(), new Map([["wins", 3]])); // read as if a collection
    assert.equal(await doc(db, users, "amor", "stats", "wins").get(), 3);
    assert.equal(await doc(db, users, "amor", "name").get(), "Amor");
    assert.deepEqual(await doc(db, users, "amor", "nothing").get(), new Map());
  });

  test("subcollections are not fields of their document", async () => {
    const users = unique("users");
    await doc(db, users, "amor").set({ name: "Amor" });
    await doc(db, users, "amor", "posts").add({ t: 1 }, "p");
    assert.deepEqual(await doc(db, users, "amor").get(), { name: "Amor" });
    assert.deepEqual(await doc(db, users, "amor", "posts").get(), new Map([["p", { t: 1 }]]));
  });

  test("returned values are copies", async () => {
    const ref = doc(db, unique("c"), "x");
    const value = { list: [1], map: { a: 1 } };
    await ref.set(value);
    value.list.push(2);
    const got = await ref.get();
    got.map.a = 99;
    assert.deepEqual(await ref.get(), { list: [1], map: { a: 1 } });
  });

  test("exists and its alias exist", async () => {
    const ref = doc(db, unique("users"));
    assert.equal(await ref.exists(), false);
    const uid = await ref.set({ name: "Amor" }, "amor");
    assert.equal(await ref.exists(), true);
    assert.equal(await ref.append(uid).exist(), true);
    assert.equal(await ref.append("x").exists(), false);
  });

  test("count on a collection, a document and a query", async () => {
    const name = unique("c");
    const ref = doc(db, name);
    for (let i = 0; i < 5; i++) await ref.add({ n: i });
    assert.equal(await ref.count(), 5);
    assert.equal(await ref.where("n", ">=", 3).count(), 2);
    assert.equal(await doc(db, name, "missing").count(), 0);
  });

  test("the client key may not read the root; the admin key may", async () => {
    const name = unique("rooted");
    await doc(db, name, "x").set({ a: 1 });
    await rejects(doc(db).get(), PermissionDeniedError, "PERMISSION_DENIED");
    const root = await doc(admin).get();
    assert.ok(root instanceof Map);
    assert.deepEqual(root.get(name), new Map([["x", { a: 1 }]]));
    assert.deepEqual([...root.keys()], [...root.keys()].sort());
  });

  test("every terminal returns a Promise", () => {
    const ref = doc(db, unique("c"));
    for (const promise of [ref.get(), ref.stream(), ref.exists(), ref.exist(), ref.count(), ref.sum("n"), ref.avg("n"), ref.limit(1).get()]) {
      assert.ok(promise instanceof Promise);
    }
  });
});

describe("queries", () => {
  let scores;
  before(async () => {
    scores = doc(db, unique("scores"));
    for (const [name, score] of [["Amor", 100], ["Toriel", 120], ["Isaac", 130], ["Zed", 90], ["Nil", null]]) {
      await scores.add({ name, score }, name.toLowerCase());
    }
  });

  test("where filters and several wheres are ANDed", async () => {
    assert.deepEqual([...(await scores.where("score", ">", 100).get()).keys()], ["isaac", "toriel"]);
    assert.deepEqual([...(await scores.where("score", ">", 95).where("score", "<", 125).get()).keys()], ["amor", "toriel"]);
  });

  test("where on a document reference matches the document itself", async () => {
    assert.equal(await scores.append("amor").where("score", "==", 100).exists(), true);
    assert.equal(await scores.append("amor").where("score", "==", 101).exists(), false);
  });

  test("orderBy desc with limit is a leaderboard", async () => {
    const top = await scores.orderBy("score", "desc").limit(3).stream();
    assert.deepEqual(top.map((d) => d.value.name), ["Isaac", "Toriel", "Amor"]);
  });

  test("queries are immutable", async () => {
    const base = scores.where("score", ">", 0);
    const limited = base.limit(1);
    assert.equal(await base.count(), 4);
    assert.equal(await limited.count(), 1);
  });

  test("limitToLast, startAfter, startAt, endAt, endBefore and offset", async () => {
    const ordered = scores.orderBy("score");
    assert.deepEqual([...(await ordered.get()).keys()], ["nil", "zed", "amor", "toriel", "isaac"]);
    assert.deepEqual([...(await ordered.limitToLast(2).get()).keys()], ["toriel", "isaac"]);
    assert.deepEqual([...(await ordered.startAfter(100).get()).keys()], ["toriel", "isaac"]);
    assert.deepEqual([...(await ordered.startAt(100).endAt(120).get()).keys()], ["amor", "toriel"]);
    assert.deepEqual([...(await ordered.endBefore(100).offset(1).get()).keys()], ["zed"]);
  });

  test("a document from stream() or a snapshot is a cursor: its order values, then its id", async () => {
    const ref = doc(db, unique("ties"));
    for (let i = 0; i < 12; i++) await ref.add({ score: i % 3 }, `d${String((i * 5) % 12).padStart(2, "0")}`);
    const ordered = ref.orderBy("score");
    const all = await ordered.stream();
    assert.deepEqual(ordered.startAfter(all[4]).wire.startAfter, [all[4].value.score, all[4].id]);
    assert.deepEqual(await ordered.startAfter(all[4]).limit(3).stream(), all.slice(5, 8));
    assert.deepEqual(await ordered.endBefore(all[4]).stream(), all.slice(0, 4));
    const snapshot = await firstSnapshot(ref.append(all[6].id));
    assert.deepEqual(await ordered.startAt(snapshot).limit(2).stream(), all.slice(6, 8));
    assert.throws(() => ordered.startAfter({ ...snapshot, exists: false, value: {} }), InvalidArgumentError);
  });

  test("a cursor document lacking an order field is INVALID_ARGUMENT at once", () => {
    assert.throws(
      () => scores.orderBy("rank").startAfter({ id: "amor", value: { score: 100 } }),
      (error) => error instanceof InvalidArgumentError && error.data.path === "/query/startAfter",
    );
  });

  test("orderBy after a cursor is INVALID_ARGUMENT at once", () => {
    assert.throws(() => scores.startAfter("amor").orderBy("score"), InvalidArgumentError);
  });

  test("sum and avg read numbers", async () => {
    assert.equal(await scores.sum("score"), 440);
    assert.equal(await scores.avg("score"), 110);
    assert.equal(await scores.where("score", ">", 1000).avg("score"), null);
  });

  test("a bad direction is INVALID_ARGUMENT at once", () => {
    assert.throws(() => scores.orderBy("score", "sideways"), InvalidArgumentError);
  });

  test("an unknown operator is INVALID_ARGUMENT naming it", async () => {
    await assert.rejects(scores.where("score", "=>", 1).stream(), (error) => error instanceof InvalidArgumentError && error.message.includes("=>"));
  });

  test("orderBy keeps up with writes", async () => {
    const ref = doc(db, unique("scores"));
    for (const [name, score] of [["Amor", 100], ["Toriel", 120], ["Isaac", 130], ["Zed", 90]]) await ref.add({ name, score }, name.toLowerCase());
    const top = ref.orderBy("score", "desc").limit(2);
    assert.deepEqual([...(await top.get()).keys()], ["isaac", "toriel"]);
    await ref.update({ score: 200 }, "zed");
    await ref.delete("isaac");
    await ref.add({ name: "New", score: 150 }, "new");
    assert.deepEqual([...(await top.get()).keys()], ["zed", "new"]);
  });
});

describe("transforms", () => {
  test("increment, maximum, minimum", async () => {
    const ref = doc(db, unique("players"), "p");
    await ref.set({ score: 10, best: 10, low: 10 });
    await ref.update({ score: increment(5), best: maximum(7), low: minimum(7) });
    assert.deepEqual(await ref.get(), { score: 15, best: 10, low: 7 });
    await ref.update({ best: maximum(99), visits: increment(1) });
    const value = await ref.get();
    assert.equal(value.best, 99);
    assert.equal(value.visits, 1);
  });

  test("arrayUnion and arrayRemove", async () => {
    const ref = doc(db, unique("c"), "x");
    await ref.set({ tags: ["a", "b"] });
    await ref.update({ tags: arrayUnion("b", "c", 1) });
    assert.deepEqual((await ref.get()).tags, ["a", "b", "c", 1]);
    await ref.update({ tags: arrayRemove("a", 1.0) });
    assert.deepEqual((await ref.get()).tags, ["b", "c"]);
  });

  test("serverTimestamp and deleteField", async () => {
    const before = Date.now();
    const ref = doc(db, unique("c"), "x");
    await ref.set({ at: serverTimestamp(), gone: 1 });
    await ref.update({ gone: deleteField() });
    const value = await ref.get();
    assert.deepEqual(Object.keys(value), ["at"]);
    assert.ok(before - 5 <= value.at && value.at <= Date.now() + 5);
  });

  test("transforms in set start from nothing, as set replaces the document", async () => {
    const ref = doc(db, unique("c"), "x");
    await ref.set({ n: 5, best: 10, tags: ["a"], deep: { n: 5 } });
    await ref.set({ n: increment(1), best: maximum(3), tags: arrayUnion("b"), deep: { n: increment(2) } });
    assert.deepEqual(await ref.get(), { n: 1, best: 3, tags: ["b"], deep: { n: 2 } });
  });

  test("transforms in add start from nothing", async () => {
    const name = unique("c");
    const uid = await doc(db, name).add({ n: increment(3), tags: arrayUnion("x"), nested: { m: maximum(4) } });
    assert.deepEqual(await doc(db, name, uid).get(), { n: 3, tags: ["x"], nested: { m: 4 } });
  });

  test("deleteField outside update is INVALID_ARGUMENT and writes nothing", async () => {
    const ref = doc(db, unique("c"), "x");
    await rejects(ref.set({ a: deleteField() }), InvalidArgumentError);
    assert.equal(await ref.get(), null);
  });

  test("concurrent increments are all applied", async () => {
    const ref = doc(db, unique("c"), "counter");
    await ref.set({ n: 0 });
    const handles = await Promise.all([1, 2, 3].map(async () => new Montybase(await server.clientConfig(), { WebSocket })));
    try {
      const bumps = [db, ...handles].flatMap((handle) => Array.from({ length: 100 }, () => doc(handle, ref.path).update({ n: increment(1) })));
      await Promise.all(bumps);
    } finally {
      await Promise.all(handles.map((handle) => handle.close()));
    }
    assert.deepEqual(await ref.get(), { n: 400 });
  });
});

describe("batches and transactions", () => {
  test("a batch applies all its writes", async () => {
    const c = unique("c");
    const batch = db.batch();
    batch.set(doc(db, c, "a"), { n: 1 });
    batch.add(doc(db, c), { n: 2 }, "b");
    batch.update(doc(db, c, "a"), { n: increment(10) });
    batch.delete(doc(db, c, "gone"));
    assert.deepEqual(await batch.commit(), ["a", "b", "a", null]);
    assert.deepEqual(await doc(db, c).get(), new Map([["a", { n: 11 }], ["b", { n: 2 }]]));
    assert.deepEqual(await db.batch().commit(), []);
  });

  test("a batch with one failing write applies none", async () => {
    const c = unique("c");
    await doc(db, c, "taken").set({ n: 0 });
    const batch = db.batch().set(doc(db, c, "a"), { n: 1 }).add(doc(db, c, "taken"), { n: 2 });
    await rejects(batch.commit(), AlreadyExistsError);
    assert.deepEqual(await doc(db, c).get(), new Map([["taken", { n: 0 }]]));
  });

  test("a batch may not delete a whole collection with the client key", async () => {
    const c = unique("c");
    await doc(db, c, "a").set({ n: 1 });
    await rejects(db.batch().delete(doc(db, c)).commit(), PermissionDeniedError);
    assert.deepEqual(await admin.batch().delete(doc(admin, c)).commit(), [{ a: { n: 1 } }]);
  });

  test("a transaction reads, then writes", async () => {
    const accounts = unique("accounts");
    await doc(db, accounts, "a").set({ balance: 100 });
    await doc(db, accounts, "b").set({ balance: 0 });
    const result = await db.transaction(async (tx) => {
      const a = await tx.get(doc(db, accounts, "a"));
      const b = await tx.get(doc(db, accounts, "b"));
      tx.update(doc(db, accounts, "a"), { balance: a.balance - 30 });
      tx.update(doc(db, accounts, "b"), { balance: b.balance + 30 });
      return "done";
    });
    assert.equal(result, "done");
    assert.deepEqual(await doc(db, accounts, "a").get(), { balance: 70 });
    assert.deepEqual(await doc(db, accounts, "b").get(), { balance: 30 });
  });

  test("a transaction runs again when what it read changed", async () => {
    const ref = doc(db, unique("c"), "x");
    await ref.set({ n: 0 });
    const attempts = [];
    await db.transaction(async (tx) => {
      const value = await tx.get(ref);
      attempts.push(value.n);
      if (attempts.length === 1) await ref.set({ n: 10 }); // another writer gets in between
      tx.set(ref, { n: value.n + 1 });
    });
    assert.deepEqual(attempts, [0, 10]);
    assert.deepEqual(await ref.get(), { n: 11 });
  });

  test("a transaction gives up with CONFLICT after maxAttempts", async () => {
    const ref = doc(db, unique("c"), "x");
    await ref.set({ n: 0 });
    const raced = db.transaction(
      async (tx) => {
        const value = await tx.get(ref);
        await ref.update({ n: increment(1) });
        tx.set(ref, { n: -1, seen: value.n });
      },
      { maxAttempts: 3 },
    );
    await assert.rejects(raced, (error) => error instanceof ConflictError && error.code === -32007 && error.reason === "CONFLICT");
    assert.deepEqual(await ref.get(), { n: 3 });
  });

  test("8 clients × 25 contended transactional increments all commit (backoff)", async () => {
    const config = await server.clientConfig();
    const clients = Array.from({ length: 8 }, () => new Montybase(config, { WebSocket }));
    const path = [unique("c"), "counter"];
    try {
      await doc(clients[0], ...path).set({ n: 0 });
      await Promise.all(
        clients.map(async (client) => {
          const ref = doc(client, ...path);
          for (let i = 0; i < 25; i++) await client.transaction(async (tx) => tx.set(ref, { n: (await tx.get(ref)).n + 1 }));
        }),
      );
      assert.deepEqual(await doc(db, ...path).get(), { n: 200 });
    } finally {
      await Promise.all(clients.map((client) => client.close()));
    }
  });

  test("a transaction that throws writes nothing", async () => {
    const ref = doc(db, unique("c"), "x");
    await assert.rejects(
      db.transaction(async (tx) => {
        await tx.get(ref);
        tx.set(ref, { n: 1 });
        throw new RangeError("changed my mind");
      }),
      RangeError,
    );
    assert.equal(await ref.get(), null);
  });

  test("a transaction reads before it writes, and needs at least one attempt", async () => {
    const ref = doc(db, unique("c"), "x");
    await rejects(
      db.transaction(async (tx) => {
        tx.set(ref, { n: 1 });
        await tx.get(ref);
      }),
      InvalidArgumentError,
    );
    await rejects(db.transaction(async () => {}, { maxAttempts: 0 }), InvalidArgumentError);
  });
});

test("every error is a MontybaseError with code, reason and data", async () => {
  const c = unique("c");
  await assert.rejects(doc(db, c, "x").update({ a: 1 }), (error) => {
    assert.ok(error instanceof MontybaseError);
    assert.equal(error.code, -32002);
    assert.equal(error.reason, "NOT_FOUND");
    assert.deepEqual(error.data.document, [c, "x"]);
    return true;
  });
});

test("client-side errors carry the JSON Pointer the request would have in data.path", async () => {
  const c = unique("c");
  const at = (path) => (error) => error instanceof InvalidArgumentError && error.data.path === path && error.message.startsWith(`${path}: `);
  await assert.rejects(doc(db, c).add({ name: "Amor", score: NaN }), at("/value/score"));
  await assert.rejects(doc(db, c).add({ a: 1 }, "$key"), at("/path/1"));
  await assert.rejects(doc(db, c, "x").add({ a: 1 }, "key"), at("/path/2"));
  await assert.rejects(doc(db, c, "x").update({ "stats.best": Infinity }), at("/fields/0/1"));
  await assert.rejects(doc(db, c).where("score", ">", 1).where("score", "<", NaN).stream(), at("/query/where/1/2"));
  await assert.rejects(doc(db, c).orderBy("score").startAfter(NaN).get(), at("/query/startAfter/0"));
  await assert.rejects(doc(db, c).sum("$x"), at("/field"));
  assert.throws(() => doc(db, c).orderBy("score").orderBy("name", "sideways"), at("/query/orderBy/1/1"));
  assert.throws(() => doc(db, c, "x").append("posts", "$p"), at("/path/3"));
  const batch = db.batch().set(doc(db, c, "a"), { n: 1 }).update(doc(db, c), { n: 2 }, "b");
  assert.throws(() => batch.delete(doc(db, c), "__x__"), at("/writes/2/path/1"));
  batch.add(doc(db, c), { list: [1, { n: NaN }] });
  await assert.rejects(batch.commit(), at("/writes/2/value/list/1/n"));
  await assert.rejects(
    db.transaction(async (tx) => {
      await tx.get(doc(db, c, "a"));
      tx.set(doc(db, c, "a"), { n: 1 });
      await tx.get(doc(db, c, "b"));
    }),
    at("/reads/1"),
  );
  assert.equal(await doc(db, c).count(), 0); // nothing was written
});

describe("numbers", () => {
  /** Run Python with an admin handle on the test server (remote); `db` and `doc` are in scope. */
  const python = (code) =>
    runPython(
      [
        "import json",
        "from python_client import Montybase, doc",
        `db = Montybase(api=${JSON.stringify(server.endpoint)}, config=${JSON.stringify(join(server.dir, "montybase.json"))})`,
        code,
        "db.close()",
      ].join("\n"),
    );
  /** Python's view of a stored document: each field's repr and type. */
  const seenByPython = async (c, id) =>
    JSON.parse(await python(`print(json.dumps({k: [repr(v), type(v).__name__] for k, v in doc(db, ${JSON.stringify(c)}, ${JSON.stringify(id)}).get().items()}))`));

  test("floats Python writes (1e300, 2.0**53), JavaScript reads and writes back, and Python reads the same", async () => {
    const c = unique("floats");
    await python(`doc(db, ${JSON.stringify(c)}, "py").set({"big": 1e300, "two53": 2.0**53, "neg": -(2.0**60), "small": 1.5, "int": 7})`);
    const value = await doc(db, c, "py").get();
    assert.deepEqual(value, { big: 1e300, two53: 2 ** 53, neg: -(2 ** 60), small: 1.5, int: 7 });
    await doc(db, c, "js").set(value);
    await doc(db, c, "py").update({ two53: value.two53, big: increment(value.big) });
    const original = {
      big: ["1e+300", "float"], two53: ["9007199254740992.0", "float"], neg: ["-1.152921504606847e+18", "float"],
      small: ["1.5", "float"], int: ["7", "int"],
    };
    assert.deepEqual(await seenByPython(c, "js"), original);
    assert.deepEqual(await seenByPython(c, "py"), { ...original, big: ["2e+300", "float"] });
  });

  test("a JavaScript number beyond ±(2^53−1) is stored as a float; NaN, Infinity and BigInt stay refused", async () => {
    const c = unique("floats");
    await doc(db, c, "x").set({ n: 2 ** 53, list: [-(2 ** 53)], safe: 2 ** 53 - 1 });
    assert.deepEqual(await seenByPython(c, "x"), {
      n: ["9007199254740992.0", "float"], list: ["[-9007199254740992.0]", "list"], safe: ["9007199254740991", "int"],
    });
    assert.equal(await doc(db, c).where("n", "==", 2 ** 53).count(), 1);
    for (const bad of [NaN, Infinity, -Infinity, 10n]) await assert.rejects(doc(db, c, "x").set({ n: bad }), InvalidArgumentError);
    assert.deepEqual(await doc(db, c, "x").get(), { n: 2 ** 53, list: [-(2 ** 53)], safe: 2 ** 53 - 1 });
  });
});

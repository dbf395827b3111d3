// The JS client builds exactly the RPC calls (method names and params) the Python client
// builds for the same program: both run against a recording backend and the calls compare equal.

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  Montybase,
  arrayRemove,
  arrayUnion,
  deleteField,
  doc,
  increment,
  maximum,
  minimum,
  serverTimestamp,
} from "../../js_client/index.js";
import { checkParams } from "../../js_client/values.js";
import { runPython } from "./helpers.js";

const ANSWER = {
  id: "x", value: { n: 1 }, docs: [{ id: "x", value: { n: 1 } }], results: [{ id: "x" }, { value: null }],
  uid: "u1", email: "a@b.example", token: "t1",
};

/** A Montybase handle whose calls are recorded (after the client-side checks) instead of sent. */
function recordingDb() {
  const calls = [];
  const db = Object.create(Montybase.prototype);
  Object.defineProperty(db, "_backend", {
    value: {
      async call(method, params) {
        calls.push([method, JSON.parse(JSON.stringify(checkParams(method, params)))]);
        return structuredClone(ANSWER);
      },
      subscribe(params) {
        const { sub: _, ...checked } = checkParams("subscribe", { sub: 1, ...params });
        calls.push(["subscribe", JSON.parse(JSON.stringify(checked))]);
        return Object.assign(() => {}, { ready: Promise.resolve() });
      },
      token: null,
      signedIn(result) {
        this.token = result.token;
        return { uid: result.uid, email: result.email };
      },
      signedOut() {
        const token = this.token;
        this.token = null;
        return token;
      },
    },
  });
  return { db, calls };
}

// [what, JavaScript, Python]: the same call in each client.
const PROGRAMS = [
  ["add", (db) => doc(db, "users").add({ name: "Amor", score: 100 }), 'doc(db, "users").add({"name": "Amor", "score": 100})'],
  ["add with key", (db) => doc(db, "users").add({ a: 1 }, "amor@x.com"), 'doc(db, "users").add({"a": 1}, key="amor@x.com")'],
  ["add on a document", (db) => doc(db, "users/amor").add({ a: [1, { b: null }] }), 'doc(db, "users/amor").add({"a": [1, {"b": None}]})'],
  ["set", (db) => doc(db, "users", "amor").set({ s: "é😀", f: 1.5 }), 'doc(db, "users", "amor").set({"s": "é😀", "f": 1.5})'],
  ["set on a collection", (db) => doc(db, "users").set({ a: 1 }), 'doc(db, "users").set({"a": 1})'],
  ["set with key", (db) => doc(db, "users").set({ a: 1 }, "k"), 'doc(db, "users").set({"a": 1}, key="k")'],
  [
    "update with transforms",
    (db) =>
      doc(db, "p", "x").update({
        "stats.wins": increment(1), best: maximum(5), low: minimum(2), tags: arrayUnion("a", 1), old: arrayRemove("x"),
        at: serverTimestamp(), gone: deleteField(),
      }),
    'doc(db, "p", "x").update({"stats.wins": increment(1), "best": maximum(5), "low": minimum(2), "tags": array_union("a", 1), "old": array_remove("x"), "at": server_timestamp(), "gone": delete_field()})',
  ],
  ["update a literal dotted key", (db) => doc(db, "p", "x").update([[["a.b"], 2]]), 'doc(db, "p", "x").update({("a.b",): 2})'],
  ["update on a collection", (db) => doc(db, "p").update({ a: 2 }, "k"), 'doc(db, "p").update({"a": 2}, key="k")'],
  ["transforms in add", (db) => doc(db, "c").add({ n: increment(3), nested: { m: maximum(4) } }), 'doc(db, "c").add({"n": increment(3), "nested": {"m": maximum(4)}})'],
  ["delete a document", (db) => doc(db, "users", "amor").delete(), 'doc(db, "users", "amor").delete()'],
  ["delete with key", (db) => doc(db, "users").delete("amor"), 'doc(db, "users").delete(key="amor")'],
  ["delete a collection", (db) => doc(db, "users").delete(), 'doc(db, "users").delete()'],
  ["get a document", (db) => doc(db, "users", "amor").get(), 'doc(db, "users", "amor").get()'],
  ["get a collection", (db) => doc(db, "users").get(), 'doc(db, "users").get()'],
  ["get the root", (db) => doc(db).get(), "doc(db).get()"],
  ["get a field", (db) => doc(db, "users", "amor", "stats", "wins").get(), 'doc(db, "users", "amor", "stats", "wins").get()'],
  ["append", (db) => doc(db, "users").append("amor", "posts/p1").get(), 'doc(db, "users").append("amor", "posts/p1").get()'],
  ["stream", (db) => doc(db, "users").stream(), 'doc(db, "users").stream()'],
  ["stream a document", (db) => doc(db, "users", "x").stream(), 'doc(db, "users", "x").stream()'],
  ["exists", (db) => doc(db, "users").exists(), 'doc(db, "users").exists()'],
  ["exist", (db) => doc(db, "users", "x").exist(), 'doc(db, "users", "x").exist()'],
  ["count", (db) => doc(db, "users").count(), 'doc(db, "users").count()'],
  [
    "a leaderboard query",
    (db) => doc(db, "c").where("team", "==", "red").where(["stats", "wins"], ">=", 1).orderBy("score", "desc").startAfter(80, "cat").limit(2).stream(),
    'doc(db, "c").where("team", "==", "red").where(("stats", "wins"), ">=", 1).order_by("score", "desc").start_after(80, "cat").limit(2).stream()',
  ],
  [
    "windows and cursors",
    (db) => doc(db, "c").orderBy("a").orderBy("b", "descending").startAt(1).endBefore(5, 6).offset(2).limitToLast(3).get(),
    'doc(db, "c").order_by("a").order_by("b", "descending").start_at(1).end_before(5, 6).offset(2).limit_to_last(3).get()',
  ],
  ["limitToLast replaced by limit", (db) => doc(db, "c").orderBy("a").limitToLast(3).limit(4).endAt(9).stream(), 'doc(db, "c").order_by("a").limit_to_last(3).limit(4).end_at(9).stream()'],
  ["startAfter replaced by startAt", (db) => doc(db, "c").orderBy("a").startAfter(1).startAt(2).count(), 'doc(db, "c").order_by("a").start_after(1).start_at(2).count()'],
  ["every operator", (db) => doc(db, "c").where("a", "!=", "1").where("b", "in", [1, 2]).where("c", "not-in", [3]).where("d", "array-contains", "x").where("e", "array-contains-any", ["y"]).where("f", "<", 1).where("g", "<=", 2).where("h", ">", 3).exists(),
    'doc(db, "c").where("a", "!=", "1").where("b", "in", [1, 2]).where("c", "not-in", [3]).where("d", "array-contains", "x").where("e", "array-contains-any", ["y"]).where("f", "<", 1).where("g", "<=", 2).where("h", ">", 3).exists()'],
  ["sum", (db) => doc(db, "c").sum("stats.wins"), 'doc(db, "c").sum("stats.wins")'],
  ["avg of a literal key", (db) => doc(db, "c").where("x", "==", true).avg(["a.b"]), 'doc(db, "c").where("x", "==", True).avg(("a.b",))'],
  ["a query on a document", (db) => doc(db, "c", "x").where("score", "==", 100).exists(), 'doc(db, "c", "x").where("score", "==", 100).exists()'],
  ["listen to a document", (db) => doc(db, "c", "x").onSnapshot(() => {}), 'doc(db, "c", "x").on_snapshot(lambda s: None)'],
  ["listen to a collection", (db) => doc(db, "c").onSnapshot(() => {}), 'doc(db, "c").on_snapshot(lambda s: None)'],
  [
    "listen to a top 10",
    (db) => doc(db, "scores").where("team", "==", "red").orderBy("score", "desc").limit(10).onSnapshot(() => {}),
    'doc(db, "scores").where("team", "==", "red").order_by("score", "desc").limit(10).on_snapshot(lambda s: None)',
  ],
  ["listen to a query on a document", (db) => doc(db, "c", "x").query().onSnapshot(() => {}), 'doc(db, "c", "x").query().on_snapshot(lambda s: None)'],
  ["sign up", (db) => db.signUp("a@b.example", "correct horse"), 'db.sign_up("a@b.example", "correct horse")'],
  [
    "sign in, then out",
    async (db) => {
      await db.signIn("a@b.example", "correct horse");
      await db.signOut();
    },
    '(db.sign_in("a@b.example", "correct horse"), db.sign_out())',
  ],
  ["sign out while signed out", (db) => db.signOut(), "db.sign_out()"],
  [
    "a batch",
    (db) => db.batch().set(doc(db, "c", "a"), { n: 1 }).add(doc(db, "c"), { n: 2 }, "b").update(doc(db, "c", "a"), { n: increment(10) }).delete(doc(db, "c", "gone")).delete(doc(db, "c"), "k").commit(),
    'db.batch().set(doc(db, "c", "a"), {"n": 1}).add(doc(db, "c"), {"n": 2}, key="b").update(doc(db, "c", "a"), {"n": increment(10)}).delete(doc(db, "c", "gone")).delete(doc(db, "c"), key="k").commit()',
  ],
  [
    "a transaction",
    (db) => db.transaction(async (tx) => {
      const a = await tx.get(doc(db, "accounts", "a"));
      tx.update(doc(db, "accounts", "a"), { balance: a.n - 30 });
      tx.set(doc(db, "accounts", "b"), { balance: 30 });
    }),
    'db.transaction(lambda tx: (tx.update(doc(db, "accounts", "a"), {"balance": tx.get(doc(db, "accounts", "a"))["n"] - 30}), tx.set(doc(db, "accounts", "b"), {"balance": 30})))',
  ],
];

const PYTHON_PROGRAM = `
import json, sys
from python_client import Montybase, doc, increment, maximum, minimum, array_union, array_remove, server_timestamp, delete_field

ANSWER = json.loads(sys.argv[1]) if len(sys.argv) > 1 else None

class Recorder:
    def __init__(self):
        self.calls = []
    token = user = None
    def call(self, method, params):
        self.calls.append([method, params])
        return json.loads(ANSWER_TEXT)
    def subscribe(self, params, callback):
        self.calls.append(["subscribe", params])
        return lambda: None
    def close(self):
        pass

ANSWER_TEXT = ${JSON.stringify(JSON.stringify(ANSWER))}
db = Montybase.__new__(Montybase)
out = []
for source in json.loads(${JSON.stringify(JSON.stringify(PROGRAMS.map(([, , python]) => python)))}):
    db._backend = Recorder()
    eval(source)
    out.append(db._backend.calls)
print(json.dumps(out))
`;

test("every call builds the same method and params as the Python client", async () => {
  const python = JSON.parse(await runPython(PYTHON_PROGRAM));
  assert.equal(python.length, PROGRAMS.length);
  for (const [index, [what, js]] of PROGRAMS.entries()) {
    const { db, calls } = recordingDb();
    await js(db);
    assert.deepEqual(calls, python[index], what);
  }
});

test("a query's wire form is the documented one", () => {
  const { db } = recordingDb();
  const query = doc(db, "c").where("team", "==", "red").where(["stats", "wins"], ">=", 1).orderBy("score", "desc").startAfter(80, "cat").limit(2);
  assert.deepEqual(query.wire, {
    path: ["c"],
    where: [["team", "==", "red"], [["stats", "wins"], ">=", 1]],
    orderBy: [["score", "desc"]],
    startAfter: [80, "cat"],
    limit: 2,
  });
});

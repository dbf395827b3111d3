// Listeners (DESIGN.md §3.4, §4): every case of tests/cases/listeners.json over a real server
// (tests/test_listeners.py is the Python twin), then delivery, unsubscribing, callbacks that
// throw, many listeners on one connection, notification batches mixed with answers (a scripted
// server), and a listener that lives through a server restart.
//
// Every wait is bounded. A step that must deliver nothing is checked with a marker document
// listened to on the same handle and written after the step: snapshots of one handle arrive in
// commit order, so once the marker's has arrived every snapshot of the step has too.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import WebSocket from "ws";

import { InvalidArgumentError, Montybase, PermissionDeniedError, UnavailableError, doc } from "../../js_client/index.js";
import { applyChanges } from "../../js_client/listen.js";
import { Marker, PYTHON, ROOT, Server, Snapshots, WAIT, closeServer, openServer, pythonEnv, readJson, runPython, tempDir, unique, writeConfig } from "./helpers.js";

const CASES = (await readJson("tests", "cases", "listeners.json")).cases;

let server;
let db; // the client key (a fresh config opens documents to it)
let admin;

before(async () => ({ server, db, admin } = await openServer()));
after(() => closeServer({ server, db, admin }));

const ids = (docs) => docs.map((entry) => (typeof entry === "string" ? entry : entry.id));

/** Replay changes (sequential indexes) on a list of ids; each oldIndex must point at its document. */
function replayIds(start, changes) {
  const out = [...start];
  for (const change of changes) {
    if (change.oldIndex >= 0) {
      assert.equal(out[change.oldIndex], change.id, `${JSON.stringify(change)}: oldIndex points elsewhere in ${out}`);
      out.splice(change.oldIndex, 1);
    }
    if (change.newIndex >= 0) {
      assert.ok(change.newIndex <= out.length, `${JSON.stringify(change)}: newIndex beyond ${out}`);
      out.splice(change.newIndex, 0, change.id);
    }
  }
  return out;
}

/** The case's wire query built through the public API (which must give the same wire form). */
function buildQuery(handle, collection, wire) {
  let query = doc(handle, collection).query();
  for (const [field, op, value] of wire.where ?? []) query = query.where(field, op, value);
  for (const [field, direction] of wire.orderBy ?? []) query = query.orderBy(field, direction);
  for (const name of ["limit", "limitToLast", "offset"]) if (name in wire) query = query[name](wire[name]);
  for (const name of ["startAt", "startAfter", "endAt", "endBefore"]) if (name in wire) query = query[name](...wire[name]);
  assert.deepEqual(query.wire, { path: [collection], ...wire });
  return query;
}

/** One write through its method; several through one batch (one commit). */
async function applyWrites(handle, writes, rename) {
  const target = (write) => {
    const path = [rename(write.path[0]), ...write.path.slice(1)];
    return { collection: doc(handle, ...path.slice(0, -1)), key: path.at(-1), ref: doc(handle, ...path) };
  };
  const fields = (pairs) => pairs.map(([field, value]) => [field, value]);
  if (writes.length === 1) {
    const [write] = writes;
    const { collection, key, ref } = target(write);
    if (write.op === "add") await collection.add(write.value, key);
    else if (write.op === "set") await collection.set(write.value, key);
    else if (write.op === "update") await collection.update(fields(write.fields), key);
    else await ref.delete();
    return;
  }
  const batch = handle.batch();
  for (const write of writes) {
    const { collection, key, ref } = target(write);
    if (write.op === "add") batch.add(collection, write.value, key);
    else if (write.op === "set") batch.set(collection, write.value, key);
    else if (write.op === "update") batch.update(collection, fields(write.fields), key);
    else batch.delete(ref);
  }
  await batch.commit();
}

async function seed(handle, collection, documents) {
  const entries = Object.entries(documents);
  if (!entries.length) return;
  const batch = handle.batch();
  for (const [id, value] of entries) batch.set(doc(handle, collection), value, id);
  await batch.commit();
}

function checkFirstQuerySnapshot(snapshot, expectedIds, documents) {
  assert.deepEqual(Object.keys(snapshot).sort(), ["changes", "docs"]);
  assert.deepEqual(ids(snapshot.docs), expectedIds);
  for (const entry of snapshot.docs) assert.deepEqual(entry.value, documents[entry.id]);
  assert.deepEqual(
    snapshot.changes.map((c) => [c.type, c.id, c.oldIndex, c.newIndex]),
    expectedIds.map((id, j) => ["added", id, -1, j]),
  );
  snapshot.changes.forEach((change, j) => assert.deepEqual(change.value, snapshot.docs[j].value));
}

function checkQueryStep(previous, snapshot, expect, where) {
  assert.deepEqual(ids(snapshot.docs), ids(expect.docs), `${where}: docs`);
  const values = new Map(snapshot.docs.map((d) => [d.id, d.value]));
  const before = new Map(previous.docs.map((d) => [d.id, d.value]));
  for (const entry of expect.docs) {
    if (typeof entry !== "string") assert.deepEqual(values.get(entry.id), entry.value, `${where}: value of ${entry.id}`);
  }
  const pairs = (changes) => changes.map((c) => `${c.type} ${c.id}`).sort();
  assert.deepEqual(pairs(snapshot.changes), pairs(expect.changes), `${where}: changes ${JSON.stringify(snapshot.changes)}`);
  for (const change of snapshot.changes) {
    assert.deepEqual(Object.keys(change).sort(), ["id", "newIndex", "oldIndex", "type", "value"], where);
    const source = change.type === "removed" ? before : values;
    assert.deepEqual(change.value, source.get(change.id), `${where}: value in ${JSON.stringify(change)}`);
  }
  assert.deepEqual(replayIds(ids(previous.docs), snapshot.changes), ids(snapshot.docs), `${where}: the changes do not rebuild the docs`);
  if (expect.changes.length === 1) {
    const [want] = expect.changes;
    const [got] = snapshot.changes;
    assert.deepEqual([got.oldIndex, got.newIndex], [want.oldIndex, want.newIndex], where);
  }
}

function checkDocumentSnapshot(snapshot, expect, where) {
  assert.deepEqual(snapshot, { id: expect.id, value: expect.value, exists: expect.exists }, where);
}

describe("the shared cases (tests/cases/listeners.json)", () => {
  for (const item of CASES) {
    test(item.name, async () => {
      // Each case gets collections of its own on the one server.
      const names = { c: unique("c"), other: unique("other") };
      const rename = (name) => names[name] ?? name;
      await seed(db, names.c, item.documents);
      const marker = await new Marker(doc(db, unique("marker"), "m")).ready();
      const target = "document" in item ? doc(db, names.c, item.document) : buildQuery(db, names.c, item.query);
      const got = new Snapshots();
      const stop = target.onSnapshot(got.callback, got.onError);
      try {
        await stop.ready;
        const first = await got.next();
        if ("document" in item) checkDocumentSnapshot(first, item.initial, "initial");
        else checkFirstQuerySnapshot(first, ids(item.initial.docs), item.documents);
        let previous = first;
        for (const [number, step] of item.steps.entries()) {
          const where = `step ${number + 1}${step.note ? ` (${step.note})` : ""}`;
          await applyWrites(db, step.writes, rename);
          await marker.sync();
          const fresh = got.pending();
          if (step.expect === null) {
            assert.deepEqual(fresh, [], `${where}: expected no snapshot`);
            continue;
          }
          assert.equal(fresh.length, 1, `${where}: expected one snapshot, got ${JSON.stringify(fresh)}`);
          const [snapshot] = fresh;
          if ("document" in item) {
            checkDocumentSnapshot(snapshot, step.expect, where);
            assert.deepEqual(await target.get(), snapshot.value, `${where}: a read disagrees`);
          } else {
            checkQueryStep(previous, snapshot, step.expect, where);
            assert.deepEqual(await target.stream(), snapshot.docs, `${where}: a query disagrees`);
          }
          previous = snapshot;
        }
        assert.deepEqual(got.errors, []);
      } finally {
        stop();
        marker.stop();
      }
    });
  }
});

describe("delivery", () => {
  test("applyChanges rebuilds docs with sequential indexes and leaves its input alone", () => {
    const docs = [{ id: "a", value: 1 }, { id: "b", value: 2 }, { id: "c", value: 3 }];
    const changes = [
      { type: "removed", id: "c", value: 3, oldIndex: 2, newIndex: -1 },
      { type: "added", id: "d", value: 4, oldIndex: -1, newIndex: 1 },
      { type: "modified", id: "a", value: 5, oldIndex: 0, newIndex: 2 },
    ];
    assert.deepEqual(applyChanges(docs, changes), [{ id: "d", value: 4 }, { id: "b", value: 2 }, { id: "a", value: 5 }]);
    assert.deepEqual(ids(docs), ["a", "b", "c"]);
  });

  test("every Python function or class that a js_client comment names exists in the file it names", async () => {
    // "server/x.py `name`" or "python_client/x.py `Class.method`", possibly across a comment's line break.
    const reference = /((?:server|python_client)\/\w+\.py)(?:'s)?[\s*]*`([\w.]+)`/g;
    let checked = 0;
    for (const file of (await readdir(join(ROOT, "js_client"))).filter((name) => name.endsWith(".js"))) {
      const source = await readFile(join(ROOT, "js_client", file), "utf8");
      for (const [, python, name] of source.matchAll(reference)) {
        const text = await readFile(join(ROOT, python), "utf8");
        for (const part of name.split(".")) {
          assert.match(text, new RegExp(`^\\s*(?:async )?(?:def|class) ${part}\\b`, "m"), `js_client/${file} names ${python} \`${name}\``);
        }
        checked += 1;
      }
    }
    assert.ok(checked >= 2, `only ${checked} references found`);
  });

  test("the first callback carries the current state: a query, a collection, a document, a missing one", async () => {
    const scores = unique("scores");
    const other = unique("other");
    const documents = {};
    for (let i = 0; i < 12; i++) documents[`p${String(i).padStart(2, "0")}`] = { score: (i * 7) % 11, name: `player ${i}` };
    await seed(db, scores, documents);
    await seed(db, other, { a: { n: 1 } });
    const [top, whole, one, missing] = [new Snapshots(), new Snapshots(), new Snapshots(), new Snapshots()];
    const stops = [
      doc(db, scores).orderBy("score", "desc").limit(5).onSnapshot(top.callback),
      doc(db, scores).onSnapshot(whole.callback),
      doc(db, other, "a").onSnapshot(one.callback),
      doc(db, other, "nope").onSnapshot(missing.callback),
    ];
    try {
      const byScore = Object.keys(documents).sort((a, b) => documents[b].score - documents[a].score || (a < b ? -1 : 1));
      checkFirstQuerySnapshot(await top.next(), byScore.slice(0, 5), documents);
      checkFirstQuerySnapshot(await whole.next(), Object.keys(documents).sort(), documents);
      assert.deepEqual(await one.next(), { id: "a", value: { n: 1 }, exists: true });
      assert.deepEqual(await missing.next(), { id: "nope", value: null, exists: false });
      await Promise.all(stops.map((stop) => stop.ready));
    } finally {
      stops.forEach((stop) => stop());
    }
  });

  test("an empty result first, then the first document", async () => {
    const name = unique();
    const got = new Snapshots();
    const stop = doc(db, name).where("team", "==", "red").onSnapshot(got.callback);
    try {
      assert.deepEqual(await got.next(), { docs: [], changes: [] });
      await doc(db, name).set({ team: "red" }, "a");
      assert.deepEqual(await got.next(), {
        docs: [{ id: "a", value: { team: "red" } }],
        changes: [{ type: "added", id: "a", value: { team: "red" }, oldIndex: -1, newIndex: 0 }],
      });
    } finally {
      stop();
    }
  });

  test("documents enter and leave a limit window as added and removed", async () => {
    const name = unique("top");
    await seed(db, name, { a: { s: 30 }, b: { s: 20 }, c: { s: 10 } });
    const got = new Snapshots();
    const stop = doc(db, name).orderBy("s", "desc").limit(2).onSnapshot(got.callback);
    try {
      assert.deepEqual(ids((await got.next()).docs), ["a", "b"]);
      await doc(db, name).set({ s: 25 }, "d"); // enters at 1, pushing b out
      let snapshot = await got.next();
      assert.deepEqual(ids(snapshot.docs), ["a", "d"]);
      assert.deepEqual(snapshot.changes, [
        { type: "removed", id: "b", value: { s: 20 }, oldIndex: 1, newIndex: -1 },
        { type: "added", id: "d", value: { s: 25 }, oldIndex: -1, newIndex: 1 },
      ]);
      await doc(db, name, "a").update({ s: 5 }); // leaves; b comes back
      snapshot = await got.next();
      assert.deepEqual(ids(snapshot.docs), ["d", "b"]);
      assert.deepEqual(snapshot.changes.map((c) => [c.type, c.id]).sort(), [["added", "b"], ["removed", "a"]]);
      await doc(db, name, "c").update({ s: 1 }); // below the window: nothing
      await doc(db, name, "d").delete();
      snapshot = await got.next();
      assert.deepEqual(ids(snapshot.docs), ["b", "a"]);
      assert.deepEqual(got.pending(), []);
    } finally {
      stop();
    }
  });

  test("unsubscribe stops delivery at once; twice is harmless; the same listener can start again", async () => {
    const name = unique();
    const marker = await new Marker(doc(db, unique("marker"), "m")).ready();
    const [query, one] = [new Snapshots(), new Snapshots()];
    const stopQuery = doc(db, name).orderBy("n").limit(3).onSnapshot(query.callback);
    const stopOne = doc(db, name, "a").onSnapshot(one.callback);
    try {
      await query.next();
      await one.next();
      await doc(db, name).set({ n: 1 }, "a");
      await query.next();
      await one.next();
      stopQuery();
      stopOne();
      for (let i = 0; i < 5; i++) {
        await doc(db, name).set({ n: -i }, `z${i}`);
        await doc(db, name).update({ n: 100 + i }, "a");
      }
      await marker.sync();
      assert.deepEqual([query.pending(), one.pending()], [[], []]);
      stopQuery();
      stopOne();
      const again = new Snapshots();
      const stopAgain = doc(db, name).orderBy("n").limit(3).onSnapshot(again.callback);
      assert.deepEqual(ids((await again.next()).docs), ["z4", "z3", "z2"]);
      stopAgain();
    } finally {
      marker.stop();
    }
  });

  test("a write right after unsubscribe, in the same frame as other news, calls nobody back", async () => {
    // Two listeners on one document: their news of one commit arrive as one batch frame; each
    // callback stops the other, so exactly one of them hears of the write.
    const name = unique();
    const heard = [];
    const stops = {};
    for (const who of ["first", "second"]) {
      const other = who === "first" ? "second" : "first";
      let seen = 0;
      stops[who] = doc(db, name, "a").onSnapshot(() => {
        seen += 1;
        if (seen === 2) {
          heard.push(who);
          stops[other]();
        }
      });
    }
    await Promise.all(Object.values(stops).map((stop) => stop.ready));
    await doc(db, name).set({ n: 1 }, "a");
    await doc(db, name).set({ n: 2 }, "a");
    assert.equal(heard.length, 1, JSON.stringify(heard));
    Object.values(stops).forEach((stop) => stop());
  });

  test("a callback may unsubscribe its own listener", async () => {
    const name = unique();
    const marker = await new Marker(doc(db, unique("marker"), "m")).ready();
    const seen = [];
    let stop = null;
    stop = doc(db, name).onSnapshot((snapshot) => {
      seen.push(ids(snapshot.docs));
      if (snapshot.docs.length === 1) stop();
    });
    await stop.ready;
    await doc(db, name).set({ n: 1 }, "a");
    await doc(db, name).set({ n: 2 }, "b");
    await marker.sync();
    assert.deepEqual(seen, [[], ["a"]]);
    marker.stop();
  });

  test("a callback that throws is reported and the listener keeps working; others are untouched", async (t) => {
    const reported = [];
    t.mock.method(console, "error", (...args) => reported.push(args));
    const name = unique();
    const calm = new Snapshots();
    let calls = 0;
    const stopAngry = doc(db, name).onSnapshot(() => {
      calls += 1;
      throw new Error(`angry ${calls}`);
    });
    const stopCalm = doc(db, name).onSnapshot(calm.callback);
    try {
      await calm.next();
      await doc(db, name).set({ n: 1 }, "a");
      await doc(db, name).set({ n: 2 }, "b");
      await calm.waitFor((items) => items.length === 3, "three snapshots");
      assert.equal(calls, 3);
      assert.equal(reported.length, 3);
      assert.match(String(reported[0][0]), /callback threw/);
      assert.equal(reported[2][1].message, "angry 3");
      assert.deepEqual(await doc(db, name).count(), 2); // the client is fine
    } finally {
      stopAngry();
      stopCalm();
    }
  });

  test("bad arguments throw at once; a closed handle is UNAVAILABLE", async () => {
    assert.throws(() => doc(db, "c").onSnapshot("not a function"), InvalidArgumentError);
    assert.throws(() => doc(db, "c").onSnapshot(() => {}, 42), InvalidArgumentError);
    assert.throws(() => doc(db, "c").where("a", "~", 1).onSnapshot(() => {}), InvalidArgumentError);
    const closed = new Montybase(await server.clientConfig(), { WebSocket });
    await closed.close();
    assert.throws(() => doc(closed, "c").onSnapshot(() => {}), UnavailableError);
  });

  test("a refused listener calls onError once and rejects ready; without onError it is reported", async (t) => {
    const reported = [];
    t.mock.method(console, "error", (...args) => reported.push(args));
    // A server without rules: every listener of a client key is refused.
    const dir = await tempDir();
    await writeConfig(dir, { rules: undefined });
    const strict = await Server.start({ dir });
    const client = new Montybase(await strict.clientConfig(), { WebSocket });
    try {
      const got = new Snapshots();
      const stop = doc(client, "c").onSnapshot(got.callback, got.onError);
      await assert.rejects(stop.ready, PermissionDeniedError);
      assert.ok((await got.error()) instanceof PermissionDeniedError);
      const silent = doc(client, "c", "a").onSnapshot(() => {});
      await assert.rejects(silent.ready, (error) => error.reason === "PERMISSION_DENIED");
      assert.equal(reported.length, 1);
      assert.equal(reported[0][1].reason, "PERMISSION_DENIED");
      assert.deepEqual(got.items, []);
      assert.equal(got.errors.length, 1);
      stop(); // harmless after a refusal
    } finally {
      await client.close();
      await strict.cleanup();
    }
  });
});

describe("many listeners on one connection", () => {
  const QUERIES = [
    (ref) => ref.orderBy("score", "desc").limit(10),
    (ref) => ref.orderBy("score").limit(3),
    (ref) => ref.where("team", "==", "red"),
    (ref) => ref.where("team", "in", ["blue", "green"]).orderBy("score", "desc"),
    (ref) => ref.where("score", ">=", 50).orderBy("score").limit(5),
    (ref) => ref.orderBy("score", "desc").limitToLast(4),
    (ref) => ref.orderBy("score").offset(2).limit(4),
    (ref) => ref.query(),
  ];

  test("forty listeners follow random writes; the stopped ones hear nothing more", async () => {
    const name = unique("many");
    const ref = doc(db, name);
    const marker = await new Marker(doc(db, unique("marker"), "m")).ready();
    const listeners = [];
    for (let i = 0; i < 40; i++) {
      const target = i < 32 ? QUERIES[i % QUERIES.length](ref) : doc(db, name, `p${i % 8}`);
      const got = new Snapshots();
      listeners.push({ target, got, stop: target.onSnapshot(got.callback, got.onError) });
    }
    let seed = 7;
    const random = (n) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    const teams = ["red", "blue", "green"];
    const writes = async (count) => {
      for (let i = 0; i < count; i++) {
        const key = `p${random(12)}`;
        if (random(10) === 0) await ref.delete(key);
        else await ref.set({ score: random(100), team: teams[random(3)] }, key);
      }
    };
    const check = async (which) => {
      await marker.sync();
      for (const { target, got } of which) {
        const last = got.items.at(-1);
        if ("exists" in last) assert.deepEqual(last.value, await target.get());
        else assert.deepEqual(last.docs, await target.stream(), String(target));
      }
    };
    try {
      await Promise.all(listeners.map(({ stop }) => stop.ready));
      await writes(80);
      await check(listeners);
      const stopped = listeners.filter((_, i) => i % 2 === 0);
      stopped.forEach(({ stop }) => stop());
      const frozen = stopped.map(({ got }) => got.items.length);
      await writes(60);
      await check(listeners.filter((_, i) => i % 2 === 1));
      assert.deepEqual(stopped.map(({ got }) => got.items.length), frozen);
      assert.ok(listeners.every(({ got }) => got.errors.length === 0));
    } finally {
      listeners.forEach(({ stop }) => stop());
      marker.stop();
    }
  });

  test("queries equal only loosely (true and 1, false and 0) do not share results", async () => {
    const name = unique();
    await seed(db, name, { t: { v: true }, one: { v: 1 }, f: { v: false }, zero: { v: 0 } });
    const got = [true, 1, false, 0].map(() => new Snapshots());
    const stops = [true, 1, false, 0].map((value, i) => doc(db, name).where("v", "==", value).onSnapshot(got[i].callback));
    try {
      const firsts = [];
      for (const snapshots of got) firsts.push(ids((await snapshots.next()).docs));
      assert.deepEqual(firsts, [["t"], ["one"], ["f"], ["zero"]]);
    } finally {
      stops.forEach((stop) => stop());
    }
  });
});

/** A scripted MBSC1 server (tests/js/scripted_server.py) that sends mixed batch frames. */
async function scriptedServer(key) {
  const child = spawn(PYTHON, [join(ROOT, "tests", "js", "scripted_server.py"), key], { env: pythonEnv(), stdio: ["ignore", "pipe", "pipe"] });
  const reap = () => child.kill("SIGKILL");
  process.once("exit", reap);
  let stderr = "";
  child.stderr.setEncoding("utf8").on("data", (text) => (stderr += text));
  const port = await new Promise((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => reject(new Error(`the scripted server did not start: ${stderr}`)), WAIT);
    child.stdout.setEncoding("utf8").on("data", (text) => {
      out += text;
      const match = /^port (\d+)$/m.exec(out);
      if (match) {
        clearTimeout(timer);
        resolve(Number(match[1]));
      }
    });
    child.on("exit", (code) => reject(new Error(`the scripted server exited with ${code}: ${stderr}`)));
  });
  return {
    endpoint: `ws://127.0.0.1:${port}`,
    stop() {
      process.removeListener("exit", reap);
      child.kill("SIGKILL");
    },
  };
}

describe("notification batches", () => {
  test("a frame may be one notification, a batch of them, or a batch mixing answers and notifications", async () => {
    const key = "mb-scripted-test-key-0123456789";
    const scripted = await scriptedServer(key);
    const client = new Montybase({ apiKey: key, endpoint: scripted.endpoint }, { WebSocket });
    try {
      const [first, second] = [new Snapshots(), new Snapshots()];
      // [answer, first snapshot] in one frame: the answer comes first here.
      const stopFirst = doc(client, "c").onSnapshot(first.callback, first.onError);
      await stopFirst.ready;
      assert.deepEqual(await first.next(), {
        docs: [{ id: "a", value: { n: 1 } }],
        changes: [{ type: "added", id: "a", value: { n: 1 }, oldIndex: -1, newIndex: 0 }],
      });
      const stopSecond = doc(client, "c").onSnapshot(second.callback, second.onError);
      await stopSecond.ready;
      await second.next();
      // [news for both, news for an unknown listener, a stray answer, the answer, more news]: every
      // notification is delivered, in order, by the time the call returns.
      assert.deepEqual(await doc(client, "c", "x").get(), { n: 2 });
      for (const got of [first, second]) {
        const [added, removed] = got.pending();
        assert.deepEqual(added.docs, [{ id: "a", value: { n: 1 } }, { id: "b", value: { n: 2 } }]);
        assert.deepEqual(removed, {
          docs: [{ id: "b", value: { n: 2 } }],
          changes: [{ type: "removed", id: "a", value: { n: 1 }, oldIndex: 0, newIndex: -1 }],
        });
      }
      // A lone notification frame, then the answer in a frame of its own.
      await doc(client, "c").set({ n: 3 }, "z");
      assert.deepEqual(ids(first.pending()[0].docs), ["b", "z"]);
      assert.deepEqual(ids(second.pending()[0].docs), ["b", "z"]);
      stopFirst();
      await doc(client, "c").set({ n: 4 }, "y"); // the server still sends news for both: only the second hears
      assert.deepEqual(first.pending(), []);
      assert.deepEqual(ids(second.pending()[0].docs), ["b", "y", "z"]);
      stopSecond();
      assert.deepEqual([first.errors, second.errors], [[], []]);
    } finally {
      await client.close();
      scripted.stop();
    }
  });
});

describe("reconnecting", () => {
  test("after the server is killed and restarted, a listener delivers the current state again and goes on", async () => {
    const dir = await tempDir();
    await writeConfig(dir, { hot: true });
    const own = await Server.start({ dir });
    const listening = new Montybase(await own.clientConfig(), { WebSocket });
    let writing = null;
    try {
      const [query, one] = [new Snapshots(), new Snapshots()];
      await doc(listening, "scores").set({ score: 1 }, "a");
      const stops = [doc(listening, "scores").onSnapshot(query.callback), doc(listening, "scores", "b").onSnapshot(one.callback)];
      await Promise.all(stops.map((stop) => stop.ready));
      assert.deepEqual(ids((await query.next()).docs), ["a"]);
      assert.equal((await one.next()).exists, false);

      await own.restart(); // SIGKILL, then the same port and folder
      writing = new Montybase(await own.clientConfig(), { WebSocket });
      await doc(writing, "scores").set({ score: 2 }, "b");
      const items = await query.waitFor((all) => all.length > 1 && ids(all.at(-1).docs).join() === "a,b", "the state after the restart", 15_000);
      const fresh = items.slice(1);
      // The resubscription delivered a full snapshot (every document added), not only the news.
      assert.ok(
        fresh.some((s) => s.changes.length === s.docs.length && s.changes.every((c) => c.type === "added" && c.oldIndex === -1)),
        JSON.stringify(fresh),
      );
      assert.deepEqual(items.at(-1).docs, [{ id: "a", value: { score: 1 } }, { id: "b", value: { score: 2 } }]);
      await one.waitFor((all) => all.at(-1).exists, "document b", 15_000);
      // And it keeps listening on the new connection.
      await doc(writing, "scores").set({ score: 3 }, "c");
      await query.waitFor((all) => ids(all.at(-1).docs).join() === "a,b,c", "a change after the restart");
      stops.forEach((stop) => stop());
    } finally {
      await listening.close();
      await writing?.close();
      await own.cleanup();
    }
  });

  test("while the server is down it keeps trying (backoff up to about 2 s) and needs no call to come back", async () => {
    const dir = await tempDir();
    await writeConfig(dir, { hot: true });
    const own = await Server.start({ dir });
    const listening = new Montybase(await own.clientConfig(), { WebSocket });
    try {
      const got = new Snapshots();
      const stop = doc(listening, "c", "a").onSnapshot(got.callback);
      await got.next();
      await own.stop("SIGKILL");
      await new Promise((resolve) => setTimeout(resolve, 2500)); // several refused attempts
      await own.restart();
      await runWriter(own, `doc(db, "c").set({"n": 1}, key="a")`);
      assert.deepEqual((await got.waitFor((all) => all.at(-1).exists, "the document", 15_000)).at(-1), { id: "a", value: { n: 1 }, exists: true });
      stop();
    } finally {
      await listening.close();
      await own.cleanup();
    }
  });
});

/** Write with the Python client and the admin key (a program beside the server). */
async function runWriter(own, code) {
  await runPython(
    `from python_client import Montybase, doc\ndb = Montybase(api=${JSON.stringify(own.endpoint)}, config=${JSON.stringify(join(own.dir, "montybase.json"))})\n${code}\ndb.close()`,
  );
}

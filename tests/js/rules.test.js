// Access rules from the JS client over real servers (DESIGN.md §8; tests/test_rules.py is the
// Python twin): every row of tests/cases/rules.json, then data type rules, size limits and rate
// limits: each refusal with its error class, code, reason and data, nothing written, and a
// running listener told nothing.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import WebSocket from "ws";

import {
  ConnectionLostError,
  LimitExceededError,
  Montybase,
  MontybaseError,
  PermissionDeniedError,
  Query,
  RateLimitedError,
  ValidationError,
  doc,
  increment,
} from "../../js_client/index.js";
import { Marker, Server, Snapshots, firstSnapshot, readJson, tempDir, writeConfig } from "./helpers.js";

const CASES = await readJson("tests", "cases", "rules.json");
const PASSWORD = "correct horse battery";

/** A server whose montybase.json holds these `rules` (and `limits`) from its first start. */
async function serve(rules, limits) {
  const dir = await tempDir();
  await writeConfig(dir, { rules, ...(limits ? { limits } : {}), storageBucket: ":memory:" });
  return Server.start({ dir });
}

async function handles(server, signUps = []) {
  const client = await server.clientConfig();
  const out = { admin: new Montybase(await server.adminConfig(), { WebSocket, endpoint: server.endpoint }) };
  const uids = {};
  for (const name of ["anonymous", ...signUps]) out[name] = new Montybase(client, { WebSocket });
  await Promise.all(signUps.map(async (name) => (uids[name] = (await out[name].signUp(`${name}@rules.example`, PASSWORD)).uid)));
  return { handles: out, uids };
}

/** "allowed" if the promise fulfils, else the reason of the Montybase error it rejects with. */
async function reason(promise) {
  try {
    await promise;
  } catch (error) {
    if (!(error instanceof MontybaseError)) throw error;
    return error.reason;
  }
  return "allowed";
}

describe("the shared table (tests/cases/rules.json)", () => {
  let server;
  let principals;
  let placeholders;
  let dirty = true;
  const collections = [...new Set([...Object.keys(CASES.seed), ...CASES.rows.map((row) => row.path)].filter(Boolean).map((path) => path.split("/")[0]))].sort();

  const sub = (value) => {
    if (typeof value === "string") return Object.hasOwn(placeholders, value) ? placeholders[value] : value;
    if (Array.isArray(value)) return value.map(sub);
    if (value !== null && typeof value === "object") return Object.fromEntries(Object.entries(value).map(([key, item]) => [key, sub(item)]));
    return value;
  };
  const segments = (path) => (path ? path.split("/").map(sub) : []);

  async function reset() {
    const admin = principals.admin;
    const batch = admin.batch();
    for (const name of collections) batch.delete(doc(admin, name));
    for (const [path, value] of Object.entries(CASES.seed)) batch.set(doc(admin, ...segments(path)), sub(value));
    await batch.commit();
    dirty = false;
  }

  before(async () => {
    server = await serve(CASES.rules);
    const { handles: all, uids } = await handles(server, ["owner", "other", "user"]);
    principals = all;
    placeholders = Object.fromEntries(Object.entries(uids).map(([name, uid]) => [`$${name}`, uid]));
  });

  after(async () => {
    await Promise.all(Object.values(principals ?? {}).map((handle) => handle.close()));
    await server?.cleanup();
  });

  function checkIds(row, got) {
    const expected = sub(row.ids);
    const ordered = Boolean(row.query?.orderBy);
    assert.deepEqual(ordered ? got : [...got].sort(), ordered ? expected : [...expected].sort(), JSON.stringify(row));
  }

  for (const [index, row] of CASES.rows.entries()) {
    const name = `${String(index).padStart(3, "0")}-${row.principal}-${row.op}-${row.path || "(root)"}-${row.expect}`;
    test(name, async () => {
      if (dirty) await reset();
      const handle = principals[row.principal];
      const admin = principals.admin;
      const path = segments(row.path);
      const ref = doc(handle, ...path);
      const isDocument = path.length > 0 && path.length % 2 === 0;
      const { op, expect } = row;

      if (op === "get") {
        let value;
        assert.equal(await reason(ref.get().then((got) => (value = got))), expect, JSON.stringify(row));
        if (expect === "allowed" && "value" in row) assert.deepEqual(value, sub(row.value));
        return;
      }
      if (op === "list") {
        const query = new Query(ref, sub(row.query ?? {}));
        const results = {};
        const ways = { query: () => query.stream(), count: () => query.count() };
        if (!("query" in row)) ways.get = () => ref.get();
        for (const [way, run] of Object.entries(ways)) {
          assert.equal(await reason(run().then((got) => (results[way] = got))), expect, `${way}: ${JSON.stringify(row)}`);
        }
        if (expect === "allowed") {
          checkIds(row, results.query.map((entry) => entry.id));
          assert.equal(results.count, row.ids.length);
          if ("get" in results) checkIds(row, [...results.get.keys()]);
        }
        return;
      }
      if (op === "listen") {
        const target = isDocument ? ref : new Query(ref, sub(row.query ?? {}));
        let first;
        assert.equal(await reason(firstSnapshot(target).then((got) => (first = got))), expect, JSON.stringify(row));
        if (expect === "allowed") {
          if (isDocument) {
            assert.equal(first.exists, row.exists);
            if ("value" in row) assert.deepEqual(first.value, sub(row.value));
          } else {
            checkIds(row, first.docs.map((entry) => entry.id));
          }
        }
        return;
      }

      // Writes: the stored state before and after, read with the admin key.
      dirty = true;
      const stored = doc(admin, ...path);
      const before = await stored.get();
      let action;
      if (op === "create") action = doc(handle, ...path.slice(0, -1)).add(sub(row.value), path.at(-1));
      else if (op === "update") action = ref.update(sub(row.fields));
      else if (op === "delete") action = ref.delete();
      else action = ref.set(sub(row.value));
      assert.equal(await reason(action), expect, JSON.stringify(row));
      const afterwards = await stored.get();
      if (expect !== "allowed") assert.deepEqual(afterwards, before, `a refused ${op} changed the data`);
      else if (op === "create" || op === "set") assert.deepEqual(afterwards, sub(row.value));
      else if (op === "update") assert.deepEqual(afterwards, { ...before, ...sub(row.fields) });
      else assert.deepEqual(afterwards, isDocument ? null : new Map());
    });
  }
});

/**
 * Proves that refused writes notified nobody: `ref` is listened to on `handle` together with a
 * marker document; `check()` writes the marker, waits for its snapshot, and asserts that the
 * watched listener got nothing meanwhile (snapshots of one handle arrive in commit order).
 */
class Quiet {
  static async open(handle, ref, markerId = "m") {
    const quiet = new Quiet();
    quiet.watched = new Snapshots();
    quiet.stop = ref.onSnapshot(quiet.watched.callback, quiet.watched.onError);
    quiet.first = await quiet.watched.next();
    quiet.marker = await new Marker(doc(handle, "marker", markerId)).ready();
    return quiet;
  }

  async sync() {
    await this.marker.sync();
    return this.watched.pending();
  }

  async check() {
    assert.deepEqual(await this.sync(), [], "a refused write notified a listener");
  }

  close() {
    this.stop();
    this.marker.stop();
  }
}

async function refusal(promise, kind) {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof kind, `expected ${kind.name}, got ${error}`);
    assert.equal(error.code, kind.code);
    assert.equal(error.reason, kind.reason);
    return error;
  }
  assert.fail(`expected ${kind.name}, the call succeeded`);
}

async function validationErrors(promise) {
  const error = await refusal(promise, ValidationError);
  assert.equal(error.code, -32004);
  const { errors } = error.data;
  assert.ok(Array.isArray(errors) && errors.length, JSON.stringify(error.data));
  for (const item of errors) {
    assert.deepEqual(Object.keys(item).sort(), ["keyword", "message", "path"]);
    assert.ok(typeof item.message === "string" && item.message);
  }
  return errors;
}

const pairs = (errors) => errors.map((e) => `${e.path} ${e.keyword}`).sort();
const docBytes = (value) => new TextEncoder().encode(JSON.stringify(value)).length;

// Every door: what a delete takes along, what a transaction reads (the Python twins are in tests/test_rules.py).
const DOOR_RULES = {
  profiles: { read: "owner", write: "owner" }, // the document id is the owner's uid
  "profiles/*/badges": { read: "owner", owner: "holder" }, // only the admin key writes badges
  "profiles/*/notes": { read: "owner", write: "owner", owner: "author" },
  rooms: { read: "public", write: "public" },
  "rooms/*/messages": { read: "public", create: "public" },
  "rooms/*/drafts": { create: "public" }, // nobody reads them
  notes: { read: "owner", write: "owner", owner: "author" },
  marker: { read: "public", write: "public" },
};

describe("every door: deletes and their subcollections, transaction reads", () => {
  let server;
  let admin;
  let alice;
  let anonymous;
  let uids;

  before(async () => {
    server = await serve(DOOR_RULES);
    let all;
    ({ handles: all, uids } = await handles(server, ["alice", "bob"]));
    ({ admin, alice, anonymous } = all);
  });

  after(async () => {
    await Promise.all([admin, alice, anonymous].map((handle) => handle?.close()));
    await server?.cleanup();
  });

  /** A transaction's commit as it crosses the wire: one read, one write to the marker. */
  const commitReading = (handle, path, value) =>
    handle._backend.call("commit", { reads: [{ path, value }], writes: [{ op: "set", path: ["marker", "tx"], value: {} }] });

  test("a delete that would take a protected document along is PERMISSION_DENIED naming it, and deletes nothing", async () => {
    const me = uids.alice;
    await doc(admin, "profiles").set({ name: "Alice" }, me);
    await doc(admin, "profiles", me, "notes").set({ author: me }, "n1");
    await doc(admin, "profiles", me, "badges").set({ holder: me, why: "spam" }, "banned");
    await doc(anonymous, "rooms", "r2", "messages").add({ text: "yo" }, "m2"); // room r2 does not exist
    const quiet = await Quiet.open(admin, doc(admin, "profiles", me, "badges"), "cascade");
    let error = await refusal(doc(alice, "profiles", me).delete(), PermissionDeniedError);
    assert.deepEqual(error.data.document, ["profiles", me, "badges", "banned"]);
    error = await refusal(doc(anonymous, "rooms", "r2").delete(), PermissionDeniedError);
    assert.deepEqual(error.data.document, ["rooms", "r2", "messages", "m2"]);
    assert.deepEqual(await doc(admin, "profiles", me).get(), { name: "Alice" });
    assert.deepEqual(await doc(admin, "profiles", me, "notes").get(), new Map([["n1", { author: me }]]));
    assert.deepEqual(await doc(admin, "profiles", me, "badges").get(), new Map([["banned", { holder: me, why: "spam" }]]));
    assert.deepEqual(await doc(admin, "rooms", "r2", "messages").get(), new Map([["m2", { text: "yo" }]]));
    await quiet.check();
    quiet.close();
  });

  test("a delete whose subcollections allow it takes them along", async () => {
    const me = uids.alice;
    await doc(admin, "profiles", me, "badges").delete(); // the admin key passes every rule
    assert.deepEqual(await doc(admin, "profiles", me, "badges").get(), new Map());
    await doc(alice, "profiles").set({ name: "Alice" }, me);
    await doc(alice, "profiles", me, "notes").add({ author: me }, "n2");
    await doc(alice, "profiles", me).delete();
    assert.equal(await doc(admin, "profiles", me).get(), null);
    assert.deepEqual(await doc(admin, "profiles", me, "notes").get(), new Map());
  });

  test("a transaction read of what the reader may not read is PERMISSION_DENIED, right or wrong", async () => {
    await doc(admin, "rooms").set({ name: "r1" }, "r1");
    await doc(admin, "rooms", "r1", "drafts").set({ text: "secret" }, "d1");
    for (const value of [{ d1: { text: "secret" } }, {}, { d1: { text: "guess" } }]) {
      for (const handle of [anonymous, alice]) {
        assert.equal(await reason(commitReading(handle, ["rooms", "r1", "drafts"], value)), "PERMISSION_DENIED");
      }
    }
    assert.equal(await reason(commitReading(anonymous, [], {})), "PERMISSION_DENIED"); // the root
    assert.equal(await doc(admin, "marker", "tx").get(), null);
  });

  test("a transaction reads a collection as a get does: only what the reader may list", async () => {
    await doc(admin, "notes").set({ author: uids.alice, n: 1 }, "a1");
    await doc(admin, "notes").set({ author: uids.bob, n: 2 }, "b1");
    const seen = [];
    const mine = await alice.transaction(async (tx) => {
      const notes = await tx.get(doc(alice, "notes"));
      seen.push([...notes.keys()].sort());
      await doc(admin, "notes").set({ author: uids.bob, n: seen.length }, `b${seen.length + 1}`); // not hers
      if (seen.length === 1) await doc(admin, "notes").set({ author: uids.alice, n: 3 }, "a2"); // hers: a conflict
      tx.set(doc(alice, "marker", "tx"), { mine: notes.size });
      return notes.size;
    });
    assert.equal(mine, 2);
    assert.deepEqual(seen, [["a1"], ["a1", "a2"]]);
    assert.deepEqual(await doc(admin, "marker", "tx").get(), { mine: 2 });
  });
});

// Data type rules, size limits and rate limits, on one server.
const DATA_RULES = {
  scores: {
    read: "public",
    write: "user",
    schema: {
      type: "object",
      additionalProperties: false,
      required: ["name", "score"],
      properties: {
        name: { type: "string", minLength: 1, maxLength: 16 },
        score: { type: "integer", minimum: 0, maximum: 100 },
        tags: { type: "array", items: { type: "string" } },
        author: { type: "string" },
        created: { type: "integer" },
      },
    },
    immutable: ["name"],
    serverFields: { author: "uid", created: "now" },
  },
  docs: { read: "public", write: "public" },
  small: { read: "public", write: "public", maxDocBytes: 60 },
  capped: { read: "public", write: "public", maxDocs: 2 },
  limited: { read: "public", write: "public", rate: { create: "3/s", get: "2/s" } },
  marker: { read: "public", write: "public" },
};
const LIMITS = { maxDocBytes: 300, maxWrites: 5, maxResults: 5, maxMessageBytes: 2048 };

describe("data rules, size and rate limits", () => {
  let server;
  let admin;
  let player; // signed in
  let client; // anonymous
  let uid;

  before(async () => {
    server = await serve(DATA_RULES, LIMITS);
    const { handles: all, uids } = await handles(server, ["player"]);
    ({ admin, player, anonymous: client } = all);
    uid = uids.player;
  });

  after(async () => {
    await Promise.all([admin, player, client].map((handle) => handle?.close()));
    await server?.cleanup();
  });

  test("a document breaking the schema is VALIDATION_FAILED with the failing paths; nothing is written or notified", async () => {
    const quiet = await Quiet.open(admin, doc(admin, "scores"));
    let errors = await validationErrors(doc(player, "scores").add({ name: "", score: 101, junk: 1 }, "a"));
    assert.deepEqual(pairs(errors), ["/ additionalProperties", "/name minLength", "/score maximum"]);
    errors = await validationErrors(doc(player, "scores").set({ name: "x" }, "a"));
    assert.deepEqual(pairs(errors), ["/ required"]);
    errors = await validationErrors(doc(player, "scores").add({ name: "x", score: 1, tags: ["a", 2] }));
    assert.deepEqual(pairs(errors), ["/tags/1 type"]);
    assert.deepEqual(await doc(admin, "scores").get(), new Map());
    await quiet.check();
    quiet.close();
  });

  test("the schema checks the document after the merge and the transforms", async () => {
    const ref = doc(player, "scores", "merged");
    await ref.set({ name: "ann", score: 90 });
    await ref.update({ score: 95 });
    const quiet = await Quiet.open(admin, doc(admin, "scores", "merged"));
    assert.deepEqual(pairs(await validationErrors(ref.update({ score: "high" }))), ["/score type"]);
    const errors = await validationErrors(ref.update({ score: increment(10) })); // 95 + 10 > 100
    assert.deepEqual(pairs(errors), ["/score maximum"]);
    assert.match(errors[0].message, /105/);
    assert.deepEqual(pairs(await validationErrors(ref.update({ extra: true }))), ["/ additionalProperties"]);
    assert.equal((await doc(admin, "scores", "merged").get()).score, 95);
    await quiet.check();
    await ref.update({ score: increment(5) }); // exactly the maximum
    assert.equal((await quiet.sync()).at(-1).value.score, 100);
    quiet.close();
  });

  test("server fields are set on create and never change; immutable fields neither", async () => {
    const startedAt = Date.now();
    await doc(player, "scores").add({ name: "ann", score: 1, author: "forged", created: 1 }, "server-fields");
    const stored = await doc(admin, "scores", "server-fields").get();
    assert.equal(stored.author, uid);
    assert.ok(stored.created >= startedAt - 1000 && stored.created <= Date.now() + 1000);
    const ref = doc(player, "scores", "server-fields");
    for (const fields of [{ author: "someone" }, { created: 2 }, { name: "bob" }]) {
      const errors = await validationErrors(ref.update(fields));
      assert.deepEqual(errors.map((e) => [e.path, e.keyword]), [[`/${Object.keys(fields)[0]}`, "immutable"]]);
    }
    const changing = ref.set({ ...stored, author: "someone", name: "bob" }); // a set may not change them
    assert.deepEqual(errors2paths(await validationErrors(changing)), ["/author", "/name"]);
    await ref.set({ ...stored, score: 4 }); // a set that repeats them is fine
    assert.deepEqual(await doc(admin, "scores", "server-fields").get(), { ...stored, score: 4 });
    await ref.set({ score: 5 }); // and one that leaves them out keeps them
    assert.deepEqual(await doc(admin, "scores", "server-fields").get(), { ...stored, score: 5 });
  });

  test("document bytes, globally and per collection: LIMIT_EXCEEDED with limit and actual", async () => {
    const quiet = await Quiet.open(admin, doc(admin, "docs"), "d");
    const quietSmall = await Quiet.open(admin, doc(admin, "small"), "s");
    const fits = { s: "x".repeat(300 - docBytes({ s: "" })) };
    assert.equal(docBytes(fits), 300);
    await doc(client, "docs").set(fits, "fits");
    assert.equal((await quiet.sync()).length, 1);
    const big = { s: "é".repeat(150) }; // 150 characters, 300 bytes of text
    let error = await refusal(doc(client, "docs").set(big, "big"), LimitExceededError);
    assert.equal(error.code, -32005);
    assert.deepEqual(error.data, { limit: 300, actual: docBytes(big) });
    error = await refusal(doc(client, "docs").add({ ...fits, more: 1 }), LimitExceededError);
    assert.deepEqual(error.data, { limit: 300, actual: docBytes({ ...fits, more: 1 }) });
    error = await refusal(doc(client, "docs", "fits").update({ more: 1 }), LimitExceededError); // after the merge
    assert.equal(error.data.limit, 300);
    const small = { s: "x".repeat(60) };
    error = await refusal(doc(client, "small").set(small, "a"), LimitExceededError);
    assert.deepEqual(error.data, { limit: 60, actual: docBytes(small) });
    assert.deepEqual(await doc(admin, "docs").get(), new Map([["fits", fits]]));
    assert.deepEqual(await doc(admin, "small").get(), new Map());
    await quiet.check();
    await quietSmall.check();
    quiet.close();
    quietSmall.close();
  });

  test("documents per collection and writes per batch", async () => {
    const ref = doc(client, "capped");
    await ref.add({ n: 1 }, "a");
    await ref.add({ n: 2 }, "b");
    const quiet = await Quiet.open(admin, doc(admin, "capped"), "c");
    assert.deepEqual((await refusal(ref.add({ n: 3 }, "c"), LimitExceededError)).data, { limit: 2, actual: 3 });
    assert.deepEqual((await refusal(ref.set({ n: 3 }, "c"), LimitExceededError)).data, { limit: 2, actual: 3 });
    const batch = client.batch();
    for (let i = 0; i < 6; i++) batch.set(doc(client, "capped", `d${i}`), { i });
    assert.deepEqual((await refusal(batch.commit(), LimitExceededError)).data, { path: "/writes", limit: 5, actual: 6 });
    await quiet.check();
    assert.deepEqual([...(await doc(admin, "capped").get()).keys()], ["a", "b"]);
    quiet.close();
  });

  test("results per read bound reads and listeners", async () => {
    const batch = admin.batch();
    for (let i = 0; i < 3; i++) batch.set(doc(admin, "docs", `r${i}`), { i });
    await batch.commit();
    const more = admin.batch();
    for (let i = 3; i < 6; i++) more.set(doc(admin, "docs", `r${i}`), { i });
    await more.commit();
    const ref = doc(client, "docs");
    const total = await ref.count(); // an aggregate returns one number
    assert.ok(total > 5);
    assert.deepEqual((await refusal(ref.stream(), LimitExceededError)).data, { limit: 5, actual: total });
    assert.deepEqual((await refusal(ref.get(), LimitExceededError)).data, { limit: 5, actual: total });
    assert.equal((await ref.where("i", ">=", 0).orderBy("i").limit(5).stream()).length, 5);
    try {
      const first = await firstSnapshot(ref);
      assert.ok(first.docs.length <= 5, `a listener returned ${first.docs.length} documents`);
    } catch (error) {
      assert.ok(error instanceof LimitExceededError, String(error));
      assert.deepEqual(error.data, { limit: 5, actual: total });
    }
  });

  test("a message just over maxMessageBytes is LIMIT_EXCEEDED; far over, the connection closes with 1009", async () => {
    const quiet = await Quiet.open(admin, doc(admin, "docs", "huge"), "h");
    const error = await refusal(doc(client, "docs").set({ s: "x".repeat(2100) }, "huge"), LimitExceededError);
    assert.equal(error.data.limit, 2048);
    assert.ok(error.data.actual > 2048);
    await assert.rejects(doc(client, "docs").set({ s: "x".repeat(40_000) }, "huge"), (lost) => {
      assert.ok(lost instanceof ConnectionLostError, String(lost));
      assert.equal(lost.data.closeCode, 1009);
      return true;
    });
    assert.equal(await doc(admin, "docs", "huge").get(), null);
    await quiet.check();
    await doc(client, "docs").set({ n: 1 }, "huge"); // the next call connects again
    assert.deepEqual((await quiet.sync()).at(-1).value, { n: 1 });
    quiet.close();
  });

  test("creates and gets are RATE_LIMITED with retryAfterMs, per connection and per address", async () => {
    const second = new Montybase(await server.clientConfig(), { WebSocket });
    try {
      const quiet = await Quiet.open(admin, doc(admin, "limited"), "l");
      const ref = doc(client, "limited");
      for (let i = 0; i < 3; i++) await ref.add({ i }, `a${i}`);
      const limited = async (promise) => {
        const error = await refusal(promise, RateLimitedError);
        assert.equal(error.code, -32006);
        assert.deepEqual(Object.keys(error.data), ["retryAfterMs"]);
        assert.ok(Number.isInteger(error.data.retryAfterMs) && error.data.retryAfterMs > 0 && error.data.retryAfterMs <= 1000);
        return error.data.retryAfterMs;
      };
      await limited(ref.add({ i: 3 }, "a3"));
      const wait = await limited(doc(second, "limited").add({ i: 4 }, "b0")); // same address, same bucket
      assert.equal((await quiet.sync()).length, 3);
      assert.deepEqual([...(await doc(admin, "limited").get()).keys()], ["a0", "a1", "a2"]);
      await new Promise((resolve) => setTimeout(resolve, wait + 20));
      await doc(second, "limited").add({ i: 4 }, "b0");
      const one = doc(client, "limited", "a0");
      await one.get();
      await one.get();
      await limited(one.get());
      quiet.close();
    } finally {
      await second.close();
    }
  });

  test("a PERMISSION_DENIED write is refused with its class and code, and notifies nobody", async () => {
    const quiet = await Quiet.open(admin, doc(admin, "scores"), "p");
    const error = await refusal(doc(client, "scores").add({ name: "anonymous", score: 1 }), PermissionDeniedError);
    assert.equal(error.code, -32001);
    await quiet.check();
    quiet.close();
  });
});

describe("the README's profiles rule", () => {
  test("setting your own profile keeps its server-set and immutable fields", async () => {
    const profiles = { read: "public", write: "owner", owner: "$id", immutable: ["joined"], serverFields: { joined: "now" } };
    const server = await serve({ profiles });
    const { handles: all, uids } = await handles(server, ["amor"]);
    try {
      const ref = doc(all.amor, "profiles", uids.amor);
      await ref.set({ name: "Amor" });
      const { joined } = await doc(all.admin, "profiles", uids.amor).get();
      assert.equal(typeof joined, "number");
      await ref.set({ name: "Amor B." });
      assert.deepEqual(await doc(all.admin, "profiles", uids.amor).get(), { name: "Amor B.", joined });
    } finally {
      await Promise.all(Object.values(all).map((handle) => handle.close()));
      await server.cleanup();
    }
  });
});

function errors2paths(errors) {
  return errors.map((e) => e.path).sort();
}

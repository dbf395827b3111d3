// Nothing lets a stored key reach Object.prototype: keys, values and results, with the keys
// that are dangerous in JavaScript ("__proto__", "constructor", "prototype", …).

import assert from "node:assert/strict";
import { after, afterEach, before, describe, test } from "node:test";

import { InvalidArgumentError, Montybase, doc } from "../../js_client/index.js";
import { closeServer, openServer, unique } from "./helpers.js";

const PROTO_NAMES = Object.getOwnPropertyNames(Object.prototype).sort();
const ARRAY_NAMES = Object.getOwnPropertyNames(Array.prototype).sort();
const DANGEROUS_IDS = ["constructor", "prototype", "toString", "hasOwnProperty", "valueOf", "isPrototypeOf", "__defineGetter__x"];

let server;
let db;
let admin;

before(async () => ({ server, db, admin } = await openServer()));
after(() => closeServer({ server, db, admin }));

function assertClean() {
  assert.equal({}.polluted, undefined);
  assert.equal(Object.prototype.polluted, undefined);
  assert.equal([].polluted, undefined);
  assert.deepEqual(Object.getOwnPropertyNames(Object.prototype).sort(), PROTO_NAMES);
  assert.deepEqual(Object.getOwnPropertyNames(Array.prototype).sort(), ARRAY_NAMES);
  assert.equal(typeof {}.constructor, "function");
  assert.equal({}.toString(), "[object Object]");
}

afterEach(assertClean);

function ownObject(value) {
  assert.equal(Object.getPrototypeOf(value), Object.prototype);
}

describe("keys", () => {
  test("__proto__ and other __x__ names are refused as segments, keys and fields", async () => {
    for (const name of ["__proto__", "__defineGetter__", "__x__"]) {
      assert.throws(() => doc(db, name), InvalidArgumentError);
      assert.throws(() => doc(db, "users", name), InvalidArgumentError);
      await assert.rejects(doc(db, "users").add({ a: 1 }, name), InvalidArgumentError);
      await assert.rejects(doc(db, "users", "x").update({ [`a.${name}`]: 1 }), InvalidArgumentError);
      await assert.rejects(doc(db, "users", "x").update([[["a", name], 1]]), InvalidArgumentError);
      await assert.rejects(doc(db, "users").where(`${name}.polluted`, "==", true).stream(), InvalidArgumentError);
      await assert.rejects(doc(db, "users").orderBy(name).stream(), InvalidArgumentError);
      await assert.rejects(doc(db, "users").sum(`a.${name}`), InvalidArgumentError);
    }
  });

  test("the server refuses them too, when a client skips its checks", async () => {
    await doc(db, "users", "x").set({ a: 1 });
    for (const [method, params] of [
      ["set", { path: ["users", "__proto__"], value: { a: 1 } }],
      ["set", JSON.parse('{"path": ["users", "x"], "value": {"__proto__": {"polluted": true}}}')],
      ["set", JSON.parse('{"path": ["users", "x"], "value": {"a": {"__proto__": {"polluted": true}}}}')],
      ["update", { path: ["users", "x"], fields: [["__proto__.polluted", true]] }],
      ["query", { query: { path: ["users"], where: [["__proto__", "==", 1]] } }],
    ]) {
      await assert.rejects(db._backend.send(method, params), (error) => error.reason === "INVALID_ARGUMENT", method);
    }
  });
});

describe("values", () => {
  test("an own __proto__ key (as JSON.parse makes) is refused, at any depth", async () => {
    const ref = doc(db, unique("c"), "x");
    for (const text of ['{"__proto__": {"polluted": true}}', '{"a": {"__proto__": {"polluted": true}}}', '{"a": [{"__proto__": {"polluted": true}}]}']) {
      await assert.rejects(ref.set(JSON.parse(text)), (error) => error instanceof InvalidArgumentError && /__proto__/.test(error.message));
    }
    assert.equal(await ref.get(), null);
  });

  test("an object whose prototype was changed is not a plain object", async () => {
    const sneaky = Object.create({ polluted: true });
    await assert.rejects(doc(db, unique("c"), "x").set({ a: sneaky }), InvalidArgumentError);
  });

  test("keys constructor and prototype are stored and read back as plain data", async () => {
    const ref = doc(db, unique("c"), "x");
    const value = { constructor: { prototype: { polluted: true } }, prototype: { polluted: true }, toString: "text", hasOwnProperty: 1 };
    await ref.set(value);
    const got = await ref.get();
    assert.deepEqual(got, value);
    ownObject(got);
    assert.ok(Object.hasOwn(got, "constructor") && Object.hasOwn(got.constructor, "prototype"));
    assert.equal(got.constructor.prototype.polluted, true);
    assert.equal(Object.getPrototypeOf(got.constructor), Object.prototype);
  });

  test("update through constructor.prototype sets plain nested fields", async () => {
    const ref = doc(db, unique("c"), "x");
    await ref.set({ a: 1 });
    await ref.update({ "constructor.prototype.polluted": true, "prototype.polluted": true });
    assert.deepEqual(await ref.get(), { a: 1, constructor: { prototype: { polluted: true } }, prototype: { polluted: true } });
    assert.equal(await doc(db, ref.path, "constructor", "prototype", "polluted").get(), true);
  });
});

describe("results", () => {
  test("documents with dangerous ids come back as own properties", async () => {
    const name = unique("c");
    const ref = doc(db, name);
    for (const id of DANGEROUS_IDS) await ref.set({ polluted: true, id }, id);
    for (const got of [await ref.get(), await ref.orderBy("id").get(), await doc(admin).get().then((root) => root.get(name))]) {
      assert.ok(got instanceof Map);
      assert.deepEqual([...got.keys()], [...DANGEROUS_IDS].sort());
      for (const id of DANGEROUS_IDS) {
        ownObject(got.get(id));
        assert.deepEqual(got.get(id), { polluted: true, id });
      }
    }
    assert.deepEqual((await ref.stream()).map((d) => d.id), [...DANGEROUS_IDS].sort());
    assert.equal(await ref.where("polluted", "==", true).count(), DANGEROUS_IDS.length);
    assert.equal(await ref.append("constructor").exists(), true);
    assert.deepEqual(await ref.append("constructor", "polluted").get(), true);
  });

  test("queries on constructor.prototype fields read data, not prototypes", async () => {
    const ref = doc(db, unique("c"));
    await ref.set({ constructor: { prototype: { n: 5 } } }, "a");
    await ref.set({ other: 1 }, "b");
    assert.deepEqual((await ref.where("constructor.prototype.n", "==", 5).stream()).map((d) => d.id), ["a"]);
    assert.deepEqual((await ref.where("constructor", "!=", null).stream()).map((d) => d.id), ["a"]);
    assert.equal(await ref.sum("constructor.prototype.n"), 5);
    assert.deepEqual((await ref.orderBy(["constructor", "prototype", "n"]).stream()).map((d) => d.id), ["a"]);
  });

  test("a transaction that reads dangerous keys writes and reads plain data", async () => {
    const ref = doc(db, unique("c"), "constructor");
    await ref.set({ prototype: { polluted: true } });
    const seen = await db.transaction(async (tx) => {
      const value = await tx.get(ref);
      tx.update(ref, { "prototype.count": 1 });
      return value;
    });
    assert.deepEqual(seen, { prototype: { polluted: true } });
    assert.deepEqual(await ref.get(), { prototype: { polluted: true, count: 1 } });
  });

  test("even a __proto__ id in an answer stays a plain key of the result", async () => {
    // The server never stores such an id; a compromised or buggy one must still not pollute.
    const fake = Object.create(Montybase.prototype);
    const answer = '{"docs": [{"id": "__proto__", "value": {"polluted": true}}, {"id": "constructor", "value": {"prototype": {"polluted": true}}}]}';
    Object.defineProperty(fake, "_backend", { value: { call: async () => JSON.parse(answer) } });
    const got = await doc(fake, "c").query().get();
    assert.deepEqual([...got.keys()], ["__proto__", "constructor"]);
    assert.deepEqual(got.get("__proto__"), { polluted: true });
    assert.equal(got.polluted, undefined);
    const streamed = await doc(fake, "c").stream();
    assert.equal(Object.getPrototypeOf(streamed[0]), Object.prototype);
    const collection = '{"value": {"__proto__": {"polluted": true}, "2": {"n": 2}, "10": {"n": 10}}}';
    const other = Object.create(Montybase.prototype);
    Object.defineProperty(other, "_backend", { value: { call: async () => JSON.parse(collection) } });
    const read = await doc(other, "c").get();
    assert.deepEqual([...read.keys()], ["10", "2", "__proto__"]);
    assert.deepEqual(read.get("__proto__"), { polluted: true });
  });
});

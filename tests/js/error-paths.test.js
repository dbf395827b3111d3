// One error-path format (schemas/errors.json: a JSON Pointer into the params): the JS client names
// the same places as Python embedded and remote (tests/test_bad_input.py, the same cases).

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { doc, InvalidArgumentError } from "../../js_client/index.js";
import { closeServer, openServer } from "./helpers.js";

let server;
let db;
let admin;

before(async () => {
  ({ server, db, admin } = await openServer());
  await doc(admin, "users", "amor").set({ name: "Amor", score: 100 });
});
after(() => closeServer({ server, db, admin }));

const POINTED = [
  ["a nested value", () => doc(admin, "users", "amor").set({ stats: { best: NaN } }), "/value/stats/best"],
  ["a list item", () => doc(admin, "users").add({ tags: ["ok", Infinity] }), "/value/tags/1"],
  ["an updated field", () => doc(admin, "users", "amor").update({ a: 1, "stats.best": NaN }), "/fields/1/1"],
  ["a bad key", () => doc(admin, "users", "amor").set({ ok: { $bad: 1 } }), "/value/ok/$bad"],
  ["a key holding a slash", () => doc(admin, "users", "amor").set({ "a/b": 1 }), "/value/a~1b"],
  ["a segment", () => doc(admin, "users", "$bad").get(), "/path/1"],
  ["a where value", () => doc(admin, "users").where("score", "==", NaN).stream(), "/query/where/0/2"],
  ["a batch write", () => admin.batch().set(doc(admin, "c", "a"), { n: 1 }).set(doc(admin, "c", "b"), { n: NaN }).commit(),
    "/writes/1/value/n"],
];

describe("an error names its place with one JSON Pointer", () => {
  for (const [name, call, where] of POINTED) {
    test(name, async () => {
      const error = await (async () => call())().then(() => null, (caught) => caught);
      assert.ok(error instanceof InvalidArgumentError, `${name}: ${error}`);
      assert.equal(error.data.path, where);
      assert.ok(error.message.startsWith(where), error.message);
    });
  }
});

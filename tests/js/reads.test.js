// Every case of tests/cases/reads.json (reads at any depth) through the public JS API: get,
// exists, count and stream of one path answer the same as in Python.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { doc } from "../../js_client/index.js";
import { closeServer, openServer, readJson } from "./helpers.js";

const { cases: CASES } = await readJson("tests", "cases", "reads.json");
const READS = ["get", "exists", "count", "stream"];

/** A Map (and the Maps inside it) as a plain object, to compare with JSON. */
const plain = (value) => (value instanceof Map ? Object.fromEntries([...value].map(([key, item]) => [key, plain(item)])) : value);

let server;
let db;
let admin;

before(async () => ({ server, db, admin } = await openServer()));
after(() => closeServer({ server, db, admin }));

describe("read cases", () => {
  for (const [index, c] of CASES.entries()) {
    test(c.name, async () => {
      // One fresh top-level collection per case in place of "c"; the admin key writes, the client key reads.
      const at = (path) => [`r${index}`, ...path.slice(1)];
      for (const [path, document] of c.documents) await doc(admin, ...at(path)).set(document);
      const ref = doc(db, ...at(c.path));
      // An odd path's get() is a Map (the client cannot tell a field from a collection there).
      for (const read of READS) assert.deepEqual(plain(await ref[read]()), c.expect[read], read);
    });
  }
});

// Every case of tests/cases/queries.json through the public API chain (and the error cases
// also as raw params: refused by the client's own checks and, sent unchecked, by the server).

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { InvalidArgumentError, MontybaseError, doc } from "../../js_client/index.js";
import { closeServer, openServer, readJson } from "./helpers.js";

const { cases: CASES } = await readJson("tests", "cases", "queries.json");
const QUERY_MEMBERS = ["where", "orderBy", "limit", "limitToLast", "offset", "startAt", "startAfter", "endAt", "endBefore"];
// Cases about Python's integers, which JavaScript has not: its 9007199254740992 is a double, sent
// as the float 9007199254740992.0, which the server takes (as it takes Python's 2.0**53).
const FLOAT_IN_JAVASCRIPT = ["error-value-beyond-safe-integer"];

let server;
let db;
let admin;

before(async () => ({ server, db, admin } = await openServer()));
after(() => closeServer({ server, db, admin }));

/** JSON equality: 1 equals 1.0, true never equals 1, a string never equals a number. */
function jsonEqual(a, b) {
  if (typeof a !== typeof b) return false;
  if (Array.isArray(a) || Array.isArray(b)) {
    return Array.isArray(a) && Array.isArray(b) && a.length === b.length && a.every((item, i) => jsonEqual(item, b[i]));
  }
  if (a !== null && typeof a === "object" && b !== null) {
    const keys = Object.keys(a);
    return keys.length === Object.keys(b).length && keys.every((key) => Object.hasOwn(b, key) && jsonEqual(a[key], b[key]));
  }
  return a === b;
}

/** The query built with the public chain from its wire form; null if the chain cannot say it. */
function build(ref, wire) {
  let query = ref.query();
  for (const clause of wire.where ?? []) {
    if (!Array.isArray(clause) || clause.length !== 3) return null;
    query = query.where(...clause);
  }
  for (const [field, direction] of wire.orderBy ?? []) {
    try {
      query = query.orderBy(field, direction);
    } catch (error) {
      return { error };
    }
  }
  if ("limit" in wire && "limitToLast" in wire) return null; // the chain keeps only the last of them
  for (const name of ["limit", "limitToLast", "offset"]) if (name in wire) query = query[name](wire[name]);
  const starts = ["startAt", "startAfter"].filter((name) => name in wire);
  const ends = ["endAt", "endBefore"].filter((name) => name in wire);
  if (starts.length > 1 || ends.length > 1) return null;
  for (const name of [...starts, ...ends]) query = query[name](...wire[name]);
  if (Object.keys(wire).some((name) => !QUERY_MEMBERS.includes(name))) return null;
  return { query };
}

/** Every document of a `page` case: pages of `size`, each starting after the last document read. */
async function pages(query, size, most) {
  const docs = [];
  let next = query;
  for (let i = 0; i <= most; i++) {
    const page = await next.limit(size).stream();
    docs.push(...page);
    if (page.length < size) return docs;
    next = query.startAfter(page.at(-1));
  }
  throw new Error("paging never reached the end");
}

function run(query, aggregate) {
  if (!aggregate) return query.stream();
  return aggregate.field === undefined ? query[aggregate.op]() : query[aggregate.op](aggregate.field);
}

test("every case is run (the file is well formed)", () => {
  const names = CASES.map((c) => c.name);
  assert.equal(new Set(names).size, names.length);
  assert.ok(CASES.length > 100);
  for (const c of CASES) assert.ok(("expect" in c) !== ("error" in c), c.name);
});

describe("query cases", () => {
  for (const [index, c] of CASES.entries()) {
    test(c.name, async () => {
      // One fresh collection per case; the client key loads it (admin: every fifth case).
      const collection = `q${index}`;
      const loader = index % 5 === 0 ? admin : db;
      // A float past 2^53 is an integer to JavaScript, which the client refuses to send; a Python
      // program may store one (1.7e308), so such documents are sent unchecked.
      const add = ([id, value]) =>
        doc(loader, collection).add(value, id).catch((error) => {
          if (!(error instanceof InvalidArgumentError)) throw error;
          return loader._backend.send("add", { path: [collection, id], value });
        });
      await Promise.all(Object.entries(c.documents).map(add));
      const ref = doc(db, collection);
      const wire = { path: [collection], ...c.query };

      if (FLOAT_IN_JAVASCRIPT.includes(c.name)) {
        assert.deepEqual(await build(ref, c.query).query.stream(), []);
        return;
      }
      if ("error" in c) {
        // The client refuses before sending …
        const params = c.aggregate ? { query: wire, ...c.aggregate } : { query: wire };
        const method = c.aggregate ? "aggregate" : "query";
        await assert.rejects(db._backend.call(method, params), (error) => error instanceof InvalidArgumentError && error.reason === c.error);
        // … and the server, sent the same params unchecked, refuses with the same reason.
        await assert.rejects(db._backend.send(method, params), (error) => error instanceof MontybaseError && error.reason === c.error);
        // Through the chain too, where the chain can say it.
        const sayable = !c.aggregate || ["count", "exists", "sum", "avg"].includes(c.aggregate.op);
        const built = sayable ? build(ref, c.query) : null;
        if (built?.error) assert.ok(built.error instanceof InvalidArgumentError);
        else if (built) {
          await assert.rejects(
            (async () => run(built.query, c.aggregate))(),
            (error) => error instanceof MontybaseError && error.reason === c.error,
          );
        }
        return;
      }

      const { query } = build(ref, c.query);
      assert.deepEqual(query.wire, wire);
      const result = "page" in c ? await pages(query, c.page, Object.keys(c.documents).length) : await run(query, c.aggregate);
      if (c.aggregate) {
        assert.ok(jsonEqual(result, c.expect), `expected ${JSON.stringify(c.expect)}, got ${JSON.stringify(result)}`);
      } else {
        assert.deepEqual(result.map((d) => d.id), c.expect);
        for (const d of result) assert.ok(jsonEqual(d.value, c.documents[d.id]), d.id);
        // get() holds the same documents in the same order.
        if (!("page" in c)) assert.deepEqual([...(await query.get()).keys()], c.expect);
      }
    });
  }
});

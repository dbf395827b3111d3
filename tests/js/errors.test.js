// The error table and classes: the same as schemas/errors.json and the Python client's.

import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { test } from "node:test";

import * as montybase from "../../js_client/index.js";
import { ERRORS, MontybaseError, errorClass } from "../../js_client/index.js";
import { fromRpcError } from "../../js_client/errors.js";
import { TARGET, expected, generate } from "../../scripts/gen-errors.mjs";
import { readJson } from "./helpers.js";

test("the error table equals schemas/errors.json", async () => {
  const schema = await readJson("schemas", "errors.json");
  assert.deepEqual(ERRORS.map((entry) => ({ ...entry })), schema.errors);
});

test("js_client/errors.js is what scripts/gen-errors.mjs writes from schemas/errors.json (npm run gen:errors)", async () => {
  assert.equal(await readFile(TARGET, "utf8"), await expected());
});

test("the generator follows an edit of the table: a new entry, a changed text", async () => {
  const schema = await readJson("schemas", "errors.json");
  const source = await readFile(TARGET, "utf8");
  const entry = { code: -32010, reason: "SOMETHING_NEW", class: "SomethingNewError", retry: false, when: "a test says so" };
  const edited = { errors: [...schema.errors.slice(0, -1), { ...schema.errors.at(-1), when: "changed" }, entry] };
  const written = generate(source, edited);
  assert.notEqual(written, source);
  assert.match(written, /export const SomethingNewError = defineClass\(ERRORS\[15\]\);/);
  assert.match(written, /reason: "CONNECTION_LOST", class: "ConnectionLostError", retry: true, when: "changed" \}/);
  assert.equal(generate(written, schema), source); // and back
});

test("every entry has an exported class with its code, reason and name", () => {
  for (const entry of ERRORS) {
    const cls = montybase[entry.class];
    assert.equal(typeof cls, "function", entry.class);
    const error = new cls("boom", { path: "/value/a" });
    assert.ok(error instanceof MontybaseError && error instanceof Error, entry.class);
    assert.equal(error.code, entry.code);
    assert.equal(error.reason, entry.reason);
    assert.equal(error.name, entry.class);
    assert.equal(error.message, "boom");
    assert.deepEqual(error.data, { path: "/value/a" });
    assert.equal(errorClass(entry.reason), cls);
  }
});

test("an error without a message says its reason", () => {
  const error = new montybase.NotFoundError();
  assert.equal(error.message, "NOT_FOUND");
  assert.deepEqual(error.data, {});
});

test("the base class is INTERNAL and unknown reasons map to it", () => {
  const error = new MontybaseError("x");
  assert.equal(error.code, -32603);
  assert.equal(error.reason, "INTERNAL");
  assert.equal(errorClass("NO_SUCH_REASON"), MontybaseError);
  assert.equal(errorClass(undefined), MontybaseError);
});

test("a JSON-RPC error becomes the class of its reason, with data minus the reason", () => {
  for (const entry of ERRORS) {
    const error = fromRpcError({ code: entry.code, message: "told", data: { reason: entry.reason, path: ["c", "x"], limit: 3 } });
    assert.equal(error.constructor, montybase[entry.class]);
    assert.equal(error.code, entry.code);
    assert.equal(error.reason, entry.reason);
    assert.equal(error.message, "told");
    assert.deepEqual(error.data, { path: ["c", "x"], limit: 3 });
  }
});

test("an unknown reason keeps the server's code and reason", () => {
  const error = fromRpcError({ code: -32050, message: "new", data: { reason: "SOMETHING_NEW", x: 1 } });
  assert.equal(error.constructor, MontybaseError);
  assert.equal(error.code, -32050);
  assert.equal(error.reason, "SOMETHING_NEW");
  assert.deepEqual(error.data, { x: 1 });
});

test("error data from the wire cannot reach Object.prototype", () => {
  const error = fromRpcError(JSON.parse('{"code":-32602,"message":"m","data":{"reason":"INVALID_ARGUMENT","__proto__":{"polluted":true}}}'));
  assert.equal({}.polluted, undefined);
  assert.equal(Object.getPrototypeOf(error.data), Object.prototype);
  assert.ok(Object.hasOwn(error.data, "__proto__"));
  assert.equal(error.data.polluted, undefined);
});

test("malformed error objects still give a MontybaseError", () => {
  for (const raw of [null, "text", 42, [], {}, { data: "x" }, { data: null }]) {
    assert.ok(fromRpcError(raw) instanceof MontybaseError);
  }
});

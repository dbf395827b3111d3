// The console's JSON Pointer locator (console/pointer.js): where an error's `data.path` points
// in the JSON text being edited.

import assert from "node:assert/strict";
import { test } from "node:test";

import { locate, locateNearest, segments, valuePointer } from "../../console/pointer.js";

const TEXT = JSON.stringify({ a: 1, "b/c": { d: [1, { e: 'x"y' }] }, "t~": "~" }, null, 2);
const at = (pointer) => {
  const span = locate(TEXT, pointer);
  return span && TEXT.slice(span.start, span.end);
};

test("a write's value pointer becomes a pointer into the document; others are not about it", () => {
  assert.equal(valuePointer("/value/score"), "/score");
  assert.equal(valuePointer("/value"), "");
  assert.equal(valuePointer("/path"), null);
  assert.equal(valuePointer("/valueX/a"), null);
  assert.equal(valuePointer(undefined), null);
  assert.deepEqual(segments("/b~1c/t~0"), ["b/c", "t~"]);
});

test("a member's span is its key and value, an item's its value, escapes decoded", () => {
  assert.equal(at("/a"), '"a": 1');
  assert.equal(at("/b~1c/d/1/e"), '"e": "x\\"y"');
  assert.equal(at("/b~1c/d/0"), "1");
  assert.equal(at("/t~0"), '"t~": "~"');
  assert.equal(at(""), TEXT);
  assert.equal(locate(TEXT, "/b~1c/d/1/e").line, 7);
});

test("a missing field is found at its nearest parent; text that is no JSON has no spans", () => {
  assert.equal(at("/missing"), null);
  const nearest = locateNearest(TEXT, "/b~1c/zz/0");
  assert.equal(nearest.pointer, "/b~1c");
  assert.equal(TEXT.slice(nearest.start, nearest.end).startsWith('"b/c": {'), true);
  assert.equal(locate("{", ""), null);
  assert.equal(locateNearest("{", "/a"), null);
});

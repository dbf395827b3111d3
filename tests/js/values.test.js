// Checks made before anything is sent (js_client/values.js), mirroring server/paths.py,
// server/values.py and server/query.py: same rules, messages naming the field.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { InvalidArgumentError, LimitExceededError, arrayRemove, arrayUnion, deleteField, increment, maximum, minimum, serverTimestamp } from "../../js_client/index.js";
import { checkKey, checkParams, checkQuery, fieldPath, prepareDocument, prepareValue, splitSegments, updateFields } from "../../js_client/values.js";

function refused(fn, message) {
  let caught;
  assert.throws(fn, (error) => {
    caught = error;
    return error instanceof InvalidArgumentError && error.reason === "INVALID_ARGUMENT" && error.code === -32602;
  });
  if (message !== undefined) assert.match(caught.message, message);
  return caught;
}

describe("keys and segments", () => {
  for (const key of ["users", "amor.budiyanto@gmail.com", "a b", "ünïcødé", "x".repeat(128), "_x_", "__x", "___", "constructor", "prototype", "😀".repeat(32)]) {
    test(`valid key ${JSON.stringify(key).slice(0, 30)} passes`, () => assert.equal(checkKey(key), key));
  }

  const bad = [
    ["", /empty/], [".", /'\.'/], ["..", /'\.'/], ["$x", /'\$'/], ["__proto__", /__name__/], ["__x__", /__name__/],
    ["a/b", /'\/'/], ["a\u007fb", /control/], ["a\u0085b", /control/], ["a\u0000b", /control/], ["tab\there", /control/],
    ["\ud800", /lone surrogate/], ["a\udc00", /lone surrogate/], [5, /must be a string/], [null, /must be a string/], [undefined, /must be a string/],
    [["users"], /must be a string/], [Symbol("s"), /must be a string/],
  ];
  for (const [key, problem] of bad) {
    test(`invalid key ${String(typeof key === "symbol" ? "symbol" : JSON.stringify(key)).slice(0, 30)} says what is wrong`, () => {
      const error = refused(() => checkKey(key, "where"), problem);
      assert.deepEqual(error.data, { path: "where" });
    });
  }

  for (const [key, size] of [["é".repeat(65), 130], ["x".repeat(129), 129], ["😀".repeat(33), 132]]) {
    test(`a key of ${size} UTF-8 bytes is over the 128-byte limit`, () => {
      assert.throws(() => checkKey(key, "where"), (error) => error instanceof LimitExceededError
        && error.reason === "LIMIT_EXCEEDED" && /128 UTF-8 bytes/.test(error.message)
        && error.data.path === "where" && error.data.limit === 128 && error.data.actual === size);
    });
  }

  test("a slash in a segment is shorthand for a path, and each part is checked", () => {
    assert.deepEqual(splitSegments(["users/amor", "posts"]), ["users", "amor", "posts"]);
    const error = refused(() => splitSegments(["users", "ok", "$bad"]), /path segment 2/);
    assert.deepEqual(error.data, { path: "path segment 2" });
    refused(() => splitSegments(["users/"]), /empty/);
  });

  test("field paths split dots but take arrays literally", () => {
    assert.deepEqual(fieldPath("a.b"), ["a", "b"]);
    assert.deepEqual(fieldPath(["a.b"]), ["a.b"]);
    refused(() => fieldPath("a..b"));
    refused(() => fieldPath([]));
    refused(() => fieldPath("a.__proto__"));
    refused(() => fieldPath(7));
  });
});

describe("values", () => {
  class Point {
    constructor() {
      this.x = 1;
    }
  }
  const holey = [1, , 3]; // eslint-disable-line no-sparse-arrays
  const deep = {};
  let inner = deep;
  for (let i = 0; i < 40; i++) inner = inner.n = {};

  const bad = [
    ["NaN", { a: NaN }, /value\.a: NaN is not a finite number/],
    ["Infinity", { a: Infinity }, /value\.a: Infinity is not a finite number/],
    ["-Infinity", { a: -Infinity }, /not a finite number/],
    ["unsafe integer", { a: 2 ** 53 }, /value\.a: integer 9007199254740992 is outside/],
    ["unsafe negative integer", { a: -(2 ** 53) }, /outside ±\(2\^53-1\)/],
    ["huge float that is an integer", { a: 1e300 }, /outside/],
    ["undefined", { a: undefined }, /value\.a: undefined is not a JSON value/],
    ["function", { a() {} }, /value\.a: function is not a JSON value/],
    ["symbol", { a: Symbol("x") }, /value\.a: symbol is not a JSON value/],
    ["BigInt", { a: 10n }, /value\.a: bigint is not a JSON value/],
    ["Date", { a: new Date(0) }, /value\.a: Date is not a JSON value/],
    ["Map", { a: new Map() }, /value\.a: Map is not a JSON value/],
    ["Set", { a: new Set([1]) }, /value\.a: Set is not a JSON value/],
    ["class instance", { a: new Point() }, /value\.a: Point is not a JSON value/],
    ["typed array", { a: new Uint8Array(2) }, /Uint8Array is not a JSON value/],
    ["array hole", { a: holey }, /value\.a\[1\]: an array hole/],
    ["lone surrogate", { a: "\udc00" }, /value\.a: string holds a lone surrogate/],
    ["proto key nested", { a: JSON.parse('{"__proto__": {"polluted": true}}') }, /key in value\.a '__proto__' may not have the form __name__/],
    ["dollar key in a list", { a: [{ $where: 1 }] }, /key in value\.a\[0\] '\$where' may not start with '\$'/],
    ["transform inside an array", { a: [{ $increment: 1 }] }, /'\$increment' may not start with '\$'/],
    ["unknown transform", { a: { $explode: 1 } }, /'\$explode' may not start with '\$'/],
    ["increment of a string", { a: { $increment: "1" } }, /value\.a: expected a number, got string/],
    ["arrayUnion of a non-list", { a: { $arrayUnion: 1 } }, /takes a list of items/],
    ["symbol key", { [Symbol("k")]: 1 }, /symbol keys/],
  ];
  test("a value nested deeper than 32 levels is over the depth limit", () => {
    assert.throws(() => prepareDocument(deep), (error) => error instanceof LimitExceededError
      && /nested deeper than 32 levels/.test(error.message) && error.data.limit === 32 && error.data.actual === 33);
  });
  for (const [name, value, message] of bad) {
    test(`${name} is refused naming the field`, () => {
      const error = refused(() => prepareDocument(value), message);
      assert.equal(typeof error.data.path, "string");
    });
  }

  test("the nested field is named", () => {
    const error = refused(() => prepareDocument({ stats: { best: NaN } }), /value\.stats\.best/);
    assert.deepEqual(error.data, { path: "value.stats.best" });
  });

  for (const value of [null, 5, "text", [1, 2], new Date(0), new Map()]) {
    test(`a document must be a plain object, not ${Object.prototype.toString.call(value)}`, () => {
      refused(() => prepareDocument(value), /a document is an object/);
    });
  }

  test("a whole document cannot be a transform", () => refused(() => prepareDocument({ $increment: 1 })));

  test("deleteField outside update is refused; in update it passes", () => {
    refused(() => prepareDocument({ a: deleteField() }), /only allowed in update/);
    assert.deepEqual(checkParams("update", { path: ["c", "x"], fields: [["a", deleteField()]] }).fields, [["a", { $delete: true }]]);
  });

  test("good values come back as equal fresh copies", () => {
    const value = { s: "ok 😀", n: 1.5, i: -3, t: true, f: false, z: null, list: [1, [2, { x: "y" }]], map: { "a.b": { c: [] } }, constructor: { prototype: { polluted: true } } };
    const copy = prepareDocument(value);
    assert.deepEqual(copy, value);
    assert.notEqual(copy.list, value.list);
    assert.notEqual(copy.map, value.map);
    assert.equal(JSON.stringify(copy), JSON.stringify(value));
  });

  test("objects without a prototype are plain too", () => {
    const value = Object.create(null);
    value.a = 1;
    assert.deepEqual({ ...prepareDocument(value) }, { a: 1 });
  });

  test("-0 is sent as 0 and safe integers at the edges pass", () => {
    assert.deepEqual(prepareValue({ a: -0, b: 2 ** 53 - 1, c: -(2 ** 53 - 1) }), { a: 0, b: 2 ** 53 - 1, c: -(2 ** 53 - 1) });
  });

  test("a getter is read once: what is sent is what was checked", () => {
    let reads = 0;
    const value = {
      get a() {
        reads += 1;
        return reads === 1 ? 1 : NaN;
      },
    };
    const params = checkParams("set", { path: ["c", "x"], value });
    assert.equal(JSON.stringify(params.value), '{"a":1}');
    assert.equal(reads, 1);
  });
});

describe("transforms", () => {
  test("are plain data, exactly as python_client/transforms.py", () => {
    assert.deepEqual(increment(5), { $increment: 5 });
    assert.deepEqual(maximum(7), { $maximum: 7 });
    assert.deepEqual(minimum(-1.5), { $minimum: -1.5 });
    assert.deepEqual(arrayUnion("a", 1), { $arrayUnion: ["a", 1] });
    assert.deepEqual(arrayRemove(), { $arrayRemove: [] });
    assert.deepEqual(serverTimestamp(), { $serverTimestamp: true });
    assert.deepEqual(deleteField(), { $delete: true });
  });

  test("transform operands are checked", () => {
    refused(() => prepareDocument({ a: increment(NaN) }), /value\.a: NaN/);
    refused(() => prepareDocument({ a: arrayUnion(undefined) }), /value\.a\[0\]/);
    refused(() => prepareDocument({ a: maximum(2 ** 60) }), /outside/);
  });
});

describe("update fields", () => {
  test("an object's keys stay dotted strings; pairs keep arrays of keys", () => {
    assert.deepEqual(updateFields({ "stats.wins": 5, name: "x" }), [["stats.wins", 5], ["name", "x"]]);
    assert.deepEqual(updateFields([[["a.b"], 2], ["c.d", 3]]), [[["a.b"], 2], ["c.d", 3]]);
  });

  test("anything else is refused", () => {
    for (const bad of [null, 5, "score", new Map(), [["only-one"]], [5]]) refused(() => updateFields(bad));
  });

  test("values are checked under value.<field>", () => {
    refused(() => checkParams("update", { path: ["c", "x"], fields: [["a.b", NaN]] }), /value\.a\.b: NaN/);
    refused(() => checkParams("update", { path: ["c", "x"], fields: [["a..b", 1]] }), /field/);
    refused(() => checkParams("update", { path: ["c", "x"], fields: [[["ok", "$no"], 1]] }), /'\$no'/);
  });
});

describe("queries", () => {
  const path = ["c"];
  const bad = [
    ["unknown operator", { where: [["score", "=", 1]] }, /unknown operator '='/],
    ["wrong where length", { where: [["score", "=="]] }, /query\.where\[0\] must be \[field, op, value\]/],
    ["in with a non-list", { where: [["team", "in", "red"]] }, /'in' needs a list/],
    ["limit and limitToLast", { limit: 1, limitToLast: 1 }, /both limit and limitToLast/],
    ["negative limit", { limit: -1 }, /query\.limit must be an integer ≥ 0/],
    ["fractional limit", { limit: 1.5 }, /query\.limit/],
    ["string limit", { limit: "2" }, /query\.limit/],
    ["boolean offset", { offset: true }, /query\.offset/],
    ["too many cursor values", { orderBy: [["score", "asc"]], startAt: [1, "a", "b"] }, /takes 1 to 2 values/],
    ["empty cursor", { orderBy: [["score", "asc"]], startAfter: [] }, /takes 1 to 2 values/],
    ["non-string id in a cursor", { startAfter: [5] }, /is an id, a string/],
    ["startAt and startAfter", { orderBy: [["score", "asc"]], startAt: [1], startAfter: [1] }, /both startAt and startAfter/],
    ["bad direction", { orderBy: [["score", "up"]] }, /must be \[field, 'asc' \| 'desc'\]/],
    ["unknown member", { sort: [] }, /unknown members \['sort'\]|unknown members \["sort"\]/],
    ["proto field", { where: [["__proto__", "==", 1]] }, /query\.where\[0\]\.field '__proto__'/],
    ["NaN value", { where: [["score", "==", NaN]] }, /query\.where\[0\]\.value: NaN/],
    ["unsafe integer value", { where: [["score", "==", 2 ** 53]] }, /outside/],
  ];
  for (const [name, query, message] of bad) {
    test(`${name} is refused`, () => refused(() => checkQuery({ path, ...query }), message));
  }

  test("a good query comes back equal", () => {
    const query = { path, where: [["team", "==", "red"], [["stats", "wins"], ">=", 1]], orderBy: [["score", "desc"]], startAfter: [80, "cat"], limit: 2 };
    assert.deepEqual(checkQuery(query), query);
  });

  test("aggregate ops and fields are checked", () => {
    refused(() => checkParams("aggregate", { query: { path }, op: "median" }), /aggregate op must be one of/);
    refused(() => checkParams("aggregate", { query: { path }, op: "sum" }), /field/);
    refused(() => checkParams("aggregate", { query: { path }, op: "avg", field: "$x" }), /'\$x'/);
    assert.deepEqual(checkParams("aggregate", { query: { path }, op: "sum", field: ["a.b"] }), { query: { path }, op: "sum", field: ["a.b"] });
  });
});

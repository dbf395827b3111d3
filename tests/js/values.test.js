// Checks made before anything is sent (js_client/values.js), mirroring server/paths.py,
// server/values.py and server/query.py: same rules; data.path (and the message's start) is the
// JSON Pointer of the faulty value in the params the request would carry.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { InvalidArgumentError, LimitExceededError, arrayRemove, arrayUnion, deleteField, increment, maximum, minimum, serverTimestamp } from "../../js_client/index.js";
import { checkKey, checkParams, checkQuery, fieldPath, pointer, prepareDocument, prepareValue, splitSegments, stringify, updateFields } from "../../js_client/values.js";

function refused(fn, message, path) {
  let caught;
  assert.throws(fn, (error) => {
    caught = error;
    return error instanceof InvalidArgumentError && error.reason === "INVALID_ARGUMENT" && error.code === -32602;
  });
  if (message !== undefined) assert.match(caught.message, message);
  if (path !== undefined) {
    assert.deepEqual(caught.data, { path });
    if (path) assert.ok(caught.message.startsWith(`${path}: `), caught.message); // "" is the params object itself
  }
  return caught;
}

describe("JSON Pointers (RFC 6901)", () => {
  test("escape ~ and / in each part", () => {
    assert.equal(pointer("/value", "a/b", "c~d", 0), "/value/a~1b/c~0d/0");
    assert.equal(pointer(""), "");
    assert.equal(pointer("", "writes", 2, "path", 1), "/writes/2/path/1");
  });
});

describe("keys and segments", () => {
  for (const key of ["users", "amor.budiyanto@gmail.com", "a b", "ünïcødé", "x".repeat(128), "_x_", "__x", "___", "constructor", "prototype", "😀".repeat(32)]) {
    test(`valid key ${JSON.stringify(key).slice(0, 30)} passes`, () => assert.equal(checkKey(key, "/path/0"), key));
  }

  const bad = [
    ["", /empty/], [".", /'\.'/], ["..", /'\.'/], ["$x", /'\$'/], ["__proto__", /__name__/], ["__x__", /__name__/],
    ["a/b", /'\/'/], ["a\u007fb", /control/], ["a\u0085b", /control/], ["a\u0000b", /control/], ["tab\there", /control/],
    ["\ud800", /lone surrogate/], ["a\udc00", /lone surrogate/], [5, /must be a string/], [null, /must be a string/], [undefined, /must be a string/],
    [["users"], /must be a string/], [Symbol("s"), /must be a string/],
  ];
  for (const [key, problem] of bad) {
    test(`invalid key ${String(typeof key === "symbol" ? "symbol" : JSON.stringify(key)).slice(0, 30)} says what is wrong`, () => {
      refused(() => checkKey(key, "/path/1"), problem, "/path/1");
    });
  }

  for (const [key, size] of [["é".repeat(65), 130], ["x".repeat(129), 129], ["😀".repeat(33), 132]]) {
    test(`a key of ${size} UTF-8 bytes is over the 128-byte limit`, () => {
      assert.throws(() => checkKey(key, "/path/1"), (error) => error instanceof LimitExceededError
        && error.reason === "LIMIT_EXCEEDED" && /^\/path\/1: key .* is longer than 128 UTF-8 bytes/.test(error.message)
        && error.data.path === "/path/1" && error.data.limit === 128 && error.data.actual === size);
    });
  }

  test("a slash in a segment is shorthand for a path, and each part is checked", () => {
    assert.deepEqual(splitSegments(["users/amor", "posts"]), ["users", "amor", "posts"]);
    refused(() => splitSegments(["users", "ok", "$bad"]), /'\$bad' may not start with '\$'/, "/path/2");
    refused(() => splitSegments(["users/"]), /empty/, "/path/1");
    refused(() => splitSegments(["posts/$bad"], 2), /\$bad/, "/path/3"); // appended after two segments
  });

  test("field paths split dots but take arrays literally", () => {
    assert.deepEqual(fieldPath("a.b", "/field"), ["a", "b"]);
    assert.deepEqual(fieldPath(["a.b"], "/field"), ["a.b"]);
    refused(() => fieldPath("a..b", "/field"), /empty/, "/field");
    refused(() => fieldPath([], "/field"), /non-empty list/, "/field");
    refused(() => fieldPath("a.__proto__", "/field"), /__proto__/, "/field");
    refused(() => fieldPath(["ok", "$no"], "/field"), /\$no/, "/field/1");
    refused(() => fieldPath(7, "/field"), /dotted string/, "/field");
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
    ["NaN", { a: NaN }, /NaN is not a finite number/, "/value/a"],
    ["Infinity", { a: Infinity }, /Infinity is not a finite number/, "/value/a"],
    ["-Infinity", { a: -Infinity }, /not a finite number/, "/value/a"],
    ["undefined", { a: undefined }, /undefined is not a JSON value/, "/value/a"],
    ["function", { a() {} }, /function is not a JSON value/, "/value/a"],
    ["symbol", { a: Symbol("x") }, /symbol is not a JSON value/, "/value/a"],
    ["BigInt", { a: 10n }, /bigint is not a JSON value/, "/value/a"],
    ["Date", { a: new Date(0) }, /Date is not a JSON value/, "/value/a"],
    ["Map", { a: new Map() }, /Map is not a JSON value/, "/value/a"],
    ["Set", { a: new Set([1]) }, /Set is not a JSON value/, "/value/a"],
    ["class instance", { a: new Point() }, /Point is not a JSON value/, "/value/a"],
    ["typed array", { a: new Uint8Array(2) }, /Uint8Array is not a JSON value/, "/value/a"],
    ["array hole", { a: holey }, /an array hole/, "/value/a/1"],
    ["lone surrogate", { a: "\udc00" }, /string holds a lone surrogate/, "/value/a"],
    ["proto key nested", { a: JSON.parse('{"__proto__": {"polluted": true}}') }, /key '__proto__' may not have the form __name__/, "/value/a/__proto__"],
    ["dollar key in a list", { a: [{ $where: 1 }] }, /key '\$where' may not start with '\$'/, "/value/a/0/$where"],
    ["transform inside an array", { a: [{ $increment: 1 }] }, /'\$increment' may not start with '\$'/, "/value/a/0/$increment"],
    ["unknown transform", { a: { $explode: 1 } }, /'\$explode' may not start with '\$'/, "/value/a/$explode"],
    ["increment of a string", { a: { $increment: "1" } }, /expected a number, got string/, "/value/a/$increment"],
    ["arrayUnion of a non-list", { a: { $arrayUnion: 1 } }, /takes a list of items/, "/value/a/$arrayUnion"],
    ["symbol key", { [Symbol("k")]: 1 }, /symbol keys/, "/value"],
    ["a key with a slash, escaped", { "a/b": 1 }, /may not contain '\/'/, "/value/a~1b"],
  ];
  test("a value nested deeper than 32 levels is over the depth limit", () => {
    assert.throws(() => prepareDocument(deep), (error) => error instanceof LimitExceededError
      && /nested deeper than 32 levels/.test(error.message) && error.data.limit === 32 && error.data.actual === 33);
  });
  for (const [name, value, message, path] of bad) {
    test(`${name} is refused naming the field: ${path}`, () => refused(() => prepareDocument(value), message, path));
  }

  test("the nested field is named as the request carries it: add's /value/…, a commit's /writes/N/value/…", () => {
    refused(() => checkParams("add", { path: ["c"], value: { stats: { best: NaN } } }), /NaN/, "/value/stats/best");
    const writes = [{ op: "set", path: ["c", "x"], value: { a: 1 } }, { op: "add", path: ["c"], value: { list: [0, { score: NaN }] } }];
    refused(() => checkParams("commit", { writes }), /NaN/, "/writes/1/value/list/1/score");
    refused(() => checkParams("commit", { writes: [{ op: "delete", path: ["c", "$x"] }] }), /\$x/, "/writes/0/path/1");
  });

  for (const value of [null, 5, "text", [1, 2], new Date(0), new Map()]) {
    test(`a document must be a plain object, not ${Object.prototype.toString.call(value)}`, () => {
      refused(() => prepareDocument(value), /a document is an object/, "/value");
    });
  }

  test("a whole document cannot be a transform", () => refused(() => prepareDocument({ $increment: 1 }), /transform/, "/value"));

  test("deleteField outside update is refused; in update it passes", () => {
    refused(() => prepareDocument({ a: deleteField() }), /only allowed in update/, "/value/a");
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

  test("every finite number passes, as Python takes every finite float: 1e300, 2**53, -(2**60), 5e-324", () => {
    const value = { a: 1e300, b: 2 ** 53, c: -(2 ** 60), d: 5e-324, e: Number.MAX_VALUE, list: [2 ** 53 + 2] };
    assert.deepEqual(prepareDocument(value), value);
    assert.deepEqual(checkQuery({ path: ["c"], where: [["n", "==", 2 ** 53]] }).where, [["n", "==", 2 ** 53]]);
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
    refused(() => prepareDocument({ a: increment(NaN) }), /NaN/, "/value/a/$increment");
    refused(() => prepareDocument({ a: arrayUnion(undefined) }), /undefined/, "/value/a/$arrayUnion/0");
    refused(() => prepareDocument({ a: maximum(Infinity) }), /Infinity/, "/value/a/$maximum");
    assert.deepEqual(prepareDocument({ a: maximum(2 ** 60) }), { a: { $maximum: 2 ** 60 } });
  });
});

describe("update fields", () => {
  test("an object's keys stay dotted strings; pairs keep arrays of keys", () => {
    assert.deepEqual(updateFields({ "stats.wins": 5, name: "x" }), [["stats.wins", 5], ["name", "x"]]);
    assert.deepEqual(updateFields([[["a.b"], 2], ["c.d", 3]]), [[["a.b"], 2], ["c.d", 3]]);
  });

  test("anything else is refused", () => {
    for (const bad of [null, 5, "score", new Map()]) refused(() => updateFields(bad), /an object of fields/, "/fields");
    for (const bad of [[["only-one"]], [5]]) refused(() => updateFields(bad), /\[field, value\] pair/, "/fields/0");
    refused(() => updateFields([["a", 1], 5], "/writes/3/fields"), /pair/, "/writes/3/fields/1");
  });

  test("a field is checked at /fields/N/0 and its value at /fields/N/1, as the request carries them", () => {
    refused(() => checkParams("update", { path: ["c", "x"], fields: [["ok", 1], ["a.b", NaN]] }), /NaN/, "/fields/1/1");
    refused(() => checkParams("update", { path: ["c", "x"], fields: [["a", { deep: [Infinity] }]] }), /Infinity/, "/fields/0/1/deep/0");
    refused(() => checkParams("update", { path: ["c", "x"], fields: [["a..b", 1]] }), /empty/, "/fields/0/0");
    refused(() => checkParams("update", { path: ["c", "x"], fields: [[["ok", "$no"], 1]] }), /'\$no'/, "/fields/0/0/1");
  });
});

describe("queries", () => {
  const path = ["c"];
  const bad = [
    ["unknown operator", { where: [["score", "=", 1]] }, /unknown operator '='/, "/query/where/0/1"],
    ["wrong where length", { where: [["score", "=="]] }, /\[field, op, value\]/, "/query/where/0"],
    ["in with a non-list", { where: [["team", "in", "red"]] }, /'in' needs a list/, "/query/where/0/2"],
    ["limit and limitToLast", { limit: 1, limitToLast: 1 }, /both limit and limitToLast/, "/query/limitToLast"],
    ["negative limit", { limit: -1 }, /limit must be an integer ≥ 0/, "/query/limit"],
    ["fractional limit", { limit: 1.5 }, /limit/, "/query/limit"],
    ["string limit", { limit: "2" }, /limit/, "/query/limit"],
    ["boolean offset", { offset: true }, /offset/, "/query/offset"],
    ["too many cursor values", { orderBy: [["score", "asc"]], startAt: [1, "a", "b"] }, /takes 1 to 2 values/, "/query/startAt"],
    ["empty cursor", { orderBy: [["score", "asc"]], startAfter: [] }, /takes 1 to 2 values/, "/query/startAfter"],
    ["non-string id in a cursor", { startAfter: [5] }, /is an id, a string/, "/query/startAfter/0"],
    ["NaN in a cursor", { orderBy: [["score", "asc"]], endAt: [NaN] }, /NaN/, "/query/endAt/0"],
    ["startAt and startAfter", { orderBy: [["score", "asc"]], startAt: [1], startAfter: [1] }, /both startAt and startAfter/, "/query/startAfter"],
    ["bad direction", { orderBy: [["score", "up"]] }, /'asc' or 'desc'/, "/query/orderBy/0/1"],
    ["bad order clause", { orderBy: [["score"]] }, /\[field, 'asc' \| 'desc'\]/, "/query/orderBy/0"],
    ["unknown member", { sort: [] }, /unknown members \['sort'\]|unknown members \["sort"\]/, "/query"],
    ["proto field", { where: [["__proto__", "==", 1]] }, /key '__proto__'/, "/query/where/0/0"],
    ["proto field in a list of keys", { where: [[["a", "__proto__"], "==", 1]] }, /key '__proto__'/, "/query/where/0/0/1"],
    ["NaN value", { where: [["score", "==", 1], ["score", "==", NaN]] }, /NaN/, "/query/where/1/2"],
    ["NaN inside a list value", { where: [["score", "in", [1, NaN]]] }, /NaN/, "/query/where/0/2/1"],
    ["bad path segment", { path: ["c", "d", "$e"] }, /\$e/, "/query/path/2"],
  ];
  for (const [name, query, message, pointerTo] of bad) {
    test(`${name} is refused at ${pointerTo}`, () => refused(() => checkQuery({ path, ...query }), message, pointerTo));
  }

  test("a good query comes back equal", () => {
    const query = { path, where: [["team", "==", "red"], [["stats", "wins"], ">=", 1]], orderBy: [["score", "desc"]], startAfter: [80, "cat"], limit: 2 };
    assert.deepEqual(checkQuery(query), query);
  });

  test("aggregate ops and fields are checked", () => {
    refused(() => checkParams("aggregate", { query: { path }, op: "median" }), /one of/, "/op");
    refused(() => checkParams("aggregate", { query: { path }, op: "sum" }), /field/, "/field");
    refused(() => checkParams("aggregate", { query: { path }, op: "avg", field: "$x" }), /'\$x'/, "/field");
    refused(() => checkParams("aggregate", { query: { path: ["$c"] }, op: "count" }), /'\$c'/, "/query/path/0");
    assert.deepEqual(checkParams("aggregate", { query: { path }, op: "sum", field: ["a.b"] }), { query: { path }, op: "sum", field: ["a.b"] });
  });

  test("a listener's path and query are checked where subscribe carries them", () => {
    refused(() => checkParams("subscribe", { sub: 1, path: ["c", "$x"] }), /\$x/, "/path/1");
    refused(() => checkParams("subscribe", { sub: 1, query: { path, limit: -1 } }), /limit/, "/query/limit");
    refused(() => checkParams("subscribe", { sub: 1 }), /a path or a query/, "");
  });
});

describe("the JSON that is sent", () => {
  test("a number that is not a safe integer goes as a float (a fraction part or an exponent), so Python reads a float", () => {
    assert.equal(stringify({ a: 2 ** 53, b: -(2 ** 53), c: [2 ** 60] }), '{"a":9007199254740992.0,"b":-9007199254740992.0,"c":[1152921504606847000.0]}');
    assert.equal(stringify({ big: 1e300, huge: 1e21, tiny: 5e-324 }), '{"big":1e+300,"huge":1e+21,"tiny":5e-324}');
  });

  test("everything else is JSON.stringify's: safe integers, fractions, and digits inside strings and keys", () => {
    const value = {
      edge: 2 ** 53 - 1, negative: -(2 ** 53 - 1), fraction: 1.2345678901234567, small: 0.1, zero: 0,
      text: "9007199254740993", quoted: 'say "12345678901234567890" \\ 9007199254740993', "99999999999999999": 1,
    };
    assert.equal(stringify(value), JSON.stringify(value));
  });

  test("what is sent parses back to the same numbers", () => {
    const value = { list: [2 ** 53, -(2 ** 60), 1e300, 12345678901234567890, 2 ** 53 - 1, 3.5], s: "2 ** 53 = 9007199254740992" };
    assert.deepEqual(JSON.parse(stringify(value)), value);
  });
});

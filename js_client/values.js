/**
 * Checks made before anything is sent, with the server's rules (server/paths.py,
 * server/values.py, server/query.py): keys and segments, field paths, JSON values, queries.
 * Values are copied into fresh objects as they are checked, so what is sent is what was checked.
 * An error's `data.path` (and its message's start) is the JSON Pointer (RFC 6901) of the faulty
 * value in the params the request would carry: "/value/score", "/query/where/0/2".
 * @module
 */

import { InvalidArgumentError, LimitExceededError } from "./errors.js";

/** The most UTF-8 bytes in a segment or key. */
export const MAX_KEY_BYTES = 128;
/** The most segments in a path. */
export const MAX_PATH_SEGMENTS = 64;
/** Containers nest at most this deep in a document. */
export const MAX_DEPTH = 32;
/** Query operators. */
export const OPERATORS = Object.freeze(["==", "!=", "<", "<=", ">", ">=", "in", "not-in", "array-contains", "array-contains-any"]);
/** Aggregations. */
export const AGGREGATES = Object.freeze(["count", "exists", "sum", "avg"]);
/** The names of field transforms (one-key objects such as `{"$increment": 1}`). */
export const TRANSFORMS = Object.freeze(["$increment", "$maximum", "$minimum", "$arrayUnion", "$arrayRemove", "$serverTimestamp", "$delete"]);

const LIST_OPERATORS = ["in", "not-in", "array-contains-any"];
const QUERY_MEMBERS = ["path", "where", "orderBy", "limit", "limitToLast", "offset", "startAt", "startAfter", "endAt", "endBefore"];
const FORBIDDEN_CHARS = /[\u0000-\u001f\u007f-\u009f/]/;
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;
const encoder = new TextEncoder();

/** Whether `text` holds only whole UTF-16 surrogate pairs (no lone surrogates). */
export function isWellFormed(text) {
  return typeof text.isWellFormed === "function" ? text.isWellFormed() : !LONE_SURROGATE.test(text);
}

/** A string in the style of Python's repr, for messages: 'text'. */
export function quote(value) {
  if (typeof value === "string") return `'${JSON.stringify(value).slice(1, -1).replaceAll("'", "\\'")}'`;
  if (typeof value === "bigint") return `${value}n`;
  if (typeof value === "symbol" || typeof value === "function") return String(value.toString());
  if (value === undefined || typeof value === "number") return String(value);
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return Object.prototype.toString.call(value);
  }
}

/** The JSON-ish type name of a value, for messages. */
export function typeName(value) {
  if (value === null) return "null";
  if (Array.isArray(value)) return "array";
  if (typeof value === "object") {
    const proto = Object.getPrototypeOf(value);
    if (proto === null || proto === Object.prototype) return "object";
    return proto.constructor && typeof proto.constructor.name === "string" && proto.constructor.name ? proto.constructor.name : "object";
  }
  return typeof value;
}

function invalid(message, path) {
  return new InvalidArgumentError(message, { path });
}

/**
 * `base` followed by `parts`, each escaped as RFC 6901 says ("~" → "~0", "/" → "~1"):
 * `pointer("/value", "a/b", 0)` is "/value/a~1b/0".
 * @param {string} base a JSON Pointer ("" is the params object itself)
 * @param {...(string | number)} parts
 * @returns {string}
 */
export function pointer(base, ...parts) {
  return base + parts.map((part) => `/${String(part).replaceAll("~", "~0").replaceAll("/", "~1")}`).join("");
}

/**
 * Return `key` if it is a valid segment or object key, else throw InvalidArgumentError.
 * A key is a non-empty string of at most 128 UTF-8 bytes, without `/` or control characters,
 * not `.` or `..`, not `__…__` (covers `__proto__`), not starting with `$`.
 * @param {unknown} key
 * @param {string} where the JSON Pointer of the key in the params (the message starts with it)
 * @returns {string}
 * @throws {MontybaseError} InvalidArgumentError; LimitExceededError for a key over 128 UTF-8 bytes
 */
export function checkKey(key, where) {
  if (typeof key !== "string") {
    throw invalid(`${where}: a key must be a string, got ${typeName(key)} ${quote(key)}`, where);
  }
  let problem = null;
  if (!key) problem = "is empty";
  else if (key === "." || key === "..") problem = "may not be '.' or '..'";
  else if (key[0] === "$") problem = "may not start with '$'";
  else if (key.length >= 4 && key.startsWith("__") && key.endsWith("__")) problem = "may not have the form __name__";
  else if (FORBIDDEN_CHARS.test(key) || !isWellFormed(key)) problem = "may not contain '/', control characters or lone surrogates";
  else if (key.length > MAX_KEY_BYTES / 4) {
    const size = encoder.encode(key).length;
    if (size > MAX_KEY_BYTES) {
      throw new LimitExceededError(`${where}: key ${quote(key)} is longer than ${MAX_KEY_BYTES} UTF-8 bytes (${size})`,
        { path: where, limit: MAX_KEY_BYTES, actual: size });
    }
  }
  if (problem) throw invalid(`${where}: key ${quote(key)} ${problem}`, where);
  return key;
}

/**
 * Segments from arguments: "users/alan" is shorthand for "users", "alan". Each is checked, as
 * the request's `path` would carry it after `offset` segments.
 * @param {ReadonlyArray<unknown>} parts
 * @param {number} [offset] segments before these
 * @returns {string[]}
 * @throws {MontybaseError} InvalidArgumentError
 */
export function splitSegments(parts, offset = 0) {
  const out = [];
  for (const part of parts) {
    if (typeof part === "string" && part.includes("/")) out.push(...part.split("/"));
    else out.push(part);
  }
  out.forEach((segment, index) => checkKey(segment, pointer("/path", offset + index)));
  if (offset + out.length > MAX_PATH_SEGMENTS) throw invalid(`/path: more than ${MAX_PATH_SEGMENTS} segments`, "/path");
  return out;
}

/**
 * A field path as keys: `"a.b"` splits on dots; an array of keys is taken literally.
 * @param {unknown} field
 * @param {string} where its JSON Pointer in the params
 * @returns {string[]}
 * @throws {MontybaseError} InvalidArgumentError
 */
export function fieldPath(field, where) {
  if (typeof field === "string") return field.split(".").map((part) => checkKey(part, where));
  if (Array.isArray(field) && field.length) return field.map((part, i) => checkKey(part, pointer(where, i)));
  throw invalid(`${where}: a field is a dotted string or a non-empty list of keys, got ${quote(field)}`, where);
}

/**
 * A field for the wire: a dotted string as it is, an array of keys as a fresh array.
 * @param {string | ReadonlyArray<string>} field
 * @returns {string | string[]}
 */
export function wireField(field) {
  return Array.isArray(field) ? [...field] : field;
}

function number(value, where) {
  // Every JavaScript number is a double, as a Python float is: any finite one may be stored
  // (`stringify` sends those beyond ±(2^53−1) as floats, which the server accepts).
  if (!Number.isFinite(value)) throw invalid(`${where}: ${value} is not a finite number`, where);
  return Object.is(value, -0) ? 0 : value;
}

function expectNumber(value, where) {
  if (typeof value !== "number") throw invalid(`${where}: expected a number, got ${typeName(value)}`, where);
  return number(value, where);
}

function isPlainObject(value) {
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

/** A fresh object: own data properties only, whatever the keys are. */
function define(target, key, value) {
  Object.defineProperty(target, key, { value, enumerable: true, writable: true, configurable: true });
}

/** A transform `{name: operand}` at `where`; the operand's pointer is `where` + "/" + name. */
function transform(name, operand, where, mode, depth) {
  const at = pointer(where, name);
  switch (name) {
    case "$increment":
    case "$maximum":
    case "$minimum":
      return { [name]: expectNumber(operand, at) };
    case "$arrayUnion":
    case "$arrayRemove":
      if (!Array.isArray(operand)) throw invalid(`${at}: ${name} takes a list of items`, at);
      return { [name]: prepareValue(operand, at, null, depth + 1) };
    case "$serverTimestamp":
      return { [name]: prepareValue(operand, at, null, depth + 1) };
    case "$delete":
      if (mode !== "update") throw invalid(`${where}: deleteField() is only allowed in update`, where);
      return { [name]: prepareValue(operand, at, null, depth + 1) };
    default:
      throw invalid(`${where}: unknown transform ${quote(name)}`, where);
  }
}

/**
 * Check a JSON value and return a fresh copy of it: null, booleans, finite numbers, well-formed
 * strings, arrays and plain objects with valid keys, nested at most 32 deep. With `mode` ("set"
 * or "update"), one-key objects like `{"$increment": 1}` are transforms (outside arrays);
 * "update" also allows `{"$delete": true}`.
 * @param {unknown} value
 * @param {string} [where] its JSON Pointer in the params ("/value", "/fields/0/1", …)
 * @param {"set" | "update" | null} [mode]
 * @param {number} [depth]
 * @returns {unknown}
 * @throws {MontybaseError} InvalidArgumentError naming the field
 */
export function prepareValue(value, where = "/value", mode = null, depth = 1) {
  if (value === null || typeof value === "boolean") return value;
  if (typeof value === "string") {
    if (!isWellFormed(value)) throw invalid(`${where}: string holds a lone surrogate`, where);
    return value;
  }
  if (typeof value === "number") return number(value, where);
  if (typeof value !== "object") {
    throw invalid(`${where}: ${typeName(value)} is not a JSON value (use null, boolean, number, string, array or plain object)`, where);
  }
  if (depth > MAX_DEPTH) {
    throw new LimitExceededError(`${where}: nested deeper than ${MAX_DEPTH} levels`, { path: where, limit: MAX_DEPTH, actual: depth });
  }
  if (Array.isArray(value)) {
    const out = [];
    for (let i = 0; i < value.length; i++) {
      const at = pointer(where, i);
      if (!Object.hasOwn(value, i)) throw invalid(`${at}: an array hole is not a JSON value`, at);
      out.push(prepareValue(value[i], at, null, depth + 1));
    }
    return out;
  }
  if (!isPlainObject(value)) {
    throw invalid(`${where}: ${typeName(value)} is not a JSON value (use null, boolean, number, string, array or plain object)`, where);
  }
  if (Object.getOwnPropertySymbols(value).length) throw invalid(`${where}: an object with symbol keys is not JSON`, where);
  const keys = Object.keys(value);
  if (mode && keys.length === 1 && TRANSFORMS.includes(keys[0])) {
    return transform(keys[0], value[keys[0]], where, mode, depth);
  }
  const out = {};
  for (const key of keys) {
    const at = pointer(where, key);
    checkKey(key, at);
    define(out, key, prepareValue(value[key], at, mode, depth + 1));
  }
  return out;
}

/**
 * Check a document (a plain object; it cannot itself be a transform) and return a fresh copy;
 * transforms may appear in its fields.
 * @param {unknown} value
 * @param {string} [where] its JSON Pointer in the params
 * @returns {Record<string, unknown>}
 * @throws {MontybaseError} InvalidArgumentError naming the field
 */
export function prepareDocument(value, where = "/value") {
  if (value === null || typeof value !== "object" || Array.isArray(value) || !isPlainObject(value)) {
    throw invalid(`${where}: a document is an object, got ${typeName(value)}`, where);
  }
  const keys = Object.keys(value);
  if (keys.length === 1 && TRANSFORMS.includes(keys[0])) {
    throw invalid(`${where}: a whole document cannot be a transform`, where);
  }
  return prepareValue(value, where, "set");
}

// A JSON string, or an integer token of 16 or more digits (2^53 has 16) with neither fraction
// nor exponent, not inside another number.
const LONG_INTEGER = /"(?:[^"\\]|\\.)*"|(?<![\d.eE+-])-?\d{16,}(?![\d.eE])/g;

/**
 * The JSON text of checked params: `JSON.stringify`'s, except that a number beyond ±(2^53−1)
 * that it would write as an integer (9007199254740992) gets a fraction part (9007199254740992.0).
 * The server refuses integers JavaScript cannot hold exactly but takes floats, and a number that
 * is not a safe integer is a float to both clients: what Python writes, JavaScript writes back.
 * @param {unknown} value
 * @returns {string}
 */
export function stringify(value) {
  const text = JSON.stringify(value);
  if (!/\d{16}/.test(text)) return text;
  return text.replace(LONG_INTEGER, (token) => (token[0] === '"' || Number.isSafeInteger(Number(token)) ? token : `${token}.0`));
}

/**
 * `update` fields as [field, value] pairs: an object's keys ("a.b" names a nested field), or
 * an array of [field, value] pairs whose field may be an array of keys (for keys with dots).
 * @param {unknown} fields
 * @param {string} [where] the JSON Pointer of the request's `fields`
 * @returns {Array<[string | string[], unknown]>}
 * @throws {MontybaseError} InvalidArgumentError
 */
export function updateFields(fields, where = "/fields") {
  if (Array.isArray(fields)) {
    return fields.map((pair, i) => {
      if (!Array.isArray(pair) || pair.length !== 2) {
        throw invalid(`${pointer(where, i)}: an update field is a [field, value] pair`, pointer(where, i));
      }
      return [wireField(pair[0]), pair[1]];
    });
  }
  if (fields === null || typeof fields !== "object" || !isPlainObject(fields)) {
    throw invalid(`${where}: update takes an object of fields, got ${typeName(fields)}`, where);
  }
  return Object.keys(fields).map((key) => [key, fields[key]]);
}

function integer(query, name, minimum, where) {
  if (!Object.hasOwn(query, name) || query[name] === null || query[name] === undefined) return null;
  const value = query[name];
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < minimum) {
    throw invalid(`${pointer(where, name)}: ${name} must be an integer ≥ ${minimum}, got ${quote(value)}`, pointer(where, name));
  }
  return value;
}

function present(query, name) {
  return Object.hasOwn(query, name) && query[name] !== null && query[name] !== undefined;
}

/**
 * Check the wire form of a query as the server does (server/query.py `parse_query`); return a
 * fresh copy of it.
 * @param {unknown} query
 * @param {string} [at] its JSON Pointer in the params
 * @returns {Record<string, unknown>}
 * @throws {MontybaseError} InvalidArgumentError naming the member at fault
 */
export function checkQuery(query, at = "/query") {
  if (query === null || typeof query !== "object" || Array.isArray(query)) throw invalid(`${at}: a query is an object`, at);
  const unknown = Object.keys(query).filter((name) => !QUERY_MEMBERS.includes(name)).sort();
  if (unknown.length) throw invalid(`${at}: the query has unknown members ${quote(unknown)}`, at);
  const pathAt = pointer(at, "path");
  if (!Array.isArray(query.path)) throw invalid(`${pathAt}: a path is a list of segments, got ${typeName(query.path)}`, pathAt);
  if (query.path.length > MAX_PATH_SEGMENTS) throw invalid(`${pathAt}: more than ${MAX_PATH_SEGMENTS} segments`, pathAt);
  const out = { path: query.path.map((segment, i) => checkKey(segment, pointer(pathAt, i))) };
  const where = present(query, "where") ? query.where : [];
  if (!Array.isArray(where)) throw invalid(`${pointer(at, "where")}: where is a list of [field, op, value]`, pointer(at, "where"));
  if (where.length) {
    out.where = where.map((clause, i) => {
      const clauseAt = pointer(at, "where", i);
      if (!Array.isArray(clause) || clause.length !== 3) throw invalid(`${clauseAt}: a where clause is [field, op, value]`, clauseAt);
      const [field, op, value] = clause;
      if (!OPERATORS.includes(op)) {
        throw invalid(`${pointer(clauseAt, 1)}: unknown operator ${quote(op)}; use one of ${OPERATORS.join(", ")}`, pointer(clauseAt, 1));
      }
      const copy = prepareValue(value, pointer(clauseAt, 2), null);
      if (LIST_OPERATORS.includes(op) && !Array.isArray(copy)) throw invalid(`${pointer(clauseAt, 2)}: ${quote(op)} needs a list of values`, pointer(clauseAt, 2));
      fieldPath(field, pointer(clauseAt, 0));
      return [wireField(field), op, copy];
    });
  }
  const orderBy = present(query, "orderBy") ? query.orderBy : [];
  if (!Array.isArray(orderBy)) throw invalid(`${pointer(at, "orderBy")}: orderBy is a list of [field, direction]`, pointer(at, "orderBy"));
  if (orderBy.length) {
    out.orderBy = orderBy.map((clause, i) => {
      const clauseAt = pointer(at, "orderBy", i);
      if (!Array.isArray(clause) || clause.length !== 2) throw invalid(`${clauseAt}: an order is [field, 'asc' | 'desc']`, clauseAt);
      if (clause[1] !== "asc" && clause[1] !== "desc") {
        throw invalid(`${pointer(clauseAt, 1)}: a direction is 'asc' or 'desc', got ${quote(clause[1])}`, pointer(clauseAt, 1));
      }
      fieldPath(clause[0], pointer(clauseAt, 0));
      return [wireField(clause[0]), clause[1]];
    });
  }
  const limit = integer(query, "limit", 0, at);
  const limitToLast = integer(query, "limitToLast", 0, at);
  if (limit !== null && limitToLast !== null) throw invalid(`${pointer(at, "limitToLast")}: the query has both limit and limitToLast`, pointer(at, "limitToLast"));
  const offset = integer(query, "offset", 0, at);
  if (limit !== null) out.limit = limit;
  if (limitToLast !== null) out.limitToLast = limitToLast;
  if (offset !== null) out.offset = offset;
  for (const names of [["startAt", "startAfter"], ["endAt", "endBefore"]]) {
    const given = names.filter((name) => present(query, name));
    if (given.length > 1) throw invalid(`${pointer(at, given[1])}: the query has both ${given[0]} and ${given[1]}`, pointer(at, given[1]));
    if (!given.length) continue;
    const name = given[0];
    const cursorAt = pointer(at, name);
    const values = query[name];
    const orders = out.orderBy ? out.orderBy.length : 0;
    if (!Array.isArray(values) || !values.length || values.length > orders + 1) {
      throw invalid(`${cursorAt}: ${name} takes 1 to ${orders + 1} values (one per orderBy field, then an id)`, cursorAt);
    }
    out[name] = values.map((value, i) => {
      const copy = prepareValue(value, pointer(cursorAt, i), null);
      if (i >= orders && typeof copy !== "string") {
        throw invalid(`${pointer(cursorAt, i)}: the value after the order fields is an id, a string`, pointer(cursorAt, i));
      }
      return copy;
    });
  }
  return out;
}

/** A write's params checked and copied; `at` is its pointer ("" for add, set, …; "/writes/0" in a commit). */
function checkWrite(write, at) {
  if (write === null || typeof write !== "object") return write;
  const out = { ...write };
  if (Object.hasOwn(write, "path") && Array.isArray(write.path)) {
    out.path = write.path.map((segment, i) => checkKey(segment, pointer(at, "path", i)));
  }
  if (Object.hasOwn(write, "value")) out.value = prepareDocument(write.value, pointer(at, "value"));
  if (Object.hasOwn(write, "fields") && Array.isArray(write.fields)) {
    out.fields = write.fields.map((pair, i) => {
      if (!Array.isArray(pair) || pair.length !== 2) return pair;
      fieldPath(pair[0], pointer(at, "fields", i, 0));
      return [wireField(pair[0]), prepareValue(pair[1], pointer(at, "fields", i, 1), "update")];
    });
  }
  return out;
}

/**
 * Check the params of a method call before it is sent, refusing what the server would refuse
 * (with its messages), and return the copy to send.
 * @param {string} method
 * @param {Record<string, unknown>} params
 * @returns {Record<string, unknown>}
 * @throws {MontybaseError} InvalidArgumentError
 */
export function checkParams(method, params) {
  switch (method) {
    case "add":
    case "set":
    case "update":
    case "delete":
      return checkWrite(params, "");
    case "commit":
      return {
        ...params,
        writes: Array.isArray(params.writes) ? params.writes.map((write, i) => checkWrite(write, pointer("/writes", i))) : params.writes,
      };
    case "query":
      return { query: checkQuery(params.query) };
    case "subscribe": {
      if (Object.hasOwn(params, "query")) return { sub: params.sub, query: checkQuery(params.query) };
      if (!Array.isArray(params.path) || !params.path.length) throw invalid("a listener needs a path or a query", "");
      return { sub: params.sub, path: params.path.map((segment, i) => checkKey(segment, pointer("/path", i))) };
    }
    case "aggregate": {
      if (!AGGREGATES.includes(params.op)) {
        throw invalid(`/op: an aggregation is one of ${AGGREGATES.join(", ")}, got ${quote(params.op)}`, "/op");
      }
      const out = { query: checkQuery(params.query), op: params.op };
      if (params.op === "sum" || params.op === "avg") {
        fieldPath(params.field, "/field");
        out.field = wireField(params.field);
      }
      return out;
    }
    default:
      return params;
  }
}

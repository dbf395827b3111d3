/**
 * Checks made before anything is sent, with the server's rules and messages (server/paths.py,
 * server/values.py, server/query.py): keys and segments, field paths, JSON values, queries.
 * Values are copied into fresh objects as they are checked, so what is sent is what was checked.
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
 * Return `key` if it is a valid segment or object key, else throw InvalidArgumentError.
 * A key is a non-empty string of at most 128 UTF-8 bytes, without `/` or control characters,
 * not `.` or `..`, not `__…__` (covers `__proto__`), not starting with `$`.
 * @param {unknown} key
 * @param {string} [where] what the key is, for the message and `data.path`
 * @returns {string}
 * @throws {MontybaseError} InvalidArgumentError; LimitExceededError for a key over 128 UTF-8 bytes
 */
export function checkKey(key, where = "key") {
  if (typeof key !== "string") {
    throw invalid(`${where} must be a string, got ${typeName(key)} ${quote(key)}`, where);
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
      throw new LimitExceededError(`${where} ${quote(key)} is longer than ${MAX_KEY_BYTES} UTF-8 bytes (${size})`,
        { path: where, limit: MAX_KEY_BYTES, actual: size });
    }
  }
  if (problem) throw invalid(`${where} ${quote(key)} ${problem}`, where);
  return key;
}

/**
 * Segments from arguments: "users/alan" is shorthand for "users", "alan". Each is checked.
 * @param {ReadonlyArray<unknown>} parts
 * @returns {string[]}
 * @throws {MontybaseError} InvalidArgumentError
 */
export function splitSegments(parts) {
  const out = [];
  for (const part of parts) {
    if (typeof part === "string" && part.includes("/")) out.push(...part.split("/"));
    else out.push(part);
  }
  out.forEach((segment, index) => checkKey(segment, `path segment ${index}`));
  if (out.length > MAX_PATH_SEGMENTS) throw invalid(`path has more than ${MAX_PATH_SEGMENTS} segments`, "path");
  return out;
}

/**
 * A field path as keys: `"a.b"` splits on dots; an array of keys is taken literally.
 * @param {unknown} field
 * @param {string} [where]
 * @returns {string[]}
 * @throws {MontybaseError} InvalidArgumentError
 */
export function fieldPath(field, where = "field") {
  let parts;
  if (typeof field === "string") parts = field.split(".");
  else if (Array.isArray(field) && field.length) parts = field;
  else throw invalid(`${where} must be a dotted string or a non-empty list of keys, got ${quote(field)}`, where);
  return parts.map((part) => checkKey(part, where));
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
  if (!Number.isFinite(value)) throw invalid(`${where}: ${value} is not a finite number`, where);
  if (Number.isInteger(value) && !Number.isSafeInteger(value)) {
    throw invalid(`${where}: integer ${value} is outside ±(2^53-1), which JavaScript cannot hold exactly`, where);
  }
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

function transform(name, operand, where, mode, depth) {
  switch (name) {
    case "$increment":
    case "$maximum":
    case "$minimum":
      return { [name]: expectNumber(operand, where) };
    case "$arrayUnion":
    case "$arrayRemove":
      if (!Array.isArray(operand)) throw invalid(`${where}: ${name} takes a list of items`, where);
      return { [name]: prepareValue(operand, where, null, depth + 1) };
    case "$serverTimestamp":
      return { [name]: prepareValue(operand, where, null, depth + 1) };
    case "$delete":
      if (mode !== "update") throw invalid(`${where}: deleteField() is only allowed in update`, where);
      return { [name]: prepareValue(operand, where, null, depth + 1) };
    default:
      throw invalid(`${where}: unknown transform ${quote(name)}`, where);
  }
}

/**
 * Check a JSON value and return a fresh copy of it: null, booleans, finite numbers (integers
 * within ±(2^53−1)), well-formed strings, arrays and plain objects with valid keys, nested at
 * most 32 deep. With `mode` ("set" or "update"), one-key objects like `{"$increment": 1}` are
 * transforms (outside arrays); "update" also allows `{"$delete": true}`.
 * @param {unknown} value
 * @param {string} [where] the name of the value in messages ("value", "value.a.b", …)
 * @param {"set" | "update" | null} [mode]
 * @param {number} [depth]
 * @returns {unknown}
 * @throws {MontybaseError} InvalidArgumentError naming the field
 */
export function prepareValue(value, where = "value", mode = null, depth = 1) {
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
      if (!Object.hasOwn(value, i)) throw invalid(`${where}[${i}]: an array hole is not a JSON value`, `${where}[${i}]`);
      out.push(prepareValue(value[i], `${where}[${i}]`, null, depth + 1));
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
    checkKey(key, `key in ${where}`);
    define(out, key, prepareValue(value[key], `${where}.${key}`, mode, depth + 1));
  }
  return out;
}

/**
 * Check a document (a plain object; it cannot itself be a transform) and return a fresh copy;
 * transforms may appear in its fields.
 * @param {unknown} value
 * @param {string} [where]
 * @returns {Record<string, unknown>}
 * @throws {MontybaseError} InvalidArgumentError naming the field
 */
export function prepareDocument(value, where = "value") {
  if (value === null || typeof value !== "object" || Array.isArray(value) || !isPlainObject(value)) {
    throw invalid(`${where}: a document is an object, got ${typeName(value)}`, where);
  }
  const keys = Object.keys(value);
  if (keys.length === 1 && TRANSFORMS.includes(keys[0])) {
    throw invalid(`${where}: a whole document cannot be a transform`, where);
  }
  return prepareValue(value, where, "set");
}

/**
 * `update` fields as [field, value] pairs: an object's keys ("a.b" names a nested field), or
 * an array of [field, value] pairs whose field may be an array of keys (for keys with dots).
 * @param {unknown} fields
 * @returns {Array<[string | string[], unknown]>}
 * @throws {MontybaseError} InvalidArgumentError
 */
export function updateFields(fields) {
  if (Array.isArray(fields)) {
    return fields.map((pair, i) => {
      if (!Array.isArray(pair) || pair.length !== 2) {
        throw invalid(`update fields[${i}] must be a [field, value] pair`, `fields[${i}]`);
      }
      return [wireField(pair[0]), pair[1]];
    });
  }
  if (fields === null || typeof fields !== "object" || !isPlainObject(fields)) {
    throw invalid(`update takes an object of fields, got ${typeName(fields)}`, "value");
  }
  return Object.keys(fields).map((key) => [key, fields[key]]);
}

function integer(query, name, minimum) {
  if (!Object.hasOwn(query, name) || query[name] === null || query[name] === undefined) return null;
  const value = query[name];
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < minimum) {
    throw invalid(`query.${name} must be an integer ≥ ${minimum}, got ${quote(value)}`, `query.${name}`);
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
 * @returns {Record<string, unknown>}
 * @throws {MontybaseError} InvalidArgumentError naming the member at fault
 */
export function checkQuery(query) {
  if (query === null || typeof query !== "object" || Array.isArray(query)) throw invalid("query must be an object", "query");
  const unknown = Object.keys(query).filter((name) => !QUERY_MEMBERS.includes(name)).sort();
  if (unknown.length) throw invalid(`query has unknown members ${quote(unknown)}`, "query");
  if (!Array.isArray(query.path)) throw invalid(`query.path must be a list of segments, got ${typeName(query.path)}`, "query.path");
  if (query.path.length > MAX_PATH_SEGMENTS) throw invalid(`query.path has more than ${MAX_PATH_SEGMENTS} segments`, "query.path");
  const out = { path: query.path.map((segment, i) => checkKey(segment, `query.path[${i}]`)) };
  const where = present(query, "where") ? query.where : [];
  if (!Array.isArray(where)) throw invalid("query.where must be a list of [field, op, value]", "query.where");
  if (where.length) {
    out.where = where.map((clause, i) => {
      const at = `query.where[${i}]`;
      if (!Array.isArray(clause) || clause.length !== 3) throw invalid(`${at} must be [field, op, value]`, at);
      const [field, op, value] = clause;
      if (!OPERATORS.includes(op)) throw invalid(`${at}: unknown operator ${quote(op)}; use one of ${OPERATORS.join(", ")}`, at);
      const copy = prepareValue(value, `${at}.value`, null);
      if (LIST_OPERATORS.includes(op) && !Array.isArray(copy)) throw invalid(`${at}: ${quote(op)} needs a list of values`, at);
      fieldPath(field, `${at}.field`);
      return [wireField(field), op, copy];
    });
  }
  const orderBy = present(query, "orderBy") ? query.orderBy : [];
  if (!Array.isArray(orderBy)) throw invalid("query.orderBy must be a list of [field, direction]", "query.orderBy");
  if (orderBy.length) {
    out.orderBy = orderBy.map((clause, i) => {
      const at = `query.orderBy[${i}]`;
      if (!Array.isArray(clause) || clause.length !== 2 || (clause[1] !== "asc" && clause[1] !== "desc")) {
        throw invalid(`${at} must be [field, 'asc' | 'desc']`, at);
      }
      fieldPath(clause[0], `${at}.field`);
      return [wireField(clause[0]), clause[1]];
    });
  }
  const limit = integer(query, "limit", 0);
  const limitToLast = integer(query, "limitToLast", 0);
  if (limit !== null && limitToLast !== null) throw invalid("query has both limit and limitToLast", "query.limitToLast");
  const offset = integer(query, "offset", 0);
  if (limit !== null) out.limit = limit;
  if (limitToLast !== null) out.limitToLast = limitToLast;
  if (offset !== null) out.offset = offset;
  for (const names of [["startAt", "startAfter"], ["endAt", "endBefore"]]) {
    const given = names.filter((name) => present(query, name));
    if (given.length > 1) throw invalid(`query has both ${given[0]} and ${given[1]}`, `query.${given[1]}`);
    if (!given.length) continue;
    const name = given[0];
    const values = query[name];
    const orders = out.orderBy ? out.orderBy.length : 0;
    if (!Array.isArray(values) || !values.length || values.length > orders + 1) {
      throw invalid(`query.${name} takes 1 to ${orders + 1} values (one per order_by field, then an id)`, `query.${name}`);
    }
    out[name] = values.map((value, i) => {
      const copy = prepareValue(value, `query.${name}[${i}]`, null);
      if (i >= orders && typeof copy !== "string") {
        throw invalid(`query.${name}[${i}]: the value after the order fields is an id, a string`, `query.${name}`);
      }
      return copy;
    });
  }
  return out;
}

function checkWrite(write, where) {
  if (write === null || typeof write !== "object") return write;
  const out = { ...write };
  if (Object.hasOwn(write, "path") && Array.isArray(write.path)) {
    out.path = write.path.map((segment, i) => checkKey(segment, `${where}path[${i}]`));
  }
  if (Object.hasOwn(write, "value")) out.value = prepareDocument(write.value, "value");
  if (Object.hasOwn(write, "fields") && Array.isArray(write.fields)) {
    out.fields = write.fields.map((pair) => {
      if (!Array.isArray(pair) || pair.length !== 2) return pair;
      const keys = fieldPath(pair[0], "field");
      return [wireField(pair[0]), prepareValue(pair[1], `value.${keys.join(".")}`, "update")];
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
        writes: Array.isArray(params.writes) ? params.writes.map((write, i) => checkWrite(write, `writes[${i}].`)) : params.writes,
      };
    case "query":
      return { query: checkQuery(params.query) };
    case "subscribe": {
      if (Object.hasOwn(params, "query")) return { sub: params.sub, query: checkQuery(params.query) };
      if (!Array.isArray(params.path) || !params.path.length) throw invalid("a listener needs a path or a query", "path");
      return { sub: params.sub, path: params.path.map((segment, i) => checkKey(segment, `path[${i}]`)) };
    }
    case "aggregate": {
      if (!AGGREGATES.includes(params.op)) {
        throw invalid(`aggregate op must be one of ${AGGREGATES.join(", ")}, got ${quote(params.op)}`, "op");
      }
      const out = { query: checkQuery(params.query), op: params.op };
      if (params.op === "sum" || params.op === "avg") {
        fieldPath(params.field, "field");
        out.field = wireField(params.field);
      }
      return out;
    }
    default:
      return params;
  }
}

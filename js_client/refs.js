/**
 * Immutable references and queries; each terminal becomes one method call with JSON params,
 * the very params the Python client builds (python_client/refs.py).
 * @module
 */

import { ConflictError, InvalidArgumentError } from "./errors.js";
import { checkKey, fieldPath, pointer, splitSegments, updateFields, wireField } from "./values.js";

/**
 * @typedef {object} Backend where calls go
 * @property {(method: string, params: Record<string, unknown>) => Promise<any>} call
 * @property {(params: Record<string, unknown>, onNext: Function, onError?: Function) => Unsubscribe} subscribe
 */

/**
 * @typedef {(() => void) & {ready: Promise<void>}} Unsubscribe Stops a listener: no callback
 *   runs after it returns; calling it again does nothing. `ready` fulfils once the server has
 *   accepted the listener (or it was stopped first) and rejects with the error `onError` gets.
 */

/**
 * Python's order of strings (by code point), which is the server's id order. JavaScript's `<`
 * compares UTF-16 units, which puts a code point above U+FFFF (a surrogate pair) before
 * U+E000–U+FFFF.
 * @param {string} a
 * @param {string} b
 * @returns {number}
 */
function compareCodePoints(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    let x = a.charCodeAt(i);
    let y = b.charCodeAt(i);
    if (x === y) continue;
    if (x >= 0xd800 && y >= 0xd800) {
      // Surrogates (0xD800–0xDFFF) after 0xE000–0xFFFF, as the code points they start.
      x = x >= 0xe000 ? x - 0x800 : x + 0x2000;
      y = y >= 0xe000 ? y - 0x800 : y + 0x2000;
    }
    return x - y;
  }
  return a.length - b.length;
}

/**
 * A collection's `{id: document}` as the server sent it, as a Map in id order. An object lists
 * integer-like keys first ("2" before "10"), so its own order cannot be kept; the ids are sorted
 * again. Anything that is not an object (a field read through the path) comes back as it is.
 * @param {unknown} value
 * @returns {Map<string, any> | unknown}
 */
function inIdOrder(value) {
  if (value === null || typeof value !== "object" || Array.isArray(value)) return value;
  return new Map(Object.keys(value).sort(compareCodePoints).map((id) => [id, value[id]]));
}

/**
 * A collection reference at odd depths (and the root), a document reference at even ones.
 * @param {Backend} backend
 * @param {ReadonlyArray<string>} segments checked segments
 * @returns {CollectionReference | DocumentReference}
 */
export function makeReference(backend, segments) {
  const Kind = segments.length && segments.length % 2 === 0 ? DocumentReference : CollectionReference;
  return new Kind(backend, segments);
}

const CURSORS = ["startAt", "startAfter", "endAt", "endBefore"];

function isRecord(value) {
  if (value === null || typeof value !== "object" || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

/**
 * `[id, document]` of a document given as a cursor: a `stream()` item or a snapshot's doc
 * (`{id, value}`), or a document snapshot (`{id, value, exists}`); null for a plain value.
 */
function cursorDocument(value, cursor) {
  if (!isRecord(value) || typeof value.id !== "string" || !isRecord(value.value)) return null;
  const keys = Object.keys(value);
  if (!keys.every((key) => key === "id" || key === "value" || key === "exists")) return null;
  if (value.exists === false) {
    throw new InvalidArgumentError(`${cursor}: document '${value.id}' does not exist`, { path: `/query/${cursor}` });
  }
  return [value.id, value.value];
}

/** The value of an order field in a cursor document; INVALID_ARGUMENT if it lacks it. */
function orderValue(document, field, id, cursor) {
  let value = document;
  for (const key of fieldPath(field, `/query/${cursor}`)) {
    if (!isRecord(value) || !Object.hasOwn(value, key)) {
      throw new InvalidArgumentError(`${cursor}: document '${id}' has no field ${JSON.stringify(field)} to order by`, {
        path: `/query/${cursor}`,
      });
    }
    value = value[key];
  }
  return value;
}

const DIRECTIONS = new Map([["asc", "asc"], ["ascending", "asc"], ["desc", "desc"], ["descending", "desc"]]);
const LISTS = ["where", "orderBy"];

/**
 * An immutable query: every building method returns a new one; terminals run it and return
 * Promises. Without `orderBy`, documents come in id order.
 */
export class Query {
  #ref;
  #spec;

  /**
   * Use `ref.where(...)`, `ref.orderBy(...)`, … or `ref.query()`.
   * @param {Reference} ref
   * @param {Record<string, unknown>} [spec]
   */
  constructor(ref, spec = {}) {
    this.#ref = ref;
    this.#spec = spec;
    Object.freeze(this);
  }

  #with(drop, name, value) {
    const spec = {};
    for (const [key, item] of Object.entries(this.#spec)) if (!drop.includes(key)) spec[key] = item;
    spec[name] = LISTS.includes(name) ? [...(spec[name] ?? []), value] : value;
    return new Query(this.#ref, spec);
  }

  /** The query as it crosses the wire: `{path, where?, orderBy?, limit?, …}`. */
  get wire() {
    const wire = { path: [...this.#ref.segments] };
    for (const [name, item] of Object.entries(this.#spec)) {
      wire[name] = LISTS.includes(name) ? item.map((clause) => [...clause]) : Array.isArray(item) ? [...item] : item;
    }
    return wire;
  }

  /** The reference this query runs over. */
  get ref() {
    return this.#ref;
  }

  /** @returns {string} */
  toString() {
    return `Query(${JSON.stringify(this.wire)})`;
  }

  /**
   * Whether `other` is a query with the same wire form.
   * @param {unknown} other
   * @returns {boolean}
   */
  isEqual(other) {
    return other instanceof Query && JSON.stringify(other.wire) === JSON.stringify(this.wire);
  }

  // Building

  /**
   * Keep documents whose `field` compares to `value` with `op` (`==`, `!=`, `<`, `<=`, `>`,
   * `>=`, `in`, `not-in`, `array-contains`, `array-contains-any`). Several are ANDed.
   * @param {string | string[]} field a dotted path, or an array of keys taken literally
   * @param {string} op
   * @param {unknown} value
   * @returns {Query}
   */
  where(field, op, value) {
    return this.#with([], "where", [wireField(field), op, value]);
  }

  /**
   * Order by `field`, "asc" or "desc"; documents lacking it are left out; ties break by id.
   * Before any cursor (as in Firestore), whose values follow the order fields.
   * @param {string | string[]} field
   * @param {"asc" | "desc"} [direction]
   * @returns {Query}
   * @throws {MontybaseError} InvalidArgumentError for another direction, or after a cursor
   */
  orderBy(field, direction = "asc") {
    const cursor = CURSORS.find((name) => Object.hasOwn(this.#spec, name));
    if (cursor) throw new InvalidArgumentError(`orderBy must come before the cursor (${cursor})`, { path: `/query/${cursor}` });
    const normalized = typeof direction === "string" ? DIRECTIONS.get(direction.toLowerCase()) : undefined;
    if (normalized === undefined) {
      const at = pointer("/query/orderBy", (this.#spec.orderBy ?? []).length, 1);
      throw new InvalidArgumentError(`${at}: a direction is 'asc' or 'desc', got ${JSON.stringify(direction)}`, { path: at });
    }
    return this.#with([], "orderBy", [wireField(field), normalized]);
  }

  /**
   * At most `n` documents, from the front.
   * @param {number} n
   * @returns {Query}
   */
  limit(n) {
    return this.#with(["limitToLast"], "limit", n);
  }

  /**
   * At most `n` documents, from the back (still returned in order).
   * @param {number} n
   * @returns {Query}
   */
  limitToLast(n) {
    return this.#with(["limit"], "limitToLast", n);
  }

  /**
   * Skip the first `n` matching documents.
   * @param {number} n
   * @returns {Query}
   */
  offset(n) {
    return this.#with([], "offset", n);
  }

  #cursor(name, values, drop) {
    const document = values.length === 1 ? cursorDocument(values[0], name) : null;
    if (document) {
      const [id, value] = document;
      values = [...(this.#spec.orderBy ?? []).map(([field]) => orderValue(value, field, id, name)), id];
    }
    return this.#with([drop], name, values);
  }

  /**
   * Start at the document whose order fields equal `values` (inclusive). One more value than
   * order fields is an id (ties break by id); a document (`{id, value}` from `stream()` or a
   * snapshot) stands for its order fields' values and its id, as in Firestore.
   * @param {...unknown} values one per orderBy field, then optionally an id; or one document
   * @returns {Query}
   * @throws {MontybaseError} InvalidArgumentError for a document lacking an order field
   */
  startAt(...values) {
    return this.#cursor("startAt", values, "startAfter");
  }

  /**
   * Start after the document whose order fields (then id) equal `values`, or after a document.
   * @param {...unknown} values
   * @returns {Query}
   * @throws {MontybaseError} InvalidArgumentError for a document lacking an order field
   */
  startAfter(...values) {
    return this.#cursor("startAfter", values, "startAt");
  }

  /**
   * End at the document whose order fields (then id) equal `values`, or at a document (inclusive).
   * @param {...unknown} values
   * @returns {Query}
   * @throws {MontybaseError} InvalidArgumentError for a document lacking an order field
   */
  endAt(...values) {
    return this.#cursor("endAt", values, "endBefore");
  }

  /**
   * End before the document whose order fields (then id) equal `values`, or before a document.
   * @param {...unknown} values
   * @returns {Query}
   * @throws {MontybaseError} InvalidArgumentError for a document lacking an order field
   */
  endBefore(...values) {
    return this.#cursor("endBefore", values, "endAt");
  }

  // Terminals

  /**
   * The matching documents as `[{id, value}, …]`, in order.
   * @returns {Promise<Array<{id: string, value: Record<string, unknown>}>>}
   * @throws {MontybaseError}
   */
  async stream() {
    return (await this.#ref._backend.call("query", { query: this.wire })).docs;
  }

  /**
   * The matching documents as a Map (id → document), in the query's order (an object would
   * list integer-like ids such as "2" before "10").
   * @returns {Promise<Map<string, Record<string, unknown>>>}
   * @throws {MontybaseError}
   */
  async get() {
    return new Map((await this.stream()).map(({ id, value }) => [id, value]));
  }

  async #aggregate(op, field) {
    const params = { query: this.wire, op };
    if (field !== undefined) params.field = wireField(field);
    return (await this.#ref._backend.call("aggregate", params)).value;
  }

  /**
   * Whether any document matches.
   * @returns {Promise<boolean>}
   * @throws {MontybaseError}
   */
  exists() {
    return this.#aggregate("exists");
  }

  /**
   * Alias of `exists()` (the original README's spelling).
   * @returns {Promise<boolean>}
   * @throws {MontybaseError}
   */
  exist() {
    return this.exists();
  }

  /**
   * How many documents match.
   * @returns {Promise<number>}
   * @throws {MontybaseError}
   */
  count() {
    return this.#aggregate("count");
  }

  /**
   * The sum of the numeric values of `field` over the matching documents (0 if none).
   * @param {string | string[]} field
   * @returns {Promise<number>}
   * @throws {MontybaseError}
   */
  sum(field) {
    return this.#aggregate("sum", field);
  }

  /**
   * Listen: `onNext({docs, changes})` now with the current result (every document `added`),
   * then once per change to it. `docs` is `[{id, value}, …]` in order; `changes` is
   * `[{type: "added" | "modified" | "removed", id, value, oldIndex, newIndex}, …]`, Firestore's
   * sequential indexes (applied in order to the previous docs they give the new ones). A
   * document that enters or leaves a `limit` window arrives as `added` or `removed`. After a
   * lost connection the client reconnects by itself and delivers a fresh full snapshot.
   * An exception thrown by a callback is reported (console.error) and the listener goes on.
   * @param {(snapshot: {docs: Array<{id: string, value: any}>, changes: Array<{type: string, id: string, value: any, oldIndex: number, newIndex: number}>}) => void} onNext
   * @param {(error: MontybaseError) => void} [onError] called once if the server refuses the
   *   listener (PermissionDeniedError, …), which then ends; without it, console.error
   * @returns {Unsubscribe}
   * @throws {MontybaseError} InvalidArgumentError for a bad query or callback, UnavailableError once closed
   */
  onSnapshot(onNext, onError) {
    return this.#ref._backend.subscribe({ query: this.wire }, onNext, onError);
  }

  /**
   * The mean of the numeric values of `field`, or null if there are none.
   * @param {string | string[]} field
   * @returns {Promise<number | null>}
   * @throws {MontybaseError}
   */
  avg(field) {
    return this.#aggregate("avg", field);
  }
}

/**
 * A path in the tree. Immutable: `append` returns a new reference.
 */
export class Reference {
  /**
   * Use `doc(db, ...segments)` or `ref.append(...)`.
   * @param {Backend} backend
   * @param {ReadonlyArray<string>} segments
   */
  constructor(backend, segments) {
    Object.defineProperty(this, "_backend", { value: backend });
    /** @type {ReadonlyArray<string>} */
    this.segments = Object.freeze([...segments]);
    Object.freeze(this);
  }

  /** The path as "collection/document/…". */
  get path() {
    return this.segments.join("/");
  }

  /** The last segment (null for the root). */
  get id() {
    return this.segments.length ? this.segments[this.segments.length - 1] : null;
  }

  /**
   * A new reference, `segments` further down ("a/b" is shorthand for "a", "b").
   * @param {...string} segments
   * @returns {CollectionReference | DocumentReference}
   * @throws {MontybaseError} InvalidArgumentError for a bad segment
   */
  append(...segments) {
    return makeReference(this._backend, [...this.segments, ...splitSegments(segments, this.segments.length)]);
  }

  /** @returns {string} e.g. `DocumentReference('users/amor')` */
  toString() {
    return `${this.constructor.name}('${this.path}')`;
  }

  /**
   * Whether `other` is the same kind of reference to the same path of the same database.
   * @param {unknown} other
   * @returns {boolean}
   */
  isEqual(other) {
    return (
      other instanceof Reference &&
      other.constructor === this.constructor &&
      other._backend === this._backend &&
      other.path === this.path &&
      other.segments.length === this.segments.length
    );
  }

  /**
   * The path a write with `key` addresses.
   * @param {string | undefined | null} key
   * @param {string} [where] the JSON Pointer of the request's path (for errors)
   * @returns {string[]}
   */
  _target(key, where) {
    throw new Error("abstract");
  }

  /** @param {string | undefined | null} key @param {string} [where] @returns {string[]} */
  _updateTarget(key, where) {
    return this._target(key, where);
  }

  // Writes

  /**
   * Create a document (a generated id, or `key`); ALREADY_EXISTS if it exists.
   * @param {Record<string, unknown>} value
   * @param {string} [key] on a collection: the new document's id
   * @returns {Promise<string>} its id
   * @throws {MontybaseError} AlreadyExistsError, InvalidArgumentError, …
   */
  async add(value, key) {
    return (await this._backend.call("add", { path: this._target(key), value })).id;
  }

  /**
   * Replace a document, creating it if missing (on a collection without key: a new one).
   * @param {Record<string, unknown>} value
   * @param {string} [key]
   * @returns {Promise<string>} its id
   * @throws {MontybaseError}
   */
  async set(value, key) {
    return (await this._backend.call("set", { path: this._target(key), value })).id;
  }

  /**
   * Merge fields into an existing document: a key "a.b" sets the nested field b of a; to name a
   * field that contains a dot, pass `[[["a.b"], value], …]` (an array of [keys, value] pairs).
   * @param {Record<string, unknown> | Array<[string | string[], unknown]>} fields
   * @param {string} [key] on a collection: the document (required)
   * @returns {Promise<string>} its id
   * @throws {MontybaseError} NotFoundError if the document is missing, InvalidArgumentError, …
   */
  async update(fields, key) {
    return (await this._backend.call("update", { path: this._updateTarget(key), fields: updateFields(fields) })).id;
  }

  /**
   * Delete a document with its subcollections (or, on a collection without key, the whole
   * collection: admin key only).
   * @param {string} [key]
   * @returns {Promise<unknown>} the deleted value, or null
   * @throws {MontybaseError}
   */
  async delete(key) {
    return (await this._backend.call("delete", { path: this._target(key) })).value;
  }

  // Reads

  /**
   * A document's value (null if missing), a collection as a Map (id → document) in id order
   * (empty if it has none), or the value of a field when the path goes into a document.
   * @returns {Promise<any>}
   * @throws {MontybaseError}
   */
  async get() {
    return this._shape(await this._read());
  }

  /** The value `get` reads, as the server sent it (a transaction records it so). @returns {Promise<any>} */
  async _read() {
    return (await this._backend.call("get", { path: [...this.segments] })).value;
  }

  /** What `get` makes of the value read. @param {unknown} value @returns {any} */
  _shape(value) {
    return value;
  }

  /**
   * A query over this collection (or, on a document, over that one document).
   * @returns {Query}
   */
  query() {
    return new Query(this);
  }

  /** @returns {Promise<Array<{id: string, value: Record<string, unknown>}>>} @throws {MontybaseError} */
  stream() {
    return this.query().stream();
  }

  /** Whether the document exists, or the collection holds a document. @returns {Promise<boolean>} @throws {MontybaseError} */
  exists() {
    return this.query().exists();
  }

  /** Alias of `exists()`. @returns {Promise<boolean>} @throws {MontybaseError} */
  exist() {
    return this.exists();
  }

  /** How many documents (0 or 1 on a document). @returns {Promise<number>} @throws {MontybaseError} */
  count() {
    return this.query().count();
  }

  /** @param {string | string[]} field @param {string} op @param {unknown} value @returns {Query} */
  where(field, op, value) {
    return this.query().where(field, op, value);
  }

  /** @param {string | string[]} field @param {"asc" | "desc"} [direction] @returns {Query} @throws {MontybaseError} */
  orderBy(field, direction = "asc") {
    return this.query().orderBy(field, direction);
  }

  /** @param {number} n @returns {Query} */
  limit(n) {
    return this.query().limit(n);
  }

  /** @param {number} n @returns {Query} */
  limitToLast(n) {
    return this.query().limitToLast(n);
  }

  /** @param {number} n @returns {Query} */
  offset(n) {
    return this.query().offset(n);
  }

  /** @param {...unknown} values @returns {Query} */
  startAt(...values) {
    return this.query().startAt(...values);
  }

  /** @param {...unknown} values @returns {Query} */
  startAfter(...values) {
    return this.query().startAfter(...values);
  }

  /** @param {...unknown} values @returns {Query} */
  endAt(...values) {
    return this.query().endAt(...values);
  }

  /** @param {...unknown} values @returns {Query} */
  endBefore(...values) {
    return this.query().endBefore(...values);
  }

  /** @param {string | string[]} field @returns {Promise<number>} @throws {MontybaseError} */
  sum(field) {
    return this.query().sum(field);
  }

  /** @param {string | string[]} field @returns {Promise<number | null>} @throws {MontybaseError} */
  avg(field) {
    return this.query().avg(field);
  }

  /**
   * Listen to this collection: see `Query.onSnapshot` (a document reference gives
   * `{id, value, exists}` snapshots instead).
   * @param {(snapshot: any) => void} onNext
   * @param {(error: MontybaseError) => void} [onError]
   * @returns {Unsubscribe}
   * @throws {MontybaseError} InvalidArgumentError, UnavailableError
   */
  onSnapshot(onNext, onError) {
    return this.query().onSnapshot(onNext, onError);
  }
}

/**
 * A collection: `key` names one of its documents.
 */
export class CollectionReference extends Reference {
  /**
   * The collection as a Map (id → document) in id order, empty if it has none. On the root
   * (admin key): a Map of the top-level collections by name, each such a Map. Where the path
   * goes into a document instead (`doc(db, "users", uid, "stats")` reads that user's `stats`
   * field), the field's value: an object as a Map in key order, anything else as it is.
   * @returns {Promise<Map<string, any>>}
   * @throws {MontybaseError}
   */
  get() {
    return super.get();
  }

  /** @param {unknown} value @returns {any} */
  _shape(value) {
    const shaped = inIdOrder(value);
    if (!this.segments.length && shaped instanceof Map) {
      for (const [name, docs] of shaped) shaped.set(name, inIdOrder(docs));
    }
    return shaped;
  }

  /** @param {string | undefined | null} key @param {string} [where] @returns {string[]} */
  _target(key, where = "/path") {
    if (key === undefined || key === null) return [...this.segments];
    return [...this.segments, checkKey(key, pointer(where, this.segments.length))];
  }

  /** @param {string | undefined | null} key @param {string} [where] @returns {string[]} */
  _updateTarget(key, where = "/path") {
    if (key === undefined || key === null) {
      throw new InvalidArgumentError(`${where}: update on a collection needs a key (the document to merge into)`, { path: where });
    }
    return this._target(key, where);
  }
}

/**
 * A document: its children are subcollections, reached with `append`.
 */
export class DocumentReference extends Reference {
  /**
   * Listen to this document: `onNext({id, value, exists})` now, then after every change
   * (`value` null and `exists` false while it is missing, or while it may not be read). After a
   * lost connection the client reconnects by itself and delivers the current state again.
   * An exception thrown by a callback is reported (console.error) and the listener goes on.
   * @param {(snapshot: {id: string, value: any, exists: boolean}) => void} onNext
   * @param {(error: MontybaseError) => void} [onError] called once if the server refuses the
   *   listener, which then ends; without it, console.error
   * @returns {Unsubscribe}
   * @throws {MontybaseError} InvalidArgumentError, UnavailableError once closed
   */
  onSnapshot(onNext, onError) {
    return this._backend.subscribe({ path: [...this.segments] }, onNext, onError);
  }

  /** @param {string | undefined | null} key @param {string} [where] @returns {string[]} */
  _target(key, where = "/path") {
    if (key !== undefined && key !== null) {
      const at = pointer(where, this.segments.length);
      const why = `key is for collection references; ${this.path} is a document (use append() for subcollections)`;
      throw new InvalidArgumentError(`${at}: ${why}`, { path: at });
    }
    return [...this.segments];
  }
}

/**
 * Writes collected, then applied all or nothing by `commit()` (one journal record).
 */
export class WriteBatch {
  /** The JSON Pointer of `member` of the next write in the commit's params (for errors). */
  #at(member) {
    return pointer("/writes", this._writes.length, member);
  }

  /** @param {Backend} backend */
  constructor(backend) {
    Object.defineProperty(this, "_backend", { value: backend });
    /** @type {Array<Record<string, unknown>>} */
    this._writes = [];
  }

  /**
   * @param {Reference} ref
   * @param {Record<string, unknown>} value
   * @param {string} [key]
   * @returns {this}
   * @throws {MontybaseError} InvalidArgumentError
   */
  add(ref, value, key) {
    this._writes.push({ op: "add", path: ref._target(key, this.#at("path")), value });
    return this;
  }

  /**
   * @param {Reference} ref
   * @param {Record<string, unknown>} value
   * @param {string} [key]
   * @returns {this}
   * @throws {MontybaseError} InvalidArgumentError
   */
  set(ref, value, key) {
    this._writes.push({ op: "set", path: ref._target(key, this.#at("path")), value });
    return this;
  }

  /**
   * @param {Reference} ref
   * @param {Record<string, unknown> | Array<[string | string[], unknown]>} fields
   * @param {string} [key]
   * @returns {this}
   * @throws {MontybaseError} InvalidArgumentError
   */
  update(ref, fields, key) {
    const path = ref._updateTarget(key, this.#at("path"));
    this._writes.push({ op: "update", path, fields: updateFields(fields, this.#at("fields")) });
    return this;
  }

  /**
   * @param {Reference} ref
   * @param {string} [key]
   * @returns {this}
   * @throws {MontybaseError} InvalidArgumentError
   */
  delete(ref, key) {
    this._writes.push({ op: "delete", path: ref._target(key, this.#at("path")) });
    return this;
  }

  /** @returns {Record<string, unknown>} */
  _params() {
    return { writes: this._writes };
  }

  /**
   * Apply every write or none.
   * @returns {Promise<unknown[]>} each write's result: an id, or a deleted value
   * @throws {MontybaseError}
   */
  async commit() {
    if (!this._writes.length) return [];
    const { results } = await this._backend.call("commit", this._params());
    this._writes = [];
    return results.map((result) => (Object.hasOwn(result, "id") ? result.id : result.value));
  }
}

/**
 * A batch that also records what it read; the commit fails with CONFLICT if any of it changed.
 */
export class Transaction extends WriteBatch {
  /** @param {Backend} backend */
  constructor(backend) {
    super(backend);
    /** @type {Array<{path: string[], value: unknown}>} */
    this._reads = [];
  }

  /**
   * Read a document (or any path) inside the transaction; reads come before writes.
   * @param {Reference} ref
   * @returns {Promise<any>}
   * @throws {MontybaseError}
   */
  async get(ref) {
    if (this._writes.length) {
      const at = pointer("/reads", this._reads.length);
      throw new InvalidArgumentError(`${at}: a transaction reads before it writes (${ref.path})`, { path: at });
    }
    const value = await ref._read();
    this._reads.push({ path: [...ref.segments], value });
    return ref._shape(value);
  }

  /** @returns {Record<string, unknown>} */
  _params() {
    return { writes: this._writes, reads: this._reads };
  }
}

/**
 * How often a transaction runs at most, and its backoff: after its nth conflict it waits a random
 * time up to 10 ms × 2^(n-1), at most 500 ms (full-jitter exponential backoff), so contending
 * writers spread out instead of colliding again (python_client/refs.py says why 20 attempts).
 */
export const MAX_ATTEMPTS = 20;
const BACKOFF_FIRST_MS = 10;
const BACKOFF_CAP_MS = 500;

/**
 * Run `fn(transaction)` and commit; on CONFLICT wait (randomized exponential backoff) and run it
 * again, up to `maxAttempts` times in all.
 * @template T
 * @param {Backend} backend
 * @param {(tx: Transaction) => T | Promise<T>} fn
 * @param {number} maxAttempts
 * @returns {Promise<T>}
 * @throws {MontybaseError} ConflictError after the last attempt, or what `fn` throws
 */
export async function runTransaction(backend, fn, maxAttempts) {
  if (!Number.isSafeInteger(maxAttempts) || maxAttempts < 1) {
    throw new InvalidArgumentError("maxAttempts must be an integer of at least 1");
  }
  for (let attempt = 1; ; attempt++) {
    const transaction = new Transaction(backend);
    const result = await fn(transaction);
    try {
      await transaction.commit();
      return result;
    } catch (error) {
      if (!(error instanceof ConflictError) || attempt >= maxAttempts) throw error;
    }
    const wait = Math.random() * Math.min(BACKOFF_CAP_MS, BACKOFF_FIRST_MS * 2 ** (attempt - 1));
    await new Promise((resolve) => setTimeout(resolve, wait));
  }
}

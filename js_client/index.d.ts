// Types for the Montybase JavaScript client (js_client/index.js).

/** A JSON value as Montybase stores it. */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };
/** A document: a JSON object (its fields may hold transforms when written). */
export type DocumentData = { [key: string]: any };
/** A field path: "a.b" (split on dots) or an array of keys taken literally. */
export type FieldPath = string | readonly string[];
/** Update fields: an object ("a.b" keys name nested fields) or [field, value] pairs. */
export type UpdateFields = DocumentData | ReadonlyArray<readonly [FieldPath, any]>;
export type WhereOperator = "==" | "!=" | "<" | "<=" | ">" | ">=" | "in" | "not-in" | "array-contains" | "array-contains-any";
export type Direction = "asc" | "desc" | "ascending" | "descending";
export interface StreamedDocument<T = DocumentData> {
  id: string;
  value: T;
}

/** The parsed client-config.json, or a server's montybase.json (admin key). */
export interface ClientConfig {
  projectName?: string;
  apiKey?: string;
  adminKey?: string;
  endpoint?: string;
  serverKey?: string;
  [other: string]: unknown;
}

export interface MontybaseOptions {
  /** A WebSocket class, used instead of globalThis.WebSocket (Node 20 has none: pass `ws`). */
  WebSocket?: unknown;
  /** Overrides config.endpoint; http(s):// means ws(s)://. */
  endpoint?: string;
  /** Milliseconds to wait for the handshake and for each answer (default 60000). */
  timeout?: number;
}

/** A database handle on a Montybase server. */
export class Montybase {
  /** @throws {InvalidArgumentError} a config without key or endpoint, or no WebSocket */
  constructor(config: ClientConfig, options?: MontybaseOptions);
  readonly projectName: string | null;
  /** The ws:// or wss:// URL of the server. */
  readonly endpoint: string;
  /** Collect writes; commit() applies them all or none. */
  batch(): WriteBatch;
  /** Run fn(tx): its reads, then its writes, committed together; retried on CONFLICT. */
  transaction<T>(fn: (tx: Transaction) => T | Promise<T>, options?: { maxAttempts?: number }): Promise<T>;
  /** Disconnect: calls in flight reject with ConnectionLostError, later calls with UnavailableError. */
  close(): Promise<void>;
}

/** A reference: doc(db, "users") a collection, doc(db, "users", uid) a document. */
export function doc(db: Montybase, ...segments: string[]): CollectionReference | DocumentReference;

/** An immutable query; building methods return new queries, terminals return Promises. */
export class Query<T = DocumentData> {
  /** The query as it crosses the wire. */
  readonly wire: { path: string[]; [member: string]: unknown };
  readonly ref: Reference;
  isEqual(other: unknown): boolean;
  toString(): string;
  where(field: FieldPath, op: WhereOperator, value: unknown): Query<T>;
  orderBy(field: FieldPath, direction?: Direction): Query<T>;
  limit(n: number): Query<T>;
  limitToLast(n: number): Query<T>;
  offset(n: number): Query<T>;
  startAt(...values: unknown[]): Query<T>;
  startAfter(...values: unknown[]): Query<T>;
  endAt(...values: unknown[]): Query<T>;
  endBefore(...values: unknown[]): Query<T>;
  stream(): Promise<StreamedDocument<T>[]>;
  get(): Promise<Record<string, T>>;
  exists(): Promise<boolean>;
  exist(): Promise<boolean>;
  count(): Promise<number>;
  sum(field: FieldPath): Promise<number>;
  avg(field: FieldPath): Promise<number | null>;
}

/** A path in the tree; immutable. */
export abstract class Reference<T = DocumentData> {
  readonly segments: readonly string[];
  /** "collection/document/…" */
  readonly path: string;
  /** The last segment (null for the root). */
  readonly id: string | null;
  append(...segments: string[]): CollectionReference | DocumentReference;
  isEqual(other: unknown): boolean;
  toString(): string;
  add(value: DocumentData, key?: string): Promise<string>;
  set(value: DocumentData, key?: string): Promise<string>;
  update(fields: UpdateFields, key?: string): Promise<string>;
  delete(key?: string): Promise<any>;
  get(): Promise<any>;
  query(): Query<T>;
  stream(): Promise<StreamedDocument<T>[]>;
  exists(): Promise<boolean>;
  exist(): Promise<boolean>;
  count(): Promise<number>;
  where(field: FieldPath, op: WhereOperator, value: unknown): Query<T>;
  orderBy(field: FieldPath, direction?: Direction): Query<T>;
  limit(n: number): Query<T>;
  limitToLast(n: number): Query<T>;
  offset(n: number): Query<T>;
  startAt(...values: unknown[]): Query<T>;
  startAfter(...values: unknown[]): Query<T>;
  endAt(...values: unknown[]): Query<T>;
  endBefore(...values: unknown[]): Query<T>;
  sum(field: FieldPath): Promise<number>;
  avg(field: FieldPath): Promise<number | null>;
}

/** A collection: `key` names one of its documents. */
export class CollectionReference<T = DocumentData> extends Reference<T> {
  /** {id: document} in id order ({} if empty). */
  get(): Promise<Record<string, T>>;
  /** Without key, the whole collection (admin key only); returns what was deleted. */
  delete(key?: string): Promise<Record<string, T> | T | null>;
}

/** A document: its children are subcollections, reached with `append`. */
export class DocumentReference<T = DocumentData> extends Reference<T> {
  /** The document, or null if it does not exist. */
  get(): Promise<T | null>;
  add(value: DocumentData): Promise<string>;
  set(value: DocumentData): Promise<string>;
  update(fields: UpdateFields): Promise<string>;
  delete(): Promise<T | null>;
}

/** Writes collected, then applied all or nothing by commit(). */
export class WriteBatch {
  add(ref: Reference, value: DocumentData, key?: string): this;
  set(ref: Reference, value: DocumentData, key?: string): this;
  update(ref: Reference, fields: UpdateFields, key?: string): this;
  delete(ref: Reference, key?: string): this;
  /** Each write's result: an id, or a deleted value. */
  commit(): Promise<unknown[]>;
}

/** A batch that records its reads; the commit fails with CONFLICT if any of them changed. */
export class Transaction extends WriteBatch {
  get(ref: Reference): Promise<any>;
}

// Transforms: plain data resolved by the server, atomically.
export function increment(n: number): { $increment: number };
export function maximum(n: number): { $maximum: number };
export function minimum(n: number): { $minimum: number };
export function arrayUnion(...items: unknown[]): { $arrayUnion: unknown[] };
export function arrayRemove(...items: unknown[]): { $arrayRemove: unknown[] };
export function serverTimestamp(): { $serverTimestamp: true };
export function deleteField(): { $delete: true };

/** `http(s)://` means `ws(s)://`; a trailing slash is dropped. */
export function websocketUrl(endpoint: string): string;

// Errors

export interface ErrorEntry {
  readonly code: number;
  readonly reason: string;
  readonly class: string;
  readonly retry: boolean;
  readonly when: string;
}
/** The shared error table (schemas/errors.json). */
export const ERRORS: readonly ErrorEntry[];

/** Base of every Montybase error. */
export class MontybaseError extends Error {
  static readonly code: number;
  static readonly reason: string;
  constructor(message?: string, data?: Record<string, unknown>);
  /** The JSON-RPC error code. */
  code: number;
  /** The stable reason to branch on, e.g. "NOT_FOUND". */
  reason: string;
  /** Details, e.g. `path` (the field at fault), `limit` and `actual`, `closeCode`. */
  data: Record<string, any>;
}
export class ParseError extends MontybaseError {}
export class InvalidRequestError extends MontybaseError {}
export class MethodNotFoundError extends MontybaseError {}
export class InvalidArgumentError extends MontybaseError {}
export class InternalError extends MontybaseError {}
export class UnauthenticatedError extends MontybaseError {}
export class PermissionDeniedError extends MontybaseError {}
export class NotFoundError extends MontybaseError {}
export class AlreadyExistsError extends MontybaseError {}
export class ValidationError extends MontybaseError {}
export class LimitExceededError extends MontybaseError {}
export class RateLimitedError extends MontybaseError {}
export class ConflictError extends MontybaseError {}
export class UnavailableError extends MontybaseError {}
export class ConnectionLostError extends MontybaseError {}
/** The class for a reason; MontybaseError for an unknown one. */
export function errorClass(reason: string | null | undefined): typeof MontybaseError;

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

/** A document listener's snapshot: `value` null and `exists` false while missing (or unreadable). */
export interface DocumentSnapshot<T = DocumentData> {
  readonly id: string;
  readonly value: T | null;
  readonly exists: boolean;
}
/** One change since the previous snapshot, with Firestore's sequential indexes (-1: none). */
export interface DocumentChange<T = DocumentData> {
  readonly type: "added" | "modified" | "removed";
  readonly id: string;
  /** The document as it is now (added, modified) or was (removed). */
  readonly value: T;
  readonly oldIndex: number;
  readonly newIndex: number;
}
/** A collection or query listener's snapshot: the result in order, and what changed (the first lists every document as added). */
export interface QuerySnapshot<T = DocumentData> {
  readonly docs: StreamedDocument<T>[];
  readonly changes: DocumentChange<T>[];
}
/** Stops a listener: no callback runs after it returns; calling it again does nothing. */
export interface Unsubscribe {
  (): void;
  /** Fulfils once the server accepted the listener (or it was stopped first); rejects with the error onError gets. */
  readonly ready: Promise<void>;
}
/** Called once if the server refuses a listener (PermissionDeniedError, …); the listener then ends. */
export type SnapshotErrorCallback = (error: MontybaseError) => void;
/** A signed-in user. */
export interface User {
  uid: string;
  email: string;
  /** An admin account (`montybase admins add`): the connection has the admin role. */
  admin?: true;
}

/** The parsed client-config.json, or a server's montybase.json (admin key). */
export interface ClientConfig {
  projectName?: string;
  apiKey?: string;
  adminKey?: string;
  /** The server's address, or a list of the servers of one database (tried in turn: failover). */
  endpoint?: string | string[];
  serverKey?: string;
  [other: string]: unknown;
}

export interface MontybaseOptions {
  /** A WebSocket class, used instead of globalThis.WebSocket (Node 20 has none: pass `ws`). */
  WebSocket?: unknown;
  /** Overrides config.endpoint (an address, or a list of them); http(s):// means ws(s)://. */
  endpoint?: string | string[];
  /** Milliseconds to wait for the handshake and for each answer (default 60000). */
  timeout?: number;
}

/** A database handle on a Montybase server. */
export class Montybase {
  /**
   * @throws {InvalidArgumentError} a config without key, without endpoint or with a bad one (data.path names it), or no WebSocket
   * @throws {UnavailableError} no WebCrypto: a page that is not a secure context (not https, not localhost)
   */
  constructor(config: ClientConfig, options?: MontybaseOptions);
  readonly projectName: string | null;
  /** The ws:// or wss:// URL of the server (of the endpoint connected to, with several). */
  readonly endpoint: string;
  /** Collect writes; commit() applies them all or none. */
  batch(): WriteBatch;
  /** Run fn(tx): its reads, then its writes, committed together; retried on CONFLICT. */
  transaction<T>(fn: (tx: Transaction) => T | Promise<T>, options?: { maxAttempts?: number }): Promise<T>;
  /** Disconnect: calls in flight reject with ConnectionLostError, later calls with UnavailableError; listeners stop. */
  close(): Promise<void>;
  /** Create an account and sign in (the session stays in memory, resumed after a reconnect). @throws AlreadyExistsError */
  signUp(email: string, password: string): Promise<User>;
  /** Sign in; a wrong password and an unknown email are the same UnauthenticatedError. */
  signIn(email: string, password: string): Promise<User>;
  /** Sign out and end the session. */
  signOut(): Promise<void>;
  /** The signed-in user, or null. */
  readonly currentUser: User | null;
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
  /** The matching documents, id → document, in the query's order (a Map keeps "2" before "10" where an object would not). */
  get(): Promise<Map<string, T>>;
  exists(): Promise<boolean>;
  exist(): Promise<boolean>;
  count(): Promise<number>;
  sum(field: FieldPath): Promise<number>;
  avg(field: FieldPath): Promise<number | null>;
  /** The current result now, then one snapshot per change; reconnects and resubscribes by itself. */
  onSnapshot(onNext: (snapshot: QuerySnapshot<T>) => void, onError?: SnapshotErrorCallback): Unsubscribe;
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
  /** A document, a collection (a Map), or a field read through the path. */
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
  onSnapshot(onNext: (snapshot: any) => void, onError?: SnapshotErrorCallback): Unsubscribe;
}

/** A collection: `key` names one of its documents. */
export class CollectionReference<T = DocumentData> extends Reference<T> {
  /**
   * id → document, in id order (empty if none). A path into a document reads that field
   * instead: an object field as a Map too, any other value as it is. The root (admin key): a
   * Map of the top-level collections, each such a Map.
   */
  get(): Promise<Map<string, T>>;
  /** Without key, the whole collection (admin key only); returns what was deleted. */
  delete(key?: string): Promise<Record<string, T> | T | null>;
  /** The collection now, then one snapshot per change. */
  onSnapshot(onNext: (snapshot: QuerySnapshot<T>) => void, onError?: SnapshotErrorCallback): Unsubscribe;
}

/** A document: its children are subcollections, reached with `append`. */
export class DocumentReference<T = DocumentData> extends Reference<T> {
  /** The document, or null if it does not exist. */
  get(): Promise<T | null>;
  add(value: DocumentData): Promise<string>;
  set(value: DocumentData): Promise<string>;
  update(fields: UpdateFields): Promise<string>;
  delete(): Promise<T | null>;
  /** The document now, then after every change. */
  onSnapshot(onNext: (snapshot: DocumentSnapshot<T>) => void, onError?: SnapshotErrorCallback): Unsubscribe;
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
  /** What ref.get() gives (a collection as a Map), recorded for the commit's check. */
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
  /** Details, e.g. `path` (the JSON Pointer of the faulty value in the request's params, "/value/score"), `limit` and `actual`, `closeCode`. */
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

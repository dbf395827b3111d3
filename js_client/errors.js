/**
 * Montybase errors: `MontybaseError` (with `code`, `reason`, `data`) and one subclass per
 * entry of the shared error table (`schemas/errors.json`, mirrored here; a test checks they agree).
 * @module
 */

/**
 * The error table: JSON-RPC code, stable reason, class name, whether a retry may succeed.
 * Same content as `schemas/errors.json` "errors" (the `when` texts included).
 * @type {ReadonlyArray<Readonly<{code: number, reason: string, class: string, retry: boolean, when: string}>>}
 */
export const ERRORS = Object.freeze([
  { code: -32700, reason: "PARSE_ERROR", class: "ParseError", retry: false, when: "the frame is not UTF-8 JSON" },
  { code: -32600, reason: "INVALID_REQUEST", class: "InvalidRequestError", retry: false, when: "not a JSON-RPC 2.0 request object, or an empty or oversized batch" },
  { code: -32601, reason: "METHOD_NOT_FOUND", class: "MethodNotFoundError", retry: false, when: "unknown method" },
  { code: -32602, reason: "INVALID_ARGUMENT", class: "InvalidArgumentError", retry: false, when: "params or values break the contract: bad path, unsafe key, NaN, unsafe integer, wrong type" },
  { code: -32603, reason: "INTERNAL", class: "InternalError", retry: false, when: "a bug; data.errorId names the log line" },
  { code: -32000, reason: "UNAUTHENTICATED", class: "UnauthenticatedError", retry: true, when: "no or failed handshake, or the session is over" },
  { code: -32001, reason: "PERMISSION_DENIED", class: "PermissionDeniedError", retry: false, when: "a rule denies the operation (also hides existence)" },
  { code: -32002, reason: "NOT_FOUND", class: "NotFoundError", retry: false, when: "update of a missing document" },
  { code: -32003, reason: "ALREADY_EXISTS", class: "AlreadyExistsError", retry: false, when: "add with an id that is taken" },
  { code: -32004, reason: "VALIDATION_FAILED", class: "ValidationError", retry: false, when: "a data type rule rejects the document; data.errors lists {path, keyword, message}" },
  { code: -32005, reason: "LIMIT_EXCEEDED", class: "LimitExceededError", retry: false, when: "a size limit is exceeded; data.limit and data.actual" },
  { code: -32006, reason: "RATE_LIMITED", class: "RateLimitedError", retry: true, when: "a rate limit is exceeded; data.retryAfterMs" },
  { code: -32007, reason: "CONFLICT", class: "ConflictError", retry: true, when: "a transaction read a document that changed before it committed" },
  { code: -32008, reason: "UNAVAILABLE", class: "UnavailableError", retry: true, when: "the database is closed, shutting down, or its storage failed" },
  { code: -32009, reason: "CONNECTION_LOST", class: "ConnectionLostError", retry: true, when: "the connection dropped before the answer arrived (raised by clients, never sent)" },
].map((entry) => Object.freeze(entry)));

/** A copy of `data` as own properties only (so a key like "__proto__" stays a plain key). */
function ownData(data, omit) {
  if (data === null || typeof data !== "object" || Array.isArray(data)) return {};
  return Object.fromEntries(Object.entries(data).filter(([key]) => key !== omit));
}

/**
 * Base of every Montybase error.
 * - `code`: the JSON-RPC error code (see `ERRORS`);
 * - `reason`: the stable string to branch on (`"NOT_FOUND"`, …);
 * - `data`: details, such as `path` (the field at fault) or `limit` and `actual`.
 */
export class MontybaseError extends Error {
  /** The JSON-RPC code of this class. */
  static code = -32603;
  /** The reason of this class. */
  static reason = "INTERNAL";

  /**
   * @param {string} [message] what went wrong (defaults to the reason)
   * @param {Record<string, unknown>} [data] details
   */
  constructor(message = "", data = undefined) {
    const kind = new.target;
    super(message || kind.reason);
    this.name = kind.name;
    /** @type {number} */
    this.code = kind.code;
    /** @type {string} */
    this.reason = kind.reason;
    /** @type {Record<string, unknown>} */
    this.data = ownData(data);
  }
}

const byReason = new Map();
const byClass = new Map();
for (const entry of ERRORS) {
  // A computed name gives each class its own `name` (seen in stack traces and `error.name`).
  const cls = { [entry.class]: class extends MontybaseError {} }[entry.class];
  cls.code = entry.code;
  cls.reason = entry.reason;
  cls.retry = entry.retry;
  byReason.set(entry.reason, cls);
  byClass.set(entry.class, cls);
}

/** @type {typeof MontybaseError} -32700: the frame is not UTF-8 JSON. */
export const ParseError = byClass.get("ParseError");
/** @type {typeof MontybaseError} -32600: not a JSON-RPC 2.0 request, or a bad batch. */
export const InvalidRequestError = byClass.get("InvalidRequestError");
/** @type {typeof MontybaseError} -32601: unknown method. */
export const MethodNotFoundError = byClass.get("MethodNotFoundError");
/** @type {typeof MontybaseError} -32602: a bad path, key, value, query or argument; `data.path` names it. */
export const InvalidArgumentError = byClass.get("InvalidArgumentError");
/** @type {typeof MontybaseError} -32603: a bug on the server; `data.errorId` names its log line. */
export const InternalError = byClass.get("InternalError");
/** @type {typeof MontybaseError} -32000: the handshake failed, or the session is over. */
export const UnauthenticatedError = byClass.get("UnauthenticatedError");
/** @type {typeof MontybaseError} -32001: the key may not do this. */
export const PermissionDeniedError = byClass.get("PermissionDeniedError");
/** @type {typeof MontybaseError} -32002: update of a missing document. */
export const NotFoundError = byClass.get("NotFoundError");
/** @type {typeof MontybaseError} -32003: add with an id that is taken. */
export const AlreadyExistsError = byClass.get("AlreadyExistsError");
/** @type {typeof MontybaseError} -32004: a data type rule rejects the document. */
export const ValidationError = byClass.get("ValidationError");
/** @type {typeof MontybaseError} -32005: a size limit is exceeded (`data.limit`, `data.actual`). */
export const LimitExceededError = byClass.get("LimitExceededError");
/** @type {typeof MontybaseError} -32006: a rate limit is exceeded (`data.retryAfterMs`). */
export const RateLimitedError = byClass.get("RateLimitedError");
/** @type {typeof MontybaseError} -32007: a transaction's reads changed before it committed. */
export const ConflictError = byClass.get("ConflictError");
/** @type {typeof MontybaseError} -32008: the database is closed, shutting down, or failed. */
export const UnavailableError = byClass.get("UnavailableError");
/** @type {typeof MontybaseError} -32009: the connection dropped before the answer arrived. */
export const ConnectionLostError = byClass.get("ConnectionLostError");

/**
 * The error class for a reason; an unknown reason gives `MontybaseError`.
 * @param {string | null | undefined} reason
 * @returns {typeof MontybaseError}
 */
export function errorClass(reason) {
  return (typeof reason === "string" && byReason.get(reason)) || MontybaseError;
}

/**
 * The exception for a JSON-RPC error object `{code, message, data: {reason, …}}`, as the
 * Python client builds it: the class by reason, `data` without `reason`.
 * @param {unknown} error
 * @returns {MontybaseError}
 */
export function fromRpcError(error) {
  const source = error !== null && typeof error === "object" ? error : {};
  const raw = Object.hasOwn(source, "data") ? source.data : undefined;
  const reason = raw !== null && typeof raw === "object" && Object.hasOwn(raw, "reason") ? raw.reason : undefined;
  const message = Object.hasOwn(source, "message") && typeof source.message === "string" ? source.message : "";
  const kind = errorClass(reason);
  const exception = new kind(message, ownData(raw, "reason"));
  if (kind === MontybaseError) {
    // Unknown to this client: keep what the server said.
    if (Object.hasOwn(source, "code") && Number.isInteger(source.code)) exception.code = source.code;
    if (typeof reason === "string" && reason) exception.reason = reason;
  }
  return exception;
}

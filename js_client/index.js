/**
 * Montybase for browsers and Node ≥ 20: `Montybase`, `doc`, references, queries, transforms and
 * errors. Plain ESM, no dependencies; WebCrypto and a WebSocket are all it needs.
 *
 * ```js
 * import { Montybase, doc } from "montybase";
 * const db = new Montybase(await (await fetch("/client-config.json")).json());
 * const id = await doc(db, "scores").add({ name: "Amor", score: 100 });
 * const top = await doc(db, "scores").orderBy("score", "desc").limit(10).stream();
 * const off = doc(db, "scores").orderBy("score", "desc").limit(10).onSnapshot((s) => render(s.docs));
 * off();
 * db.close();
 * ```
 * @module
 */

import { subtle } from "./channel.js";
import { RemoteBackend, websocketUrl } from "./connection.js";
import { InvalidArgumentError } from "./errors.js";
import { MAX_ATTEMPTS, Transaction, WriteBatch, makeReference, runTransaction } from "./refs.js";
import { splitSegments } from "./values.js";

/** Errors: `MontybaseError` and one class per reason of schemas/errors.json (see errors.js). */
export {
  AlreadyExistsError,
  ConflictError,
  ConnectionLostError,
  ERRORS,
  InternalError,
  InvalidArgumentError,
  InvalidRequestError,
  LimitExceededError,
  MethodNotFoundError,
  MontybaseError,
  NotFoundError,
  ParseError,
  PermissionDeniedError,
  RateLimitedError,
  UnauthenticatedError,
  UnavailableError,
  ValidationError,
  errorClass,
} from "./errors.js";
/** References, queries, batches and transactions (see refs.js). */
export { CollectionReference, DocumentReference, Query, Reference, Transaction, WriteBatch } from "./refs.js";
/** Field transforms, plain data such as `{"$increment": 1}` (see transforms.js). */
export { arrayRemove, arrayUnion, deleteField, increment, maximum, minimum, serverTimestamp } from "./transforms.js";
/** `http(s)://` means `ws(s)://` (see connection.js). */
export { websocketUrl } from "./connection.js";

const ENDPOINT = /^(wss?|https?):\/\/\S+$/;

/**
 * The endpoints a config or the `endpoint` option names: one address, or a non-empty list of the
 * servers of one database (schemas/client-config.json). A bad one is InvalidArgumentError naming
 * it (`data.path`: "/endpoint", "/endpoint/1").
 * @param {unknown} endpoint
 * @param {string} source where it came from, for the message
 * @returns {string[]}
 */
function endpoints(endpoint, source) {
  const bad = (path, why) => new InvalidArgumentError(`${source}: ${path}: ${why}`, { path });
  const check = (value, path) => {
    if (typeof value !== "string") throw bad(path, `${JSON.stringify(value)} is not of type 'string'`);
    if (!ENDPOINT.test(value)) throw bad(path, `${JSON.stringify(value)} is not a ws://, wss://, http:// or https:// address`);
    return websocketUrl(value);
  };
  if (!Array.isArray(endpoint)) return [check(endpoint, "/endpoint")];
  if (!endpoint.length) throw bad("/endpoint", "[] should be non-empty");
  return endpoint.map((value, index) => check(value, `/endpoint/${index}`));
}

/**
 * A database handle on a Montybase server.
 *
 * - `new Montybase(clientConfig)`: `clientConfig` is the parsed `client-config.json`
 *   (`projectName`, `apiKey`, `endpoint`, `serverKey`): the client key, mode nk when the server
 *   key is pinned (psk otherwise). `endpoint` may be a list of the servers of one database: the
 *   handle connects to the first that answers and goes on with the next when its connection is
 *   lost or refused.
 * - `new Montybase(montybaseJson, { endpoint, WebSocket })`: a server-side Node program with the
 *   server's own `montybase.json` uses its `adminKey` (full access) and pins the public half of
 *   its `serverKey`.
 *
 * Connects on the first call, reconnects after a lost connection (calls in flight then reject
 * with ConnectionLostError; while listeners exist it reconnects by itself, resumes the signed-in
 * session and subscribes them again). In Node 20, which has no global WebSocket, pass one:
 * `new Montybase(config, { WebSocket })` (e.g. from the `ws` package); in Node, `close()` the
 * handle when done, as an open socket keeps the process running.
 */
export class Montybase {
  /**
   * @param {{apiKey?: string, adminKey?: string, endpoint?: string | string[], serverKey?: string, projectName?: string}} config
   * @param {{WebSocket?: any, endpoint?: string | string[], timeout?: number}} [options] `WebSocket`: a
   *   WebSocket class (used instead of `globalThis.WebSocket`, or where there is none);
   *   `endpoint`: overrides `config.endpoint` (`http(s)://` means `ws(s)://`); `timeout`:
   *   milliseconds to wait for an answer (default 60000).
   * @throws {MontybaseError} InvalidArgumentError for a config without key, without endpoint or
   *   with a bad one (`data.path` names it), or no WebSocket; UnavailableError without WebCrypto (a page that is not a secure context)
   */
  constructor(config, options = {}) {
    if (config === null || typeof config !== "object" || Array.isArray(config)) {
      throw new InvalidArgumentError("new Montybase(config) takes the parsed client-config.json");
    }
    const own = (name) => (Object.hasOwn(config, name) && typeof config[name] === "string" && config[name] ? config[name] : null);
    let kid;
    let key;
    let serverKey = null;
    let serverPrivateKey = null;
    if (own("adminKey")) {
      // A server's own montybase.json: the admin key; its serverKey is the private key.
      [kid, key, serverPrivateKey] = ["admin", own("adminKey"), own("serverKey")];
    } else if (own("apiKey")) {
      [kid, key, serverKey] = ["client", own("apiKey"), own("serverKey")];
    } else {
      throw new InvalidArgumentError("the client config holds no apiKey");
    }
    const given = Boolean(options && options.endpoint);
    const endpoint = given ? options.endpoint : Object.hasOwn(config, "endpoint") ? config.endpoint : undefined;
    if (endpoint === undefined || endpoint === null || endpoint === "") {
      throw new InvalidArgumentError("the client config holds no endpoint (or pass { endpoint })");
    }
    const urls = endpoints(endpoint, given ? "options" : "client config");
    const WebSocketClass = (options && options.WebSocket) || globalThis.WebSocket;
    if (typeof WebSocketClass !== "function") {
      throw new InvalidArgumentError("no WebSocket here: pass one, new Montybase(config, { WebSocket })");
    }
    subtle(); // a page opened over plain http from another address than localhost learns it here
    const timeout = options && options.timeout !== undefined ? options.timeout : 60_000;
    if (typeof timeout !== "number" || !(timeout > 0)) {
      throw new InvalidArgumentError("timeout must be a positive number of milliseconds");
    }
    /** The project name from the config (if any). */
    this.projectName = own("projectName");
    Object.defineProperty(this, "_backend", {
      value: new RemoteBackend({ urls, kid, key, serverKey, serverPrivateKey, WebSocket: WebSocketClass, timeout }),
    });
  }

  /** The ws:// or wss:// URL of the server (of the endpoint connected to, with several). */
  get endpoint() {
    return this._backend.url;
  }

  // Accounts (give rules' `user` and `owner` grants a meaning)

  /**
   * Create an account and sign this handle in. The session lives in this handle's memory only
   * (never in localStorage or cookies): it is resumed after a reconnect, and a new page or
   * process signs in again.
   * @param {string} email
   * @param {string} password 8 to 1024 characters
   * @returns {Promise<{uid: string, email: string}>}
   * @throws {MontybaseError} AlreadyExistsError if the email has an account, InvalidArgumentError, RateLimitedError
   */
  async signUp(email, password) {
    return this._backend.signedIn(await this._backend.call("signUp", { email, password }));
  }

  /**
   * Sign this handle in. A wrong password and an unknown email get the same UnauthenticatedError;
   * repeated failures are rate-limited. Listeners then show what the account may read.
   * @param {string} email
   * @param {string} password
   * @returns {Promise<{uid: string, email: string}>}
   * @throws {MontybaseError} UnauthenticatedError, RateLimitedError, InvalidArgumentError
   */
  async signIn(email, password) {
    return this._backend.signedIn(await this._backend.call("signIn", { email, password }));
  }

  /**
   * Sign out and end the session on the server. `currentUser` is null at once.
   * @returns {Promise<void>}
   * @throws {MontybaseError}
   */
  async signOut() {
    const token = this._backend.signedOut();
    await this._backend.call("signOut", token ? { token } : {});
  }

  /**
   * `{uid, email}` of the signed-in user, or null (also after a session that could not be
   * resumed after a reconnect).
   * @type {{uid: string, email: string} | null}
   */
  get currentUser() {
    return this._backend.user;
  }

  /**
   * Collect writes; `commit()` applies them all or none.
   * @returns {WriteBatch}
   */
  batch() {
    return new WriteBatch(this._backend);
  }

  /**
   * Run `fn(tx)`: its reads (`await tx.get(ref)`), then its writes (`tx.set(ref, …)`, …),
   * committed together; if what it read changed meanwhile, it waits a random, growing time
   * (10 ms × 2^n at most, capped at 500 ms) and runs again, up to `maxAttempts` times (20).
   * @template T
   * @param {(tx: Transaction) => T | Promise<T>} fn
   * @param {{maxAttempts?: number}} [options]
   * @returns {Promise<T>} what `fn` returned
   * @throws {MontybaseError} ConflictError after the last attempt, or whatever `fn` throws
   */
  transaction(fn, { maxAttempts = MAX_ATTEMPTS } = {}) {
    return runTransaction(this._backend, fn, maxAttempts);
  }

  /**
   * Disconnect. Calls in flight reject with ConnectionLostError; later calls with UnavailableError.
   * @returns {Promise<void>} once the socket is closed
   */
  close() {
    return this._backend.close();
  }
}

/**
 * A reference: `doc(db, "users")` a collection, `doc(db, "users", uid)` a document (also
 * `doc(db, "users/" + uid)`), `doc(db, "users", uid, "posts")` a subcollection, …
 * @param {Montybase} db
 * @param {...string} segments
 * @returns {import("./refs.js").CollectionReference | import("./refs.js").DocumentReference}
 * @throws {MontybaseError} InvalidArgumentError for a bad segment
 */
export function doc(db, ...segments) {
  if (!(db instanceof Montybase)) throw new InvalidArgumentError("doc(db, ...segments) takes a Montybase handle first");
  return makeReference(db._backend, splitSegments(segments));
}

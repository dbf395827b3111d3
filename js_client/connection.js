/**
 * The remote backend: method calls sent as encrypted JSON-RPC requests over one WebSocket.
 * Connects lazily on the first call; one pending map matches answers to callers; if the socket
 * closes, every call in flight rejects with ConnectionLostError and the next call reconnects.
 * Listeners (client-chosen ids, `sub`) are kept in a registry: while there are any, a lost
 * connection is made again by itself, with backoff, and on every new connection the signed-in
 * session is resumed first, then every listener subscribed again (python_client/remote.py).
 * With several endpoints (servers of one database), connecting tries them in turn, starting after
 * the one whose connection was lost; a read lost with its connection is asked again, once.
 * @module
 */

import {
  ChannelError,
  ClientHandshake,
  CLOSE_AUTH_FAILED,
  CLOSE_BAD_RECORD,
  SERVER_KEY_MISMATCH,
  SERVER_KEY_MISMATCH_MESSAGE,
  publicKeyFromPkcs8,
} from "./channel.js";
import {
  ConnectionLostError,
  InvalidArgumentError,
  MontybaseError,
  UnauthenticatedError,
  UnavailableError,
  fromRpcError,
} from "./errors.js";
import { Listener, report } from "./listen.js";
import { checkParams, stringify } from "./values.js";

const OPEN = 1;
const CLOSE_GRACE = 1000; // ms that close() waits for the server's side of the closing handshake
const FIRST_RETRY = 50; // ms before the first reconnect of a handle with listeners; doubled each time
const LAST_RETRY = 2000; // ms: the longest wait between reconnects
// Calls with no effect on the server: one whose connection is lost before its answer is asked
// again on the next connection (a write is not: the lost server may have applied it).
const READS = new Set(["get", "query", "aggregate", "collections"]);
const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

/**
 * `http(s)://` means `ws(s)://`; a trailing slash is dropped.
 * @param {string} endpoint
 * @returns {string}
 */
export function websocketUrl(endpoint) {
  let url = endpoint;
  for (const [web, socket] of [["https://", "wss://"], ["http://", "ws://"]]) {
    if (url.startsWith(web)) url = socket + url.slice(web.length);
  }
  return url.replace(/\/+$/, "");
}

/** Where each kid's key is written, for a refusal's message. */
const KEY_FIELDS = { client: "apiKey in client-config.json", admin: "adminKey in montybase.json" };

/** Close a socket; browsers accept only 1000 and 3000–4999 from scripts, so others become 1000. */
function closeSocket(ws, code = 1000, reason = "") {
  if (ws.readyState > OPEN) return;
  try {
    ws.close(code === 1000 || (code >= 3000 && code <= 4999) ? code : 1000, reason);
  } catch {
    ws.close();
  }
}

function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

function toBytes(data) {
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return null;
}

/**
 * One WebSocket after its handshake: the session, the calls waiting for answers.
 */
class Link {
  constructor(ws, session) {
    this.ws = ws;
    this.session = session;
    /** @type {Map<number, {resolve: Function, reject: Function, timer: any}>} */
    this.pending = new Map();
    this.dead = false;
    /** Whether it died by the server's side (a close, a crash), not by the client refusing a record. */
    this.lostByServer = false;
  }
}

/**
 * Sends each call as an encrypted JSON-RPC request and resolves with its result.
 */
export class RemoteBackend {
  #WebSocket;
  /** @type {string[]} the ws:// or wss:// URLs */
  #urls;
  /** The index in #urls of the endpoint connected to, or to try first. */
  #at = 0;
  #kid;
  #key;
  #serverKey;
  #serverPrivateKey;
  #link = null;
  #connecting = null;
  #nextId = 1;
  #closed = false;
  /** @type {Map<number, Listener>} the client-chosen listener id → its listener */
  #listeners = new Map();
  #nextSub = 1;
  #retryTimer = null;
  #retryDelay = FIRST_RETRY;
  /** A signed-in session's token (memory only), resumed on every new connection. */
  #token = null;
  /** @type {{uid: string, email: string} | null} */
  #user = null;

  /**
   * @param {{urls: string[], kid: string, key: string, serverKey?: string | null, serverPrivateKey?: string | null,
   *   WebSocket: any, timeout?: number}} options `urls`: the ws:// or wss:// URLs of the servers,
   *   tried in turn; `serverKey` is the pinned public key (mode nk); `serverPrivateKey` a
   *   montybase.json serverKey, whose public half is pinned instead.
   */
  constructor({ urls, kid, key, serverKey = null, serverPrivateKey = null, WebSocket, timeout = 60_000 }) {
    this.#urls = [...urls];
    /** Milliseconds to wait for the handshake and for each answer. */
    this.timeout = timeout;
    this.#WebSocket = WebSocket;
    this.#kid = kid;
    this.#key = key;
    this.#serverKey = serverKey;
    this.#serverPrivateKey = serverPrivateKey;
  }

  /** The ws:// or wss:// URL of the endpoint connected to (or to be tried first). */
  get url() {
    return this.#urls[this.#at];
  }

  /** Whether `close()` was called. */
  get closed() {
    return this.#closed;
  }

  /**
   * Check `params` as the server would, then send them.
   * @param {string} method
   * @param {Record<string, unknown>} params
   * @returns {Promise<any>} the result
   * @throws {MontybaseError}
   */
  async call(method, params) {
    return this.send(method, checkParams(method, params));
  }

  /**
   * Send a call as it is (no client-side checks) and wait for its answer.
   * @param {string} method
   * @param {unknown} params
   * @returns {Promise<any>} the result
   * @throws {MontybaseError}
   */
  async send(method, params) {
    if (this.#closed) throw new UnavailableError("this Montybase handle is closed");
    const frame = this.#frame(method, params);
    const link = await this.#connect();
    try {
      return await this.#request(link, frame);
    } catch (error) {
      if (!(error instanceof ConnectionLostError && link.lostByServer && READS.has(method)) || this.#closed) throw error;
      // A read changes nothing: ask it again, on a new connection (the next endpoint).
      return this.#request(await this.#connect(), this.#frame(method, params));
    }
  }

  /** The encoded request, with a fresh id. */
  #frame(method, params) {
    const id = this.#nextId++;
    try {
      return { id, bytes: encoder.encode(stringify({ jsonrpc: "2.0", id, method, params })) };
    } catch (error) {
      throw new InvalidArgumentError(`params are not JSON: ${error.message}`, { path: "" });
    }
  }

  /** Send a framed request on `link` and wait for its answer. */
  #request(link, { id, bytes }) {
    if (link.dead) return Promise.reject(new ConnectionLostError("the connection to the server was lost"));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        link.pending.delete(id);
        reject(new ConnectionLostError(`no answer from ${this.url} within ${this.timeout / 1000}s`));
      }, this.timeout);
      link.pending.set(id, { resolve, reject, timer });
      link.session.seal(bytes).then(
        (record) => {
          if (link.dead || link.ws.readyState !== OPEN) return; // its close already rejected the call
          link.ws.send(record);
        },
        (error) => this.#drop(link, error instanceof ChannelError ? error.closeCode : 1000, `the connection was closed: ${error.message}`),
      );
    });
  }

  // Accounts: the session token stays in memory, never in storage.

  /** `{uid, email}` of the signed-in user, or null. */
  get user() {
    return this.#user === null ? null : { ...this.#user };
  }

  /**
   * Keep a sign-in's session (resumed after every reconnect).
   * @param {{uid: string, email: string, token: string}} result the signUp or signIn result
   * @returns {{uid: string, email: string}}
   */
  signedIn(result) {
    this.#token = result.token;
    this.#user = { uid: result.uid, email: result.email, ...(result.admin ? { admin: true } : {}) };  // admin: an admin account (the console)
    return this.user;
  }

  /**
   * Forget the session; its token, to end it on the server (or null).
   * @returns {string | null}
   */
  signedOut() {
    const token = this.#token;
    this.#token = this.#user = null;
    return token;
  }

  // Listeners

  /**
   * Start a listener: `params` is `{path}` (a document) or `{query}`. The callback gets the
   * current state, then every change; the listener survives reconnects.
   * @param {Record<string, unknown>} params
   * @param {(snapshot: any) => void} onNext
   * @param {(error: MontybaseError) => void} [onError] called (once) if the server refuses it
   * @returns {(() => void) & {ready: Promise<void>}} the unsubscribe function
   * @throws {MontybaseError} InvalidArgumentError for bad params or callbacks, UnavailableError once closed
   */
  subscribe(params, onNext, onError) {
    if (this.#closed) throw new UnavailableError("this Montybase handle is closed");
    const sub = this.#nextSub++;
    const { sub: _, ...checked } = checkParams("subscribe", { sub, ...params });
    const listener = new Listener(checked, onNext, onError);
    this.#listeners.set(sub, listener);
    if (this.#link !== null && !this.#link.dead) {
      this.#subscribeOn(this.#link, sub, listener);
    } else {
      // Connecting subscribes every registered listener, this one included.
      this.#connect().then(
        (link) => {
          if (listener.active && listener.link !== link) this.#subscribeOn(link, sub, listener);
        },
        (error) => this.#connectFailed(error),
      );
    }
    const unsubscribe = () => {
      if (this.#listeners.get(sub) !== listener) return;
      listener.stop();
      this.#listeners.delete(sub);
      const link = listener.link;
      if (link !== null && !link.dead) this.#request(link, this.#frame("unsubscribe", { sub })).catch(() => {});
      if (!this.#listeners.size) this.#stopRetrying();
    };
    Object.defineProperty(unsubscribe, "ready", { value: listener.ready, enumerable: true });
    return unsubscribe;
  }

  /** Subscribe `listener` on `link`; a refusal ends it, a lost connection leaves it to the reconnect. */
  #subscribeOn(link, sub, listener) {
    listener.link = link;
    this.#request(link, this.#frame("subscribe", { sub, ...listener.params })).then(
      () => listener.accepted(),
      (error) => {
        if (error instanceof ConnectionLostError || this.#listeners.get(sub) !== listener) return;
        this.#listeners.delete(sub);
        listener.fail(error);
      },
    );
  }

  /** Whether connecting again may succeed: the server was away, not refusing us. */
  static #retryable(error) {
    return (error instanceof ConnectionLostError && error.data.closeCode !== CLOSE_AUTH_FAILED) || error instanceof UnavailableError;
  }

  #connectFailed(error) {
    if (this.#closed || !this.#listeners.size) return;
    if (RemoteBackend.#retryable(error)) {
      this.#retryLater();
      return;
    }
    const stranded = [...this.#listeners.values()];
    this.#listeners.clear();
    for (const listener of stranded) listener.fail(error);
  }

  /** Connect again after a backoff (50 ms, doubling up to 2 s) while listeners exist. */
  #retryLater() {
    if (this.#retryTimer !== null || this.#closed || !this.#listeners.size) return;
    const delay = this.#retryDelay;
    this.#retryDelay = Math.min(delay * 2, LAST_RETRY);
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = null;
      if (this.#closed || !this.#listeners.size || (this.#link !== null && !this.#link.dead)) return;
      this.#connect().then(
        () => {},
        (error) => this.#connectFailed(error),
      );
    }, delay);
  }

  #stopRetrying() {
    if (this.#retryTimer !== null) clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
  }

  /**
   * Close the connection; calls in flight reject with ConnectionLostError, later calls with
   * UnavailableError.
   * @returns {Promise<void>} once the socket is closed
   */
  async close() {
    this.#closed = true;
    this.#stopRetrying();
    const listeners = [...this.#listeners.values()];
    this.#listeners.clear();
    for (const listener of listeners) listener.stop();
    const link = this.#link ?? (this.#connecting ? await this.#connecting.catch(() => null) : null);
    if (link === null) return;
    // Wait for the closing handshake, but not for a server that does not answer it.
    let timer;
    const closed = new Promise((resolve) => {
      if (link.ws.readyState === 3) return resolve();
      link.ws.addEventListener("close", () => resolve());
      timer = setTimeout(resolve, Math.min(this.timeout, CLOSE_GRACE));
    });
    this.#drop(link, 1000, "the Montybase handle was closed");
    await closed;
    clearTimeout(timer);
  }

  // Connection

  #connect() {
    if (this.#link !== null && !this.#link.dead) return Promise.resolve(this.#link);
    if (this.#connecting === null) {
      this.#connecting = this.#openAny().finally(() => {
        this.#connecting = null;
      });
    }
    return this.#connecting;
  }

  /** Connect to the first endpoint, from the current one on, that accepts us. */
  async #openAny() {
    for (let tried = 1; ; tried++) {
      try {
        return await this.#open(this.url);
      } catch (error) {
        if (!RemoteBackend.#retryable(error)) throw error;
        this.#at = (this.#at + 1) % this.#urls.length; // away or refusing: the next one
        if (tried >= this.#urls.length || this.#closed) throw error;
      }
    }
  }

  async #open(url) {
    if (this.#serverKey === null && this.#serverPrivateKey) {
      this.#serverKey = await publicKeyFromPkcs8(this.#serverPrivateKey);
    }
    const handshake = new ClientHandshake(this.#kid, this.#key, this.#serverKey);
    let ws;
    try {
      ws = new this.#WebSocket(url);
    } catch (error) {
      throw new InvalidArgumentError(`cannot connect to ${url}: ${error.message}`);
    }
    ws.binaryType = "arraybuffer";
    const inbox = frames(ws, url, this.timeout);
    try {
      await inbox.opened;
      const helloResult = await this.#step(ws, inbox, "hello", await handshake.hello());
      const { params, session } = await handshake.finish(helloResult);
      handshake.confirm(await this.#step(ws, inbox, "auth", params));
      if (this.#closed) throw new UnavailableError("this Montybase handle is closed");
      const link = new Link(ws, session);
      this.#link = link;
      this.#retryDelay = FIRST_RETRY;
      inbox.hand((data) => this.#receive(link, data), (event) => this.#lost(link, event));
      this.#restore(link);
      return link;
    } catch (error) {
      inbox.stop();
      // Tell the server why we leave, so its log says so too.
      closeSocket(ws, 1000, error instanceof ChannelError && error.detail === SERVER_KEY_MISMATCH_MESSAGE ? SERVER_KEY_MISMATCH : "");
      throw error;
    }
  }

  /**
   * On a new connection, before any other request (the server answers in order): resume the
   * signed-in session, then subscribe every listener again (each gets a fresh full snapshot).
   */
  #restore(link) {
    const token = this.#token;
    if (token !== null) {
      this.#request(link, this.#frame("resume", { token })).then(
        (result) => {
          if (this.#token === token) this.#user = { uid: result.uid, email: result.email };
        },
        (error) => {
          if (error instanceof ConnectionLostError || this.#token !== token) return;
          // The session is over (signed out elsewhere, expired): this handle is signed out now.
          report("the signed-in session could not be resumed; signed out", error);
          this.#token = this.#user = null;
        },
      );
    }
    for (const [sub, listener] of this.#listeners) this.#subscribeOn(link, sub, listener);
  }

  async #step(ws, inbox, method, params) {
    ws.send(JSON.stringify({ jsonrpc: "2.0", id: 0, method, params }));
    const data = await inbox.next();
    if (typeof data !== "string") throw new ChannelError(`${method}: the answer is not a text frame`);
    let answer;
    try {
      answer = JSON.parse(data);
    } catch {
      throw new ChannelError(`${method}: the answer is not JSON`);
    }
    if (!isObject(answer)) throw new ChannelError(`${method}: the answer is not a JSON-RPC response`);
    if (Object.hasOwn(answer, "error")) {
      const error = fromRpcError(answer.error);
      // The server checks the key at hello (its hint names none of the kid's keys).
      if (method === "hello" && error instanceof UnauthenticatedError) {
        throw new UnauthenticatedError(`the server refused this key: check ${KEY_FIELDS[this.#kid] ?? "the key"}`);
      }
      throw error;
    }
    if (!Object.hasOwn(answer, "result")) throw new ChannelError(`${method}: the answer has no result`);
    return answer.result;
  }

  // Records

  #receive(link, data) {
    const record = toBytes(data);
    if (record === null) {
      this.#drop(link, CLOSE_BAD_RECORD, "the server sent an unencrypted frame");
      return;
    }
    link.session.open(record).then(
      (plaintext) => this.#dispatch(link, plaintext),
      (error) => this.#drop(link, error.closeCode ?? CLOSE_BAD_RECORD, `the connection was closed: ${error.message}`),
    );
  }

  #dispatch(link, plaintext) {
    if (link.dead) return;
    let message;
    try {
      message = JSON.parse(decoder.decode(plaintext));
    } catch (error) {
      this.#drop(link, 1007, `the server sent a record that is not UTF-8 JSON: ${error.message}`);
      return;
    }
    // One frame: an answer, a notification, or a batch (array) of either, mixed.
    for (const item of Array.isArray(message) ? message : [message]) {
      if (link.dead) return; // a callback closed the handle
      if (!isObject(item)) continue;
      if (!Object.hasOwn(item, "id")) {
        if (item.method === "snapshot" && isObject(item.params)) this.#notify(link, item.params);
        continue;
      }
      const waiting = link.pending.get(item.id);
      if (waiting === undefined) continue;
      link.pending.delete(item.id);
      clearTimeout(waiting.timer);
      if (Object.hasOwn(item, "error")) waiting.reject(fromRpcError(item.error));
      else if (Object.hasOwn(item, "result")) waiting.resolve(item.result);
      else waiting.reject(new MontybaseError("the server's answer has neither result nor error"));
    }
  }

  /** A snapshot for some listeners: to each that is still subscribed on this connection. */
  #notify(link, params) {
    if (!Array.isArray(params.subs)) return;
    for (const sub of params.subs) {
      const listener = this.#listeners.get(sub);
      if (listener !== undefined && listener.link === link) listener.deliver(params.snapshot);
    }
  }

  #lost(link, event) {
    const code = event && typeof event.code === "number" ? event.code : 1006;
    const reason = event && event.reason ? ` ${event.reason}` : "";
    this.#fail(link, new ConnectionLostError(`the connection to the server was lost (code ${code}${reason})`, { closeCode: code }), true);
  }

  #drop(link, code, message) {
    this.#fail(link, new ConnectionLostError(message, { closeCode: code }));
    closeSocket(link.ws, code);
  }

  #fail(link, error, byServer = false) {
    if (link.dead) return;
    link.dead = true;
    link.lostByServer = byServer;
    if (this.#link === link) {
      this.#link = null;
      this.#at = (this.#at + 1) % this.#urls.length; // that server may be gone: the next one first
    }
    const stranded = [...link.pending.values()];
    link.pending.clear();
    for (const waiting of stranded) {
      clearTimeout(waiting.timer);
      waiting.reject(error);
    }
    if (!this.#closed && this.#listeners.size) this.#retryLater(); // listeners must not go stale
  }
}

/**
 * The error for a WebSocket that closed before it opened, as python_client/remote.py names it:
 * UnavailableError when the server answered the upgrade with a refusal (an Origin it does not
 * allow, too many connections from this address or in all), ConnectionLostError when it could not
 * be reached (nothing listens, no route, a certificate that is not trusted). Node's `ws` names the
 * cause in its error event; a browser hides it, so an HTTP GET of the same address, which a
 * Montybase server answers, tells a refusal (an answer) from an unreachable server (none).
 * @param {string} url
 * @param {any} failure the error event, if any
 * @param {number} timeout
 * @returns {Promise<MontybaseError>}
 */
async function notOpened(url, failure, timeout) {
  const detail = String(failure?.message || failure?.error?.message || "");
  const status = /Unexpected server response: (\d{3})/.exec(detail);
  const refused = (why) => new UnavailableError(`cannot connect to ${url}: ${why}`);
  if (status) return refused(`server rejected WebSocket connection: HTTP ${status[1]}`);
  if (await answersHttp(url, timeout)) {
    return refused("the server refused the WebSocket connection (an Origin it does not allow, or too many connections)");
  }
  const why = detail || "the server cannot be reached, or its certificate is not trusted";
  return new ConnectionLostError(`cannot connect to ${url}: ${why}`, { closeCode: 1006 });
}

/** Whether a plain HTTP GET of the WebSocket's address gets an answer (any status) in time. */
async function answersHttp(url, timeout) {
  if (typeof fetch !== "function") return false;
  const address = url.replace(/^ws(s?):/, "http$1:");
  try {
    // no-cors: a page may ask another origin; the (opaque) answer is enough.
    const signal = AbortSignal.timeout(Math.min(timeout, 5000));
    const response = await fetch(address, { mode: "no-cors", cache: "no-store", credentials: "omit", signal });
    await response.body?.cancel().catch(() => {});
    return true;
  } catch {
    return false;
  }
}

/**
 * The frames of a WebSocket during the handshake, read one at a time with a deadline; `hand`
 * then passes every later frame (and buffered ones first) to the record layer.
 */
function frames(ws, url, timeout) {
  const buffered = [];
  let waiter = null;
  let closed = null;
  let onData = null;
  let onClose = null;
  const deadline = setTimeout(() => {
    const error = new ConnectionLostError(`no handshake with ${url} within ${timeout / 1000}s`);
    closed ??= error;
    if (waiter) waiter.reject(error);
    closeSocket(ws);
  }, timeout);
  const lost = (event) =>
    new ConnectionLostError(
      event && event.code === CLOSE_AUTH_FAILED
        ? `the server refused the handshake (code ${event.code})`
        : `cannot connect to ${url} (code ${event ? event.code : 1006})`,
      { closeCode: event ? event.code : 1006 },
    );
  let isOpen = false;
  let failure = null; // the error event before the close, which may say why
  const opened = new Promise((resolve, reject) => {
    const fail = (error) => {
      closed ??= error;
      reject(closed);
      if (waiter) waiter.reject(closed);
    };
    ws.onopen = () => {
      isOpen = true;
      resolve();
    };
    ws.onerror = (event) => {
      failure = event; // a close event follows, with its code
    };
    ws.onclose = (event) => {
      clearTimeout(deadline);
      if (onClose) return onClose(event);
      if (isOpen || closed) fail(lost(event));
      else notOpened(url, failure, timeout).then(fail);
    };
  });
  opened.catch(() => {});
  ws.onmessage = (event) => {
    if (onData) onData(event.data);
    else if (waiter) {
      const { resolve } = waiter;
      waiter = null;
      resolve(event.data);
    } else buffered.push(event.data);
  };
  return {
    opened,
    next() {
      if (buffered.length) return Promise.resolve(buffered.shift());
      if (closed) return Promise.reject(closed);
      return new Promise((resolve, reject) => {
        waiter = { resolve, reject };
      });
    },
    hand(data, close) {
      clearTimeout(deadline);
      onData = data;
      onClose = close;
      for (const item of buffered.splice(0)) data(item);
      if (ws.readyState > OPEN) close({ code: 1006, reason: "" });
    },
    stop() {
      clearTimeout(deadline);
    },
  };
}

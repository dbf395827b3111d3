/**
 * The remote backend: method calls sent as encrypted JSON-RPC requests over one WebSocket.
 * Connects lazily on the first call; one pending map matches answers to callers; if the socket
 * closes, every call in flight rejects with ConnectionLostError and the next call reconnects.
 * @module
 */

import { ChannelError, ClientHandshake, CLOSE_AUTH_FAILED, CLOSE_BAD_RECORD, publicKeyFromPkcs8 } from "./channel.js";
import { ConnectionLostError, InvalidArgumentError, MontybaseError, UnavailableError, fromRpcError } from "./errors.js";
import { checkParams } from "./values.js";

const OPEN = 1;
const CLOSE_GRACE = 1000; // ms that close() waits for the server's side of the closing handshake
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

/** Close a socket; browsers accept only 1000 and 3000–4999 from scripts, so others become 1000. */
function closeSocket(ws, code = 1000) {
  if (ws.readyState > OPEN) return;
  try {
    ws.close(code === 1000 || (code >= 3000 && code <= 4999) ? code : 1000);
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
  }
}

/**
 * Sends each call as an encrypted JSON-RPC request and resolves with its result.
 */
export class RemoteBackend {
  #WebSocket;
  #kid;
  #key;
  #serverKey;
  #serverPrivateKey;
  #link = null;
  #connecting = null;
  #nextId = 1;
  #closed = false;

  /**
   * @param {{url: string, kid: string, key: string, serverKey?: string | null, serverPrivateKey?: string | null,
   *   WebSocket: any, timeout?: number}} options `serverKey` is the pinned public key (mode nk);
   *   `serverPrivateKey` a montybase.json serverKey, whose public half is pinned instead.
   */
  constructor({ url, kid, key, serverKey = null, serverPrivateKey = null, WebSocket, timeout = 60_000 }) {
    /** The ws:// or wss:// URL. */
    this.url = url;
    /** Milliseconds to wait for the handshake and for each answer. */
    this.timeout = timeout;
    this.#WebSocket = WebSocket;
    this.#kid = kid;
    this.#key = key;
    this.#serverKey = serverKey;
    this.#serverPrivateKey = serverPrivateKey;
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
    const id = this.#nextId++;
    let frame;
    try {
      frame = encoder.encode(JSON.stringify({ jsonrpc: "2.0", id, method, params }));
    } catch (error) {
      throw new InvalidArgumentError(`params are not JSON: ${error.message}`, { path: "params" });
    }
    const link = await this.#connect();
    if (link.dead) throw new ConnectionLostError("the connection to the server was lost");
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        link.pending.delete(id);
        reject(new ConnectionLostError(`no answer from ${this.url} within ${this.timeout / 1000}s`));
      }, this.timeout);
      link.pending.set(id, { resolve, reject, timer });
      link.session.seal(frame).then(
        (record) => {
          if (link.dead || link.ws.readyState !== OPEN) return; // its close already rejected the call
          link.ws.send(record);
        },
        (error) => this.#drop(link, error instanceof ChannelError ? error.closeCode : 1000, `the connection was closed: ${error.message}`),
      );
    });
  }

  /**
   * Close the connection; calls in flight reject with ConnectionLostError, later calls with
   * UnavailableError.
   * @returns {Promise<void>} once the socket is closed
   */
  async close() {
    this.#closed = true;
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
      this.#connecting = this.#open().finally(() => {
        this.#connecting = null;
      });
    }
    return this.#connecting;
  }

  async #open() {
    if (this.#serverKey === null && this.#serverPrivateKey) {
      this.#serverKey = await publicKeyFromPkcs8(this.#serverPrivateKey);
    }
    const handshake = new ClientHandshake(this.#kid, this.#key, this.#serverKey);
    let ws;
    try {
      ws = new this.#WebSocket(this.url);
    } catch (error) {
      throw new InvalidArgumentError(`cannot connect to ${this.url}: ${error.message}`, { path: "endpoint" });
    }
    ws.binaryType = "arraybuffer";
    const inbox = frames(ws, this.url, this.timeout);
    try {
      await inbox.opened;
      const helloResult = await this.#step(ws, inbox, "hello", await handshake.hello());
      const { params, session } = await handshake.finish(helloResult);
      handshake.confirm(await this.#step(ws, inbox, "auth", params));
      if (this.#closed) throw new UnavailableError("this Montybase handle is closed");
      const link = new Link(ws, session);
      this.#link = link;
      inbox.hand((data) => this.#receive(link, data), (event) => this.#lost(link, event));
      return link;
    } catch (error) {
      inbox.stop();
      closeSocket(ws);
      throw error;
    }
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
    if (Object.hasOwn(answer, "error")) throw fromRpcError(answer.error);
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
    let message;
    try {
      message = JSON.parse(decoder.decode(plaintext));
    } catch (error) {
      this.#drop(link, 1007, `the server sent a record that is not UTF-8 JSON: ${error.message}`);
      return;
    }
    for (const answer of Array.isArray(message) ? message : [message]) {
      if (!isObject(answer) || !Object.hasOwn(answer, "id")) continue; // notifications: later (onSnapshot)
      const waiting = link.pending.get(answer.id);
      if (waiting === undefined) continue;
      link.pending.delete(answer.id);
      clearTimeout(waiting.timer);
      if (Object.hasOwn(answer, "error")) waiting.reject(fromRpcError(answer.error));
      else if (Object.hasOwn(answer, "result")) waiting.resolve(answer.result);
      else waiting.reject(new MontybaseError("the server's answer has neither result nor error"));
    }
  }

  #lost(link, event) {
    const code = event && typeof event.code === "number" ? event.code : 1006;
    const reason = event && event.reason ? ` ${event.reason}` : "";
    this.#fail(link, new ConnectionLostError(`the connection to the server was lost (code ${code}${reason})`, { closeCode: code }));
  }

  #drop(link, code, message) {
    this.#fail(link, new ConnectionLostError(message, { closeCode: code }));
    closeSocket(link.ws, code);
  }

  #fail(link, error) {
    if (link.dead) return;
    link.dead = true;
    if (this.#link === link) this.#link = null;
    const stranded = [...link.pending.values()];
    link.pending.clear();
    for (const waiting of stranded) {
      clearTimeout(waiting.timer);
      waiting.reject(error);
    }
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
  const opened = new Promise((resolve, reject) => {
    ws.onopen = () => resolve();
    ws.onerror = () => {}; // a close event follows, with its code
    ws.onclose = (event) => {
      clearTimeout(deadline);
      if (onClose) return onClose(event);
      closed ??= lost(event);
      reject(closed);
      if (waiter) waiter.reject(closed);
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

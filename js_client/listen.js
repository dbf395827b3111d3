/**
 * Listeners on the client side: snapshots built from the server's `snapshot` notifications
 * (schemas/snapshot.json), docs rebuilt from changes, and callbacks that never throw into the
 * client. python_client/listen.py is the twin.
 * @module
 */

import { InvalidArgumentError, MontybaseError } from "./errors.js";

/**
 * The docs after `changes`, with Firestore's sequential indexes (the rule of server/watch.py's
 * module docstring, applied as python_client/listen.py `Listener.snapshot` does): for each
 * change in order, remove at `oldIndex` when ≥ 0, then insert at `newIndex` when ≥ 0.
 * @param {ReadonlyArray<{id: string, value: any}>} docs
 * @param {ReadonlyArray<{id: string, value: any, oldIndex: number, newIndex: number}>} changes
 * @returns {Array<{id: string, value: any}>} a new array
 */
export function applyChanges(docs, changes) {
  const out = [...docs];
  for (const change of changes) {
    if (change.oldIndex >= 0) out.splice(change.oldIndex, 1);
    if (change.newIndex >= 0) out.splice(change.newIndex, 0, { id: change.id, value: change.value });
  }
  return out;
}

function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

function isIndex(value) {
  return Number.isSafeInteger(value) && value >= -1;
}

const CHANGE_TYPES = ["added", "modified", "removed"];

/** A change as the client presents it: exactly {type, id, value, oldIndex, newIndex}. */
function readChange(change) {
  if (!isObject(change) || !CHANGE_TYPES.includes(change.type) || typeof change.id !== "string" || !isIndex(change.oldIndex) || !isIndex(change.newIndex)) {
    throw new MontybaseError(`the server sent a malformed change: ${JSON.stringify(change)}`);
  }
  return { type: change.type, id: change.id, value: change.value ?? null, oldIndex: change.oldIndex, newIndex: change.newIndex };
}

function readEntry(entry) {
  if (!isObject(entry) || typeof entry.id !== "string") throw new MontybaseError(`the server sent a malformed document: ${JSON.stringify(entry)}`);
  return { id: entry.id, value: entry.value };
}

/** Report an error nobody asked for, without ever throwing. */
export function report(message, error) {
  try {
    console.error(`Montybase: ${message}`, error);
  } catch {
    // A console that throws has nowhere else to go.
  }
}

/**
 * One listener: its subscribe params, its callbacks, the docs it holds, and whether it is
 * still wanted. `deliver` turns a notification into a snapshot and calls back; nothing it
 * does throws.
 */
export class Listener {
  /** @type {Array<{id: string, value: any}>} */
  #docs = [];
  #onNext;
  #onError;
  #settle;

  /**
   * @param {Record<string, unknown>} params `{path}` or `{query}` (without `sub`)
   * @param {(snapshot: any) => void} onNext
   * @param {((error: MontybaseError) => void) | undefined} onError
   */
  constructor(params, onNext, onError) {
    if (typeof onNext !== "function") throw new InvalidArgumentError("onSnapshot(callback) takes a function");
    if (onError !== undefined && onError !== null && typeof onError !== "function") {
      throw new InvalidArgumentError("onSnapshot(callback, onError): onError must be a function");
    }
    /** The subscribe params, sent again after every reconnect. */
    this.params = params;
    /** False once stopped (unsubscribed, closed or refused): nothing is delivered after that. */
    this.active = true;
    /** The connection (link) it was last subscribed on. */
    this.link = null;
    this.#onNext = onNext;
    this.#onError = onError ?? null;
    let settle;
    /** Settles once: fulfilled when the server accepts it (or it is stopped first), rejected when refused. */
    this.ready = new Promise((resolve, reject) => {
      settle = { resolve, reject };
    });
    this.ready.catch(() => {}); // reported through onError (or the console); awaiting it is optional
    this.#settle = settle;
  }

  /** The server accepted the subscription. */
  accepted() {
    this.#settle.resolve();
  }

  /** Stop for good: no callback after this returns. */
  stop() {
    this.active = false;
    this.#settle.resolve();
  }

  /**
   * Stop because the server (or the connection) refused it: `onError(error)`, or the console.
   * @param {MontybaseError} error
   */
  fail(error) {
    if (!this.active) return;
    this.active = false;
    this.#settle.reject(error);
    if (this.#onError === null) {
      report("a listener was refused (pass onSnapshot(callback, onError) to handle this)", error);
      return;
    }
    try {
      this.#onError(error);
    } catch (thrown) {
      report("an onError callback threw", thrown);
    }
  }

  /**
   * A notification's `snapshot` member, turned into a snapshot and given to the callback.
   * @param {unknown} message
   */
  deliver(message) {
    if (!this.active) return;
    let snapshot;
    try {
      snapshot = this.#snapshot(message);
    } catch (error) {
      report("a snapshot notification could not be read; it was skipped", error);
      return;
    }
    try {
      this.#onNext(snapshot);
    } catch (error) {
      report("a snapshot callback threw; the listener keeps listening", error);
    }
  }

  #snapshot(message) {
    if (!isObject(message)) throw new MontybaseError("the server sent a snapshot that is not an object");
    if (Object.hasOwn(message, "exists")) {
      if (typeof message.id !== "string" || typeof message.exists !== "boolean") throw new MontybaseError("the server sent a malformed document snapshot");
      return { id: message.id, value: message.value ?? null, exists: message.exists };
    }
    if (!Array.isArray(message.changes)) throw new MontybaseError("the server sent a snapshot without changes");
    const changes = message.changes.map(readChange);
    if (Object.hasOwn(message, "docs")) {
      // The full state: on subscribing, after a reconnect, after a sign-in or sign-out.
      if (!Array.isArray(message.docs)) throw new MontybaseError("the server sent a snapshot whose docs are not a list");
      this.#docs = message.docs.map(readEntry);
    } else {
      this.#docs = applyChanges(this.#docs, changes);
    }
    return { docs: [...this.#docs], changes };
  }
}

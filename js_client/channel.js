/**
 * The MBSC1 secure channel (docs/channel.md) over bytes, with WebCrypto only: the client side of
 * the handshake, the key schedule, and AES-256-GCM records with per-direction counters.
 * No I/O: the connection module moves the messages.
 * @module
 */

import { InvalidArgumentError, UnauthenticatedError, UnavailableError } from "./errors.js";

/** The protocol version in hello. */
export const VERSION = 1;
/** Bytes in a handshake nonce (nc, ns). */
export const NONCE_BYTES = 32;
/** Bytes in an uncompressed P-256 point (04 ‖ x ‖ y). */
export const POINT_BYTES = 65;
/** Bytes in smac and cmac. */
export const MAC_BYTES = 32;
/** Bytes in an AES-GCM tag. */
export const TAG_BYTES = 16;
/** The direction byte of client-to-server records. */
export const C2S = 0x01;
/** The direction byte of server-to-client records. */
export const S2C = 0x02;
/** Close code: the handshake failed. */
export const CLOSE_AUTH_FAILED = 1008;
/** Close code: the record or byte limit was reached (reconnect for fresh keys). */
export const CLOSE_LIMIT = 4000;
/** Close code: a record failed to open. */
export const CLOSE_BAD_RECORD = 4002;
/**
 * The reason of the close a client sends when the server's answer to its hello does not prove
 * the key pinned as serverKey: the server logs it (nothing else would tell its operator).
 */
export const SERVER_KEY_MISMATCH = "serverKey does not match";
export const SERVER_KEY_MISMATCH_MESSAGE =
  "the server's key does not match serverKey: check serverKey in client-config.json " +
  "(the server's montybase.json makes it), and that this is your server's address";
/** Records per direction and session. */
export const MAX_RECORDS = 2 ** 24;
/** Plaintext bytes per direction and session. */
export const MAX_BYTES = 2 ** 36;

const P256 = { name: "ECDH", namedCurve: "P-256" };
const encoder = new TextEncoder();
const EMPTY = new Uint8Array(0);

/**
 * A channel failure: an `UnauthenticatedError` whose message names the failed check, with the
 * WebSocket close code that goes with it.
 */
export class ChannelError extends UnauthenticatedError {
  /**
   * @param {string} detail the check that failed
   * @param {number} [closeCode]
   */
  constructor(detail, closeCode = CLOSE_AUTH_FAILED) {
    super(detail);
    /** @type {string} */
    this.detail = detail;
    /** @type {number} */
    this.closeCode = closeCode;
  }
}

/** What to do without WebCrypto: the message of the error `subtle()` throws. */
export const NO_WEBCRYPTO =
  "WebCrypto (crypto.subtle) is not available here, and the channel needs it. Browsers give it only to " +
  "secure contexts: open this page over https (see README \"TLS\"), or from localhost or 127.0.0.1, " +
  "not over plain http from another address";

/**
 * WebCrypto's SubtleCrypto, which exists only in secure contexts (https, localhost) and Node.
 * Every use of it starts here, outside any `try`, so its absence is never reported as something
 * else (such as a pinned key that is "not a point on P-256").
 * @returns {SubtleCrypto}
 * @throws {MontybaseError} UnavailableError saying what to do
 */
export function subtle() {
  const value = globalThis.crypto && globalThis.crypto.subtle;
  if (!value) throw new UnavailableError(NO_WEBCRYPTO);
  return value;
}

/**
 * `n` random bytes.
 * @param {number} n
 * @returns {Uint8Array}
 */
export function randomBytes(n) {
  return globalThis.crypto.getRandomValues(new Uint8Array(n));
}

// --- encoding ----------------------------------------------------------------------------------

const B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const B64URL_VALUE = new Map([...B64URL].map((char, index) => [char, index]));

/**
 * Base64url without padding.
 * @param {Uint8Array} bytes
 * @returns {string}
 */
export function b64e(bytes) {
  let out = "";
  let i = 0;
  for (; i + 2 < bytes.length; i += 3) {
    const n = (bytes[i] << 16) | (bytes[i + 1] << 8) | bytes[i + 2];
    out += B64URL[n >> 18] + B64URL[(n >> 12) & 63] + B64URL[(n >> 6) & 63] + B64URL[n & 63];
  }
  if (bytes.length - i === 1) {
    const n = bytes[i] << 16;
    out += B64URL[n >> 18] + B64URL[(n >> 12) & 63];
  } else if (bytes.length - i === 2) {
    const n = (bytes[i] << 16) | (bytes[i + 1] << 8);
    out += B64URL[n >> 18] + B64URL[(n >> 12) & 63] + B64URL[(n >> 6) & 63];
  }
  return out;
}

/**
 * Decode base64url without padding; `null` if `text` is not that (any length).
 * @param {string} text
 * @returns {Uint8Array | null}
 */
export function b64decode(text) {
  if (typeof text !== "string" || text.length % 4 === 1) return null;
  const out = new Uint8Array(Math.floor((text.length * 3) / 4));
  let bits = 0;
  let value = 0;
  let index = 0;
  for (const char of text) {
    const digit = B64URL_VALUE.get(char);
    if (digit === undefined) return null;
    value = (value << 6) | digit;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[index++] = (value >> bits) & 0xff;
    }
  }
  return out;
}

/**
 * Strict base64url without padding of exactly `length` bytes, in its one canonical form.
 * @param {unknown} value
 * @param {number} length
 * @param {string} field
 * @returns {Uint8Array}
 * @throws {MontybaseError} ChannelError
 */
export function b64d(value, length, field) {
  if (typeof value !== "string" || value.length !== Math.floor((4 * length + 2) / 3)) {
    throw new ChannelError(`${field}: not ${length} bytes of unpadded base64url`);
  }
  const raw = b64decode(value);
  if (raw === null || raw.length !== length) throw new ChannelError(`${field}: not ${length} bytes of unpadded base64url`);
  if (b64e(raw) !== value) throw new ChannelError(`${field}: not canonical base64url`);
  return raw;
}

/**
 * Lowercase hex.
 * @param {Uint8Array} bytes
 * @returns {string}
 */
export function toHex(bytes) {
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

/**
 * The bytes of several arrays, one after the other.
 * @param {...Uint8Array} parts
 * @returns {Uint8Array}
 */
export function concat(...parts) {
  const out = new Uint8Array(parts.reduce((size, part) => size + part.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

function utf8(text) {
  return encoder.encode(text);
}

function lp(data) {
  if (data.length > 0xffff) throw new ChannelError("a transcript field is too long");
  return concat(new Uint8Array([data.length >> 8, data.length & 0xff]), data);
}

function u64(seq) {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, BigInt(seq));
  return out;
}

function fields(params, required, optional, what) {
  if (params === null || typeof params !== "object" || Array.isArray(params)) throw new ChannelError(`${what}: not an object`);
  const keys = Object.keys(params);
  const missing = required.filter((name) => !keys.includes(name));
  const extra = keys.filter((name) => !required.includes(name) && !optional.includes(name));
  if (missing.length || extra.length) {
    throw new ChannelError(`${what}: fields ${JSON.stringify(keys.sort())}, expected ${JSON.stringify(required)} + optional ${JSON.stringify(optional)}`);
  }
  return params;
}

// --- primitives --------------------------------------------------------------------------------

/**
 * HKDF-SHA256 with a 32-byte output.
 * @param {Uint8Array} ikm
 * @param {Uint8Array} salt
 * @param {Uint8Array} info
 * @returns {Promise<Uint8Array>}
 */
export async function hkdf(ikm, salt, info) {
  const key = await subtle().importKey("raw", ikm, "HKDF", false, ["deriveBits"]);
  return new Uint8Array(await subtle().deriveBits({ name: "HKDF", hash: "SHA-256", salt, info }, key, 256));
}

/**
 * kh = HMAC-SHA256(psk, "MBSC1 key hint")[0:8]: which of a kid's keys this client holds (the old
 * and the new client key while a rotation's grace lasts), without revealing the key.
 * @param {Uint8Array} psk
 * @returns {Promise<Uint8Array>}
 */
export async function keyHint(psk) {
  return (await hmac(psk, utf8("MBSC1 key hint"))).slice(0, 8);
}

/**
 * psk = HKDF-SHA256(IKM = the key string in UTF-8, salt = "", info = "MBSC1 psk", L = 32).
 * @param {string} key
 * @returns {Promise<Uint8Array>}
 */
export function derivePsk(key) {
  return hkdf(utf8(key), EMPTY, utf8("MBSC1 psk"));
}

/**
 * SHA-256.
 * @param {Uint8Array} data
 * @returns {Promise<Uint8Array>}
 */
export async function sha256(data) {
  return new Uint8Array(await subtle().digest("SHA-256", data));
}

function hmacKey(key, usage) {
  return subtle().importKey("raw", key, { name: "HMAC", hash: "SHA-256" }, false, [usage]);
}

/**
 * HMAC-SHA256.
 * @param {Uint8Array} key
 * @param {Uint8Array} data
 * @returns {Promise<Uint8Array>}
 */
export async function hmac(key, data) {
  return new Uint8Array(await subtle().sign("HMAC", await hmacKey(key, "sign"), data));
}

/**
 * Whether `mac` is HMAC-SHA256(key, data); the comparison is WebCrypto's, in constant time.
 * @param {Uint8Array} key
 * @param {Uint8Array} data
 * @param {Uint8Array} mac
 * @returns {Promise<boolean>}
 */
export async function verifyHmac(key, data, mac) {
  return subtle().verify("HMAC", await hmacKey(key, "verify"), mac, data);
}

/**
 * The transcript hash and the four keys (docs/channel.md "Key schedule"). `ikm` is psk (mode
 * psk) or es ‖ ee ‖ psk (mode nk); the points are 65-byte encodings, empty in mode psk.
 * @param {string} mode
 * @param {string} kid
 * @param {Uint8Array} nc
 * @param {Uint8Array} ns
 * @param {Uint8Array} ikm
 * @param {Uint8Array} [eC]
 * @param {Uint8Array} [eS]
 * @param {Uint8Array} [sPub]
 * @returns {Promise<{transcript: Uint8Array, th: Uint8Array, c2s: Uint8Array, s2c: Uint8Array, cfin: Uint8Array, sfin: Uint8Array}>}
 */
export async function keySchedule(mode, kid, nc, ns, ikm, eC = EMPTY, eS = EMPTY, sPub = EMPTY) {
  const transcript = concat(utf8("MBSC1"), lp(utf8(mode)), lp(utf8(kid)), lp(nc), lp(ns), lp(eC), lp(eS), lp(sPub));
  const th = await sha256(transcript);
  const salt = concat(nc, ns);
  const derive = (label) => hkdf(ikm, salt, concat(utf8(label), th));
  const [c2s, s2c, cfin, sfin] = await Promise.all([
    derive("MBSC1 c2s key "),
    derive("MBSC1 s2c key "),
    derive("MBSC1 c finished "),
    derive("MBSC1 s finished "),
  ]);
  return { transcript, th, c2s, s2c, cfin, sfin };
}

/**
 * A P-256 public key from a base64url 65-byte uncompressed point (on the curve).
 * @param {unknown} value
 * @param {string} field
 * @returns {Promise<{key: CryptoKey, raw: Uint8Array}>}
 * @throws {MontybaseError} ChannelError
 */
export async function importPoint(value, field) {
  const raw = b64d(value, POINT_BYTES, field);
  if (raw[0] !== 0x04) throw new ChannelError(`${field}: not an uncompressed point`);
  const webCrypto = subtle();
  try {
    return { key: await webCrypto.importKey("raw", raw, P256, true, []), raw };
  } catch {
    throw new ChannelError(`${field}: not a point on P-256`);
  }
}

/**
 * The 32-byte ECDH shared secret (the x-coordinate).
 * @param {CryptoKey} privateKey
 * @param {CryptoKey} publicKey
 * @returns {Promise<Uint8Array>}
 */
export async function ecdh(privateKey, publicKey) {
  return new Uint8Array(await subtle().deriveBits({ name: "ECDH", public: publicKey }, privateKey, 256));
}

/**
 * A fresh ephemeral P-256 key pair.
 * @returns {Promise<CryptoKeyPair>}
 */
export function generateEphemeral() {
  return subtle().generateKey(P256, true, ["deriveBits"]);
}

/**
 * The 65-byte uncompressed point of a public key.
 * @param {CryptoKey} publicKey
 * @returns {Promise<Uint8Array>}
 */
export async function exportPoint(publicKey) {
  return new Uint8Array(await subtle().exportKey("raw", publicKey));
}

/**
 * The public point (base64url, as `client-config.json` pins it) of a `montybase.json`
 * serverKey (base64url PKCS#8 DER of a P-256 private key).
 * @param {string} serverKey
 * @returns {Promise<string>}
 * @throws {MontybaseError} InvalidArgumentError
 */
export async function publicKeyFromPkcs8(serverKey) {
  const der = b64decode(typeof serverKey === "string" ? serverKey.replace(/=+$/, "") : "");
  const webCrypto = subtle();
  try {
    if (der === null) throw new Error("not base64url");
    const key = await webCrypto.importKey("pkcs8", der, P256, true, ["deriveBits"]);
    const jwk = await webCrypto.exportKey("jwk", key);
    return b64e(concat(new Uint8Array([4]), b64decode(jwk.x), b64decode(jwk.y)));
  } catch (error) {
    throw new InvalidArgumentError(`serverKey is not a base64url PKCS#8 P-256 private key: ${error.message}`);
  }
}

// --- records -----------------------------------------------------------------------------------

function nonceAad(direction, seq) {
  const counter = u64(seq);
  return { nonce: concat(new Uint8Array(4), counter), aad: concat(utf8("MBSC1 rec"), new Uint8Array([direction]), counter) };
}

/**
 * One direction's AES-256-GCM: `(nonce, aad, input)` to ciphertext ‖ tag ("encrypt") or to the
 * plaintext ("decrypt", throwing if the tag does not check).
 * @typedef {(nonce: Uint8Array, aad: Uint8Array, input: Uint8Array) => Uint8Array | Promise<Uint8Array>} AesGcm
 */

/**
 * What makes an `AesGcm` from a raw 32-byte key and a usage.
 * @typedef {(key: Uint8Array, usage: "encrypt" | "decrypt") => AesGcm | Promise<AesGcm>} RecordCipher
 */

/**
 * AES-256-GCM by WebCrypto: browsers, and Node through the default entry (index.js).
 * @type {RecordCipher}
 */
export async function webAesGcm(key, usage) {
  const cryptoKey = await subtle().importKey("raw", key, "AES-GCM", false, [usage]);
  const run = usage === "encrypt" ? subtle().encrypt.bind(subtle()) : subtle().decrypt.bind(subtle());
  return async (nonce, aad, input) => new Uint8Array(await run({ name: "AES-GCM", iv: nonce, additionalData: aad }, cryptoKey, input));
}

let defaultCipher = webAesGcm;

/**
 * The records' AES-256-GCM of the sessions made from now on, chosen by the entry that loaded
 * the client (package.json "exports"): WebCrypto's by default, node:crypto's under the "node"
 * condition (js_client/node.js).
 * @param {RecordCipher} cipher
 */
export function setRecordCipher(cipher) {
  defaultCipher = cipher;
}

/**
 * The records' AES-256-GCM that new sessions use.
 * @returns {RecordCipher}
 */
export function recordCipher() {
  return defaultCipher;
}

/**
 * The record layer of one connection: `seal` what you send, `open` what you receive.
 * Sequence numbers are implicit and per direction; calls are processed in call order; after
 * any failure every call throws (the session is dead).
 */
export class Session {
  #send;
  #recv;
  #sendDir;
  #recvDir;
  #sendSeq = 0;
  #recvSeq = 0;
  #sendBytes = 0;
  #recvBytes = 0;
  #failed = null;
  #sendQueue = Promise.resolve();
  #recvQueue = Promise.resolve();

  /**
   * Use `Session.create`.
   * @param {{role: string, th: Uint8Array, send: AesGcm, recv: AesGcm, sendDir: number}} parts
   */
  constructor({ role, th, send, recv, sendDir }) {
    /** The role the server granted ("client" or "admin"). */
    this.role = role;
    /** hex(th[0:8]), as the server reports it. */
    this.id = toHex(th.subarray(0, 8));
    /** Records per direction before the session refuses (close code 4000). */
    this.maxRecords = MAX_RECORDS;
    /** Plaintext bytes per direction before the session refuses (close code 4000). */
    this.maxBytes = MAX_BYTES;
    this.#send = send;
    this.#recv = recv;
    this.#sendDir = sendDir;
    this.#recvDir = sendDir === C2S ? S2C : C2S;
  }

  /**
   * A session from raw keys: a client sends with k_c2s (dir C2S) and receives with k_s2c.
   * `cipher` defaults to `recordCipher()`.
   * @param {{role: string, th: Uint8Array, sendKey: Uint8Array, recvKey: Uint8Array, sendDir: number, cipher?: RecordCipher}} options
   * @returns {Promise<Session>}
   */
  static async create({ role, th, sendKey, recvKey, sendDir, cipher = defaultCipher }) {
    const [send, recv] = await Promise.all([cipher(sendKey, "encrypt"), cipher(recvKey, "decrypt")]);
    return new Session({ role, th, send, recv, sendDir });
  }

  /** Whether the session is dead. */
  get closed() {
    return this.#failed !== null;
  }

  #fail(detail, closeCode) {
    this.#failed = new ChannelError(detail, closeCode);
    this.#send = this.#recv = null;
    return this.#failed;
  }

  #check(seq, total, size, direction) {
    if (this.#failed !== null) throw new ChannelError(`session is dead after: ${this.#failed.detail}`, this.#failed.closeCode);
    if (seq >= this.maxRecords) throw this.#fail(`${direction}: ${this.maxRecords} records in one session`, CLOSE_LIMIT);
    if (total + size > this.maxBytes) throw this.#fail(`${direction}: ${this.maxBytes} bytes in one session`, CLOSE_LIMIT);
  }

  /**
   * The next outgoing record: AES-256-GCM ciphertext ‖ 16-byte tag.
   * @param {Uint8Array} plaintext
   * @returns {Promise<Uint8Array>}
   * @throws {MontybaseError} ChannelError (close code 4000 at the limits)
   */
  seal(plaintext) {
    const run = this.#sendQueue.then(() => this.#seal(plaintext));
    this.#sendQueue = run.catch(() => {});
    return run;
  }

  async #seal(plaintext) {
    this.#check(this.#sendSeq, this.#sendBytes, plaintext.length, "seal");
    const { nonce, aad } = nonceAad(this.#sendDir, this.#sendSeq);
    const record = await this.#send(nonce, aad, plaintext);
    this.#sendSeq += 1;
    this.#sendBytes += plaintext.length;
    return record;
  }

  /**
   * The plaintext of the next incoming record. A record that is altered, replayed, reordered,
   * dropped before, truncated or from the other direction throws (close code 4002).
   * @param {Uint8Array} record
   * @returns {Promise<Uint8Array>}
   * @throws {MontybaseError} ChannelError
   */
  open(record) {
    const run = this.#recvQueue.then(() => this.#open(record));
    this.#recvQueue = run.catch(() => {});
    return run;
  }

  async #open(record) {
    const size = Math.max(record.length - TAG_BYTES, 0);
    this.#check(this.#recvSeq, this.#recvBytes, size, "open");
    if (record.length < TAG_BYTES) throw this.#fail(`record ${this.#recvSeq}: shorter than a tag`, CLOSE_BAD_RECORD);
    const { nonce, aad } = nonceAad(this.#recvDir, this.#recvSeq);
    let plaintext;
    try {
      plaintext = await this.#recv(nonce, aad, record);
    } catch {
      throw this.#fail(`record ${this.#recvSeq}: tag check failed`, CLOSE_BAD_RECORD);
    }
    this.#recvSeq += 1;
    this.#recvBytes += size;
    return new Uint8Array(plaintext);
  }
}

// --- handshake ---------------------------------------------------------------------------------

/**
 * One connection's client side: `hello()`, then `finish(result)`, then `confirm(result)`.
 * Mode nk iff `serverPublic` (the pinned base64url 65-byte point) is given; such a client
 * accepts nothing else. `nonce` and `ephemeral` exist only to reproduce test vectors; `cipher`
 * (default `recordCipher()`) is the session's AES-256-GCM.
 */
export class ClientHandshake {
  #psk;
  #nc;
  #ephemeral;
  #cipher;
  #serverPublic;
  #static = null;
  #sPub = EMPTY;
  #eC = EMPTY;
  #state = "hello";
  #session = null;

  /**
   * @param {string} kid "client" or "admin"
   * @param {string} key the key string
   * @param {string | null} [serverPublic] the pinned server key (mode nk)
   * @param {{nonce?: Uint8Array, ephemeral?: CryptoKeyPair, cipher?: RecordCipher}} [options]
   * @throws {MontybaseError} UnavailableError without WebCrypto, InvalidArgumentError
   */
  constructor(kid, key, serverPublic = null, { nonce, ephemeral, cipher = defaultCipher } = {}) {
    subtle(); // before anything is sent: without it, no handshake can finish
    if (typeof kid !== "string" || !kid || typeof key !== "string" || !key) {
      throw new InvalidArgumentError("kid and key must be non-empty strings");
    }
    if (nonce !== undefined && (!(nonce instanceof Uint8Array) || nonce.length !== NONCE_BYTES)) {
      throw new InvalidArgumentError(`nonce must be ${NONCE_BYTES} bytes`);
    }
    /** "client" or "admin". */
    this.kid = kid;
    /** "nk" with a pinned server key, else "psk". */
    this.mode = serverPublic ? "nk" : "psk";
    this.#psk = derivePsk(key);
    this.#psk.catch(() => {});
    this.#serverPublic = serverPublic || null;
    this.#nc = nonce ?? randomBytes(NONCE_BYTES);
    this.#ephemeral = ephemeral ?? null;
    this.#cipher = cipher;
  }

  #fail(detail) {
    this.#state = "failed";
    this.#ephemeral = null;
    this.#session = null;
    return new ChannelError(detail);
  }

  /**
   * The hello params.
   * @returns {Promise<{v: number, mode: string, kid: string, nc: string, kh: string, e?: string}>}
   * @throws {MontybaseError} ChannelError, or InvalidArgumentError for a bad pinned key
   */
  async hello() {
    if (this.#state !== "hello") throw this.#fail(`hello in state ${this.#state}`);
    this.#state = "hello…";
    const params = { v: VERSION, mode: this.mode, kid: this.kid, nc: b64e(this.#nc), kh: b64e(await keyHint(await this.#psk)) };
    if (this.mode === "nk") {
      try {
        ({ key: this.#static, raw: this.#sPub } = await importPoint(this.#serverPublic, "serverKey"));
      } catch (error) {
        this.#fail(error.message);
        if (!(error instanceof ChannelError)) throw error;
        throw new InvalidArgumentError(`the pinned serverKey is invalid: ${error.message}`);
      }
      this.#ephemeral ??= await generateEphemeral();
      this.#eC = await exportPoint(this.#ephemeral.publicKey);
      params.e = b64e(this.#eC);
    }
    this.#state = "finish";
    return params;
  }

  /**
   * Check the hello result and its smac (constant time); the auth params and the Session.
   * @param {unknown} result
   * @returns {Promise<{params: {cmac: string}, session: Session}>}
   * @throws {MontybaseError} ChannelError
   */
  async finish(result) {
    if (this.#state !== "finish") throw this.#fail(`finish in state ${this.#state}`);
    this.#state = "finish…";
    let keys;
    let smac;
    try {
      const nk = this.mode === "nk";
      const got = nk
        ? fields(result, ["ns", "e", "smac"], [], "hello result (mode nk)")
        : fields(result, ["ns", "smac"], [], "hello result (mode psk)");
      const ns = b64d(got.ns, NONCE_BYTES, "result.ns");
      smac = b64d(got.smac, MAC_BYTES, "result.smac");
      const psk = await this.#psk;
      if (nk) {
        const { key: serverE, raw: eS } = await importPoint(got.e, "result.e");
        const privateKey = this.#ephemeral.privateKey;
        this.#ephemeral = null;
        const ikm = concat(await ecdh(privateKey, this.#static), await ecdh(privateKey, serverE), psk);
        keys = await keySchedule("nk", this.kid, this.#nc, ns, ikm, this.#eC, eS, this.#sPub);
      } else {
        keys = await keySchedule("psk", this.kid, this.#nc, ns, psk);
      }
    } catch (error) {
      throw this.#fail(error instanceof ChannelError ? error.detail : `hello result: ${error.message}`);
    }
    if (!(await verifyHmac(keys.sfin, keys.th, smac))) {
      throw this.#fail(this.mode === "nk" ? SERVER_KEY_MISMATCH_MESSAGE : "hello result: smac does not verify (wrong key, or not our server)");
    }
    const session = await Session.create({ role: this.kid, th: keys.th, sendKey: keys.c2s, recvKey: keys.s2c, sendDir: C2S, cipher: this.#cipher });
    const cmac = await hmac(keys.cfin, keys.th);
    this.#session = session;
    this.#state = "confirm";
    return { params: { cmac: b64e(cmac) }, session };
  }

  /**
   * Check the auth result: our role and our session id.
   * @param {unknown} result
   * @throws {MontybaseError} ChannelError
   */
  confirm(result) {
    if (this.#state !== "confirm" || this.#session === null) throw this.#fail(`confirm in state ${this.#state}`);
    let got;
    try {
      got = fields(result, ["role", "session"], [], "auth result");
    } catch (error) {
      throw this.#fail(error.detail);
    }
    if (got.role !== this.#session.role || got.session !== this.#session.id) {
      throw this.#fail(`auth result: ${JSON.stringify(got)} does not match this session`);
    }
    this.#state = "done";
  }
}

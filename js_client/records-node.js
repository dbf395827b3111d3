/**
 * AES-256-GCM records by node:crypto, for the Node entry (js_client/node.js): synchronous, and
 * several times cheaper per record than WebCrypto's promise, which makes a round trip through a
 * thread pool. Browsers never load this module.
 * @module
 */

import { Buffer } from "node:buffer";
import { createCipheriv, createDecipheriv, createSecretKey } from "node:crypto";

import { TAG_BYTES } from "./channel.js";

const OPTIONS = { authTagLength: TAG_BYTES };

function bytesOf(buffer) {
  return new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength);
}

/**
 * AES-256-GCM under a raw 32-byte key, in one direction (a `RecordCipher` of channel.js).
 * @param {Uint8Array} key
 * @param {"encrypt" | "decrypt"} usage
 * @returns {import("./channel.js").AesGcm}
 */
export function nodeAesGcm(key, usage) {
  const secret = createSecretKey(key);
  if (usage === "encrypt") {
    return (nonce, aad, input) => {
      const cipher = createCipheriv("aes-256-gcm", secret, nonce, OPTIONS).setAAD(aad);
      const head = cipher.update(input);
      const tail = cipher.final();
      return bytesOf(Buffer.concat([head, tail, cipher.getAuthTag()]));
    };
  }
  return (nonce, aad, input) => {
    const decipher = createDecipheriv("aes-256-gcm", secret, nonce, OPTIONS).setAAD(aad);
    decipher.setAuthTag(input.subarray(input.length - TAG_BYTES));
    const head = decipher.update(input.subarray(0, input.length - TAG_BYTES));
    return bytesOf(Buffer.concat([head, decipher.final()]));
  };
}

// Every vector of tests/cases/channel.json: keys, MACs, the client's handshake, records in both
// directions, bad streams, bad hello results, limits. Records run through both AES-256-GCMs:
// WebCrypto's (browsers, and the default entry) and node:crypto's (the "node" entry).

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { join } from "node:path";
import { describe, test } from "node:test";
import { pathToFileURL } from "node:url";
import { promisify } from "node:util";

import {
  C2S,
  CLOSE_BAD_RECORD,
  CLOSE_LIMIT,
  ChannelError,
  ClientHandshake,
  S2C,
  Session,
  b64d,
  b64decode,
  b64e,
  concat,
  derivePsk,
  ecdh,
  hmac,
  importPoint,
  keySchedule,
  NO_WEBCRYPTO,
  publicKeyFromPkcs8,
  toHex,
  verifyHmac,
  webAesGcm,
} from "../../js_client/channel.js";

/** Bytes from hex (the test vectors' form). */
const fromHex = (hex) => Uint8Array.from(hex.match(/../g) ?? [], (pair) => parseInt(pair, 16));
import { InvalidArgumentError, Montybase, UnauthenticatedError, UnavailableError } from "../../js_client/index.js";
import { nodeAesGcm } from "../../js_client/records-node.js";
import { ROOT, readJson } from "./helpers.js";

const VECTORS = await readJson("tests", "cases", "channel.json");
const P256 = { name: "ECDH", namedCurve: "P-256" };
const CIPHERS = [["WebCrypto", webAesGcm], ["node:crypto", nodeAesGcm]];

function importPrivate(key) {
  return crypto.subtle.importKey("jwk", key.jwk, P256, true, ["deriveBits"]);
}

async function importPair(key) {
  return { privateKey: await importPrivate(key), publicKey: (await importPoint(key.public, "public")).key };
}

async function handshake(vector, cipher = webAesGcm) {
  const ephemeral = vector.clientEphemeral ? await importPair(vector.clientEphemeral) : undefined;
  const pinned = vector.mode === "nk" ? VECTORS.server.serverKey.public : null;
  return new ClientHandshake(vector.kid, vector.key, pinned, { nonce: fromHex(vector.nc), ephemeral, cipher });
}

/** The two sessions of a vector: the client's (sends c2s) and the server's (sends s2c). */
async function sessions(vector, cipher) {
  const { expected: x } = vector;
  const th = fromHex(x.th);
  const client = await Session.create({ role: vector.kid, th, sendKey: fromHex(x.k_c2s), recvKey: fromHex(x.k_s2c), sendDir: C2S, cipher });
  const server = await Session.create({ role: vector.kid, th, sendKey: fromHex(x.k_s2c), recvKey: fromHex(x.k_c2s), sendDir: S2C, cipher });
  return { client, server };
}

function isChannelError(closeCode) {
  return (error) => error instanceof ChannelError && error instanceof UnauthenticatedError && error.closeCode === closeCode && error.reason === "UNAUTHENTICATED";
}

test("the vectors file holds the four handshakes", () => {
  assert.deepEqual(VECTORS.cases.map((c) => `${c.mode} ${c.kid}`), ["psk client", "psk admin", "nk client", "nk admin"]);
  assert.equal(VECTORS.limits.records, 2 ** 24);
  assert.equal(VECTORS.limits.bytes, 2 ** 36);
});

test("the pinned public key is the public half of the server's PKCS#8 key", async () => {
  assert.equal(await publicKeyFromPkcs8(VECTORS.server.serverKey.pkcs8), VECTORS.server.serverKey.public);
  const jwkPublic = b64e(concat(new Uint8Array([4]), b64decode(VECTORS.server.serverKey.jwk.x), b64decode(VECTORS.server.serverKey.jwk.y)));
  assert.equal(jwkPublic, VECTORS.server.serverKey.public);
});

for (const vector of VECTORS.cases) {
  describe(vector.name, () => {
    const x = vector.expected;

    test("psk, ECDH values, ikm, transcript, th, keys and MACs", async () => {
      const psk = await derivePsk(vector.key);
      assert.equal(toHex(psk), x.psk);
      let ikm = psk;
      let points = [];
      if (vector.mode === "nk") {
        const client = await importPair(vector.clientEphemeral);
        const server = await importPair(vector.serverEphemeral);
        const serverStatic = await importPair(VECTORS.server.serverKey);
        // Both sides reach the same secrets.
        const es = await ecdh(client.privateKey, serverStatic.publicKey);
        const ee = await ecdh(client.privateKey, server.publicKey);
        assert.equal(toHex(es), x.es);
        assert.equal(toHex(ee), x.ee);
        assert.equal(toHex(await ecdh(serverStatic.privateKey, client.publicKey)), x.es);
        assert.equal(toHex(await ecdh(server.privateKey, client.publicKey)), x.ee);
        ikm = concat(es, ee, psk);
        points = [vector.clientEphemeral.public, vector.serverEphemeral.public, VECTORS.server.serverKey.public].map((p) => b64decode(p));
      } else {
        assert.equal(x.es, null);
        assert.equal(x.ee, null);
      }
      assert.equal(toHex(ikm), x.ikm);
      const keys = await keySchedule(vector.mode, vector.kid, fromHex(vector.nc), fromHex(vector.ns), ikm, ...points);
      assert.equal(toHex(keys.transcript), x.transcript);
      assert.equal(toHex(keys.th), x.th);
      assert.equal(toHex(keys.c2s), x.k_c2s);
      assert.equal(toHex(keys.s2c), x.k_s2c);
      assert.equal(toHex(keys.cfin), x.k_cfin);
      assert.equal(toHex(keys.sfin), x.k_sfin);
      assert.equal(toHex(await hmac(keys.sfin, keys.th)), x.smac);
      assert.equal(toHex(await hmac(keys.cfin, keys.th)), x.cmac);
      assert.equal(toHex(keys.th).slice(0, 16), x.session);
    });

    test("the client's handshake sends hello and auth exactly as the vector", async () => {
      const client = await handshake(vector);
      assert.deepEqual(await client.hello(), vector.hello);
      const { params, session } = await client.finish(vector.helloResult);
      assert.deepEqual(params, vector.auth);
      assert.equal(session.id, x.session);
      assert.equal(session.role, vector.kid);
      client.confirm(vector.authResult);
      assert.deepEqual(vector.authResult, { role: vector.kid, session: x.session });
    });

    for (const [cipherName, cipher] of CIPHERS) {
      describe(`records with ${cipherName}`, () => {
        test("the handshake's session seals c2s records and opens s2c records", async () => {
          const client = await handshake(vector, cipher);
          await client.hello();
          const { session } = await client.finish(vector.helloResult);
          for (const record of vector.records.c2s) assert.equal(toHex(await session.seal(fromHex(record.plaintext))), record.record);
          for (const record of vector.records.s2c) assert.equal(toHex(await session.open(fromHex(record.record))), record.plaintext);
        });

        test("records in both directions (a server-side session too)", async () => {
          const { client, server } = await sessions(vector, cipher);
          for (const record of vector.records.c2s) {
            assert.equal(toHex(await client.seal(fromHex(record.plaintext))), record.record);
            assert.equal(toHex(await server.open(fromHex(record.record))), record.plaintext);
          }
          for (const record of vector.records.s2c) {
            assert.equal(toHex(await server.seal(fromHex(record.plaintext))), record.record);
            assert.equal(toHex(await client.open(fromHex(record.record))), record.plaintext);
          }
        });

        test("records given in a burst are still opened in order", async () => {
          const { client } = await sessions(vector, cipher);
          const opened = await Promise.all(vector.records.s2c.map((record) => client.open(fromHex(record.record))));
          assert.deepEqual(opened.map(toHex), vector.records.s2c.map((record) => record.plaintext));
        });

        for (const stream of vector.badStreams) {
          test(`bad stream: ${stream.name}`, async () => {
            const both = await sessions(vector, cipher);
            const receiver = stream.receiver === "c2s" ? both.server : both.client;
            for (const [index, record] of stream.stream.entries()) {
              if (index < stream.failsAt) {
                await receiver.open(fromHex(record));
              } else {
                await assert.rejects(receiver.open(fromHex(record)), isChannelError(CLOSE_BAD_RECORD), `record ${index}`);
                assert.ok(receiver.closed);
              }
            }
            // Dead: even a record that would have been valid next is refused, and nothing is sealed.
            await assert.rejects(receiver.open(fromHex(vector.records[stream.receiver][0].record)), ChannelError);
            await assert.rejects(receiver.seal(new Uint8Array(1)), ChannelError);
          });
        }
      });
    }

    for (const bad of vector.badResults) {
      test(`bad hello result: ${bad.name}`, async () => {
        const client = await handshake(vector);
        await client.hello();
        await assert.rejects(client.finish(bad.result), isChannelError(1008));
        // No auth after a refusal: the handshake is dead.
        await assert.rejects(client.finish(vector.helloResult), ChannelError);
        assert.throws(() => client.confirm(vector.authResult), ChannelError);
      });
    }

    test("an auth result for another session or role is refused", async () => {
      for (const bad of [
        { role: vector.kid, session: "0000000000000000" },
        { role: vector.kid === "admin" ? "client" : "admin", session: x.session },
        { role: vector.kid, session: x.session, extra: 1 },
        [vector.kid, x.session],
      ]) {
        const client = await handshake(vector);
        await client.hello();
        await client.finish(vector.helloResult);
        assert.throws(() => client.confirm(bad), ChannelError);
      }
    });

    test("bad auths: each fails the checks a server makes (fields, strict base64url, HMAC)", async () => {
      const keys = { th: fromHex(x.th), cfin: fromHex(x.k_cfin) };
      const accepts = async (params) => {
        if (params === null || typeof params !== "object" || Object.keys(params).join() !== "cmac") return false;
        let cmac;
        try {
          cmac = b64d(params.cmac, 32, "auth.cmac");
        } catch {
          return false;
        }
        return verifyHmac(keys.cfin, keys.th, cmac);
      };
      assert.equal(await accepts(vector.auth), true);
      for (const bad of vector.badAuths) assert.equal(await accepts(bad.params), false, bad.name);
    });
  });
}

for (const [cipherName, cipher] of CIPHERS) {
  test(`a session refuses to seal or open past its record limit (close code 4000), with ${cipherName}`, async () => {
    const vector = VECTORS.cases[0];
    const { client, server } = await sessions(vector, cipher);
    client.maxRecords = 2;
    await client.seal(new Uint8Array(1));
    await client.seal(new Uint8Array(1));
    await assert.rejects(client.seal(new Uint8Array(1)), isChannelError(CLOSE_LIMIT));
    server.maxRecords = 1;
    await server.open(fromHex(vector.records.c2s[0].record));
    await assert.rejects(server.open(fromHex(vector.records.c2s[1].record)), isChannelError(CLOSE_LIMIT));
  });

  test(`a session refuses to seal past its byte limit (close code 4000), with ${cipherName}`, async () => {
    const { client } = await sessions(VECTORS.cases[0], cipher);
    client.maxBytes = 10;
    await client.seal(new Uint8Array(10));
    await assert.rejects(client.seal(new Uint8Array(1)), isChannelError(CLOSE_LIMIT));
  });
}

describe("the records' AES-256-GCM is chosen by package.json exports conditions", () => {
  /** What a fresh Node process prints for `code` (an ES module run in the repository). */
  const run = async (code, ...conditions) => {
    const args = [...conditions.map((name) => `--conditions=${name}`), "--input-type=module", "-e", code];
    return (await promisify(execFile)(process.execPath, args, { cwd: ROOT })).stdout.trim();
  };
  const entry = (name) => pathToFileURL(join(ROOT, "js_client", name)).href;
  const cipherAfter = (specifier) =>
    run(`import ${JSON.stringify(specifier)}; const { recordCipher } = await import("./js_client/channel.js"); console.log(recordCipher().name);`);

  test("Node resolves the package to js_client/node.js, a browser bundler to js_client/index.js", async () => {
    assert.equal(await run('console.log(import.meta.resolve("montybase"))'), entry("node.js"));
    assert.equal(await run('console.log(import.meta.resolve("montybase"))', "browser"), entry("index.js"));
  });

  test("the default entry keeps WebCrypto; the Node entry makes node:crypto the sessions' cipher", async () => {
    assert.equal(await cipherAfter("./js_client/index.js"), webAesGcm.name);
    assert.equal(await cipherAfter("montybase"), nodeAesGcm.name);
  });

  test("the Node entry exports what the default entry exports, the same objects", async () => {
    const [node, web] = [await import("montybase"), await import("../../js_client/index.js")];
    assert.deepEqual(Object.keys(node).sort(), Object.keys(web).sort());
    for (const name of Object.keys(web)) assert.equal(node[name], web[name], name);
  });
});

describe("without WebCrypto (a page over plain http from a LAN address is not a secure context)", () => {
  const pinned = VECTORS.server.serverKey.public;
  const noWebCrypto = (error) => error instanceof UnavailableError && error.message === NO_WEBCRYPTO;

  /** Run `fn` with a `crypto` that has getRandomValues but no `subtle`, as such a page has. */
  async function insecure(fn) {
    const real = Object.getOwnPropertyDescriptor(globalThis, "crypto");
    const random = globalThis.crypto.getRandomValues.bind(globalThis.crypto);
    Object.defineProperty(globalThis, "crypto", { value: { getRandomValues: random }, configurable: true });
    try {
      await fn();
    } finally {
      Object.defineProperty(globalThis, "crypto", real);
    }
  }

  test("the message says so and what to do: https, or localhost", () => {
    assert.match(NO_WEBCRYPTO, /crypto\.subtle/);
    assert.match(NO_WEBCRYPTO, /secure context/);
    assert.match(NO_WEBCRYPTO, /https/);
    assert.match(NO_WEBCRYPTO, /localhost/);
  });

  test("a handshake with a pinned server key says WebCrypto is missing, not that the key is bad", async () => {
    await insecure(async () => {
      assert.throws(() => new ClientHandshake("client", "mb-some-key", pinned), noWebCrypto);
      assert.throws(() => new ClientHandshake("client", "mb-some-key"), noWebCrypto);
      await assert.rejects(importPoint(pinned, "serverKey"), noWebCrypto);
      await assert.rejects(publicKeyFromPkcs8(VECTORS.server.serverKey.pkcs8), noWebCrypto);
    });
  });

  test("new Montybase says so at once, before anything connects", async () => {
    let constructed = 0;
    const WebSocket = class {
      constructor() {
        constructed += 1;
      }
    };
    await insecure(async () => {
      assert.throws(() => new Montybase({ apiKey: "mb-some-key", endpoint: "ws://127.0.0.1:9", serverKey: pinned }, { WebSocket }), noWebCrypto);
    });
    assert.equal(constructed, 0);
  });

  test("with WebCrypto, a bad pinned key is still INVALID_ARGUMENT", async () => {
    const offCurve = `${pinned.slice(0, 60)}${pinned[60] === "A" ? "B" : "A"}${pinned.slice(61)}`; // y changed
    const client = new ClientHandshake("client", "mb-some-key", offCurve);
    await assert.rejects(client.hello(), (error) => error instanceof InvalidArgumentError && /the pinned serverKey is invalid/.test(error.message));
  });
});

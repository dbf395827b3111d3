// Every vector of tests/cases/channel.json, with WebCrypto only: keys, MACs, the client's
// handshake, records in both directions, bad streams, bad hello results, limits.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

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
  fromHex,
  hmac,
  importPoint,
  keySchedule,
  publicKeyFromPkcs8,
  toHex,
  verifyHmac,
} from "../../js_client/channel.js";
import { UnauthenticatedError } from "../../js_client/index.js";
import { readJson } from "./helpers.js";

const VECTORS = await readJson("tests", "cases", "channel.json");
const P256 = { name: "ECDH", namedCurve: "P-256" };

function importPrivate(key) {
  return crypto.subtle.importKey("jwk", key.jwk, P256, true, ["deriveBits"]);
}

async function importPair(key) {
  return { privateKey: await importPrivate(key), publicKey: (await importPoint(key.public, "public")).key };
}

async function handshake(vector) {
  const ephemeral = vector.clientEphemeral ? await importPair(vector.clientEphemeral) : undefined;
  const pinned = vector.mode === "nk" ? VECTORS.server.serverKey.public : null;
  return new ClientHandshake(vector.kid, vector.key, pinned, { nonce: fromHex(vector.nc), ephemeral });
}

/** The two sessions of a vector: the client's (sends c2s) and the server's (sends s2c). */
async function sessions(vector) {
  const { expected: x } = vector;
  const th = fromHex(x.th);
  const client = await Session.create({ role: vector.kid, th, sendKey: fromHex(x.k_c2s), recvKey: fromHex(x.k_s2c), sendDir: C2S });
  const server = await Session.create({ role: vector.kid, th, sendKey: fromHex(x.k_s2c), recvKey: fromHex(x.k_c2s), sendDir: S2C });
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

    test("the handshake's session seals c2s records and opens s2c records", async () => {
      const client = await handshake(vector);
      await client.hello();
      const { session } = await client.finish(vector.helloResult);
      for (const record of vector.records.c2s) assert.equal(toHex(await session.seal(fromHex(record.plaintext))), record.record);
      for (const record of vector.records.s2c) assert.equal(toHex(await session.open(fromHex(record.record))), record.plaintext);
    });

    test("records in both directions (a server-side session too)", async () => {
      const { client, server } = await sessions(vector);
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
      const { client } = await sessions(vector);
      const opened = await Promise.all(vector.records.s2c.map((record) => client.open(fromHex(record.record))));
      assert.deepEqual(opened.map(toHex), vector.records.s2c.map((record) => record.plaintext));
    });

    for (const stream of vector.badStreams) {
      test(`bad stream: ${stream.name}`, async () => {
        const both = await sessions(vector);
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

test("a session refuses to seal or open past its record limit (close code 4000)", async () => {
  const vector = VECTORS.cases[0];
  const { client, server } = await sessions(vector);
  client.maxRecords = 2;
  await client.seal(new Uint8Array(1));
  await client.seal(new Uint8Array(1));
  await assert.rejects(client.seal(new Uint8Array(1)), isChannelError(CLOSE_LIMIT));
  server.maxRecords = 1;
  await server.open(fromHex(vector.records.c2s[0].record));
  await assert.rejects(server.open(fromHex(vector.records.c2s[1].record)), isChannelError(CLOSE_LIMIT));
});

test("a session refuses to seal past its byte limit (close code 4000)", async () => {
  const { client } = await sessions(VECTORS.cases[0]);
  client.maxBytes = 10;
  await client.seal(new Uint8Array(10));
  await assert.rejects(client.seal(new Uint8Array(1)), isChannelError(CLOSE_LIMIT));
});

describe("strict base64url", () => {
  test("round trips every length", () => {
    for (let n = 0; n < 70; n++) {
      const bytes = crypto.getRandomValues(new Uint8Array(n));
      assert.deepEqual(b64decode(b64e(bytes)), bytes);
      assert.deepEqual(b64d(b64e(bytes), n, "f"), bytes);
    }
  });

  test("refuses padding, the standard alphabet, wrong lengths and non-canonical forms", () => {
    const good = b64e(new Uint8Array(32).fill(0xfb));
    for (const bad of [`${good}=`, good.replaceAll("-", "+").replaceAll("_", "/"), good.slice(1), `${good}A`, `${good.slice(0, -1)}9`, 5, null]) {
      assert.throws(() => b64d(bad, 32, "nc"), ChannelError, String(bad));
    }
  });
});

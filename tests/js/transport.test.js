// The connection: lazy connect, the handshake against a live server (good and bad keys, the
// shared bad hellos and bad auths), lost connections and reconnects, tampered records (through
// a man-in-the-middle proxy), timeouts and close().

import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { setTimeout as delay } from "node:timers/promises";
import WebSocket, { WebSocketServer } from "ws";

import { ClientHandshake } from "../../js_client/channel.js";
import {
  ConnectionLostError,
  InvalidArgumentError,
  Montybase,
  UnauthenticatedError,
  UnavailableError,
  doc,
} from "../../js_client/index.js";
import { Server, readJson, runPython, tempDir, unique, writeConfig } from "./helpers.js";

const VECTORS = await readJson("tests", "cases", "channel.json");

let server;
let clientConfig;
let adminConfig;

before(async () => {
  server = await Server.start();
  clientConfig = await server.clientConfig();
  adminConfig = await server.adminConfig();
});

after(async () => {
  await server?.cleanup();
});

function lost(error) {
  return error instanceof ConnectionLostError && error.reason === "CONNECTION_LOST" && error.code === -32009;
}

/** Open a raw WebSocket to the server and collect what it sends and how it closes. */
function raw(url = server.endpoint) {
  const ws = new WebSocket(url);
  const messages = [];
  let wake = null;
  ws.on("message", (data, isBinary) => {
    messages.push(isBinary ? data : data.toString());
    wake?.();
  });
  const closed = new Promise((resolve) => ws.on("close", (code) => resolve(code)));
  const opened = new Promise((resolve, reject) => {
    ws.on("open", resolve);
    ws.on("error", reject);
  });
  return {
    ws,
    opened,
    closed,
    async next() {
      while (!messages.length) await new Promise((resolve) => (wake = resolve));
      return messages.shift();
    },
    request(method, params, id = 0) {
      ws.send(JSON.stringify({ jsonrpc: "2.0", id, method, params }));
    },
  };
}

describe("the handshake against a live server", () => {
  test("client key in mode nk (pinned server key), and in mode psk", async () => {
    for (const config of [clientConfig, { ...clientConfig, serverKey: undefined }]) {
      const db = new Montybase(config, { WebSocket });
      const name = unique("c");
      assert.equal(await doc(db, name).add({ a: 1 }, "x"), "x");
      assert.deepEqual(await doc(db, name, "x").get(), { a: 1 });
      await db.close();
    }
  });

  test("admin key from montybase.json, pinning the public half of its serverKey", async () => {
    const db = new Montybase(adminConfig, { WebSocket, endpoint: server.endpoint });
    assert.equal(typeof (await doc(db).get()), "object");
    await db.close();
  });

  test("an http:// endpoint means ws://", async () => {
    const db = new Montybase({ ...clientConfig, endpoint: `${server.http}/` }, { WebSocket });
    assert.equal(db.endpoint, server.endpoint);
    assert.equal(await doc(db, unique("c")).count(), 0);
    await db.close();
  });

  test("a wrong key is UNAUTHENTICATED, and so is a wrong pinned server key: each says what to check, the server logs it", async () => {
    const otherServerKey = VECTORS.server.serverKey.public;
    const refused = "the server refused this key: check apiKey in client-config.json";
    const mismatch = "the server's key does not match serverKey: check serverKey in client-config.json";
    for (const [config, message, logged] of [
      [{ ...clientConfig, apiKey: "mb-wrong-key-0123456789" }, refused, "key hint matches no client key"],
      [{ ...clientConfig, apiKey: "mb-wrong-key-0123456789", serverKey: undefined }, refused, "key hint matches no client key"],
      [{ ...clientConfig, serverKey: otherServerKey }, mismatch, "does not match the serverKey in its client-config.json"],
      [{ ...adminConfig, adminKey: "mba-wrong-wrong-wrong-wrong" }, "the server refused this key: check adminKey in montybase.json", "key hint matches no admin key"],
    ]) {
      const before = server.output.stderr.split(logged).length;
      const db = new Montybase(config, { WebSocket, endpoint: server.endpoint });
      await assert.rejects(
        doc(db, "c", "x").get(),
        (error) => error instanceof UnauthenticatedError && error.code === -32000 && error.message.startsWith(message),
      );
      await db.close();
      for (let i = 0; i < 100 && server.output.stderr.split(logged).length === before; i++) await delay(50);
      assert.equal(server.output.stderr.split(logged).length, before + 1, server.output.stderr);
    }
    for (const key of ["mb-wrong-key-0123456789", "mba-wrong-wrong-wrong-wrong", otherServerKey, clientConfig.apiKey]) {
      assert.ok(!server.output.stderr.includes(key));
    }
  });

  test("a config without a key or an endpoint, or a bad pinned key, is INVALID_ARGUMENT", async () => {
    assert.throws(() => new Montybase({ endpoint: server.endpoint }, { WebSocket }), InvalidArgumentError);
    assert.throws(() => new Montybase({ apiKey: clientConfig.apiKey }, { WebSocket }), InvalidArgumentError);
    assert.throws(() => new Montybase(null, { WebSocket }), InvalidArgumentError);
    assert.throws(() => new Montybase(clientConfig, { WebSocket, timeout: -1 }), InvalidArgumentError);
    const db = new Montybase({ ...clientConfig, serverKey: "AAAA" }, { WebSocket });
    await assert.rejects(doc(db, "c", "x").get(), InvalidArgumentError);
    await db.close();
  });

  test("without a global WebSocket and none passed in, the constructor says what to do", () => {
    if (globalThis.WebSocket) return; // Node ≥ 22 has one
    assert.throws(() => new Montybase(clientConfig), (error) => error instanceof InvalidArgumentError && /WebSocket/.test(error.message));
  });

  for (const bad of VECTORS.badHellos) {
    test(`the server refuses a bad hello: ${bad.name}`, async () => {
      const socket = raw();
      await socket.opened;
      socket.request("hello", bad.params);
      const answer = JSON.parse(await socket.next());
      assert.deepEqual(answer.error.data, { reason: "UNAUTHENTICATED" });
      assert.equal(answer.error.code, -32000);
      assert.equal(await socket.closed, 1008);
    });
  }

  for (const vector of VECTORS.cases) {
    for (const bad of vector.badAuths) {
      test(`the server refuses a bad auth (${vector.name}): ${bad.name}`, async () => {
        const kid = vector.kid;
        const key = kid === "admin" ? adminConfig.adminKey : clientConfig.apiKey;
        const handshake = new ClientHandshake(kid, key, vector.mode === "nk" ? clientConfig.serverKey : null);
        const socket = raw();
        await socket.opened;
        socket.request("hello", await handshake.hello());
        const hello = JSON.parse(await socket.next());
        await handshake.finish(hello.result); // the server's smac checks out
        socket.request("auth", bad.params, 1);
        const answer = JSON.parse(await socket.next());
        assert.deepEqual(answer.error.data, { reason: "UNAUTHENTICATED" });
        assert.equal(await socket.closed, 1008);
      });
    }
  }
});

/**
 * A man in the middle between the client and the server: forwards every frame as it is,
 * unless `tamper(data, isBinary, direction, index)` returns something else
 * ({data, isBinary}, or null to drop the frame).
 */
async function proxy(tamper) {
  const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
  await new Promise((resolve) => wss.once("listening", resolve));
  wss.on("connection", (downstream) => {
    const upstream = new WebSocket(server.endpoint);
    const early = [];
    const counts = { c2s: 0, s2c: 0 };
    const forward = (to, direction) => (data, isBinary) => {
      const out = tamper(data, isBinary, direction, counts[direction]++);
      if (out === null) return;
      const send = () => to.send(out.data, { binary: out.isBinary });
      if (to.readyState === WebSocket.OPEN) send();
      else early.push(send);
    };
    upstream.on("open", () => early.splice(0).forEach((send) => send()));
    downstream.on("message", forward(upstream, "c2s"));
    upstream.on("message", forward(downstream, "s2c"));
    const closeBoth = (code) => {
      for (const socket of [upstream, downstream]) {
        if (socket.readyState <= WebSocket.OPEN) socket.close(code >= 3000 || code === 1000 ? code : 1000);
      }
    };
    downstream.on("close", closeBoth);
    upstream.on("close", closeBoth);
    upstream.on("error", () => {});
    downstream.on("error", () => {});
  });
  return {
    endpoint: `ws://127.0.0.1:${wss.address().port}`,
    close: () => new Promise((resolve) => {
      for (const client of wss.clients) client.terminate();
      wss.close(resolve);
    }),
  };
}

const same = (data, isBinary) => ({ data, isBinary });

describe("records the client must refuse", () => {
  async function through(tamper, body) {
    const middle = await proxy(tamper);
    const db = new Montybase({ ...clientConfig, endpoint: middle.endpoint }, { WebSocket });
    try {
      await body(db);
    } finally {
      await db.close();
      await middle.close();
    }
  }

  test("an altered record: the call in flight is CONNECTION_LOST (4002), the next call reconnects", async () => {
    let armed = false;
    await through(
      (data, isBinary, direction) => {
        if (armed && direction === "s2c" && isBinary) {
          armed = false;
          const copy = Buffer.from(data);
          copy[0] ^= 1;
          return { data: copy, isBinary };
        }
        return same(data, isBinary);
      },
      async (db) => {
        const name = unique("c");
        await doc(db, name, "x").set({ n: 1 });
        armed = true;
        await assert.rejects(doc(db, name, "x").get(), (error) => lost(error) && error.data.closeCode === 4002);
        assert.deepEqual(await doc(db, name, "x").get(), { n: 1 });
      },
    );
  });

  test("a dropped record: the next one fails to open, both calls are CONNECTION_LOST", async () => {
    let drop = false;
    await through(
      (data, isBinary, direction) => {
        if (drop && direction === "s2c" && isBinary) {
          drop = false;
          return null;
        }
        return same(data, isBinary);
      },
      async (db) => {
        const ref = doc(db, unique("c"), "x");
        await ref.set({ n: 1 });
        drop = true;
        const first = ref.get();
        const second = ref.get();
        await assert.rejects(first, lost);
        await assert.rejects(second, lost);
        assert.deepEqual(await ref.get(), { n: 1 });
      },
    );
  });

  test("a replayed record is refused", async () => {
    let last = null;
    let replay = false;
    await through(
      (data, isBinary, direction) => {
        if (direction === "s2c" && isBinary) {
          if (replay && last) {
            replay = false;
            return { data: last, isBinary };
          }
          last = data;
        }
        return same(data, isBinary);
      },
      async (db) => {
        const ref = doc(db, unique("c"), "x");
        await ref.set({ n: 1 });
        replay = true;
        await assert.rejects(ref.get(), lost);
      },
    );
  });

  test("a text frame after the handshake is refused", async () => {
    let armed = false;
    await through(
      (data, isBinary, direction) => {
        if (armed && direction === "s2c" && isBinary) {
          armed = false;
          return { data: '{"jsonrpc":"2.0","id":2,"result":{"value":"forged"}}', isBinary: false };
        }
        return same(data, isBinary);
      },
      async (db) => {
        const ref = doc(db, unique("c"), "x");
        await ref.set({ n: 1 });
        armed = true;
        await assert.rejects(ref.get(), lost);
      },
    );
  });

  test("a downgraded hello result (no server ephemeral key) fails the nk handshake", async () => {
    await through(
      (data, isBinary, direction, index) => {
        if (direction === "s2c" && index === 0 && !isBinary) {
          const answer = JSON.parse(data.toString());
          delete answer.result.e;
          return { data: JSON.stringify(answer), isBinary: false };
        }
        return same(data, isBinary);
      },
      async (db) => {
        await assert.rejects(doc(db, "c", "x").get(), UnauthenticatedError);
      },
    );
  });
});

describe("lost connections and reconnects", () => {
  test("connecting is lazy: a handle to a dead address fails at the first call", async () => {
    const db = new Montybase({ ...clientConfig, endpoint: "ws://127.0.0.1:9" }, { WebSocket });
    await assert.rejects(doc(db, "c", "x").get(), lost);
    await db.close();
  });

  test("after a restart the next call reconnects; meanwhile calls are CONNECTION_LOST", async () => {
    const db = new Montybase(clientConfig, { WebSocket });
    const ref = doc(db, unique("c"), "x");
    await ref.set({ n: 1 });
    await server.stop();
    await assert.rejects(ref.get(), lost);
    await assert.rejects(ref.get(), lost);
    server = await Server.start({ dir: server.dir, port: server.port });
    assert.deepEqual(await ref.get(), { n: 1 });
    await db.close();
  });

  test("a call in flight when the server dies is CONNECTION_LOST; the next call works after a restart", async () => {
    const db = new Montybase(clientConfig, { WebSocket });
    const ref = doc(db, unique("c"), "x");
    await ref.set({ n: 1 });
    server.child.kill("SIGSTOP"); // the call below is sent but never answered …
    const inFlight = [ref.get(), ref.update({ n: 2 }), doc(db, ref.path).stream()].map((call) => call.then(() => null, (error) => error));
    await new Promise((resolve) => setTimeout(resolve, 100));
    await server.stop("SIGKILL"); // … until the server is gone
    for (const error of await Promise.all(inFlight)) assert.ok(lost(error), String(error));
    server = await Server.start({ dir: server.dir, port: server.port });
    const value = await ref.get();
    assert.ok(value.n === 1 || value.n === 2); // the update may or may not have been applied
    await db.close();
  });

  test("a server that accepts but never answers: the handshake times out", async () => {
    server.child.kill("SIGSTOP");
    try {
      const db = new Montybase(clientConfig, { WebSocket, timeout: 300 });
      await assert.rejects(doc(db, "c", "x").get(), (error) => lost(error) && /within/.test(error.message));
      await db.close();
    } finally {
      server.child.kill("SIGCONT");
    }
  });

  test("an answer that does not come in time is CONNECTION_LOST", async () => {
    const db = new Montybase(clientConfig, { WebSocket, timeout: 300 });
    const ref = doc(db, unique("c"), "x");
    await ref.set({ n: 1 });
    server.child.kill("SIGSTOP");
    try {
      await assert.rejects(ref.get(), (error) => lost(error) && /no answer/.test(error.message));
    } finally {
      server.child.kill("SIGCONT");
    }
    await db.close();
  });
});

describe("refused connections: UNAVAILABLE, as in Python", () => {
  const GAME = "https://game.example";
  let guarded; // a server that allows one Origin and one connection per address
  let config;

  before(async () => {
    const dir = await tempDir();
    await writeConfig(dir, { origins: [GAME], limits: { maxConnectionsPerAddress: 1 } });
    guarded = await Server.start({ dir });
    config = await guarded.clientConfig();
  });

  after(async () => {
    await guarded?.cleanup();
  });

  /** A WebSocket class that sends `origin` (Node's sends none, which this server refuses too). */
  const from = (origin) =>
    class extends WebSocket {
      constructor(url) {
        super(url, origin ? { origin } : {});
      }
    };

  /** As a browser's: its error event does not say why it failed to open. */
  const silent = (origin) =>
    class extends from(origin) {
      get onerror() {
        return super.onerror;
      }

      set onerror(listener) {
        super.onerror = () => listener(new Event("error"));
      }
    };

  /** [class, reason, message] of the error Python's remote client raises for a first call. */
  async function python() {
    const code = [
      "import json",
      "from python_client import Montybase, doc",
      "from python_client.errors import MontybaseError",
      `db = Montybase(api=${JSON.stringify(guarded.endpoint)}, config=${JSON.stringify(join(guarded.dir, "montybase.json"))})`,
      "try:",
      "    doc(db, 'c', 'x').get()",
      "    print(json.dumps(None))",
      "except MontybaseError as exc:",
      "    print(json.dumps([type(exc).__name__, exc.reason, str(exc)]))",
      "db.close()",
    ].join("\n");
    return JSON.parse(await runPython(code));
  }

  async function javascript(WebSocketClass) {
    const db = new Montybase(config, { WebSocket: WebSocketClass });
    try {
      await doc(db, "c", "x").get();
      return null;
    } catch (error) {
      return [error.constructor.name, error.reason, error.message];
    } finally {
      await db.close();
    }
  }

  test("an Origin the server does not allow: UnavailableError, with Python's message", async () => {
    const refused = `cannot connect to ${guarded.endpoint}: server rejected WebSocket connection: HTTP 403`;
    assert.deepEqual(await python(), ["UnavailableError", "UNAVAILABLE", refused]); // Python sends no Origin
    assert.deepEqual(await javascript(from(null)), ["UnavailableError", "UNAVAILABLE", refused]);
    assert.deepEqual(await javascript(from("https://evil.example")), ["UnavailableError", "UNAVAILABLE", refused]);
    assert.equal(await javascript(from(GAME)), null);
  });

  test("the per-address cap reached: UnavailableError, with Python's message", async () => {
    const first = new Montybase(config, { WebSocket: from(GAME) });
    try {
      await doc(first, "c", "x").get(); // holds the address's one connection
      const refused = `cannot connect to ${guarded.endpoint}: server rejected WebSocket connection: HTTP 429`;
      assert.deepEqual(await javascript(from(GAME)), ["UnavailableError", "UNAVAILABLE", refused]);
      assert.deepEqual(await python(), ["UnavailableError", "UNAVAILABLE", refused]);
    } finally {
      await first.close();
    }
    assert.equal(await javascript(from(GAME)), null);
  });

  test("where the WebSocket hides why (a browser), an HTTP answer tells a refusal from an unreachable server", async () => {
    const [kind, reason] = await javascript(silent("https://evil.example"));
    assert.deepEqual([kind, reason], ["UnavailableError", "UNAVAILABLE"]);
    const db = new Montybase({ ...config, endpoint: "ws://127.0.0.1:9" }, { WebSocket: silent(GAME) });
    await assert.rejects(doc(db, "c", "x").get(), (error) => lost(error) && error.message.startsWith("cannot connect to ws://127.0.0.1:9"));
    await db.close();
  });

  test("a listener is refused by the cap, then subscribed once the connection is free", async () => {
    const first = new Montybase(config, { WebSocket: from(GAME) });
    const second = new Montybase(config, { WebSocket: from(GAME) });
    try {
      await doc(first, "c", "x").set({ n: 1 });
      const seen = [];
      const stop = doc(second, "c", "x").onSnapshot((snapshot) => seen.push(snapshot));
      await new Promise((resolve) => setTimeout(resolve, 200)); // refused, retried with backoff
      assert.deepEqual(seen, []);
      await first.close();
      await stop.ready;
      assert.deepEqual(seen[0], { id: "x", value: { n: 1 }, exists: true });
      stop();
    } finally {
      await first.close();
      await second.close();
    }
  });
});

describe("close()", () => {
  test("calls in flight are CONNECTION_LOST, later calls UNAVAILABLE", async () => {
    const db = new Montybase(clientConfig, { WebSocket });
    const ref = doc(db, unique("c"), "x");
    await ref.set({ n: 1 });
    server.child.kill("SIGSTOP");
    let inFlight;
    try {
      inFlight = ref.get().then(() => null, (error) => error);
      await new Promise((resolve) => setTimeout(resolve, 50));
      await db.close();
    } finally {
      server.child.kill("SIGCONT");
    }
    assert.ok(lost(await inFlight));
    await assert.rejects(ref.get(), (error) => error instanceof UnavailableError && error.reason === "UNAVAILABLE");
    await db.close(); // twice is fine
  });

  test("closing a handle that never connected is immediate", async () => {
    const db = new Montybase(clientConfig, { WebSocket });
    await db.close();
    await assert.rejects(doc(db, "c", "x").get(), UnavailableError);
  });

  test("closing while connecting leaves no connection behind", async () => {
    const db = new Montybase(clientConfig, { WebSocket });
    const call = doc(db, "c", "x").get();
    await db.close();
    await assert.rejects(call, (error) => error instanceof UnavailableError || lost(error));
  });
});

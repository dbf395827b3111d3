// A client config with a list of endpoints: two real servers with the same keys (the nodes of
// one database, as far as a client can tell; each its own storage here), one killed by its pid.
// The handle goes on with the next, its listeners get a fresh full snapshot there, a refused
// connect moves on at once, and a bad list is INVALID_ARGUMENT naming the entry.

import assert from "node:assert/strict";
import { copyFile, mkdir } from "node:fs/promises";
import { createServer } from "node:net";
import { join } from "node:path";
import { afterEach, beforeEach, test } from "node:test";
import { setTimeout as delay } from "node:timers/promises";
import WebSocket from "ws";

import { ConnectionLostError, InvalidArgumentError, Montybase, doc } from "../../js_client/index.js";
import { Server, Snapshots, tempDir, writeConfig } from "./helpers.js";

let nodes = [];
let clientConfig;

/** Servers A and B with one montybase.json (same keys), each holding where/node = its name. */
beforeEach(async () => {
  const root = await tempDir();
  await writeConfig(root);
  nodes = await Promise.all(
    ["a", "b"].map(async (name) => {
      const dir = join(root, name);
      await mkdir(dir);
      await copyFile(join(root, "montybase.json"), join(dir, "montybase.json"));
      return Server.start({ dir });
    }),
  );
  for (const [node, name] of [[nodes[0], "a"], [nodes[1], "b"]]) {
    const admin = new Montybase(await node.adminConfig(), { WebSocket, endpoint: node.endpoint });
    await doc(admin, "where", "node").set({ name });
    await admin.close();
  }
  clientConfig = await nodes[0].clientConfig();
});

afterEach(async () => {
  await Promise.all(nodes.map((node) => node.cleanup()));
});

/** SIGKILL a server by its pid, as a crash, and wait until it is gone. */
async function kill(node) {
  const exited = new Promise((resolve) => node.child.once("exit", resolve));
  process.kill(node.child.pid, "SIGKILL");
  await exited;
}

/** A port on 127.0.0.1 that nothing listens on (it was free a moment ago). */
async function freePort() {
  const probe = createServer();
  await new Promise((resolve) => probe.listen(0, "127.0.0.1", resolve));
  const { port } = probe.address();
  await new Promise((resolve) => probe.close(resolve));
  return port;
}

async function answeringNode(db) {
  return (await doc(db, "where", "node").get()).name;
}

test("a call after the first server is killed succeeds on the next", async () => {
  const [a, b] = nodes;
  const db = new Montybase({ ...clientConfig, endpoint: [a.endpoint, b.endpoint] }, { WebSocket });
  try {
    assert.equal(await answeringNode(db), "a");
    await kill(a);
    assert.equal(await answeringNode(db), "b"); // a read lost with A is asked again, on B
    await doc(db, "scores").add({ score: 7 }, "after");
    assert.equal(db.endpoint, b.endpoint);
    const admin = new Montybase(await b.adminConfig(), { WebSocket, endpoint: b.endpoint });
    assert.deepEqual(await doc(admin, "scores", "after").get(), { score: 7 });
    await admin.close();
  } finally {
    await db.close();
  }
});

test("a read in flight when its server dies is answered by the next; a write in flight is CONNECTION_LOST", async () => {
  const [a, b] = nodes;
  const db = new Montybase({ ...clientConfig, endpoint: [a.endpoint, b.endpoint] }, { WebSocket });
  try {
    assert.equal(await answeringNode(db), "a");
    process.kill(a.child.pid, "SIGSTOP"); // A takes the requests and answers none
    const reading = answeringNode(db);
    const writing = doc(db, "scores").add({ score: 1 }, "lost").then(() => "answered", (error) => error);
    await delay(300);
    await kill(a);
    assert.equal(await reading, "b");
    assert.ok((await writing) instanceof ConnectionLostError); // A may have applied it: not sent again
  } finally {
    await db.close();
  }
});

test("a listener gets a fresh full snapshot from the next server", async () => {
  const [a, b] = nodes;
  const db = new Montybase({ ...clientConfig, endpoint: [a.endpoint, b.endpoint] }, { WebSocket });
  const got = new Snapshots();
  const stop = doc(db, "where").onSnapshot(got.callback, got.onError);
  try {
    assert.deepEqual((await got.next()).docs, [{ id: "node", value: { name: "a" } }]);
    await kill(a);
    assert.deepEqual((await got.next()).docs, [{ id: "node", value: { name: "b" } }]);
    const admin = new Montybase(await b.adminConfig(), { WebSocket, endpoint: b.endpoint });
    await doc(admin, "where", "later").set({ name: "b" });
    await admin.close();
    assert.deepEqual((await got.next()).docs.map((item) => item.id), ["later", "node"]);
    assert.deepEqual(got.errors, []);
  } finally {
    stop();
    got.dispose();
    await db.close();
  }
});

test("a session the next server does not know ends, and the handle goes on signed out", async () => {
  const [a, b] = nodes; // separate storage: B has no record of A's sessions
  const db = new Montybase({ ...clientConfig, endpoint: [a.endpoint, b.endpoint] }, { WebSocket });
  try {
    await db.signUp("player@example.org", "correct horse battery");
    await kill(a);
    assert.equal(await answeringNode(db), "b"); // B answers the refused resume before this read
    assert.equal(db.currentUser, null);
  } finally {
    await db.close();
  }
});

test("a refused connect goes on with the next endpoint; all away is CONNECTION_LOST", async () => {
  const [, b] = nodes;
  const nobody = `ws://127.0.0.1:${await freePort()}`;
  const db = new Montybase({ ...clientConfig, endpoint: [nobody, b.endpoint] }, { WebSocket });
  assert.equal(await answeringNode(db), "b");
  await db.close();
  const away = new Montybase({ ...clientConfig, endpoint: [nobody, `ws://127.0.0.1:${await freePort()}`] }, { WebSocket });
  await assert.rejects(answeringNode(away), ConnectionLostError);
  await away.close();
});

test("an empty endpoint list or a bad entry is INVALID_ARGUMENT naming it", () => {
  for (const [endpoint, path, said] of [
    [[], "/endpoint", "non-empty"],
    [["ws://127.0.0.1:1", "ftp://127.0.0.1:2"], "/endpoint/1", '"ftp://127.0.0.1:2" is not a ws://, wss://, http:// or https:// address'],
    [["ws://127.0.0.1:1", 7], "/endpoint/1", "7 is not of type 'string'"],
    ["127.0.0.1:8765", "/endpoint", "is not a ws://"],
  ]) {
    assert.throws(
      () => new Montybase({ ...clientConfig, endpoint }, { WebSocket }),
      (error) => error instanceof InvalidArgumentError && error.data.path === path && error.message.includes(`${path}: `) && error.message.includes(said),
      JSON.stringify(endpoint),
    );
  }
});

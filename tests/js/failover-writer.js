// A writer on the JS client for tests/test_postgres.py's failover test, run as a child process:
//
//     node tests/js/failover-writer.js CLIENT_CONFIG NAME
//
// It signs up NAME@example.org through the config's endpoint list, listens to the `board`
// collection, prints `ready`, then commits one batch after the other (a new document
// acked/NAME-N, board/NAME = {n: N}, counters/total.n + 1) and prints `acked KEY` once a batch is
// acknowledged, `failed KEY REASON` when it is not. It reads commands on stdin, one a line:
// `pause` (it prints `paused` once no batch is in flight), `state` (once the listener's latest
// snapshot equals the collection read now, or after 10 s, it prints `state {endpoint, user,
// snapshot, read}`), `go`, and `stop` (it closes the handle and exits).

import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { setTimeout as delay } from "node:timers/promises";
import WebSocket from "ws";

import { Montybase, doc, increment } from "../../js_client/node.js";

const [configPath, name] = process.argv.slice(2);
const say = (line) => process.stdout.write(`${line}\n`);

// timeout: no call waits for an answer longer than 20 s (a hung client fails the test, never blocks it)
const db = new Montybase(JSON.parse(readFileSync(configPath, "utf8")), { WebSocket, timeout: 20_000 });
await db.signUp(`${name}@example.org`, "correct horse battery");
let latest = null;
const stopListening = doc(db, "board").onSnapshot(
  (snapshot) => (latest = snapshot.docs),
  (error) => say(`listener-failed ${error.reason}`),
);
await stopListening.ready;

let state = "writing"; // or "paused", "stopping"
let written = null; // settles when the write loop has no batch in flight
const commands = createInterface({ input: process.stdin });
commands.on("line", async (command) => {
  if (command === "go") {
    state = "writing";
    written = write();
  } else if (command === "pause") {
    state = "paused";
    await written;
    say("paused");
  } else if (command === "state") {
    say(`state ${JSON.stringify(await settled())}`);
  } else if (command === "stop") {
    state = "stopping";
    await written;
    stopListening();
    await db.close();
    process.exit(0);
  }
});

/** Once the listener's latest snapshot equals the collection as read now (or 10 s passed): both. */
async function settled() {
  let read = null;
  for (let tries = 0; tries < 200; tries++) {
    try {
      read = await doc(db, "board").stream();
    } catch (error) {
      read = `read failed: ${error.reason}`;
    }
    if (JSON.stringify(read) === JSON.stringify(latest)) break;
    await delay(50);
  }
  return { endpoint: db.endpoint, user: db.currentUser, snapshot: latest, read };
}

let n = 0;
async function write() {
  while (state === "writing") {
    const key = `${name}-${++n}`;
    try {
      await db
        .batch()
        .set(doc(db, "acked", key), { by: name, n })
        .set(doc(db, "board", name), { n })
        .update(doc(db, "counters", "total"), { n: increment(1) })
        .commit();
      say(`acked ${key}`);
    } catch (error) {
      say(`failed ${key} ${error.reason}`);
    }
    await delay(10);
  }
}

say("ready");
written = write();

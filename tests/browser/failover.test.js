// Headless Chromium: a page whose client config lists two servers with the same keys keeps
// working when the first is killed by its pid: its next read is answered by the second, and its
// listener gets a fresh full snapshot from there.

import assert from "node:assert/strict";
import { copyFile, mkdir } from "node:fs/promises";
import { join } from "node:path";
import { after, before, test } from "node:test";
import WebSocket from "ws";

import { Montybase, doc } from "../../js_client/index.js";
import { Server, tempDir, writeConfig } from "../js/helpers.js";
import { launchChromium, openPage } from "./chromium.js";

let nodes = [];
let browser;

before(async () => {
  const root = await tempDir();
  await writeConfig(root);
  const start = async (name) => {
    const dir = join(root, name);
    await mkdir(dir);
    await copyFile(join(root, "montybase.json"), join(dir, "montybase.json"));
    const node = await Server.start({ dir });
    const admin = new Montybase(await node.adminConfig(), { WebSocket, endpoint: node.endpoint });
    await doc(admin, "where", "node").set({ name });
    await admin.close();
    return node;
  };
  [nodes, browser] = await Promise.all([Promise.all([start("a"), start("b")]), launchChromium()]);
});

after(async () => {
  await browser?.close();
  await Promise.all(nodes.map((node) => node.cleanup()));
});

test("a page goes on with the next server when the first is killed; its listener resyncs there", async () => {
  const [a, b] = nodes;
  const { page, close } = await openPage(browser, `${b.http}/client-config.json`); // served by the one that stays
  const first = await page.evaluate(async (endpoints) => {
    const { Montybase, doc } = await import("/montybase.js");
    const config = await (await fetch("/client-config.json")).json();
    window.db = new Montybase({ ...config, endpoint: endpoints });
    window.names = [];
    doc(window.db, "where").onSnapshot((snapshot) => window.names.push(snapshot.docs.map((item) => item.value.name)));
    window.read = async () => (await doc(window.db, "where", "node").get()).name;
    return window.read();
  }, [a.endpoint, b.endpoint]);
  assert.equal(first, "a");
  const exited = new Promise((resolve) => a.child.once("exit", resolve));
  process.kill(a.child.pid, "SIGKILL");
  await exited;
  assert.equal(await page.evaluate(() => window.read()), "b");
  await page.waitForFunction(() => JSON.stringify(window.names.at(-1)) === '["b"]', null, { timeout: 10_000 });
  assert.deepEqual(await page.evaluate(() => window.names), [["a"], ["b"]]);
  await page.evaluate(() => window.db.close());
  await close();
});

// Headless Chromium: pages served by `python3 -m server` (static folder examples/leaderboard)
// load the JS client from the server, connect with /client-config.json, write and read; the
// live top 10 (onSnapshot) of two pages follows a page's scores and a Python writer's; a Python
// program and a page share a collection; the page shows when the server is down, and says so in
// words a player reads.

import assert from "node:assert/strict";
import { writeFile } from "node:fs/promises";
import { join, relative } from "node:path";
import { after, before, test } from "node:test";

import { ROOT, Server, readJson, runPython, tempDir, unique, writeConfig } from "../js/helpers.js";
import { launchChromium, openPage as openBrowserPage } from "./chromium.js";

let server;
let browser;
let clientConfigPath;

before(async () => {
  const dir = await tempDir();
  await writeConfig(dir, { static: relative(dir, join(ROOT, "examples", "leaderboard")) });
  [server, browser] = await Promise.all([Server.start({ dir }), launchChromium()]);
  // What a web page gets is what a Python program with the client key uses too.
  clientConfigPath = join(dir, "client-config.json");
  await writeFile(clientConfigPath, await (await fetch(`${server.http}/client-config.json`)).text());
});

after(async () => {
  await browser?.close();
  await server?.cleanup();
});

function openPage(path = "/") {
  return openBrowserPage(browser, `${server.http}${path}`);
}

test("the server serves the client, its config and the static folder", async () => {
  const entry = await fetch(`${server.http}/montybase.js`);
  assert.equal(entry.status, 200);
  assert.match(entry.headers.get("content-type"), /javascript/);
  assert.match(await entry.text(), /\/montybase\/index\.js/);
  for (const file of ["index.js", "channel.js", "connection.js", "errors.js", "listen.js", "refs.js", "transforms.js", "values.js"]) {
    assert.equal((await fetch(`${server.http}/montybase/${file}`)).status, 200, file);
  }
  const config = await (await fetch(`${server.http}/client-config.json`)).json();
  assert.equal(config.endpoint, server.endpoint);
  assert.ok(config.apiKey && config.serverKey && !config.adminKey);
  assert.match(await (await fetch(`${server.http}/`)).text(), /Click fast/);
});

test("a page loads the client from the server, connects with the client config, adds and reads", async () => {
  const { page, errors, close } = await openPage("/");
  const collection = unique("browser");
  const result = await page.evaluate(async (name) => {
    const { Montybase, doc, increment, NotFoundError, InvalidArgumentError } = await import("/montybase.js");
    const db = new Montybase(await (await fetch("/client-config.json")).json());
    const id = await doc(db, name).add({ name: "Amor", score: 100 });
    await doc(db, name, id).update({ score: increment(5), "stats.games": 1 });
    await doc(db, name).add({ name: "Zed", score: 90 }, "zed");
    const top = await doc(db, name).orderBy("score", "desc").limit(10).stream();
    const missing = await doc(db, name, "ghost").update({ a: 1 }).catch((error) => [error instanceof NotFoundError, error.code, error.reason]);
    const bad = await doc(db, name).add({ a: NaN }).catch((error) => [error instanceof InvalidArgumentError, error.message]);
    const polluted = await doc(db, name, "constructor").set({ prototype: { polluted: true } }).then(() => doc(db, name).get());
    const clean = {}.polluted === undefined && polluted instanceof Map && Object.hasOwn(polluted.get("constructor"), "prototype");
    await db.close();
    const config = await (await fetch("/client-config.json")).json();
    const refusals = [];
    for (const wrong of [{ ...config, apiKey: "mb-wrong-key-0123456789" }, { ...config, serverKey: "BKVtJIR-L0JBgvyCiKYjl9T3yu3SL0NBIGI1pRmc4VKkx7Nw0aM0UjQMwb7OiZ7PRPBxpozUjEGy-FEc3YS4xXk" }]) {
      const other = new Montybase(wrong);
      refusals.push(await doc(other, name, id).get().then(() => "accepted", (error) => error.reason));
      await other.close();
    }
    return { id, top, missing, bad, clean, refusals, secure: window.isSecureContext };
  }, collection);
  assert.equal(result.id.length, 20);
  assert.deepEqual(result.top, [
    { id: result.id, value: { name: "Amor", score: 105, stats: { games: 1 } } },
    { id: "zed", value: { name: "Zed", score: 90 } },
  ]);
  assert.deepEqual(result.missing, [true, -32002, "NOT_FOUND"]);
  assert.equal(result.bad[0], true);
  assert.match(result.bad[1], /^\/value\/a: NaN/);
  assert.equal(result.clean, true);
  assert.deepEqual(result.refusals, ["UNAUTHENTICATED", "UNAUTHENTICATED"]);
  assert.equal(result.secure, true);
  assert.deepEqual(errors, []);
  await close();
});

test("a page whose Origin the server does not allow gets UNAVAILABLE, as Python does; an address where nothing listens CONNECTION_LOST", async () => {
  const dir = await tempDir();
  await writeConfig(dir, { origins: ["https://game.example"] });
  const guarded = await Server.start({ dir });
  try {
    // The page comes from the server (GETs are not checked); its WebSocket carries its Origin.
    const { page, close } = await openBrowserPage(browser, `${guarded.http}/client-config.json`);
    const outcome = await page.evaluate(async () => {
      const { Montybase, doc } = await import("/montybase.js");
      const config = await (await fetch("/client-config.json")).json();
      const attempt = async (endpoint) => {
        const db = new Montybase({ ...config, endpoint });
        const got = await doc(db, "c", "x").get().then(() => ["accepted"], (error) => [error.name, error.reason, error.message]);
        await db.close();
        return got;
      };
      return { refused: await attempt(config.endpoint), unreachable: await attempt("ws://127.0.0.1:9"), origin: location.origin };
    });
    assert.deepEqual(outcome.refused.slice(0, 2), ["UnavailableError", "UNAVAILABLE"]);
    assert.match(outcome.refused[2], /refused the WebSocket connection/);
    assert.deepEqual(outcome.unreachable.slice(0, 2), ["ConnectionLostError", "CONNECTION_LOST"]);
    assert.equal(outcome.origin, guarded.http);
    await close();
  } finally {
    await guarded.cleanup();
  }
});

test("the channel vectors hold in Chromium's WebCrypto too", async () => {
  const vectors = await readJson("tests", "cases", "channel.json");
  const { page, close } = await openPage("/");
  const outcome = await page.evaluate(async (vectors) => {
    const channel = await import("/montybase/channel.js");
    const out = [];
    for (const vector of vectors.cases) {
      const fromHex = (hex) => Uint8Array.from(hex.match(/../g) ?? [], (pair) => parseInt(pair, 16));
      let ephemeral;
      if (vector.clientEphemeral) {
        const curve = { name: "ECDH", namedCurve: "P-256" };
        ephemeral = {
          privateKey: await crypto.subtle.importKey("jwk", vector.clientEphemeral.jwk, curve, true, ["deriveBits"]),
          publicKey: (await channel.importPoint(vector.clientEphemeral.public, "e")).key,
        };
      }
      const pinned = vector.mode === "nk" ? vectors.server.serverKey.public : null;
      const handshake = new channel.ClientHandshake(vector.kid, vector.key, pinned, { nonce: fromHex(vector.nc), ephemeral });
      const hello = await handshake.hello();
      const { params, session } = await handshake.finish(vector.helloResult);
      handshake.confirm(vector.authResult);
      const sealed = [];
      for (const record of vector.records.c2s) sealed.push(channel.toHex(await session.seal(fromHex(record.plaintext))));
      const opened = [];
      for (const record of vector.records.s2c) opened.push(channel.toHex(await session.open(fromHex(record.record))));
      const refused = [];
      for (const bad of vector.badResults) {
        const again = new channel.ClientHandshake(vector.kid, vector.key, pinned, { nonce: fromHex(vector.nc), ephemeral });
        await again.hello();
        refused.push(await again.finish(bad.result).then(() => false, (error) => error.reason === "UNAUTHENTICATED"));
      }
      out.push({ hello, params, sealed, opened, refused });
    }
    return out;
  }, vectors);
  for (const [index, vector] of vectors.cases.entries()) {
    const got = outcome[index];
    assert.deepEqual(got.hello, vector.hello, vector.name);
    assert.deepEqual(got.params, vector.auth, vector.name);
    assert.deepEqual(got.sealed, vector.records.c2s.map((r) => r.record), vector.name);
    assert.deepEqual(got.opened, vector.records.s2c.map((r) => r.plaintext), vector.name);
    assert.ok(got.refused.length > 0 && got.refused.every(Boolean), vector.name);
  }
  await close();
});

async function playAndPost(page, name, clicks) {
  await page.waitForSelector("body[data-ready=true]");
  await page.click("#start");
  await page.click("#target"); // one real click, then the rest as fast as a script can
  await page.evaluate((n) => {
    for (let i = 0; i < n; i++) document.getElementById("target").click();
  }, clicks - 1);
  await page.waitForSelector("#post:not([hidden])", { timeout: 10_000 });
  const score = Number(await page.textContent("#score"));
  assert.equal(score, clicks);
  await page.fill("#name", name);
  await page.click("#submit");
  await page.waitForSelector("#top li.mine");
  await page.waitForSelector("#post", { state: "hidden" });
  return score;
}

test("the leaderboard: a posted score shows live in the top 10 of this page and of a second page", async () => {
  const collection = unique("scores");
  const first = await openPage(`/?seconds=1&collection=${collection}`);
  const score = await playAndPost(first.page, "Amor <b>bold</b>", 5);
  const mine = await first.page.textContent("#top li.mine");
  assert.equal(mine, `Amor <b>bold</b> — ${score}`); // a name is text, never markup
  assert.equal(await first.page.locator("#top b").count(), 0);

  const second = await openPage(`/?seconds=1&collection=${collection}`);
  await second.page.waitForSelector("body[data-ready=true]");
  const top = await second.page.locator("#top li").allTextContents();
  assert.ok(top.length >= 1 && top.length <= 10);
  assert.ok(top.includes(`Amor <b>bold</b> — ${score}`), JSON.stringify(top));

  // The second page plays better; the first sees it at once, with no refresh.
  const better = await playAndPost(second.page, "Toriel", 8);
  await first.page.waitForFunction((text) => [...document.querySelectorAll("#top li")].some((li) => li.textContent === text), `Toriel — ${better}`);
  const order = await first.page.locator("#top li").allTextContents();
  const scores = order.map((line) => Number(line.split(" — ").at(-1)));
  assert.deepEqual(scores, [...scores].sort((a, b) => b - a));
  assert.deepEqual(first.errors, []);
  assert.deepEqual(second.errors, []);
  await first.close();
  await second.close();
});

test("a Python program and a page write to and read the same collection", async () => {
  const collection = unique("shared");
  const python = (code) =>
    runPython(
      `import json\nfrom python_client import Montybase, doc\ndb = Montybase(api=${JSON.stringify(server.endpoint)}, config=${JSON.stringify(clientConfigPath)})\n${code}\ndb.close()`,
    );
  await python(`doc(db, ${JSON.stringify(collection)}).add({"name": "python", "score": 77}, key="py")`);

  const { page, errors, close } = await openPage(`/?collection=${collection}`);
  await page.waitForSelector("body[data-ready=true]");
  assert.deepEqual(await page.locator("#top li").allTextContents(), ["python — 77"]);
  const fromPage = await page.evaluate(async (name) => {
    const { Montybase, doc } = await import("/montybase.js");
    const db = new Montybase(await (await fetch("/client-config.json")).json());
    await doc(db, name).add({ name: "page", score: 88 }, "js");
    await doc(db, name, "py").update({ seenBy: "page" });
    const top = await doc(db, name).orderBy("score", "desc").stream();
    await db.close();
    return top;
  }, collection);
  assert.deepEqual(fromPage, [
    { id: "js", value: { name: "page", score: 88 } },
    { id: "py", value: { name: "python", score: 77, seenBy: "page" } },
  ]);

  const seen = JSON.parse(await python(`print(json.dumps(doc(db, ${JSON.stringify(collection)}).order_by("score", "desc").stream()))`));
  assert.deepEqual(seen, fromPage);
  await page.waitForFunction(() => document.querySelectorAll("#top li").length === 2);
  assert.deepEqual(await page.locator("#top li").allTextContents(), ["page — 88", "python — 77"]);
  assert.deepEqual(errors, []);
  await close();
});

test("two pages' live top 10 follow a Python writer, with no refresh", async () => {
  const collection = unique("live");
  const pages = [await openPage(`/?collection=${collection}`), await openPage(`/?collection=${collection}`)];
  for (const { page } of pages) await page.waitForSelector("body[data-ready=true]");
  // Changes seen by each page: its top 10 is rebuilt from snapshots, never reloaded.
  for (const { page } of pages) {
    await page.evaluate(() => {
      window.renders = 0;
      new MutationObserver(() => (window.renders += 1)).observe(document.getElementById("top"), { childList: true });
    });
  }
  const code = [
    "import json, random, time",
    "from python_client import Montybase, doc",
    `db = Montybase(api=${JSON.stringify(server.endpoint)}, config=${JSON.stringify(clientConfigPath)})`,
    `scores = doc(db, ${JSON.stringify(collection)})`,
    "rng = random.Random(7)",
    "for i in range(40):",
    "    key = f'p{rng.randrange(15):02d}'",
    "    if i > 20 and rng.random() < 0.15:",
    "        scores.delete(key)",
    "    else:",
    "        scores.set({'name': f'py {key}', 'score': rng.randrange(1000)}, key=key)",
    "    time.sleep(0.01)",
    "print(json.dumps(scores.order_by('score', 'desc').limit(10).stream()))",
    "db.close()",
  ].join("\n");
  const top = JSON.parse(await runPython(code));
  assert.equal(top.length, 10);
  const expected = top.map(({ value }) => `${value.name} — ${value.score}`);
  for (const { page } of pages) {
    await page.waitForFunction(
      (want) => JSON.stringify([...document.querySelectorAll("#top li")].map((li) => li.textContent)) === JSON.stringify(want),
      expected,
      { timeout: 10_000 },
    );
    assert.ok((await page.evaluate(() => window.renders)) > 3, "the top 10 changed only a few times");
  }
  for (const { errors, close } of pages) {
    assert.deepEqual(errors, []);
    await close();
  }
});

test("the badge turns offline while the server is down and live when it is back; a post meanwhile says so plainly", async () => {
  const dir = await tempDir();
  await writeConfig(dir, { static: relative(dir, join(ROOT, "examples", "leaderboard")) });
  const own = await Server.start({ dir }); // its own server: this test stops it
  try {
    const { page, close } = await openBrowserPage(browser, `${own.http}/?seconds=1`);
    await page.waitForSelector("body[data-ready=true]");
    await page.waitForSelector("body[data-connection=live]");
    assert.equal(await page.textContent("#connection"), "live");
    await page.click("#start");
    await page.click("#target");
    await page.waitForSelector("#post:not([hidden])", { timeout: 10_000 });

    await own.stop();
    await page.waitForSelector("body[data-connection=offline]", { timeout: 15_000 });
    assert.match(await page.textContent("#connection"), /offline/);
    await page.fill("#name", "Amor");
    await page.click("#submit");
    await page.waitForSelector("#status.error", { timeout: 15_000 });
    const said = await page.textContent("#status");
    assert.match(said, /cannot be reached/);
    assert.doesNotMatch(said, /CONNECTION_LOST|UNAVAILABLE|code \d+/);

    await own.restart(); // the same port and folder: the page reconnects by itself
    await page.waitForSelector("body[data-connection=live]", { timeout: 15_000 });
    assert.equal(await page.textContent("#connection"), "live");
    await close();
  } finally {
    await own.cleanup();
  }
});

// Headless Chromium: the highscores example of README.md "Securing a public app", with its rules
// (read from the README itself) in the server's montybase.json and only the client key in the
// pages. Posting a valid score works and shows live; overwriting, deleting or posting a
// malformed score fails with the right error, writes nothing and tells no listener; profiles
// are their owner's alone; the eleventh score of a minute is RATE_LIMITED; the leaderboard
// example tells its player why a score was refused.

import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { join, relative } from "node:path";
import { after, before, test } from "node:test";

import { ROOT, Server, tempDir, writeConfig } from "../js/helpers.js";
import { launchChromium, openPage as openBrowserPage } from "./chromium.js";

/** The `rules` of README.md "Securing a public app" (the block with "scores"). */
async function readmeRules() {
  const readme = await readFile(join(ROOT, "README.md"), "utf8");
  const section = readme.split("## Securing a public app")[1].split("\n## ")[0];
  const blocks = [...section.matchAll(/```json\n([\s\S]*?)```/g)].map((match) => match[1]);
  const block = blocks.find((text) => text.includes('"scores"'));
  assert.ok(block, "README.md has no highscores rules");
  return JSON.parse(`{${block}}`).rules;
}

let server;
let browser;
let rules;

before(async () => {
  rules = await readmeRules();
  const dir = await tempDir();
  await writeConfig(dir, { rules, storageBucket: ":memory:", static: relative(dir, join(ROOT, "examples", "leaderboard")) });
  [server, browser] = await Promise.all([Server.start({ dir }), launchChromium()]);
});

after(async () => {
  await browser?.close();
  await server?.cleanup();
});

function openPage(path = "/") {
  return openBrowserPage(browser, `${server.http}${path}`, { ready: "body[data-ready=true]" });
}

async function playAndPost(page, name, clicks) {
  await page.click("#start");
  await page.evaluate((n) => {
    for (let i = 0; i < n; i++) document.getElementById("target").click();
  }, clicks);
  await page.waitForSelector("#post:not([hidden])", { timeout: 10_000 });
  await page.fill("#name", name);
  await page.click("#submit");
}

test("the example's recommended rules are the README's scores rule, and its form fits them", async () => {
  const example = await readFile(join(ROOT, "examples", "leaderboard", "README.md"), "utf8");
  const recommended = JSON.parse(example.split("```json")[1].split("```")[0]).rules;
  assert.deepEqual(recommended, { scores: rules.scores });
  const html = await readFile(join(ROOT, "examples", "leaderboard", "index.html"), "utf8");
  assert.match(html, /id="name"[^>]*maxlength="32"/);
});

test("with the client key: a valid score is posted and shown live; overwrites, deletes and malformed scores are refused", async () => {
  const watcher = await openPage("/?seconds=1");
  const player = await openPage("/?seconds=1");
  await playAndPost(player.page, "Amor", 4);
  await player.page.waitForSelector("#top li.mine");
  await watcher.page.waitForFunction(() => [...document.querySelectorAll("#top li")].some((li) => li.textContent === "Amor — 4"));

  const outcome = await player.page.evaluate(async () => {
    const { Montybase, doc } = await import("/montybase.js");
    const config = await (await fetch("/client-config.json")).json();
    if (config.adminKey) throw new Error("a page got the admin key");
    const db = new Montybase(config);
    const scores = doc(db, "scores");
    const seen = [];
    const stop = scores.onSnapshot((snapshot) => seen.push(snapshot));
    await stop.ready;
    const refused = async (promise) =>
      promise.then(
        () => "accepted",
        (error) => ({ name: error.name, code: error.code, reason: error.reason, data: error.data }),
      );
    const id = await scores.add({ name: "Valid", score: 42 });
    const before = await scores.count();
    const snapshotsBefore = seen.length;
    const out = {
      id,
      overwrite: await refused(doc(db, "scores", id).set({ name: "Valid", score: 999999 })),
      update: await refused(doc(db, "scores", id).update({ score: 999999 })),
      addTaken: await refused(scores.add({ name: "Valid", score: 999999 }, id)),
      delete: await refused(doc(db, "scores", id).delete()),
      deleteAll: await refused(scores.delete()),
      negative: await refused(scores.add({ name: "Neg", score: -1 })),
      fraction: await refused(scores.add({ name: "Frac", score: 2.5 })),
      text: await refused(scores.add({ name: "Text", score: "high" })),
      extra: await refused(scores.add({ name: "Extra", score: 1, admin: true })),
      longName: await refused(scores.add({ name: "x".repeat(33), score: 1 })),
      noName: await refused(scores.add({ score: 1 })),
    };
    out.countUnchanged = (await scores.count()) === before;
    out.stored = await doc(db, "scores", id).get();
    // A valid score as a marker: the listener heard nothing of the refused writes before it.
    const marker = await scores.add({ name: "Marker", score: 1 });
    while (!seen.slice(snapshotsBefore).length) await new Promise((resolve) => setTimeout(resolve, 10));
    out.heard = seen.slice(snapshotsBefore).map((s) => s.changes.map((c) => [c.type, c.id === marker ? "marker" : c.id]));
    stop();
    await db.close();
    return out;
  });
  // An error about a stored document names it in data.document (a list of segments).
  const denied = (document) => ({ name: "PermissionDeniedError", code: -32001, reason: "PERMISSION_DENIED", data: { document } });
  assert.deepEqual(outcome.overwrite, denied(["scores", outcome.id]));
  assert.deepEqual(outcome.update, denied(["scores", outcome.id]));
  assert.deepEqual(outcome.delete, denied(["scores", outcome.id]));
  assert.deepEqual(outcome.deleteAll, denied(["scores"]));
  assert.deepEqual(outcome.addTaken, { name: "AlreadyExistsError", code: -32003, reason: "ALREADY_EXISTS", data: { document: ["scores", outcome.id] } });
  const validation = (path, keyword) => {
    const error = outcome[path];
    assert.equal(error.name, "ValidationError", path);
    assert.equal(error.code, -32004);
    assert.equal(error.reason, "VALIDATION_FAILED");
    assert.deepEqual(error.data.errors.map((e) => [e.path, e.keyword]), [keyword], path);
  };
  validation("negative", ["/score", "minimum"]);
  validation("fraction", ["/score", "type"]);
  validation("text", ["/score", "type"]);
  validation("extra", ["/", "additionalProperties"]);
  validation("longName", ["/name", "maxLength"]);
  validation("noName", ["/", "required"]);
  assert.equal(outcome.countUnchanged, true);
  assert.deepEqual(outcome.stored, { name: "Valid", score: 42 });
  assert.deepEqual(outcome.heard, [[["added", "marker"]]]);
  for (const { errors, close } of [watcher, player]) {
    assert.deepEqual(errors, []);
    await close();
  }
});

test("profiles: the owner writes its own, joined is set by the server and immutable, nobody else may edit it", async () => {
  const { page, errors, close } = await openPage("/");
  const outcome = await page.evaluate(async () => {
    const { Montybase, doc } = await import("/montybase.js");
    const config = await (await fetch("/client-config.json")).json();
    const [amor, other] = [new Montybase(config), new Montybase(config)];
    const reason = (promise) => promise.then(() => "allowed", (error) => error.reason);
    const anonymous = await reason(doc(amor, "profiles", "someone").set({ name: "Nobody" }));
    const me = await amor.signUp(`amor-${crypto.randomUUID()}@example.org`, "correct horse battery");
    const current = amor.currentUser;
    await doc(amor, "profiles", me.uid).set({ name: "Amor", joined: 1 });
    const mine = await doc(other, "profiles", me.uid).get(); // read: public
    await doc(amor, "profiles", me.uid).update({ name: "Amor A." });
    const joined = await doc(amor, "profiles", me.uid)
      .update({ joined: 2 })
      .then(() => "allowed", (error) => [error.reason, [...new Set(error.data.errors.map((e) => `${e.path} ${e.keyword}`))]]);
    await other.signUp(`other-${crypto.randomUUID()}@example.org`, "correct horse battery");
    const theirs = await reason(doc(other, "profiles", me.uid).update({ name: "Mallory" }));
    const theirDelete = await reason(doc(other, "profiles", me.uid).delete());
    await amor.signOut();
    const signedOut = [amor.currentUser, await reason(doc(amor, "profiles", me.uid).update({ name: "Ghost" }))];
    const final = await doc(other, "profiles", me.uid).get();
    await amor.close();
    await other.close();
    return { anonymous, me, current, mine, joined, theirs, theirDelete, signedOut, final, stored: localStorage.length + sessionStorage.length };
  });
  assert.equal(outcome.anonymous, "PERMISSION_DENIED");
  assert.deepEqual(outcome.current, outcome.me);
  assert.equal(outcome.mine.name, "Amor");
  assert.ok(Number.isInteger(outcome.mine.joined) && outcome.mine.joined > 1_000_000, "joined is the server's time, not the client's");
  assert.deepEqual(outcome.joined, ["VALIDATION_FAILED", ["/joined immutable"]]);
  assert.equal(outcome.theirs, "PERMISSION_DENIED");
  assert.equal(outcome.theirDelete, "PERMISSION_DENIED");
  assert.deepEqual(outcome.signedOut, [null, "PERMISSION_DENIED"]);
  assert.deepEqual(outcome.final, { name: "Amor A.", joined: outcome.mine.joined });
  assert.equal(outcome.stored, 0, "the session went to web storage");
  assert.deepEqual(errors, []);
  await close();
});

test("the eleventh score of a minute is RATE_LIMITED, and the example tells its player", async () => {
  const { page, errors, close } = await openPage("/?seconds=1");
  const outcome = await page.evaluate(async () => {
    const { Montybase, doc } = await import("/montybase.js");
    const db = new Montybase(await (await fetch("/client-config.json")).json());
    // Earlier tests posted a few scores from this address: post until the bucket is empty.
    for (let i = 0; i < 12; i++) {
      const error = await doc(db, "scores").add({ name: `Spam ${i}`, score: i }).then(() => null, (e) => e);
      if (error) {
        await db.close();
        return { after: i, name: error.name, code: error.code, reason: error.reason, data: error.data };
      }
    }
    await db.close();
    return { after: 12 };
  });
  assert.ok(outcome.after < 11, `${outcome.after} creates in a row were accepted`);
  assert.equal(outcome.name, "RateLimitedError");
  assert.equal(outcome.code, -32006);
  assert.deepEqual(Object.keys(outcome.data), ["retryAfterMs"]);
  assert.ok(outcome.data.retryAfterMs > 0 && outcome.data.retryAfterMs <= 60_000);
  await playAndPost(page, "Late", 3);
  await page.waitForFunction(() => document.getElementById("status").classList.contains("error"));
  assert.match(await page.textContent("#status"), /Too many scores: try again in \d+ s\./);
  assert.equal(await page.isHidden("#post"), false); // the player may try again later
  assert.deepEqual(errors, []);
  await close();
});

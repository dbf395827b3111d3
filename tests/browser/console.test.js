// Headless Chromium: the admin console (/admin/) against a real server. An admin account (made
// by `montybase admins add`) signs in, pages through a collection of 10,000 documents, edits a
// document a Python client then reads, sees a change made from Python appear live (highlighted)
// in the open table and in a query's results, is warned when a document it opened changed
// elsewhere, and gets a refused edit's error at its field. A user account and an anonymous page
// get nothing. In the other views it signs accounts out, disables and deletes them, applies a rule
// that refuses a client key at once, and watches the server's numbers move under a write load.
// Screenshots of each view land in test-artifacts/console/ (gitignored).

import assert from "node:assert/strict";
import { mkdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { ROOT, Server, addAdmin, runAdminPython, tempDir, writeConfig } from "../js/helpers.js";
import { launchChromium, openPage } from "./chromium.js";

const ADMIN = "ops@console.example";
const PASSWORD = "console password 1";
const SHOTS = join(ROOT, "test-artifacts", "console");
const PEOPLE = 10_000;
// Client keys may use "notes" only: "people" and "items" are the admins' alone.
const RULES = { notes: { read: "public", write: "public" } };

let server;
let browser;

/** Python with an admin handle `db` on the server (the admin key, as a server-side program has it). */
function python(code) {
  return runAdminPython(server, code);
}

before(async () => {
  const dir = await tempDir("montybase-console-");
  await writeConfig(dir, { rules: RULES, projectName: "console-tests" });
  await addAdmin(dir, ADMIN, PASSWORD);
  [server, browser] = await Promise.all([Server.start({ dir }), launchChromium()]);
  await python(`
teams = ["red", "green", "blue", "gold"]
for start in range(0, ${PEOPLE}, 500):
    batch = db.batch()
    for n in range(start, start + 500):
        batch.set(doc(db, "people", f"p{n:05d}"), {"name": f"Person {n}", "n": n, "team": teams[n % 4], "tags": ["a", "b"][: n % 3]})
    batch.commit()
doc(db, "items", "one").set({"title": "One", "price": 3})
`);
  await mkdir(SHOTS, { recursive: true });
});

after(async () => {
  await browser?.close();
  await server?.cleanup();
});

async function open(viewport) {
  const opened = await openPage(browser, `${server.http}/admin/`, { ready: "body[data-ready=true]" });
  if (viewport) await opened.page.setViewportSize(viewport);
  return opened;
}

async function signIn(page, email = ADMIN, password = PASSWORD) {
  await page.fill("#email", email);
  await page.fill("#password", password);
  await page.press("#password", "Enter");
}

async function adminPage(viewport) {
  const opened = await open(viewport);
  await signIn(opened.page);
  await opened.page.waitForSelector("body[data-signed-in=true]");
  return opened;
}

/** The ids in the table's rows. */
function rowIds(page) {
  return page.$$eval("#docs tbody tr", (rows) => rows.map((row) => row.dataset.id));
}

async function openPeople(page) {
  await page.click('button.collection[data-id="people"]');
  await page.waitForFunction(() => document.querySelectorAll("#docs tbody tr").length === 25);
}

const ids = (from, count) => Array.from({ length: count }, (_, i) => `p${String(from + i).padStart(5, "0")}`);

test("the console page comes with a strict CSP, no framing and no referrer; /admin moves to /admin/", async () => {
  const answer = await fetch(`${server.http}/admin/`);
  assert.equal(answer.status, 200);
  assert.equal(answer.headers.get("content-security-policy"),
    "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self' ws: wss:; frame-ancestors 'none'");
  assert.equal(answer.headers.get("x-frame-options"), "DENY");
  assert.equal(answer.headers.get("referrer-policy"), "no-referrer");
  const moved = await fetch(`${server.http}/admin`, { redirect: "manual" });
  assert.equal(moved.status, 308);
  assert.equal(moved.headers.get("location"), "/admin/");
});

test("an admin account signs in, sees the collections, and pages through 10,000 documents", async () => {
  const { page, errors, close } = await open();
  await page.screenshot({ path: join(SHOTS, "1-sign-in.png") });
  await signIn(page);
  await page.waitForSelector("body[data-signed-in=true]");
  const tree = await page.$$eval("button.collection", (buttons) => buttons.map((b) => b.textContent));
  assert.deepEqual(tree, ["items1", "people10,000"]);
  await openPeople(page);
  assert.deepEqual(await rowIds(page), ids(0, 25));
  const header = await page.$$eval("#docs thead th", (cells) => cells.map((cell) => cell.textContent));
  assert.deepEqual(header.slice(0, 4), ["id", "name", "n", "team"]);
  await page.screenshot({ path: join(SHOTS, "2-collection.png") });

  for (let pageNumber = 1; pageNumber <= 3; pageNumber++) {
    await page.click("#next-page");
    await page.waitForFunction((first) => document.querySelector("#docs tbody tr")?.dataset.id === first, ids(pageNumber * 25, 1)[0]);
    assert.deepEqual(await rowIds(page), ids(pageNumber * 25, 25));
  }
  assert.match(await page.textContent("#page-info"), /documents 76–100/);
  await page.click("#prev-page");
  await page.waitForFunction(() => document.querySelector("#docs tbody tr")?.dataset.id === "p00050");
  // A bigger page, far into the collection, in a query's order.
  await page.fill("#order-field", "n");
  await page.selectOption("#order-dir", "desc");
  await page.fill("#limit", "500");
  await page.click("#query button[type=submit]");
  await page.waitForFunction(() => document.querySelector("#docs tbody tr")?.dataset.id === "p09999");
  for (let pageNumber = 1; pageNumber < 20; pageNumber++) await page.click("#next-page").then(() =>
    page.waitForFunction((first) => document.querySelector("#docs tbody tr")?.dataset.id === first, `p${String(9999 - pageNumber * 500).padStart(5, "0")}`));
  const last = await rowIds(page);
  assert.equal(last.length, 500);
  assert.equal(last.at(-1), "p00000");
  assert.equal(await page.isDisabled("#next-page"), true);
  assert.deepEqual(errors, []);
  await close();
});

test("a change made from Python appears live in the open table, highlighted", async () => {
  const { page, errors, close } = await adminPage();
  await openPeople(page);
  await python(`doc(db, "people", "p00003").update({"name": "Changed from Python"})`);
  await page.waitForSelector('#docs tr.changed[data-id="p00003"]');
  assert.equal(await page.textContent('#docs tr[data-id="p00003"] td'), "Changed from Python");
  await page.screenshot({ path: join(SHOTS, "3-live-change.png") });
  assert.deepEqual(errors, []);
  await close();
});

test("a query's results stay live: a matching document added from Python appears in its place", async () => {
  const { page, errors, close } = await adminPage();
  await openPeople(page);
  await page.fill("#where-field", "team");
  await page.fill("#where-value", '"gold"');
  await page.fill("#order-field", "n");
  await page.selectOption("#order-dir", "desc");
  await page.fill("#limit", "10");
  await page.press("#limit", "Enter");
  await page.waitForFunction(() => document.querySelector("#docs tbody tr")?.dataset.id === "p09999");
  const teams = await page.$$eval("#docs tbody tr", (rows) => rows.map((row) => row.children[3].textContent));
  assert.deepEqual(new Set(teams), new Set(["gold"]));
  assert.equal(teams.length, 10);
  await python(`doc(db, "people", "zz-new").set({"name": "Newcomer", "n": 20000, "team": "gold"})`);
  await page.waitForSelector('#docs tbody tr:first-child.changed[data-id="zz-new"]');
  assert.equal((await rowIds(page)).length, 10);
  await page.screenshot({ path: join(SHOTS, "4-query.png") });
  assert.deepEqual(errors, []);
  await close();
});

test("an edit saved in the console is what a Python client reads", async () => {
  const { page, errors, close } = await adminPage();
  await openPeople(page);
  await page.click('#docs tr[data-id="p00001"] button');
  await page.waitForFunction(() => document.getElementById("json").value.includes("Person 1"));
  await page.screenshot({ path: join(SHOTS, "5-editor.png") });
  const value = JSON.parse(await page.inputValue("#json"));
  await page.fill("#json", JSON.stringify({ ...value, name: "Edited in the console", note: { by: "admin" } }, null, 2));
  await page.keyboard.press("Control+s");
  await page.waitForFunction(() => document.getElementById("editor-error").textContent === "Saved.");
  const read = JSON.parse(await python(`print(json.dumps(doc(db, "people", "p00001").get()))`));
  assert.deepEqual(read, { ...value, name: "Edited in the console", note: { by: "admin" } });
  assert.equal(await page.isHidden("#stale"), true);
  assert.deepEqual(errors, []);
  await close();
});

test("an invalid edit is refused with the error at its field, and nothing is written", async () => {
  const { page, close } = await adminPage();
  await page.fill("#path", "items/one");
  await page.press("#path", "Enter");
  await page.waitForFunction(() => document.getElementById("json").value.includes("One"));
  const text = JSON.stringify({ title: "Two", details: { $price: 4 } }, null, 2);
  await page.fill("#json", text);
  await page.click("#save");
  await page.waitForFunction(() => document.getElementById("editor-error").dataset.pointer === "/details/$price");
  assert.match(await page.textContent("#editor-error"), /INVALID_ARGUMENT: .*\$price.*\(line 4, at \/details\/\$price\)/);
  assert.equal(await page.getAttribute("#json", "aria-invalid"), "true");
  const selected = await page.$eval("#json", (box) => box.value.slice(box.selectionStart, box.selectionEnd));
  assert.equal(selected, '"$price": 4');
  await page.screenshot({ path: join(SHOTS, "6-invalid-edit.png") });
  // Not JSON at all: said before anything is sent.
  await page.fill("#json", '{"title": }');
  await page.click("#save");
  await page.waitForFunction(() => document.getElementById("editor-error").textContent.startsWith("Not valid JSON"));
  assert.deepEqual(JSON.parse(await python(`print(json.dumps(doc(db, "items", "one").get()))`)), { title: "One", price: 3 });
  await close();
});

test("a document changed elsewhere since it was opened shows a warning, and its new version on request", async () => {
  const { page, errors, close } = await adminPage();
  await page.fill("#path", "people/p00002");
  await page.press("#path", "Enter");
  await page.waitForFunction(() => document.getElementById("json").value.includes("Person 2"));
  assert.equal(await page.isHidden("#stale"), true);
  await python(`doc(db, "people", "p00002").update({"n": increment(1)})`);
  await page.waitForSelector("#stale:not([hidden])");
  await page.screenshot({ path: join(SHOTS, "7-changed-elsewhere.png") });
  await page.click("#reload-doc");
  assert.equal(JSON.parse(await page.inputValue("#json")).n, 3);
  assert.equal(await page.isHidden("#stale"), true);
  assert.deepEqual(errors, []);
  await close();
});

test("add and delete: a new document gets an id; a delete asks first, and a cancel keeps it", async () => {
  const { page, errors, close } = await adminPage();
  await page.click('button.collection[data-id="items"]');
  await page.waitForSelector('#docs tr[data-id="one"]');
  await page.click("#new-doc");
  await page.fill("#json", '{"title": "Added", "price": 7}');
  await page.click("#save");
  await page.waitForFunction(() => /^items \/ \S{20}$/.test(document.getElementById("editor-title").textContent));
  const id = (await page.textContent("#editor-title")).split(" / ")[1];
  assert.deepEqual(JSON.parse(await python(`print(json.dumps(doc(db, "items", ${JSON.stringify(id)}).get()))`)), { title: "Added", price: 7 });

  await page.click("#delete");
  await page.waitForSelector("#confirm[open]");
  await page.screenshot({ path: join(SHOTS, "8-confirm-delete.png") });
  await page.keyboard.press("Escape"); // cancelled
  await page.waitForFunction(() => !document.getElementById("confirm").open);
  assert.equal(await python(`print(doc(db, "items", ${JSON.stringify(id)}).get() is not None)`), "True\n");
  await page.click("#delete");
  await page.click('#confirm button[value="ok"]');
  await page.waitForSelector("#collection-view:not([hidden])");
  assert.equal(await python(`print(doc(db, "items", ${JSON.stringify(id)}).get())`), "None\n");
  assert.deepEqual(errors, []);
  await close();
});

test("on a phone-sized screen the table and the editor fit the width", async () => {
  const { page, errors, close } = await adminPage({ width: 390, height: 844 });
  await openPeople(page);
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(width <= 390, `the page is ${width}px wide`);
  await page.screenshot({ path: join(SHOTS, "9-phone.png"), fullPage: false });
  assert.deepEqual(errors, []);
  await close();
});

test("a user account and an anonymous page get nothing the console uses", async () => {
  const { page, close } = await open();
  const outcome = await page.evaluate(async () => {
    const { Montybase, doc } = await import("/montybase.js");
    const config = await (await fetch("/client-config.json")).json();
    const reasons = async (db) => {
      const tries = {
        collections: () => db._backend.call("collections", {}),
        list: () => doc(db, "people").limit(1).stream(),
        get: () => doc(db, "people", "p00001").get(),
        set: () => doc(db, "people", "p00001").set({ name: "intruder" }),
        delete: () => doc(db, "people", "p00001").delete(),
        listen: () => new Promise((resolve, reject) => doc(db, "people").limit(1).onSnapshot(resolve, reject)),
        rulesGet: () => db._backend.call("rulesGet", {}),
        rulesApply: () => db._backend.call("rulesApply", { rules: { "**": { read: "public", write: "public" } } }),
        accountsList: () => db._backend.call("accountsList", {}),
        accountsDisable: () => db._backend.call("accountsDisable", { email: "someone@console.example" }),
        accountsDelete: () => db._backend.call("accountsDelete", { email: "someone@console.example" }),
        serverStatus: () => db._backend.call("serverStatus", {}),
      };
      const out = {};
      for (const [name, attempt] of Object.entries(tries)) {
        out[name] = await attempt().then(() => "ALLOWED", (error) => error.reason);
      }
      return out;
    };
    const anonymous = new Montybase(config);
    const user = new Montybase(config);
    await user.signUp("someone@console.example", "a user password");
    const result = { adminKey: "adminKey" in config, anonymous: await reasons(anonymous), user: await reasons(user) };
    anonymous.close();
    user.close();
    return result;
  });
  assert.equal(outcome.adminKey, false);
  for (const who of ["anonymous", "user"]) {
    assert.deepEqual(new Set(Object.values(outcome[who])), new Set(["PERMISSION_DENIED"]), `${who}: ${JSON.stringify(outcome[who])}`);
  }
  // The console's own form turns a user account away.
  await signIn(page, "someone@console.example", "a user password");
  await page.waitForFunction(() => document.getElementById("signin-error").textContent.includes("not an admin account"));
  assert.equal(await page.isHidden("#app"), true);
  await page.screenshot({ path: join(SHOTS, "10-not-an-admin.png") });
  assert.equal(await python(`print(doc(db, "people", "p00001").get()["name"])`) !== "intruder\n", true);
  await close();
});

test("the rules dry run answers ALLOW or DENY with the rule that decided", async () => {
  const { page, errors, close } = await adminPage();
  await page.click("#tab-rules");
  await page.selectOption("#rules-as", "user");
  await page.fill("#rules-uid", "alice");
  await page.selectOption("#rules-op", "get");
  await page.fill("#rules-path", "people/p00001");
  await page.click("#rules-form button[type=submit]");
  await page.waitForSelector("#rules-result.deny");
  assert.equal(await page.textContent("#rules-result"), "DENY get people/p00001 as user:alice (no rule matches people: denied by default)");
  await page.selectOption("#rules-as", "anonymous");
  await page.selectOption("#rules-op", "create");
  await page.fill("#rules-path", "notes/n1");
  await page.fill("#rules-value", '{"text": "hi"}');
  await page.click("#rules-form button[type=submit]");
  await page.waitForSelector("#rules-result.allow");
  assert.match(await page.textContent("#rules-result"), /^ALLOW create notes\/n1 as anonymous \(rule "notes": create is public\)$/);
  await page.screenshot({ path: join(SHOTS, "11-rules.png") });
  assert.deepEqual(errors, []);
  await close();
});

/** In the page: a client-key client (`window.clients[name]`), signed in as `email` if given. */
function pageClient(page, name, email) {
  return page.evaluate(async ([name, email]) => {
    const { Montybase } = await import("/montybase.js");
    const config = await (await fetch("/client-config.json")).json();
    const client = new Montybase(config);
    if (email) await client.signUp(email, "an account password");
    (window.clients ??= {})[name] = client;
  }, [name, email]);
}

/** In the page: what `action` of a page client gives, "OK" or its error's reason (the page's CSP
 * allows no eval, so the actions are named here). */
function pageCall(page, name, action, email) {
  return page.evaluate(async ([name, action, email]) => {
    const { doc } = await import("/montybase.js");
    const db = window.clients[name];
    const actions = {
      write: () => doc(db, "notes", "n1").set({ text: "hi" }),
      read: () => doc(db, "notes", "n1").get(),
      signIn: () => db.signIn(email, "an account password"),
      // The client learns it was signed out at its next call (its connection closed; resuming fails).
      signedOut: async () => {
        for (let i = 0; i < 50 && db.currentUser !== null; i++) {
          await doc(db, "notes", "n1").get().catch(() => {});
          if (db.currentUser !== null) await new Promise((resolve) => setTimeout(resolve, 100));
        }
        if (db.currentUser !== null) throw new Error("still signed in");
      },
    };
    return actions[action]().then(() => "OK", (error) => error.reason ?? String(error));
  }, [name, action, email]);
}

test("the accounts view finds accounts by email, signs one out everywhere, disables, enables and deletes", async () => {
  const { page, errors, close } = await adminPage();
  for (const n of [1, 2, 3]) await pageClient(page, `acct${n}`, `acct${n}@people.example`);
  await page.click("#tab-accounts");
  await page.fill("#accounts-query", "ACCT");
  await page.press("#accounts-query", "Enter");
  await page.waitForFunction(() => document.querySelectorAll("#accounts tbody tr[data-email]").length === 3);
  const rows = await page.$$eval("#accounts tbody tr", (trs) => trs.map((tr) => [...tr.children].slice(0, 5).map((cell) => cell.textContent)));
  assert.deepEqual(rows.map((row) => [row[0], row[3], row[4]]), [1, 2, 3].map((n) => [`acct${n}@people.example`, "1", "active"]));
  for (const row of rows) assert.match(row[1] + row[2], /^(?!.*—).*\d.*\d/, "sign-up and last sign-in times are shown");
  await page.screenshot({ path: join(SHOTS, "12-accounts.png") });

  // Sign out everywhere: the account's open connection is closed and its client is signed out.
  await page.click('#accounts tr[data-email="acct1@people.example"] button:text("Sign out everywhere")');
  await page.waitForFunction(() => /acct1@people.example signed out everywhere \(1 session ended\)/.test(document.getElementById("accounts-info").textContent));
  assert.equal(await pageCall(page, "acct1", "signedOut"), "OK");

  // Disable, asked first: it cannot sign in; enable: it can again.
  await page.click('#accounts tr[data-email="acct2@people.example"] button:text("Disable")');
  await page.click("#confirm-ok");
  await page.waitForSelector('#accounts tr.disabled[data-email="acct2@people.example"]');
  assert.equal(await pageCall(page, "acct2", "signedOut"), "OK");
  assert.equal(await pageCall(page, "acct2", "signIn", "acct2@people.example"), "UNAUTHENTICATED");
  await page.screenshot({ path: join(SHOTS, "13-account-disabled.png") });
  await page.click('#accounts tr[data-email="acct2@people.example"] button:text("Enable")');
  await page.waitForSelector('#accounts tr:not(.disabled)[data-email="acct2@people.example"]');
  assert.equal(await pageCall(page, "acct2", "signIn", "acct2@people.example"), "OK");

  // Delete, asked first (a cancel keeps it).
  const remove = '#accounts tr[data-email="acct3@people.example"] button:text("Delete…")';
  await page.click(remove);
  await page.keyboard.press("Escape");
  await page.click(remove);
  await page.click("#confirm-ok");
  await page.waitForFunction(() => document.querySelectorAll("#accounts tbody tr[data-email]").length === 2);
  assert.equal(await pageCall(page, "acct3", "signIn", "acct3@people.example"), "UNAUTHENTICATED");
  // The admin's own account cannot be disabled or deleted from here.
  await page.fill("#accounts-query", "");
  await page.press("#accounts-query", "Enter");
  await page.waitForSelector(`#accounts tr[data-email="${ADMIN}"]`);
  assert.equal(await page.isDisabled(`#accounts tr[data-email="${ADMIN}"] button:text("Delete…")`), true);
  // The signed-out clients say so on the console, as they should; nothing else went wrong.
  assert.deepEqual(errors.filter((text) => !text.includes("the signed-in session could not be resumed; signed out")), []);
  await close();
});

test("the server view charts the numbers, and they move under a write load", async () => {
  const { page, errors, close } = await adminPage();
  await page.focus("#tab-server"); // by keyboard
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => Number(document.body.dataset.samples) >= 2);
  const value = (id) => page.textContent(`[data-metric=${id}] .value`);
  const documentsBefore = Number((await value("documents")).replace(/\D/g, ""));
  const load = python(`
import time
for n in range(400):  # bounded: about 4 s of writes
    doc(db, "load", f"w{n:03d}").set({"n": n})
    time.sleep(0.008)
`);
  await page.waitForFunction(() => parseFloat(document.querySelector("[data-metric=writes] .value").textContent) >= 20, null, { timeout: 30_000 });
  await load;
  await page.waitForFunction((before) => Number(document.querySelector("[data-metric=documents] .value").textContent.replace(/\D/g, "")) === before + 400,
    documentsBefore, { timeout: 10_000 });
  assert.ok(parseFloat(await value("requests")) >= 0);
  for (const id of ["uptime", "connections", "listeners", "memory", "snapshot", "backup"]) assert.ok(await page.$(`[data-metric=${id}]`), id);
  assert.match(await value("memory"), /^\d[\d,.]* MB$/);
  const points = await page.$eval("[data-metric=writes] polyline", (line) => line.getAttribute("points").split(" ").length);
  assert.ok(points >= 2);
  await page.screenshot({ path: join(SHOTS, "14-server.png"), fullPage: true });
  assert.deepEqual(errors, []);
  await close();
});

test("the recent warnings of the log show in the server view", async () => {
  const { page, errors, close } = await adminPage();
  await python(`
try:
    Montybase(api=${JSON.stringify(server.endpoint)}, config=${JSON.stringify(join(server.dir, "client-config.json"))}).sign_in("${ADMIN}", "not the password")
except Exception:
    pass
`);
  await page.click("#tab-server");
  await page.waitForFunction(() => /WARNING.*sign-in refused/.test(document.getElementById("warnings").textContent), null, { timeout: 10_000 });
  assert.deepEqual(errors, []);
  await close();
});

test("the rules view shows each rule; a bad one is refused at its field; an applied one refuses a client key at once", async () => {
  const { page, errors, close } = await adminPage();
  await pageClient(page, "anyone");
  assert.equal(await pageCall(page, "anyone", "write"), "OK", "a client key may write notes before");
  await page.click("#tab-rules");
  await page.waitForSelector('.rule[data-pattern="notes"] textarea');
  assert.deepEqual(JSON.parse(await page.inputValue('.rule[data-pattern="notes"] textarea')), RULES.notes);
  assert.match(await page.textContent(".uncovered"), /^No rule \(client keys may do nothing there\): .*\+ people/);
  const before = await readFile(join(server.dir, "montybase.json"), "utf8");

  // A value the config schema refuses: the error at its rule and field; nothing is applied.
  await page.fill('.rule[data-pattern="notes"] textarea', JSON.stringify({ read: "public", write: "everyone" }, null, 2));
  await page.click("#rules-apply");
  await page.waitForFunction(() => document.querySelector('.rule[data-pattern="notes"] .error').textContent.includes("everyone"));
  assert.match(await page.textContent('.rule[data-pattern="notes"] .error'), /^INVALID_ARGUMENT: .*rules\/notes\/write.* \(line 3\) — nothing was applied$/);
  const selected = await page.$eval('.rule[data-pattern="notes"] textarea', (box) => box.value.slice(box.selectionStart, box.selectionEnd));
  assert.equal(selected, '"write": "everyone"');
  await page.screenshot({ path: join(SHOTS, "15-rule-refused.png") });
  assert.equal(await readFile(join(server.dir, "montybase.json"), "utf8"), before);
  assert.equal(await pageCall(page, "anyone", "write"), "OK", "the running rules stay");

  // A good one: written, the file before kept, and the client key refused at once.
  await page.fill('.rule[data-pattern="notes"] textarea', JSON.stringify({ read: "public", write: "none" }, null, 2));
  await page.click("#rules-apply");
  await page.waitForFunction(() => document.body.dataset.rulesApplied === "1");
  assert.equal(await pageCall(page, "anyone", "write"), "PERMISSION_DENIED");
  assert.equal(await pageCall(page, "anyone", "read"), "OK", "reads are still public");
  assert.match(await page.textContent("#rules-status"), /kept as montybase\.json\.previous/);
  assert.deepEqual(JSON.parse(await readFile(join(server.dir, "montybase.json.previous"), "utf8")), JSON.parse(before));
  assert.deepEqual(JSON.parse(await readFile(join(server.dir, "montybase.json"), "utf8")).rules, { notes: { read: "public", write: "none" } });
  await page.screenshot({ path: join(SHOTS, "16-rules.png"), fullPage: true });

  // A new rule for a collection, then the rules as they were.
  await page.click('.uncovered button:text("+ people")');
  await page.waitForSelector('.rule[data-pattern="people"][data-changed=true]');
  await page.fill("#rule-pattern", "rooms/*/messages");
  await page.press("#rule-pattern", "Enter");
  await page.waitForSelector('.rule[data-pattern="rooms/*/messages"][data-changed=true]');
  await page.screenshot({ path: join(SHOTS, "16-rules-added.png"), fullPage: true });
  await page.click('.rule[data-pattern="rooms/*/messages"] button');
  await page.click('.rule[data-pattern="people"] button');
  await page.fill('.rule[data-pattern="notes"] textarea', JSON.stringify(RULES.notes));
  await page.click("#rules-apply");
  await page.waitForFunction(() => document.body.dataset.rulesApplied === "2");
  assert.equal(await pageCall(page, "anyone", "write"), "OK");
  assert.deepEqual(errors, []);
  await close();
});

test("every view fits a phone-sized screen", async () => {
  const { page, errors, close } = await adminPage({ width: 390, height: 844 });
  for (const view of ["rules", "accounts", "server"]) {
    await page.click(`#tab-${view}`);
    if (view === "server") await page.waitForFunction(() => Number(document.body.dataset.samples) >= 1);
    if (view === "rules") await page.waitForSelector(".rule");
    if (view === "accounts") await page.waitForSelector("#accounts tbody tr");
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(width <= 390, `the ${view} view is ${width}px wide`);
    await page.screenshot({ path: join(SHOTS, `17-phone-${view}.png`), fullPage: true });
  }
  assert.deepEqual(errors, []);
  await close();
});

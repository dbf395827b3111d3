// User accounts from the JS client (DESIGN.md §8; tests/test_accounts.py is the Python twin):
// sign-up, sign-in, the same error for a wrong password and an unknown email, duplicate
// sign-ups, owner-only data, a password store no call can read, sign-out, and a session resumed
// after the server restarts (and dropped when it cannot be).
//
// scrypt costs tens of milliseconds per sign-up or sign-in: the accounts are made once.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import WebSocket from "ws";

import {
  AlreadyExistsError,
  ConnectionLostError,
  InvalidArgumentError,
  Montybase,
  MontybaseError,
  UnauthenticatedError,
  doc,
} from "../../js_client/index.js";
import { Server, Snapshots, firstSnapshot, tempDir, updateConfig, writeConfig } from "./helpers.js";

const PASSWORD = "correct horse battery";
const RULES = {
  notes: { read: "owner", create: "user", update: "owner", delete: "owner", owner: "ownerId", serverFields: { ownerId: "uid" } },
  profiles: { read: "owner", write: "owner" }, // the owner is the document id ("$id")
  marker: { read: "public", write: "public" },
};
const RESERVED = ["__accounts__", "__sessions__"];

let server;
let clientConfig;
let admin;
let alice;
let bob;
let aliceUid;
let bobUid;
const ALICE = "alice@accounts.example";
const BOB = "bob@accounts.example";
const opened = [];

function client() {
  const handle = new Montybase(clientConfig, { WebSocket });
  opened.push(handle);
  return handle;
}

async function reason(promise) {
  try {
    await promise;
  } catch (error) {
    if (!(error instanceof MontybaseError)) throw error;
    return error.reason;
  }
  return "allowed";
}

async function caught(promise) {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  assert.fail("the call succeeded");
}

before(async () => {
  const dir = await tempDir();
  await writeConfig(dir, { rules: RULES, hot: true });
  server = await Server.start({ dir });
  clientConfig = await server.clientConfig();
  admin = new Montybase(await server.adminConfig(), { WebSocket, endpoint: server.endpoint });
  opened.push(admin);
  [alice, bob] = [client(), client()];
  [aliceUid, bobUid] = await Promise.all([alice.signUp(ALICE, PASSWORD), bob.signUp(BOB, `${PASSWORD}!`)]).then((users) => users.map((u) => u.uid));
});

after(async () => {
  await Promise.all(opened.map((handle) => handle.close()));
  await server?.cleanup();
});

describe("signing up and in", () => {
  test("signUp creates an account and signs the handle in", async () => {
    const carol = client();
    assert.equal(carol.currentUser, null);
    const user = await carol.signUp("  Carol@Accounts.Example ", PASSWORD);
    assert.deepEqual(Object.keys(user).sort(), ["email", "uid"]);
    assert.equal(user.email, "carol@accounts.example");
    assert.equal(user.uid.length, 20);
    assert.deepEqual(carol.currentUser, user);
    assert.ok(![aliceUid, bobUid].includes(user.uid));
    carol.currentUser.uid = "tampered"; // a copy: the handle's user is its own
    assert.equal(carol.currentUser.uid, user.uid);
    assert.ok(await doc(carol, "notes").add({ text: "carol's" })); // create: user
  });

  test("signIn from another handle is the same user", async () => {
    const handle = client();
    assert.equal(await reason(doc(handle, "notes").add({ text: "x" })), "PERMISSION_DENIED");
    const user = await handle.signIn(ALICE.toUpperCase(), PASSWORD);
    assert.deepEqual(user, { uid: aliceUid, email: ALICE });
    assert.deepEqual(handle.currentUser, user);
    const id = await doc(handle, "notes").add({ text: "from the second handle" });
    assert.deepEqual(await doc(alice, "notes", id).get(), { text: "from the second handle", ownerId: aliceUid });
  });

  test("a wrong password and an unknown email get the same error", async () => {
    const handle = client();
    const wrong = await caught(handle.signIn(ALICE, "not the password"));
    const unknown = await caught(handle.signIn("nobody@accounts.example", PASSWORD));
    assert.ok(wrong instanceof UnauthenticatedError && unknown instanceof UnauthenticatedError);
    assert.deepEqual([wrong.name, wrong.code, wrong.reason, wrong.message, wrong.data], [unknown.name, unknown.code, unknown.reason, unknown.message, unknown.data]);
    assert.equal(wrong.code, -32000);
    assert.equal(handle.currentUser, null);
    assert.equal(await reason(doc(handle, "notes").add({ text: "x" })), "PERMISSION_DENIED");
  });

  test("a second sign-up with the same email is ALREADY_EXISTS and changes nothing", async () => {
    const handle = client();
    for (const email of [ALICE, ALICE.toUpperCase()]) {
      const error = await caught(handle.signUp(email, "another password"));
      assert.ok(error instanceof AlreadyExistsError, String(error));
      assert.equal(error.code, -32003);
      assert.equal(handle.currentUser, null);
    }
    assert.equal((await handle.signIn(ALICE, PASSWORD)).uid, aliceUid); // the password is unchanged
  });

  test("an email is one account however it is spelled (NFKC and case folding)", async () => {
    const dana = await client().signUp("Ｄａｎａ.Jos\u00e9@Accounts.Example", PASSWORD); // full-width letters, a composed é
    assert.equal(dana.email, "dana.jos\u00e9@accounts.example");
    for (const spelling of ["dana.jose\u0301@accounts.example", "DANA.JOSÉ@ACCOUNTS.EXAMPLE", "ｄａｎａ.josé＠accounts.example"]) {
      assert.ok((await caught(client().signUp(spelling, PASSWORD))) instanceof AlreadyExistsError, spelling);
      assert.equal((await client().signIn(spelling, PASSWORD)).uid, dana.uid, spelling);
    }
  });

  test("bad credentials are INVALID_ARGUMENT", async () => {
    for (const [email, password] of [["not an email", PASSWORD], ["", PASSWORD], ["a@b.example", "short"], ["a/b@c.example", PASSWORD], ["$x@c.example", PASSWORD]]) {
      const error = await caught(admin.signUp(email, password));
      assert.ok(error instanceof InvalidArgumentError, `${email} ${password}: ${error}`);
    }
  });
});

describe("owner-only data", () => {
  test("only the owner reads, edits, deletes or listens to its note and profile", async () => {
    const anonymous = client();
    const noteId = await doc(alice, "notes").add({ text: "alice's", ownerId: bobUid }); // the server sets ownerId
    const note = doc(alice, "notes", noteId);
    assert.deepEqual(await note.get(), { text: "alice's", ownerId: aliceUid });
    await note.set({ text: "edited", ownerId: aliceUid });
    await note.update({ text: "edited again" });
    const bobsId = await doc(bob, "notes").add({ text: "bob's" });
    for (const handle of [bob, anonymous]) {
      const theirs = doc(handle, "notes", noteId);
      assert.equal(await reason(theirs.get()), "PERMISSION_DENIED");
      assert.equal(await reason(theirs.set({ text: "mine", ownerId: aliceUid })), "PERMISSION_DENIED");
      assert.equal(await reason(theirs.update({ text: "mine" })), "PERMISSION_DENIED");
      assert.equal(await reason(theirs.delete()), "PERMISSION_DENIED");
      assert.equal(await reason(firstSnapshot(theirs)), "PERMISSION_DENIED");
    }
    const bobsNotes = await doc(bob, "notes").get();
    assert.ok(!bobsNotes.has(noteId) && bobsNotes.has(bobsId));
    const alicesNotes = await doc(alice, "notes").get();
    assert.ok(!alicesNotes.has(bobsId) && alicesNotes.has(noteId));
    assert.deepEqual(await doc(admin, "notes", noteId).get(), { text: "edited again", ownerId: aliceUid });
    // Profiles are keyed by uid.
    const mine = doc(alice, "profiles", aliceUid);
    await mine.set({ name: "Alice" });
    await mine.update({ name: "Alice A." });
    assert.deepEqual(await mine.get(), { name: "Alice A." });
    assert.equal(await reason(doc(bob, "profiles", aliceUid).get()), "PERMISSION_DENIED");
    assert.equal(await reason(doc(bob, "profiles", aliceUid).update({ name: "B" })), "PERMISSION_DENIED");
    assert.deepEqual(await note.delete(), { text: "edited again", ownerId: aliceUid });
  });
});

describe("the password store", () => {
  test("no client call can name it: the client refuses the names, the server refuses the wire", async () => {
    const anonymous = client();
    for (const name of RESERVED) assert.throws(() => doc(alice, name), InvalidArgumentError);
    for (const handle of [admin, alice, anonymous]) {
      const backend = handle._backend;
      for (const name of RESERVED) {
        for (const path of [[name], [name, ALICE], ["notes", "x", name]]) {
          const calls = {
            get: () => backend.send("get", { path }),
            query: () => backend.send("query", { query: { path } }),
            count: () => backend.send("aggregate", { op: "count", query: { path } }),
            set: () => backend.send("set", { path, value: { hash: "x" } }),
            delete: () => backend.send("delete", { path }),
          };
          for (const [what, call] of Object.entries(calls)) {
            assert.equal(await reason(call()), "INVALID_ARGUMENT", `${what} ${path}`);
          }
        }
      }
    }
    assert.equal((await alice.signIn(ALICE, PASSWORD)).uid, aliceUid);
  });

  test("the admin key's root read and listeners hold no account data; the hash is never readable", async () => {
    const everything = await doc(admin).get();
    assert.deepEqual([...everything.keys()].filter((name) => RESERVED.includes(name)), []);
    const text = JSON.stringify([...everything].map(([name, docs]) => [name, [...docs]]));
    for (const secret of ["scrypt", PASSWORD, ALICE, BOB, "hash"]) assert.ok(!text.includes(secret), secret);
    const first = await firstSnapshot(doc(admin, "notes"));
    assert.ok(!JSON.stringify(first).includes("scrypt"));
    assert.ok(!JSON.stringify(alice.currentUser).includes(PASSWORD));
  });
});

describe("sessions", () => {
  test("signOut ends the session; a listener then shows nothing private", async () => {
    const handle = client();
    await handle.signIn(ALICE, PASSWORD);
    const noteId = await doc(handle, "notes").add({ text: "private" });
    const [notes, markers] = [new Snapshots(), new Snapshots()];
    const stops = [doc(handle, "notes", noteId).onSnapshot(notes.callback), doc(handle, "marker", "m").onSnapshot(markers.callback)];
    assert.equal((await notes.next()).exists, true);
    await markers.next();
    await handle.signOut();
    assert.equal(handle.currentUser, null);
    const note = doc(handle, "notes", noteId);
    assert.equal(await reason(note.get()), "PERMISSION_DENIED");
    assert.equal(await reason(doc(handle, "notes").add({ text: "x" })), "PERMISSION_DENIED");
    await doc(admin, "notes", noteId).set({ text: "new private text", ownerId: aliceUid });
    await doc(admin, "marker", "m").set({ after: "sign-out" });
    await markers.waitFor((items) => items.at(-1).value?.after === "sign-out", "the marker");
    const seen = notes.pending();
    stops.forEach((stop) => stop());
    assert.deepEqual(seen.filter((s) => s.exists), [], "a signed-out handle still received the note");
    await handle.signIn(ALICE, PASSWORD);
    assert.deepEqual(await note.get(), { text: "new private text", ownerId: aliceUid });
  });

  test("after the server restarts, the session is resumed before the listeners come back", async () => {
    const handle = client();
    const user = await handle.signUp("resume@accounts.example", PASSWORD);
    const noteId = await doc(handle, "notes").add({ text: "v1" });
    const got = new Snapshots();
    const stop = doc(handle, "notes", noteId).onSnapshot(got.callback, got.onError); // owner-only
    assert.equal((await got.next()).value.text, "v1");
    await server.restart(); // SIGKILL, then the same port and folder
    // The listener comes back by itself, as the owner (a resubscription before the resume would be refused).
    const again = await got.waitFor((items) => items.length >= 2, "the note after the restart", 15_000);
    assert.deepEqual(again.at(-1), { id: noteId, value: { text: "v1", ownerId: user.uid }, exists: true });
    await doc(admin, "notes", noteId).update({ text: "v2" }).catch(async (error) => {
      assert.ok(error instanceof ConnectionLostError); // the admin handle's connection died with the server
      await doc(admin, "notes", noteId).update({ text: "v2" });
    });
    assert.equal((await got.waitFor((items) => items.at(-1).value?.text === "v2", "v2")).at(-1).value.text, "v2");
    // Calls on the same handle, with no new sign-in: owner-only writes work.
    const note = doc(handle, "notes", noteId);
    await note.set({ text: "v3", ownerId: user.uid });
    assert.deepEqual(await note.get(), { text: "v3", ownerId: user.uid });
    assert.deepEqual(handle.currentUser, user);
    assert.deepEqual(got.errors, []);
    stop();
  });

  test("a session the server no longer knows is dropped: currentUser becomes null", async () => {
    // Last: the server comes back with an empty in-memory database (same keys), so no session
    // resumes. The next call reconnects, its resume is refused, and the call runs signed out.
    const handle = client();
    await handle.signIn(BOB, `${PASSWORD}!`);
    const reported = [];
    const original = console.error;
    console.error = (...args) => reported.push(args);
    try {
      await updateConfig(server.dir, { storageBucket: ":memory:" });
      await server.restart();
      let outcome = "CONNECTION_LOST";
      for (let i = 0; i < 20 && outcome === "CONNECTION_LOST"; i++) outcome = await reason(doc(handle, "notes").add({ t: 1 }));
      assert.equal(outcome, "PERMISSION_DENIED");
      assert.equal(handle.currentUser, null);
      assert.equal(reported.length, 1);
      assert.equal(reported[0][1].reason, "UNAUTHENTICATED");
    } finally {
      console.error = original;
    }
  });
});
